"""Security checks that can run without a cluster (the threat model is SECURITY.md).

1. No credential is ever written to storage, to logs or to rendered manifests: every command and storage
   path runs with canary AWS credentials in the environment (moto's S3 server accepts any), then every
   output, log record, exception message, object key and object body is scanned for the canaries.
2. Storage keys cannot escape the experiment's prefix, whatever the key (prompt ids and experiment names
   come from outside).
3. Client-supplied attribution never forges or splits a judge-server log line.
Pod security, RBAC, the judge server's model-control mode and non-root images are asserted where those
objects are built (tests/test_cluster_builders.py, test_helm.py, test_cluster_k8s.py, test_docker.py).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import boto3
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from srum_jobs.cli import main
from srum_jobs.config import StorageConfig
from srum_jobs.judging.backends import attribution, batch_log_line
from srum_jobs.storage import (InvalidKey, LocalStore, NotFound, RunLayout, S3Store, StorageError, normalise_key,
                               open_store)
from srum_jobs.training.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BAGEL = ROOT / "examples" / "bagel-s3.yaml"

CANARIES = {
    "AWS_ACCESS_KEY_ID": "AKIACANARY0000000042",
    "AWS_SECRET_ACCESS_KEY": "canary/Secret+Access+Key/0123456789abcdef",
    "AWS_SESSION_TOKEN": "canary-session-token-7777777777",
}
SECRET, TOKEN = CANARIES["AWS_SECRET_ACCESS_KEY"], CANARIES["AWS_SESSION_TOKEN"]


@pytest.fixture
def canaries(monkeypatch, s3_endpoint):
    for k, v in CANARIES.items():
        monkeypatch.setenv(k, v)
    return s3_endpoint


def assert_clean(blob, where: str, canaries=tuple(CANARIES.values())) -> None:
    text = blob.decode("utf-8", "replace") if isinstance(blob, (bytes, bytearray)) else str(blob)
    for c in canaries:
        assert c not in text, f"credential {c[:12]}... leaked into {where}"
        # the secret, URL-encoded or JSON-escaped, is the same leak
        assert c.replace("/", "%2F").replace("+", "%2B") not in text and c.replace("/", "\\/") not in text, where


def _bucket_contents(endpoint: str, bucket: str):
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="reader", aws_secret_access_key="reader")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            got = s3.get_object(Bucket=bucket, Key=obj["Key"])
            yield obj["Key"], got["Body"].read(), got.get("Metadata", {})


# ------------------------------------------------------------------------------------------ 1: secrets


def test_commands_print_no_credentials(canaries, tmp_path):
    """What users paste into tickets and what CI logs keep: config, manifests, plans."""
    runner = CliRunner()
    exp = tmp_path / "exp.yaml"
    exp.write_text(BAGEL.read_text())
    outputs = {
        "config show": runner.invoke(main, ["config", "show", str(exp)]),
        "config show --json": runner.invoke(main, ["config", "show", "--json", str(exp)]),
        "config validate": runner.invoke(main, ["config", "validate", str(exp)]),
        "enqueue all --dry-run": runner.invoke(main, ["enqueue", "all", "-e", str(exp), "--dry-run"]),
        "plan --json": runner.invoke(main, ["plan", "-e", str(exp), "--gpus", "8", "--json"]),
    }
    for name, r in outputs.items():
        assert r.exit_code == 0, (name, r.output)
        assert_clean(r.output, f"`srum {name}`")
    manifests = outputs["enqueue all --dry-run"].output
    # the pods still get the credentials: the Secret's credentials file, mounted, never by value (issue 15)
    assert "AWS_SHARED_CREDENTIALS_FILE" in manifests and "secretName: srum-s3-credentials" in manifests


def test_storage_layer_writes_and_logs_no_credentials(canaries, s3_bucket, tmp_path, caplog, capfd):
    caplog.set_level(logging.INFO)       # stricter than srum's default (WARNING): INFO records are scanned too
    errors = []
    store = open_store(StorageConfig(root=f"s3://{s3_bucket}/exp-prefix", endpoint_url=canaries,
                                     multipart_threshold_mb=5))
    store.put_bytes("a/raw.bin", b"\x00\x01", checksum=True)
    store.put_json("a/obj.json", {"k": [1, 2]}, checksum=True)
    store.put_jsonl("a/rows.jsonl", [{"i": 1}, {"i": 2}], checksum=True)
    store.put_npy("a/arr.npy", [1.0, 2.0])
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom((5 << 20) + 17))
    store.put_file("a/big.bin", big)                                         # multipart
    assert store.create_exclusive("a/lease.json", b"{}")
    store.get_file("a/big.bin", tmp_path / "back.bin")
    assert store.list("a/") and store.is_complete("a/raw.bin")
    layout = RunLayout(store, "exp-sec")
    save_checkpoint(layout, 5, {"model": {"w": torch.ones(3)}})
    assert torch.equal(load_checkpoint(layout, 5)["model"]["w"], torch.ones(3))
    layout.mark_done("generate", 0, records=3)

    # failures: their messages are shown to users and land in pod logs
    for fn in (lambda: store.get_bytes("a/missing.bin"),
               lambda: open_store(StorageConfig(root="s3://no-such-bucket-sec", endpoint_url=canaries,
                                                max_attempts=1)).put_bytes("k", b"x"),
               lambda: open_store(StorageConfig(root="s3://b-dead", endpoint_url="http://127.0.0.1:9",
                                                max_attempts=1)).get_bytes("k")):
        with pytest.raises(StorageError) as err:
            fn()
        errors.append(str(err.value))

    # a prompt import through the CLI, to the same bucket
    src = tmp_path / "p.txt"
    src.write_text("a red cube\na blue ball\n")
    r = CliRunner().invoke(main, ["prompts", "import", str(src), f"s3://{s3_bucket}/exp-prefix/prompts/p.jsonl",
                                  "--endpoint-url", canaries])
    assert r.exit_code == 0, r.output

    seen = 0
    for key, body, meta in _bucket_contents(canaries, s3_bucket):
        assert_clean(key, f"object key {key}")
        assert_clean(body, f"object {key}")
        assert_clean(json.dumps(meta), f"metadata of {key}")
        seen += 1
    assert seen >= 15
    assert_clean("\n".join(errors), "storage error messages")
    assert_clean(caplog.text, "log records")
    assert_clean(r.output, "`srum prompts import` output")
    out, err = capfd.readouterr()
    assert_clean(out + err, "the process's stdout/stderr")


def test_local_store_writes_no_credentials(canaries, tmp_path):
    store = LocalStore(tmp_path / "root")
    layout = RunLayout(store, "exp-sec")
    save_checkpoint(layout, 1, {"model": {"w": torch.zeros(2)}})
    layout.mark_done("train", 0, final_step=1)
    store.put_json("x/env-shaped.json", {"region": os.environ.get("AWS_DEFAULT_REGION")})
    files = [p for p in (tmp_path / "root").rglob("*") if p.is_file()]
    assert len(files) >= 6
    for p in files:
        assert_clean(p.read_bytes(), str(p))


def test_debug_logging_never_shows_the_secret_key(canaries, s3_bucket, caplog):
    """Even at DEBUG, botocore signs with the secret and never logs it (the session token is kept out of DEBUG logs too: see below)."""
    caplog.set_level(logging.DEBUG)
    store = open_store(StorageConfig(root=f"s3://{s3_bucket}", endpoint_url=canaries))
    store.put_bytes("k.bin", b"x", checksum=True)
    store.get_bytes("k.bin", verify=True)
    assert any(r.levelno == logging.DEBUG and r.name.startswith("botocore") for r in caplog.records), \
        "botocore's DEBUG records were captured"
    assert_clean(caplog.text, "DEBUG log records", canaries=(SECRET,))


def test_debug_logging_never_shows_the_session_token(canaries, s3_bucket, caplog):
    caplog.set_level(logging.DEBUG)
    store = open_store(StorageConfig(root=f"s3://{s3_bucket}", endpoint_url=canaries))
    store.put_bytes("k.bin", b"x")
    assert_clean(caplog.text, "DEBUG log records", canaries=(TOKEN, CANARIES["AWS_ACCESS_KEY_ID"]))


# --------------------------------------------------------------------------- checkpoints are data, not code

EXECUTED: list = []


def _mark_executed(token: str) -> None:
    EXECUTED.append(token)


class _Payload:
    """What an attacker with write access to the run's storage could plant in a checkpoint part."""

    def __reduce__(self):
        return _mark_executed, ("code ran while loading a checkpoint",)


def test_a_poisoned_checkpoint_is_refused_without_running_code(tmp_path):
    import pickle

    layout = RunLayout(LocalStore(tmp_path / "root"), "exp-sec")
    save_checkpoint(layout, 3, {"model": {"w": torch.ones(2)}, "trainer": {"step": 3, "extra": _Payload()}})
    EXECUTED.clear()
    with pytest.raises((StorageError, pickle.UnpicklingError)):
        load_checkpoint(layout, 3)
    assert not EXECUTED, EXECUTED[0]


# ------------------------------------------------------------------------------------ 2: key containment

KEYS = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
# keys built from the pieces path tricks are made of (plain characters, dot-dot, encoded and look-alike slashes)
_KEY_PIECES = list("ab./\\~%$:*? \t\n\x00\u2024\uff0e\u2215") + ["..", "../", "/..", "%2e%2e", "%2f"]
key_text = st.lists(st.sampled_from(_KEY_PIECES), max_size=12).map("".join)


@KEYS
@given(key=key_text)
def test_local_keys_stay_under_the_root(tmp_path_factory, key):
    root = tmp_path_factory.mktemp("keys").resolve()      # fresh per example: "a" and "a/b" cannot both be files
    store = LocalStore(root)
    try:
        store.put_bytes(key, b"x")
    except InvalidKey:
        return
    path = (root / key).resolve()
    assert root in path.parents and path.read_bytes() == b"x"
    assert store.get_bytes(key) == b"x"


@functools.lru_cache(maxsize=None)
def _s3_store(prefix: str) -> S3Store:
    """No request is made: only the key mapping is under test (a boto3 client takes ~0.2 s to build)."""
    return S3Store(f"s3://bucket-sec/{prefix}", endpoint_url="http://127.0.0.1:9", max_attempts=1)


@KEYS
@given(key=key_text, prefix=st.sampled_from(["team-a", "team-a/exp", "t"]))
def test_s3_keys_stay_under_the_prefix(key, prefix):
    store = _s3_store(prefix)
    try:
        k = normalise_key(key)
    except InvalidKey:
        return
    full = store._k(k)
    assert full.startswith(prefix + "/") and full[len(prefix) + 1:] == key
    assert not {"", ".", ".."} & set(full.split("/")), full


@KEYS
@given(part=key_text, name=st.text(max_size=12))
def test_run_layout_keys_stay_in_the_experiment(tmp_path, part, name):
    """Prompt ids and experiment names come from files: a hostile one is refused, never followed."""
    store = LocalStore(tmp_path / "root")
    try:
        layout = RunLayout(store, name, round=2)
    except (InvalidKey, ValueError):
        return
    try:
        key = layout.key("candidates", part, "0.png")
    except InvalidKey:
        return
    assert key.startswith(f"{name}/round-2/")
    assert ".." not in key.split("/")


def test_experiments_sharing_a_bucket_do_not_see_each_other(s3_endpoint, s3_bucket):
    store = open_store(StorageConfig(root=f"s3://{s3_bucket}/teams", endpoint_url=s3_endpoint))
    a, b = RunLayout(store, "exp"), RunLayout(store, "exp-2")
    b.mark_done("generate", 0)
    store.put_json(b.checkpoint_prefix(7) + "manifest.json", {"step": 7}, checksum=True)
    assert a.stage_shards_done("generate") == [] and a.completed_checkpoints() == []
    assert b.stage_shards_done("generate") == [0] and b.completed_checkpoints() == [7]
    other = open_store(StorageConfig(root=f"s3://{s3_bucket}/teams-b", endpoint_url=s3_endpoint))
    assert other.list() == [], "a store never lists past its prefix into a sibling prefix"
    with pytest.raises(NotFound):
        other.get_bytes("exp-2/lease.json")


# ----------------------------------------------------------------------------- 3: judge log attribution


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(params=st.dictionaries(st.sampled_from(["experiment", "team", "other"]),
                              st.text(max_size=200) | st.integers() | st.none(), max_size=3))
def test_client_attribution_cannot_forge_log_lines(params):
    exp, team = attribution(params)
    line = batch_log_line("srum_judge", "1", [(exp, team)], [object()])
    assert "\n" not in line and "\r" not in line and line.isprintable()
    assert len(exp) <= 64 and len(team) <= 64 and " " not in exp + team and "=" not in exp + team
    assert line.count("[experiment=") == 1
