"""A generate stage stopped (Ctrl-C, SIGTERM) while its generator thread is inside a batch: the thread
finds the event loop gone and ends quietly, without a traceback in the run's log."""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from types import SimpleNamespace

import pytest

from srum_jobs.stages import generate


class SlowModel:
    supports_think = False

    def __init__(self) -> None:
        self.calls = 0

    def generate(self, prompts, seeds, **kw):
        self.calls += 1
        time.sleep(0.4)
        return [None] * len(prompts)


def test_a_stop_during_a_batch_ends_the_generator_thread_quietly(monkeypatch):
    errors = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    ctx = SimpleNamespace(round=1, exp=SimpleNamespace(
        generation=SimpleNamespace(batch_size=1, seed=0, think=False, steps=1, guidance=1.0, resolution=8),
        judge=SimpleNamespace(max_in_flight=1)))
    todo = [(SimpleNamespace(index=i, text="a red circle"), 0) for i in range(3)]
    model = SlowModel()

    async def stopped_while_generating() -> None:
        asyncio.get_running_loop().create_task(generate._generate_and_judge(ctx, 0, todo, model, None, None))
        await asyncio.sleep(0.1)           # the generator thread is inside its first batch now
        raise KeyboardInterrupt            # what the stop signal's handler raises in the main thread

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)      # e.g. a coroutine created and never awaited
        with pytest.raises(KeyboardInterrupt):
            asyncio.run(stopped_while_generating())
        deadline = time.time() + 5
        while any(t.name == "srum-generate" for t in threading.enumerate()) and time.time() < deadline:
            time.sleep(0.05)
    assert not any(t.name == "srum-generate" for t in threading.enumerate())
    assert errors == [] and model.calls == 1
