import os
import threading

import numpy as np
import pytest
from PIL import Image

from srum_jobs.config import StorageConfig
from srum_jobs.layout import RunLayout
from srum_jobs.storage import (ChecksumMismatch, InvalidKey, LocalStore, NotFound, StorageError, normalise_key, open_store)


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return open_store(f"file://{tmp_path}/root")
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(StorageConfig(root=f"s3://{bucket}/exp-prefix", endpoint_url=endpoint))


def test_bytes_json_jsonl_npy_png_round_trip(store):
    assert store.put_bytes("a/b.bin", b"\x00\x01") == __import__("hashlib").sha256(b"\x00\x01").hexdigest()
    assert store.get_bytes("a/b.bin") == b"\x00\x01"
    store.put_json("a/c.json", {"x": [1, 2]})
    assert store.get_json("a/c.json") == {"x": [1, 2]}
    store.put_jsonl("a/d.jsonl", [{"i": 1}, {"i": 2}])
    assert store.get_text("a/d.jsonl") == '{"i": 1}\n{"i": 2}\n'
    arr = np.arange(12, dtype=np.float16).reshape(3, 4)
    store.put_npy("maps/m.npy", arr)
    np.testing.assert_array_equal(store.get_npy("maps/m.npy"), arr)
    img = Image.new("RGB", (8, 6), (255, 0, 0))
    store.put_png("img/x.png", img)
    back = store.get_png("img/x.png")
    assert back.size == (8, 6) and back.getpixel((3, 3)) == (255, 0, 0)
    assert store.exists("a/c.json") and not store.exists("a/zzz.json")
    assert store.list("a/") == ["a/b.bin", "a/c.json", "a/d.jsonl"]
    assert store.list("maps/") == ["maps/m.npy"]  # sidecar hidden
    store.delete("maps/m.npy")
    assert store.list("maps/") == [] and not store.exists("maps/m.npy.sha256")


def test_missing_object_names_the_uri(store):
    with pytest.raises(NotFound) as err:
        store.get_bytes("nope/x.json")
    assert store.uri_for("nope/x.json") in str(err.value)


def test_checksum_catches_corruption(store):
    store.put_npy("maps/m.npy", np.ones(4))
    store._put("maps/m.npy", store.get_bytes("maps/m.npy")[:-1] + b"\x07")  # corrupt behind the API's back
    with pytest.raises(ChecksumMismatch, match="corrupt"):
        store.get_npy("maps/m.npy")
    store._put("half/ckpt.pt", b"partial")  # written but no sidecar: never read as complete
    assert not store.is_complete("half/ckpt.pt")
    with pytest.raises(ChecksumMismatch, match="not completely written"):
        store.get_bytes("half/ckpt.pt", verify=True)


def test_exclusive_create(store):
    assert store.create_exclusive("lease.json", b"me")
    assert not store.create_exclusive("lease.json", b"you")
    assert store.get_bytes("lease.json") == b"me"


def test_files_round_trip_with_checksum(store, tmp_path):
    src = tmp_path / "ckpt.bin"
    src.write_bytes(os.urandom(300_000))
    store.put_file("ckpt/model.bin", src)
    out = store.get_file("ckpt/model.bin", tmp_path / "out" / "model.bin")
    assert out.read_bytes() == src.read_bytes() and store.is_complete("ckpt/model.bin")


def test_s3_multipart_upload(s3_endpoint, s3_bucket, tmp_path):
    store = open_store(StorageConfig(root=f"s3://{s3_bucket}", endpoint_url=s3_endpoint, multipart_threshold_mb=5))
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 << 20))
    store.put_file("ckpt/big.bin", src)
    head = store.client.head_object(Bucket=s3_bucket, Key="ckpt/big.bin")
    assert "-" in head["ETag"]  # a multipart ETag: "<md5>-<parts>"
    assert store.get_file("ckpt/big.bin", tmp_path / "back.bin").read_bytes() == src.read_bytes()


def test_s3_errors_are_clear(s3_endpoint):
    store = open_store(StorageConfig(root="s3://no-such-bucket-xyz", endpoint_url=s3_endpoint, max_attempts=1))
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-xyz' does not exist"):
        store.put_bytes("k", b"x")
    dead = open_store(StorageConfig(root="s3://b-dead", endpoint_url="http://127.0.0.1:9", max_attempts=1))
    with pytest.raises(StorageError, match="s3://b-dead/k"):
        dead.get_bytes("k")


def test_s3_bad_credentials(s3_endpoint, s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_store(StorageConfig(root=f"s3://{s3_bucket}", endpoint_url=s3_endpoint, max_attempts=1))
    with pytest.raises(StorageError, match="no S3 credentials"):
        store.get_bytes("k")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "../x", "a//b", "a/./b", "a\\b", "a\x00b", "a/"])
def test_bad_keys_rejected(key, tmp_path):
    with pytest.raises(InvalidKey):
        normalise_key(key)
    with pytest.raises(InvalidKey):
        LocalStore(tmp_path).put_bytes(key, b"x")


def test_symlink_escape_rejected(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "out").symlink_to(tmp_path)
    with pytest.raises(InvalidKey, match="outside"):
        LocalStore(root).put_bytes("out/evil", b"x")


def test_local_writes_are_atomic(tmp_path):
    store = LocalStore(tmp_path)
    big = b"x" * (4 << 20)
    seen = []

    def reader():
        for _ in range(200):
            try:
                seen.append(len(store.get_bytes("f.bin")))
            except NotFound:
                pass

    store.put_bytes("f.bin", b"y" * 10)
    t = threading.Thread(target=reader)
    t.start()
    for _ in range(10):
        store.put_bytes("f.bin", big)
        store.put_bytes("f.bin", b"y" * 10)
    t.join()
    assert set(seen) <= {10, len(big)}  # never a partial file


def test_open_store_rejects_unknown_scheme():
    with pytest.raises(StorageError, match="unsupported"):
        open_store("gs://bucket")


def test_run_layout_markers_and_checkpoints(store):
    layout = RunLayout(store, "exp-1", round=2)
    assert layout.prompts_key == "exp-1/round-2/prompts/prompts.jsonl"
    assert layout.shard_prefix("candidates", 3) == "exp-1/round-2/candidates/shard-00003/"
    assert not layout.shard_done("generate", 0)
    layout.mark_done("generate", 1, records=5)
    layout.mark_done("generate", 0, records=4)
    assert layout.stage_shards_done("generate") == [0, 1] and layout.marker("generate", 1)["records"] == 5
    store.put_json(layout.checkpoint_prefix(10) + "manifest.json", {"step": 10}, checksum=True)
    store.put_json(layout.checkpoint_prefix(20) + "manifest.json", {"step": 20})  # incomplete: no sidecar
    assert layout.completed_checkpoints() == [10]
    with pytest.raises(ValueError):
        layout.marker_key("nonsense")
    with pytest.raises(InvalidKey):
        RunLayout(store, "../escape")
