"""The whole SRUM chain, test-sized, for real: a real tritonserver, real torchrun with 2 gloo processes,
file:// storage through the `srum run` CLI, then the same chain on S3 (moto over loopback HTTP).

These tests assert artifacts, not logs: every prompt has exactly K candidates and records, maps verify,
checkpoints are complete, the report exists, and a rerun changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest

from srum_jobs.config import parse_experiment
from srum_jobs.local.executor import default_experiment, run_local
from srum_jobs.records import RewardRecord, read_records
from srum_jobs.stages.common import StageContext, round_prompts

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _snapshot(root: Path) -> dict:
    """Content hash of every artifact (the lease and the local work folder excluded)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and "/local/" not in rel and not rel.endswith("lease.json"):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _check_artifacts(ctx: StageContext) -> None:
    exp = ctx.exp
    prompts = round_prompts(ctx)
    K = exp.generation.candidates_per_prompt
    seen = []
    for shard in range(exp.prompts.num_shards):
        assert ctx.layout.shard_done("generate", shard) and ctx.layout.shard_done("rewards", shard)
        key = ctx.layout.records_key(shard)
        recs = list(read_records(ctx.store.get_text(key, verify=True), RewardRecord))
        seen += [(r.prompt_id, r.candidate_index) for r in recs]
        for r in recs:
            assert ctx.store.exists(r.image_key)
    assert sorted(seen) == sorted((p.id, k) for p in prompts for k in range(K))  # exactly once each
    train = ctx.layout.marker("train", 0)
    assert train["final_step"] == exp.training.steps and train["world_size"] == 2
    assert ctx.layout.completed_checkpoints()[-1] == exp.training.steps
    summary = ctx.store.get_json(ctx.layout.key("eval", "summary.json"))
    for v in ("base", "trained"):
        run = summary["benchmarks"]["toy"]["runs"][f"{v}/plain"]
        assert run["items"] == exp.prompts.eval_limit
        assert 0.0 <= run["metrics"]["accuracy"]["rows"]["overall"] <= 1.0
    page = ctx.store.get_text(ctx.layout.key("report", "report.html"))
    assert "data:image/png;base64," in page and "overall" in page


def _cmd(out: Path) -> list:
    return [sys.executable, "-m", "srum_jobs.cli", "run", "--preset", "test", "--out", str(out), "--nproc", "2",
            "--no-progress"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """One uninterrupted `srum run --preset test` (2 torchrun workers): the reference every test compares to."""
    out = tmp_path_factory.mktemp("clean") / "runs"
    return out, subprocess.run(_cmd(out), capture_output=True, text=True, timeout=600)


def test_srum_run_cli_on_local_files(clean_run):
    out, first = clean_run
    assert first.returncode == 0, first.stderr[-4000:]
    assert "base" in first.stdout and "report:" in first.stdout
    phases = next(line for line in first.stdout.splitlines() if line.startswith("phases (wall s"))
    for name in ("generate", "rewards", "train", "eval", "report"):
        assert f" {name} " in phases + " ", phases
    exp = parse_experiment(default_experiment("test", f"file://{out}"))
    _check_artifacts(StageContext.create(exp, 1))
    before = _snapshot(out)
    again = subprocess.run(_cmd(out), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "already complete" in again.stderr
    assert _snapshot(out) == before  # idempotent: nothing rewritten differently, nothing duplicated


# ------------------------------------------------------------------------------ stopping a real run

def _proc_table() -> Dict[int, tuple]:
    """pid -> (ppid, state, cmdline) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat", "rb").read().decode("ascii", "replace")
            cmd = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        table[int(entry)] = (int(rest[1]), rest[0], cmd)
    return table


def _descendants(pid: int) -> Dict[int, str]:
    table, found, todo = _proc_table(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, state, cmd) in table.items():
            if ppid == parent and child not in found and state != "Z":
                found[child] = cmd
                todo.append(child)
    return found


def _alive(pids) -> Dict[int, str]:
    table = _proc_table()
    return {p: table[p][2] for p in pids if p in table and table[p][1] != "Z"}


def _until(pred, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        assert proc.poll() is None, f"{what}: srum run ended first ({proc.returncode})"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _stop_and_check(proc: subprocess.Popen, signals, log: Path, lease: Path, expect_rc: int = None) -> str:
    """Signal `srum run` (only it, as a terminal would), then: no process it started survives."""
    started = _descendants(proc.pid)
    assert started, "srum run had no children to stop"
    for i, sig in enumerate(signals):
        os.kill(proc.pid, sig)
        if i + 1 < len(signals):
            time.sleep(0.3)
    rc = proc.wait(timeout=120)
    deadline = time.time() + 30
    while _alive(started) and time.time() < deadline:
        time.sleep(0.1)
    assert not _alive(started), f"survived the stop: {_alive(started)}"
    err = log.read_text()
    if expect_rc is not None:
        assert rc == expect_rc, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert not lease.exists(), "the lease was left behind"
    return err


def _timeless_snapshot(root: Path) -> dict:
    """Artifacts whose bytes must not depend on an interruption (times in markers, manifests and the report
    do; the lease and the local work folder are not artifacts)."""
    snap = _snapshot(root)
    return {k: v for k, v in snap.items() if "/markers/" not in k and "/report/" not in k
            and not k.endswith(("manifest.json", "manifest.json.sha256"))}


def test_interrupted_runs_leave_no_process_and_no_lease_and_resume_to_the_same_result(tmp_path, clean_run):
    """Ctrl-C (twice) during generate, SIGTERM during training, SIGKILL during training, then a rerun: no
    child of any stopped run survives it (torchrun workers and the judge server included), the lease is
    released (or, after SIGKILL, taken over at once), and the final artifacts equal an uninterrupted run's."""
    out = tmp_path / "runs"
    lease = out / "toy-test" / "lease.json"
    items = out / "toy-test" / "round-1" / "judgments" / "shard-00000" / "items"
    marker = out / "toy-test" / "round-1" / "markers" / "train" / "shard-00000.json"

    def start(n: int):
        log = tmp_path / f"run{n}.log"
        return subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=log.open("w"),
                                start_new_session=True), log

    def training(proc):
        return lambda: any("srum_jobs.cli stage train" in c for c in _descendants(proc.pid).values())   # a worker

    proc, log = start(1)      # Ctrl-C during generate, and again while it is stopping
    _until(lambda: items.is_dir() and len(list(items.glob("*.json"))) >= 2, 300, "generate under way", proc)
    err = _stop_and_check(proc, [signal.SIGINT, signal.SIGINT], log, lease, expect_rc=130)
    assert "stopped by SIGINT" in err and "killing the children now" in err

    proc, log = start(2)      # SIGTERM while torchrun's workers train
    _until(training(proc), 300, "training under way", proc)
    err = _stop_and_check(proc, [signal.SIGTERM], log, lease, expect_rc=128 + signal.SIGTERM)
    assert "stopped by SIGTERM" in err and not marker.exists()

    proc, log = start(3)      # SIGKILL: srum run cannot clean up; its children must die with it
    _until(training(proc), 300, "training under way", proc)
    time.sleep(1.0)
    _stop_and_check(proc, [signal.SIGKILL], log, lease)
    assert proc.returncode == -signal.SIGKILL and not marker.exists(), "training finished before the kill"
    assert lease.exists() and json.loads(lease.read_text())["holder"].split(":")[1] == str(proc.pid)

    final = subprocess.run(_cmd(out), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-4000:]
    assert f":{proc.pid}:" in final.stderr and "took over the lease of a run that is no longer running" in final.stderr
    clean_out, clean = clean_run
    assert clean.returncode == 0
    assert not list(out.rglob("*.tmp")) and not (out / "toy-test" / "round-1" / "quarantine").exists()
    assert _timeless_snapshot(out) == _timeless_snapshot(clean_out)


def test_same_chain_on_s3(tmp_path, s3_endpoint, s3_bucket, triton_server):
    data = default_experiment("test", f"s3://{s3_bucket}/runs")
    data["storage"]["endpoint_url"] = s3_endpoint
    data["judge"]["url"] = triton_server.grpc_url  # the session's shared judge server
    summary = run_local(data, workdir=tmp_path, progress=False, nproc=2)
    assert any("after SRUM" in line for line in summary["lines"])
    _check_artifacts(StageContext.create(parse_experiment(data), 1))
