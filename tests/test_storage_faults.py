"""Object-storage faults on the wire: throttling (503 SlowDown) and connections cut mid-upload.

A loopback proxy (tests/faultproxy.py) sits between the S3 store and moto's real HTTP server and injects
the faults, so the retries under test are botocore's and s3transfer's own, exactly as they run against S3.
Checkpoints must be complete or invisible: an upload cut off is never listed as complete nor loaded, and
saving again completes it.

Timing: botocore's standard mode sleeps a random 0..2^(n-1) s before retry n, so a test that needs k
retries waits up to 2^k - 1 s; every test keeps k <= 2.
"""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
import torch

from srum_jobs.config import StorageConfig
from srum_jobs.layout import RunLayout
from srum_jobs.storage import ChecksumMismatch, NotFound, StorageError, open_store
from srum_jobs.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tests.faultproxy import FaultProxy, key_endswith, part_upload

pytestmark = pytest.mark.timeout(60)

BIG_PART_ELEMENTS = 17_000_000      # float32: 68 MB, above save_checkpoint's 64 MB streaming threshold


@pytest.fixture
def proxy(s3_endpoint):
    with FaultProxy(s3_endpoint) as p:
        yield p


def _store(bucket: str, proxy: FaultProxy, **kw):
    return open_store(StorageConfig(root=f"s3://{bucket}/team-a", endpoint_url=proxy.url, **kw))


def _direct_client(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


# ----------------------------------------------------------------------------------------- throttling


def test_writes_and_reads_retry_through_slowdown(proxy, s3_bucket):
    store = _store(s3_bucket, proxy, max_attempts=3)
    proxy.throttle(2)
    store.put_bytes("a/obj.bin", b"payload", checksum=True)
    proxy.throttle(1)
    assert store.get_bytes("a/obj.bin", verify=True) == b"payload"
    proxy.throttle(1)
    assert store.list("a/") == ["a/obj.bin"]
    proxy.throttle(1)
    assert store.is_complete("a/obj.bin")

    throttled = proxy.entries("throttle")
    assert len(throttled) == 5, "every injected 503 reached the client"
    put_obj = [e for e in proxy.log if e.method == "PUT" and e.path.endswith("/a/obj.bin")]
    # the same PUT, answered 503 twice, then forwarded and stored
    assert [e.action for e in put_obj] == ["throttle", "throttle", "forward"] and put_obj[-1].status == 200


def test_lease_creation_retries_through_slowdown(proxy, s3_bucket):
    """The lease that keeps two runs apart is a conditional PUT: throttling must not turn into 'taken'."""
    store = _store(s3_bucket, proxy, max_attempts=3)
    proxy.throttle(2)
    assert store.create_exclusive("exp/lease.json", b"run-1")
    assert not store.create_exclusive("exp/lease.json", b"run-2")
    assert store.get_bytes("exp/lease.json") == b"run-1"


def test_multipart_part_retries_through_slowdown(proxy, s3_bucket, tmp_path, s3_endpoint):
    store = _store(s3_bucket, proxy, max_attempts=3, multipart_threshold_mb=5)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 << 20))        # 2 parts of 8 MB
    proxy.throttle(1, part_upload)
    store.put_file("ckpt/big.bin", src)
    assert len(proxy.entries("throttle", part_upload)) == 1
    assert store.get_bytes("ckpt/big.bin", verify=True) == src.read_bytes()
    head = _direct_client(s3_endpoint).head_object(Bucket=s3_bucket, Key="team-a/ckpt/big.bin")
    assert head["ETag"].endswith('-2"'), "uploaded in two parts"


def test_persistent_slowdown_fails_with_the_uri(proxy, s3_bucket):
    store = _store(s3_bucket, proxy, max_attempts=1)
    proxy.throttle(100)
    with pytest.raises(StorageError) as err:
        store.put_bytes("a/never.bin", b"x")
    assert "s3://" in str(err.value) and "a/never.bin" in str(err.value) and "SlowDown" in str(err.value)
    proxy.clear()
    assert not store.exists("a/never.bin")


def test_max_attempts_bounds_total_requests(proxy, s3_bucket):
    store = _store(s3_bucket, proxy, max_attempts=2)
    proxy.throttle(100)
    with pytest.raises(StorageError):
        store.put_bytes("a/x.bin", b"x")
    assert len(proxy.entries("throttle")) == 2


# ------------------------------------------------------------------------------ cut-off checkpoints


def _parts(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(BIG_PART_ELEMENTS, generator=g)},
            "optimizer": {"step": torch.tensor(seed), "exp_avg": torch.randn(16, generator=g)}}


def test_dropped_part_upload_is_retried_and_checkpoint_completes(proxy, s3_bucket, tmp_path):
    layout = RunLayout(_store(s3_bucket, proxy, max_attempts=3), "exp-faults")
    parts = _parts(1)
    proxy.drop(1, part_upload)
    save_checkpoint(layout, 10, parts, scratch=tmp_path)
    dropped = proxy.entries("drop", part_upload)
    assert len(dropped) == 1, "the connection was cut during a multipart part"
    part_no = dropped[0].query
    assert any(e.action == "forward" and e.query == part_no for e in proxy.log), "the same part was re-sent"
    assert layout.completed_checkpoints() == [10]
    back = load_checkpoint(layout, 10)
    assert torch.equal(back["model"]["w"], parts["model"]["w"])


def test_cut_off_checkpoint_is_never_listed_nor_loaded(proxy, s3_bucket, tmp_path, s3_endpoint):
    layout = RunLayout(_store(s3_bucket, proxy, max_attempts=1), "exp-faults")
    save_checkpoint(layout, 10, {"model": {"w": torch.ones(4)}})          # an earlier complete checkpoint
    proxy.drop(1000, part_upload)                                          # every part of step 20 is cut off
    with pytest.raises(StorageError, match="model.pt"):
        save_checkpoint(layout, 20, _parts(2), scratch=tmp_path)
    assert proxy.entries("drop", part_upload)
    proxy.clear()

    assert layout.completed_checkpoints() == [10]
    assert latest_checkpoint(layout) == 10, "a resume takes the last complete checkpoint"
    with pytest.raises(NotFound):
        load_checkpoint(layout, 20)
    # s3transfer aborted the multipart upload: no parts left behind to be billed or mistaken for data
    assert not _direct_client(s3_endpoint).list_multipart_uploads(Bucket=s3_bucket).get("Uploads")

    parts = _parts(3)
    save_checkpoint(layout, 20, parts, scratch=tmp_path)                  # the retried save completes
    assert layout.completed_checkpoints() == [10, 20]
    assert torch.equal(load_checkpoint(layout, 20)["model"]["w"], parts["model"]["w"])


def test_checkpoint_cut_off_before_its_manifest_sidecar_is_invisible(proxy, s3_bucket):
    """The last write of a checkpoint is the manifest's sidecar; cut exactly there, the manifest and every
    part exist, yet the checkpoint is neither listed nor loaded."""
    store = _store(s3_bucket, proxy, max_attempts=1)
    layout = RunLayout(store, "exp-faults")
    sidecar = key_endswith("/manifest.json.sha256", "PUT")
    proxy.drop(1000, sidecar)
    with pytest.raises(StorageError, match="manifest.json.sha256"):
        save_checkpoint(layout, 30, {"model": {"w": torch.arange(5.0)}})
    proxy.clear()
    assert store.exists(layout.checkpoint_prefix(30) + "manifest.json")
    assert store.exists(layout.checkpoint_prefix(30) + "model.pt")
    assert layout.completed_checkpoints() == []
    with pytest.raises(ChecksumMismatch, match="not completely written"):
        load_checkpoint(layout, 30)
    save_checkpoint(layout, 30, {"model": {"w": torch.arange(5.0)}})
    assert layout.completed_checkpoints() == [30]


def test_checkpoint_save_retries_through_slowdown(proxy, s3_bucket):
    layout = RunLayout(_store(s3_bucket, proxy, max_attempts=3), "exp-faults")
    proxy.throttle(2, key_endswith("/model.pt", "PUT"))
    proxy.throttle(1, key_endswith("/manifest.json.sha256", "PUT"))
    save_checkpoint(layout, 40, {"model": {"w": torch.arange(7.0)}})
    assert len(proxy.entries("throttle")) == 3
    assert layout.completed_checkpoints() == [40]
    assert torch.equal(load_checkpoint(layout, 40)["model"]["w"], torch.arange(7.0))


def test_proxy_forwards_unchanged_without_rules(proxy, s3_bucket, tmp_path):
    """The proxy itself must not be what makes the fault tests pass: with no rules, nothing is altered."""
    store = _store(s3_bucket, proxy, multipart_threshold_mb=5)
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom((5 << 20) + 123))
    store.put_file("x/f.bin", src)
    out = store.get_file("x/f.bin", tmp_path / "back.bin")
    assert Path(out).read_bytes() == src.read_bytes()
    assert proxy.log and all(e.action == "forward" for e in proxy.log)
