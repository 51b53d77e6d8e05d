"""Damage repairs itself: a damaged records.jsonl or candidate record, a damaged last checkpoint.

One small round (toy world, judged in-process, trained in-process) is built once; each test copies it,
damages one thing, reruns the real stage, and asserts the message saying what was done, the exit code,
that the damaged object was moved to quarantine (not deleted), and that the result is the same as the
undamaged round's (nothing lost, nothing duplicated).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from srum_jobs import exitcodes
from srum_jobs.cli import main
from srum_jobs.config import parse_experiment
from srum_jobs.judging.backends import load_boxer_backend, load_judge_backend
from srum_jobs.judging.inprocess import InProcessTransport
from srum_jobs.local.executor import default_experiment
from srum_jobs.records import RewardRecord, read_records
from srum_jobs.stages import generate, rewards, train
from srum_jobs.stages.common import StageContext
from srum_jobs.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
NAME = "repair"


def _in_process(exp, store=None, cache_key=None):
    """generate's judge without a server: the toy backends in this process."""
    return InProcessTransport(load_judge_backend("toy", {"preset": "test"}), load_boxer_backend("components", {}))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("repair-built")
    data = default_experiment("test", f"file://{root}")
    data["name"] = NAME
    data["prompts"].update(limit=8, num_shards=2)
    data["judge"]["url"] = "127.0.0.1:1"        # stages check that a judge is named; these never call it
    data["training"].update(steps=4, save_every=1, batch_size=4, warmup_steps=1, keep_checkpoints=2)
    exp = parse_experiment(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(generate, "judge_transport", _in_process)
        for shard in range(2):
            generate.run(exp, 1, shard, 2, progress=False)
    rewards.run(exp, 1, progress=False)
    train.run(exp, 1, progress=False)
    return root, data


def _copy(built, tmp_path: Path):
    src, data = built
    dst = tmp_path / "runs"
    shutil.copytree(src, dst)
    data = json.loads(json.dumps(data))
    data["storage"]["root"] = f"file://{dst}"
    f = tmp_path / "exp.json"
    f.write_text(json.dumps(data))
    return dst, data, f, StageContext.create(parse_experiment(data), 1)


def _flip(path: Path, at: int = 40) -> None:
    b = bytearray(path.read_bytes())
    b[at] ^= 0x20
    path.write_bytes(bytes(b))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _quarantined(root: Path) -> list:
    q = root / NAME / "round-1" / "quarantine"
    return sorted(p.relative_to(q).as_posix() for p in q.rglob("*") if p.is_file()) if q.exists() else []


def _stage(*args):
    return CliRunner().invoke(main, ["stage", *args, "--no-progress"])


def test_a_damaged_records_jsonl_is_quarantined_and_rebuilt_by_generate(built, tmp_path):
    root, data, f, ctx = _copy(built, tmp_path)
    records = root / ctx.layout.records_key(0)
    original = _sha(records)
    _flip(records)
    r = _stage("generate", "--experiment", str(f), "--shard", "0", "--num-shards", "2")
    assert r.exit_code == 0, r.output
    assert "records.jsonl is damaged" in r.output and "moved to" in r.output and "redoing the shard" in r.output
    assert "0 already done" not in r.output and "16 candidates" not in r.output and "8 already done" in r.output
    assert _sha(records) == original                       # rebuilt from the candidates, identical
    moved = _quarantined(root)
    assert any(m.startswith("judgments/shard-00000/records.jsonl.") and m.endswith(".why") for m in moved), moved
    assert ctx.layout.shard_done("generate", 0)
    again = _stage("generate", "--experiment", str(f), "--shard", "0", "--num-shards", "2")
    assert again.exit_code == 0 and "already complete" in again.output


def test_a_damaged_records_jsonl_is_rebuilt_by_the_rewards_stage(built, tmp_path):
    root, data, f, ctx = _copy(built, tmp_path)
    maps = sorted((root / ctx.layout.shard_prefix("rewards", 0)).glob("*.rmap"))
    before = {p.name: _sha(p) for p in maps}
    index_before = _sha(root / ctx.layout.rewards_index_key(0))
    ctx.layout.unmark("rewards", 0)
    for p in maps:
        p.unlink()
    (root / ctx.layout.records_key(0)).write_text('{"kind": "reward", "v": 1}\n')     # a checksum that fails
    r = _stage("rewards", "--experiment", str(f), "--shard", "0", "--num-shards", "2")
    assert r.exit_code == 0, r.output
    assert "records.jsonl was damaged" in r.output and "rebuilt it from 8 candidate records" in r.output
    after = {p.name: _sha(p) for p in sorted((root / ctx.layout.shard_prefix("rewards", 0)).glob("*.rmap"))}
    assert after == before and _sha(root / ctx.layout.rewards_index_key(0)) == index_before


def test_a_damaged_candidate_record_is_generated_and_judged_again(built, tmp_path, monkeypatch):
    root, data, f, ctx = _copy(built, tmp_path)
    records = root / ctx.layout.records_key(1)
    original = records.read_text()
    item = sorted((root / ctx.layout.shard_prefix("judgments", 1) / "items").glob("*.json"))[3]
    item.write_text(item.read_text()[:50])                 # a torn write
    _flip(records)
    # the rewards stage cannot rebuild from a damaged candidate: it says so, sets both aside, exits 78
    ctx.layout.unmark("rewards", 1)
    r = _stage("rewards", "--experiment", str(f), "--shard", "1", "--num-shards", "2")
    assert r.exit_code == exitcodes.CONFIG_ERROR, r.output
    assert "1 candidate record(s) cannot rebuild it" in r.output and "run generate for this shard again" in r.output
    assert not ctx.layout.shard_done("generate", 1) and not item.exists()
    # generate (which talks to the judge: in-process here) redoes just that candidate, to the same record
    monkeypatch.setattr(generate, "judge_transport", _in_process)
    summary = generate.run(ctx.exp, 1, 1, 2, progress=False)
    assert summary["records"] == 8
    assert records.read_text() == original
    recs = list(read_records(original, RewardRecord))
    assert len({(x.prompt_id, x.candidate_index) for x in recs}) == len(recs) == 8
    moved = _quarantined(root)
    assert any(m.startswith(f"judgments/shard-00001/items/{item.name}.") for m in moved), moved


def test_keep_checkpoints_keeps_the_newest_two(built, tmp_path):
    root, data, f, ctx = _copy(built, tmp_path)
    assert ctx.layout.completed_checkpoints() == [3, 4]
    files = {p.parent.name for p in (root / NAME / "round-1" / "checkpoints").rglob("*") if p.is_file()}
    assert files == {"step-0000003", "step-0000004"}
    assert [json.loads(line)["step"] for p in sorted((root / NAME / "round-1" / "train").glob("metrics-*"))
            for line in p.read_text().splitlines()] == [1, 2, 3, 4]      # the loss curve is kept whole


def test_a_damaged_last_checkpoint_falls_back_to_the_newest_good_one(built, tmp_path):
    root, data, f, ctx = _copy(built, tmp_path)
    want = load_checkpoint(ctx.layout, 4, parts=["model"])["model"]
    ctx.layout.unmark("train", 0)                          # as if the trainer died after saving step 4
    _flip(root / ctx.layout.checkpoint_prefix(4) / "model.pt", at=200)
    r = _stage("train", "--experiment", str(f))
    assert r.exit_code == 0, r.output
    assert "checkpoint step 4 is damaged" in r.output and "falling back to the one before" in r.output
    assert "resuming from checkpoint step 3" in r.output
    got = load_checkpoint(ctx.layout, 4, parts=["model"])["model"]
    for k in want:
        assert torch.equal(got[k], want[k]), k             # the same step 4, recomputed from step 3
    assert ctx.layout.completed_checkpoints() == [3, 4] and ctx.layout.shard_done("train", 0)
    assert any(m.startswith("checkpoints/step-0000004/model.pt.") for m in _quarantined(root))


def test_a_damaged_reward_index_stops_training_with_one_line_and_78(built, tmp_path):
    root, data, f, ctx = _copy(built, tmp_path)
    ctx.layout.unmark("train", 0)
    _flip(root / ctx.layout.rewards_index_key(1))
    r = _stage("train", "--experiment", str(f))
    assert r.exit_code == exitcodes.CONFIG_ERROR, r.output
    assert "Traceback" not in r.output and "error: storage: damaged data:" in r.output and "index.jsonl" in r.output


@pytest.mark.slow
def test_a_full_disk_under_torchrun_is_one_line_per_rank_and_74(built, tmp_path):
    """Real torchrun (2 workers, through the launcher) writing checkpoints into a full tmpfs."""
    from tests.test_storage_errors import needs_tmpfs  # noqa: F401 - the same availability check

    if not _tmpfs_ok():
        pytest.skip("no user namespaces to mount a tmpfs in")
    src, data, _, ctx = _copy(built, tmp_path)
    for sub in ("checkpoints", "train", "markers/train"):
        shutil.rmtree(src / NAME / "round-1" / sub, ignore_errors=True)
    mount = tmp_path / "disk"
    mount.mkdir()
    data["storage"]["root"] = f"file://{mount}"
    f = tmp_path / "full.json"
    f.write_text(json.dumps(data))
    size_kb = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) // 1024 + 512   # inputs + 0.5 MB
    script = (f'mount -t tmpfs -o size={size_kb}k tmpfs "$0" && cp -a "{src}/." "$0/" && "$@"; rc=$?; '
              'find "$0" -name ".*.tmp"; exit $rc')
    r = subprocess.run(["unshare", "-Urm", "sh", "-c", script, str(mount), sys.executable, "-m",
                        "srum_jobs.stages.launch", "--nproc-per-node=2", "--", "stage", "train", "--experiment", str(f),
                        "--round", "1", "--no-progress"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == exitcodes.NO_SPACE, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "ChildFailedError" not in r.stderr, r.stderr[-3000:]
    assert "no space left on the device" in r.stderr and "exited with 74 (disk full)" in r.stderr
    assert r.stdout.strip() == "", f"temp files left: {r.stdout}"


def _tmpfs_ok() -> bool:
    from tests.test_storage_errors import _userns_tmpfs_available

    return _userns_tmpfs_available()
