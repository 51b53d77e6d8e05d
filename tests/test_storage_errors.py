"""Storage that cannot be used: a silent S3 endpoint, bad credentials, a missing bucket, a read-only,
unwritable or full disk, and the lease that keeps two runs apart.

Each case goes through the real command where one exists and asserts the one line, the exit code, and
that nothing was lost, duplicated or left behind (temp files). The silent endpoint is a black-hole TCP
listener on loopback (it accepts and never answers); the full and read-only disks are real tmpfs mounts
in a user namespace where the kernel allows one (else those tests skip; a stand-in that raises ENOSPC
always runs).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from srum_jobs import entry, exitcodes
from srum_jobs.cli import main
from srum_jobs.config import ConfigError, StorageConfig, parse_experiment
from srum_jobs.layout import RunLayout
from srum_jobs.storage import (InvalidKey, Lease, LeaseHeld, LeaseLost, LocalStore, NoSpace, StorageUnavailable,
                               open_store)

ROOT = Path(__file__).resolve().parents[1]


def _exp_file(tmp_path: Path, storage: dict, name: str = "exp.yaml") -> Path:
    data = {"name": "store-test", "storage": storage, "judge": {"url": "127.0.0.1:1"},
            "model": {"params": {"preset": "test"}}, "prompts": {"limit": 2}}
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _one_line(output: str, *needles: str) -> None:
    assert "Traceback" not in output, output
    assert any(line.startswith("error: ") for line in output.splitlines()), output
    for n in needles:
        assert n in output, (n, output)


# ---------------------------------------------------------------------------------- silent endpoint

class BlackHole:
    """A TCP listener on loopback that accepts connections and never sends a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.conns = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def black_hole(monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    hole = BlackHole()
    yield hole
    hole.close()


@pytest.mark.parametrize("command", ["run", "stage"])
def test_a_silent_s3_endpoint_is_named_within_the_probe_timeout(tmp_path, black_hole, command):
    f = _exp_file(tmp_path, {"root": "s3://silent-bucket/runs", "endpoint_url": black_hole.url,
                             "probe_timeout_s": 1.0})
    args = ["run", str(f), "--stages", "rewards"] if command == "run" else ["stage", "rewards", "--experiment", str(f)]
    t0 = time.perf_counter()
    r = CliRunner().invoke(main, args)
    took = time.perf_counter() - t0
    assert r.exit_code == exitcodes.TEMPORARY, r.output
    _one_line(r.output, f"S3 endpoint {black_hole.url} does not answer", "within 1 s")
    assert black_hole.accepted >= 1 and took < 15, took


def test_every_s3_call_is_bounded_by_attempts_times_timeout(black_hole):
    store = open_store(StorageConfig(root="s3://silent-bucket", endpoint_url=black_hole.url, timeout_s=0.5,
                                     max_attempts=2))
    t0 = time.perf_counter()
    with pytest.raises(StorageUnavailable, match=rf"s3://silent-bucket/a/b.json: S3 endpoint {black_hole.url} does "
                                                 r"not answer \(no reply within 0.5 s, 2 attempt\(s\)\)"):
        store.get_bytes("a/b.json")
    # 2 attempts x 0.5 s + botocore's backoff (at most 1 s before the second attempt) + slack for a loaded machine
    assert time.perf_counter() - t0 < 6
    assert entry.classify(StorageUnavailable("x"))[0] == exitcodes.TEMPORARY


def test_missing_credentials_and_missing_bucket_are_permanent(tmp_path, s3_endpoint, s3_bucket, monkeypatch):
    f = _exp_file(tmp_path, {"root": "s3://no-such-bucket-entry/p", "endpoint_url": s3_endpoint, "max_attempts": 1})
    r = CliRunner().invoke(main, ["stage", "rewards", "--experiment", str(f)])
    assert r.exit_code == exitcodes.CONFIG_ERROR, r.output
    _one_line(r.output, "bucket 'no-such-bucket-entry' does not exist")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    f = _exp_file(tmp_path, {"root": f"s3://{s3_bucket}/p", "endpoint_url": s3_endpoint, "max_attempts": 1})
    r = CliRunner().invoke(main, ["stage", "rewards", "--experiment", str(f)])
    assert r.exit_code == exitcodes.CONFIG_ERROR, r.output
    _one_line(r.output, "no S3 credentials")


# ------------------------------------------------------------------------------------ local disks

def test_a_failed_write_leaves_no_temp_file_and_keeps_the_old_object(tmp_path, monkeypatch):
    """Stand-in for a full disk at the moment of writing: fsync reports ENOSPC."""
    store = LocalStore(tmp_path / "root")
    store.put_bytes("a/obj.json", b"version 1")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(NoSpace, match=r"cannot write file://.*/a/obj.json: no space left on the device"):
        store.put_bytes("a/obj.json", b"version 2")
    monkeypatch.undo()

    def link_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "link", link_full)
    with pytest.raises(NoSpace, match="cannot create"):
        store.create_exclusive("a/lock", b"x")          # the lock's temp file goes too
    monkeypatch.undo()
    assert store.get_bytes("a/obj.json") == b"version 1"
    assert sorted(p.name for p in (tmp_path / "root" / "a").iterdir()) == ["obj.json"]
    assert entry.classify(NoSpace("x"))[0] == exitcodes.NO_SPACE


def test_temp_files_of_killed_writers_are_swept_under_the_lease(tmp_path):
    store = LocalStore(tmp_path / "root")
    store.put_bytes("exp/round-1/x.json", b"{}")
    leftover = tmp_path / "root" / "exp" / "round-1" / ".x.json.abc123.tmp"
    leftover.write_bytes(b"half")
    other = tmp_path / "root" / "other-exp" / ".y.json.zz.tmp"
    other.parent.mkdir()
    other.write_bytes(b"another experiment's in-flight write")
    assert store.sweep_temp("exp") == 1
    assert not leftover.exists() and other.exists() and store.get_bytes("exp/round-1/x.json") == b"{}"


def test_file_roots_refuse_dotdot_like_s3_prefixes(tmp_path):
    with pytest.raises(InvalidKey, match=r"contains '\.\.'"):
        LocalStore(str(tmp_path / "a" / ".." / "b"))
    with pytest.raises(ConfigError, match=r"storage.root: Value error, a file:// root may not contain '\.\.'"):
        parse_experiment({"name": "x", "storage": {"root": "file://runs/../elsewhere"}}, "e.yaml")
    with pytest.raises(InvalidKey):
        open_store("s3://bucket/a/../b", endpoint_url="http://127.0.0.1:9")


def _userns_tmpfs_available() -> bool:
    try:
        return subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_tmpfs = pytest.mark.skipif(not _userns_tmpfs_available(), reason="no user namespaces to mount a tmpfs in")


def _in_tmpfs(mount: Path, options: str, argv: list, after: str = "") -> subprocess.CompletedProcess:
    """Run argv with a fresh tmpfs mounted at `mount` (only this process tree sees it)."""
    script = f'mount -t tmpfs -o {options} tmpfs "$0" && "$@"; rc=$?; {after} exit $rc'
    return subprocess.run(["unshare", "-Urm", "sh", "-c", script, str(mount), *argv], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


@needs_tmpfs
def test_a_full_disk_is_one_line_and_74_with_no_temp_file_left(tmp_path):
    src = tmp_path / "prompts.txt"
    src.write_text("".join(f"a red cube number {i} beside a blue ball\n" for i in range(3000)))
    mount = tmp_path / "small"
    mount.mkdir()
    r = _in_tmpfs(mount, "size=32k", [sys.executable, "-m", "srum_jobs.cli", "prompts", "import", str(src),
                                      f"file://{mount}/store/p.jsonl"], after=f'ls -A "{mount}/store";')
    assert r.returncode == exitcodes.NO_SPACE, r.stderr
    _one_line(r.stderr, f"cannot write file://{mount}/store/p.jsonl: no space left on the device")
    assert r.stdout.strip() == "", f"left in the full disk: {r.stdout}"     # no .tmp, no half object


@needs_tmpfs
@pytest.mark.parametrize("command", ["validate", "stage"])
def test_a_read_only_root_is_refused_before_any_work(tmp_path, command):
    mount = tmp_path / "ro"
    mount.mkdir()
    f = _exp_file(tmp_path, {"root": f"file://{mount}/runs"})
    args = ["config", "validate", str(f)] if command == "validate" else ["stage", "rewards", "--experiment", str(f)]
    r = _in_tmpfs(mount, "ro,size=64k", [sys.executable, "-m", "srum_jobs.cli", *args])
    assert r.returncode == exitcodes.CONFIG_ERROR, r.stderr
    _one_line(r.stderr, "read-only file system")


def _without_permission_override() -> list:
    """A command prefix under which file permissions hold. Root bypasses them through two capabilities;
    dropping those (and staying root) keeps the checkout readable wherever it is cloned, which running as
    another user (nobody) does not: a clone in a private folder (mktemp -d) is unreadable to it."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: permissions are not enforced for root")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]


@pytest.mark.parametrize("command", ["validate", "stage"])
def test_an_unwritable_root_is_refused_before_any_work(tmp_path, command):
    prefix = _without_permission_override()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    f = _exp_file(tmp_path, {"root": f"file://{locked}/runs"})
    args = ["config", "validate", str(f)] if command == "validate" else ["stage", "rewards", "--experiment", str(f)]
    r = subprocess.run(prefix + [sys.executable, "-m", "srum_jobs.cli", *args], capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=dict(os.environ, HOME=str(tmp_path)))
    assert r.returncode == exitcodes.CONFIG_ERROR, r.stderr
    _one_line(r.stderr, "cannot be created", "is not writable by this user")
    assert not (locked / "runs").exists()


# ------------------------------------------------------------------------------------------- lease

def test_lease_renewal_survives_failed_writes(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    warnings = []
    monkeypatch.setattr(Lease, "TTL_S", 0.6)
    lease = Lease(store, "exp/lease.json", warn=warnings.append)
    lease.acquire()
    real_put, failures = store.put_bytes, {"left": 2}

    def flaky(key, data, **kw):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise StorageUnavailable("endpoint hiccup")
        return real_put(key, data, **kw)

    monkeypatch.setattr(store, "put_bytes", flaky)
    first = json.loads(store.get_bytes("exp/lease.json"))["expires_at"]
    deadline = time.time() + 10
    while time.time() < deadline and json.loads(store.get_bytes("exp/lease.json"))["expires_at"] == first:
        time.sleep(0.05)
    assert failures["left"] == 0 and lease._thread.is_alive(), "the renewal thread died on a failed write"
    assert json.loads(store.get_bytes("exp/lease.json"))["expires_at"] > first, "never renewed after the failures"
    assert any("cannot renew the lease" in w for w in warnings)
    lease.release()
    assert not store.exists("exp/lease.json")


def test_the_lease_of_a_process_that_is_gone_is_taken_over_at_once(tmp_path):
    store = LocalStore(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    held = {"holder": f"{socket.gethostname()}:{dead.pid}:0", "expires_at": time.time() + 60}
    store.put_bytes("exp/lease.json", json.dumps(held).encode())
    lease = Lease(store, "exp/lease.json")
    lease.acquire()
    try:
        assert lease.took_over and f":{dead.pid}:" in lease.took_over and "process gone" in lease.took_over
    finally:
        lease.release()
    # a live holder (this process, another token) is respected until it expires
    store.put_bytes("exp/lease.json", json.dumps({"holder": f"{socket.gethostname()}:{os.getpid()}:1",
                                                  "expires_at": time.time() + 60}).encode())
    with pytest.raises(LeaseHeld, match="another run holds"):
        Lease(store, "exp/lease.json").acquire()


def test_a_writer_whose_lease_was_taken_over_commits_nothing(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    mine = Lease(store, "exp/lease.json")
    mine.acquire()
    mine._stop.set()
    monkeypatch.setenv("SRUM_LEASE", f"exp/lease.json {mine.token}")
    layout = RunLayout(store, "exp", 1, before_commit=Lease.from_env(store).check)
    layout.mark_done("generate", 0, records=1)            # still ours: committed
    store.put_bytes("exp/lease.json", json.dumps({"holder": "rerun:2:3", "expires_at": time.time() + 60}).encode())
    with pytest.raises(LeaseLost, match="no longer holds .*now: rerun:2:3"):
        layout.mark_done("generate", 1, records=1)
    assert layout.stage_shards_done("generate") == [0]
    assert entry.classify(LeaseLost("x"))[0] == exitcodes.LOCKED
    mine.release()                                         # never deletes the new holder's lease
    assert json.loads(store.get_bytes("exp/lease.json"))["holder"] == "rerun:2:3"


# -------------------------------------------------------------------------------------- quarantine

@pytest.mark.parametrize("backend", ["file", "s3"])
def test_quarantine_moves_an_object_and_its_sidecar_aside(tmp_path, backend, request):
    if backend == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        store = open_store(StorageConfig(root=f"s3://{bucket}/q", endpoint_url=request.getfixturevalue("s3_endpoint")))
    else:
        store = LocalStore(tmp_path)
    layout = RunLayout(store, "exp", 1)
    key = layout.key("judgments", "shard-00000", "records.jsonl")
    store.put_bytes(key, b"damaged", checksum=True)
    moved = layout.quarantine(key, "checksum does not hold")
    assert moved.startswith("exp/round-1/quarantine/judgments/shard-00000/records.jsonl.")
    assert not store.exists(key) and not store.exists(key + ".sha256")
    assert store.get_bytes(moved) == b"damaged" and store.is_complete(moved)
    assert store.get_text(moved + ".why") == "checksum does not hold\n"
