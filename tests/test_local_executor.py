"""Pieces of the local executor and the train stage that need no model: the lease and the data order."""

import json
import time

import pytest

from srum_jobs.local.executor import PRESETS, default_experiment
from srum_jobs.config import parse_experiment
from srum_jobs.stages.train import batch_indices
from srum_jobs.storage import Lease, LeaseHeld, LocalStore


def test_second_run_refuses_while_lease_is_held(tmp_path):
    store = LocalStore(tmp_path)
    first = Lease(store, "exp/lease.json")
    first.acquire()
    try:
        with pytest.raises(LeaseHeld, match="another run holds .*exp/lease.json"):
            Lease(store, "exp/lease.json").acquire()
    finally:
        first.release()
    again = Lease(store, "exp/lease.json")
    again.acquire()  # released: free again
    again.release()
    assert not store.exists("exp/lease.json")


def test_expired_lease_of_a_dead_run_is_taken_over(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("exp/lease.json", json.dumps({"holder": "dead:1:0", "expires_at": time.time() - 1}).encode())
    lease = Lease(store, "exp/lease.json")
    lease.acquire()
    assert json.loads(store.get_bytes("exp/lease.json"))["holder"] == lease.token
    lease.release()


def test_release_never_deletes_someone_elses_lease(tmp_path):
    store = LocalStore(tmp_path)
    mine = Lease(store, "exp/lease.json")
    mine.acquire()
    mine._stop.set()
    store.put_bytes("exp/lease.json", json.dumps({"holder": "other", "expires_at": time.time() + 60}).encode())
    mine.release()
    assert store.exists("exp/lease.json")


def test_data_order_is_a_resumable_function_of_position():
    n, seed = 10, 3
    full = [i for pos in range(0, 40, 4) for i in batch_indices(n, seed, pos, 4)]
    # every epoch is a permutation: each sample once per epoch
    assert sorted(full[:10]) == list(range(10)) and sorted(full[10:20]) == list(range(10))
    # resuming at any position gives the same continuation
    assert batch_indices(n, seed, 8, 4) == full[8:12]
    assert batch_indices(n, seed, 0, 4) != batch_indices(n, seed + 1, 0, 4)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_builtin_presets_are_valid_experiments(preset, tmp_path):
    exp = parse_experiment(default_experiment(preset, f"file://{tmp_path}"))
    assert exp.judge.url is None and exp.model.adapter == "toy"
