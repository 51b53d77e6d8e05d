"""Fault injection on the real pipeline (toy world, real tritonserver, file:// storage).

Each test asserts the final artifacts: every prompt has exactly the expected candidates and records, no
duplicates, checksums valid, and the content equals an uninterrupted run's where the issue asks for it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from srum_jobs import exitcodes
from srum_jobs.config import parse_experiment
from srum_jobs.local.executor import default_experiment, run_local
from srum_jobs.records import RewardRecord, read_records
from srum_jobs.stages.common import StageContext, round_prompts

pytestmark = [pytest.mark.triton, pytest.mark.slow]


def _experiment(root: Path, url: str, **training) -> dict:
    data = default_experiment("test", f"file://{root}")
    data["name"] = "faults"
    data["prompts"].update(limit=16, num_shards=1)
    data["generation"].update(candidates_per_prompt=2, batch_size=4)
    data["judge"]["url"] = url
    data["judge"]["cache"] = False  # a rerun must really re-judge what is missing, not read it back
    data["training"].update(training)
    return data


def _write(data: dict, path: Path) -> Path:
    path.write_text(json.dumps(data))
    return path


def _stage(exp_file: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "srum_jobs.cli", "stage", *args, "--experiment", str(exp_file),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _wait_for(pred, timeout: float, what: str, proc: subprocess.Popen = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process ended first ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _records(data: dict) -> list:
    ctx = StageContext.create(parse_experiment(data), 1)
    text = ctx.store.get_text(ctx.layout.records_key(0), verify=True)
    return list(read_records(text, RewardRecord))


def _items(root: Path) -> list:
    return sorted((root / "faults/round-1/judgments/shard-00000/items").glob("*.json"))


def test_generate_worker_killed_mid_shard_resumes_to_identical_output(tmp_path, triton_server):
    clean = _experiment(tmp_path / "clean", triton_server.grpc_url)
    killed = _experiment(tmp_path / "killed", triton_server.grpc_url)
    run_local(clean, stages=("generate",), workdir=tmp_path / "w1", progress=False)
    exp_file = _write(killed, tmp_path / "killed.json")
    proc = _stage(exp_file, "generate")
    _wait_for(lambda: len(_items(tmp_path / "killed")) >= 6, 300, "some finished candidates", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(_items(tmp_path / "killed"))
    assert done_before < 32, "the worker finished before it could be killed; the test proved nothing"
    rerun = _stage(exp_file, "generate")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    assert f"{done_before} already done" in err
    a, b = _records(clean), _records(killed)
    assert [(r.prompt_id, r.candidate_index) for r in b] == [(p.id, k) for p in
                                                            round_prompts(StageContext.create(parse_experiment(killed), 1))
                                                            for k in range(2)]
    assert [r.to_json_line() for r in a] == [r.to_json_line() for r in b]  # identical content, same seeds


def test_training_killed_between_checkpoints_resumes_with_the_same_curve(tmp_path, triton_server):
    training = dict(steps=8, save_every=2, batch_size=4, warmup_steps=2)
    clean = _experiment(tmp_path / "clean", triton_server.grpc_url, **training)
    killed = _experiment(tmp_path / "killed", triton_server.grpc_url, **training)
    for data, w in ((clean, "w1"), (killed, "w2")):
        run_local(data, stages=("generate", "rewards"), workdir=tmp_path / w, progress=False)
    run_local(clean, stages=("train",), workdir=tmp_path / "w1", progress=False, nproc=1)
    exp_file = _write(killed, tmp_path / "killed.json")
    ctx = StageContext.create(parse_experiment(killed), 1)
    proc = subprocess.Popen([sys.executable, "-m", "srum_jobs.cli", "stage", "train", "--experiment", str(exp_file),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    _wait_for(lambda: 4 in ctx.layout.completed_checkpoints(), 300, "checkpoint step 4", proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not ctx.layout.shard_done("train", 0), "training finished before it could be killed"
    rerun = subprocess.run([sys.executable, "-m", "srum_jobs.cli", "stage", "train", "--experiment", str(exp_file),
                            "--no-progress"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed_from = max(s for s in ctx.layout.completed_checkpoints() if s < 8)
    assert "resuming from checkpoint step" in rerun.stderr
    curve = ctx.layout.metrics()
    ref = StageContext.create(parse_experiment(clean), 1).layout.metrics()
    assert [r["step"] for r in curve] == list(range(1, 9)) and resumed_from >= 4  # continues, no gap, no repeat
    for got, want in zip(curve, ref):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-7), (got, want)
        assert got["lr"] == want["lr"]
    from srum_jobs.training.checkpoint import load_checkpoint

    w_resumed = load_checkpoint(ctx.layout, 8, parts=["model"])["model"]
    w_clean = load_checkpoint(StageContext.create(parse_experiment(clean), 1).layout, 8, parts=["model"])["model"]
    for k in w_clean:
        assert (w_resumed[k] - w_clean[k]).abs().max().item() < 1e-5, k


def test_judge_down_past_budget_fails_clearly_and_keeps_finished_work(tmp_path, triton_server):
    data = _experiment(tmp_path / "run", triton_server.grpc_url)
    data["judge"].update(retries=2, timeout_s=2.0)
    exp_file = _write(data, tmp_path / "e.json")
    proc = _stage(exp_file, "generate")
    _wait_for(lambda: len(_items(tmp_path / "run")) >= 4, 300, "some finished candidates", proc)
    triton_server.stop()
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        triton_server.start()
    assert proc.returncode == exitcodes.TEMPORARY, err[-3000:]
    assert "judge server" in err
    finished = _items(tmp_path / "run")
    for f in finished:  # everything written is complete, parseable, never half-written
        RewardRecord  # noqa: B018
        list(read_records(f.read_text(), RewardRecord))
    ctx = StageContext.create(parse_experiment(data), 1)
    assert not ctx.layout.shard_done("generate", 0)
    rerun = _stage(exp_file, "generate")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err[-3000:]
    recs = _records(data)
    assert len(recs) == 32 and len({(r.prompt_id, r.candidate_index) for r in recs}) == 32


def test_second_run_of_the_same_experiment_refuses(tmp_path):
    from srum_jobs.cli import main
    from srum_jobs.storage import LocalStore

    out = tmp_path / "runs"
    held = {"holder": "other-host:1:0", "expires_at": time.time() + 120}
    LocalStore(out).put_bytes("toy-test/lease.json", json.dumps(held).encode())
    r = CliRunner().invoke(main, ["run", "--preset", "test", "--out", str(out), "--stages", "report"])
    assert r.exit_code == exitcodes.LOCKED
    assert "another run holds" in r.output and "other-host" in r.output
