"""`InProcessTransport`: the JudgeTransport protocol over in-process backends (benches and tests).

The judging pipeline talks to a transport; this one calls a JudgeBackend and a BoxerBackend directly
instead of a Triton server. Images still travel as PNG bytes and are decoded and validated here by the
same code the Triton models use (judging/backends.py: decode_image, serve_judge_batch,
serve_boxer_batch), so what the pipeline sees is identical on both transports, bad requests included.

Backends are batched and run off the event loop: concurrent requests are queued, and one drain task per
backend hands up to `max_batch` waiting requests to the shared batch logic in one worker thread. So a
backend is never called from two threads at once (most models are not thread-safe), and many concurrent
judgments still become batches, as Triton's dynamic batcher would make them. A request whose image does
not decode fails alone; the rest of its batch is served.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .backends import BadRequest, BoxItem, JudgeItem, decode_image, decode_text, serve_boxer_batch, serve_judge_batch
from .protocols import BoxerBackend, BoxOptions, BoxProposal, JudgeBackend, JudgeParams, JudgeReply


@dataclass
class _Queue:
    """Requests waiting for one backend; a drain task empties it batch by batch."""

    pending: List[Tuple[Any, "asyncio.Future"]] = field(default_factory=list)   # (payload, future)
    drain: Optional["asyncio.Task"] = None


class InProcessTransport:
    """JudgeTransport over in-process backends, with request batching (see the module docstring)."""

    def __init__(self, judge_backend: JudgeBackend, boxer_backend: Optional[BoxerBackend] = None, *,
                 max_batch: int = 32, judge_name: Optional[str] = None, boxer_name: Optional[str] = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.judge_backend = judge_backend
        self.boxer_backend = boxer_backend
        self.max_batch = max_batch
        self._judge_name = judge_name or getattr(judge_backend, "name", type(judge_backend).__name__)
        self._boxer_name = boxer_name or (getattr(boxer_backend, "name", type(boxer_backend).__name__)
                                          if boxer_backend is not None else "")
        self._queues: Dict[str, _Queue] = {"judge": _Queue(), "boxer": _Queue()}
        self.batch_sizes: Dict[str, List[int]] = {"judge": [], "boxer": []}   # per backend call, for tests/benches

    # ---------------------------------------------------------------------------------- protocol
    async def judge(self, image_png: bytes, instruction: str, params: JudgeParams) -> JudgeReply:
        return await self._submit("judge", (image_png, instruction, params))

    async def propose_boxes(self, image_png: bytes, options: BoxOptions) -> BoxProposal:
        if self.boxer_backend is None:
            raise RuntimeError("this InProcessTransport has no boxer backend")
        return await self._submit("boxer", (image_png, options))

    def identity(self) -> Dict[str, str]:
        return {"judge_model": str(self._judge_name), "judge_version": "in-process",
                "boxer_model": str(self._boxer_name), "boxer_version": "in-process"}

    async def close(self) -> None:
        """Nothing to release; present so callers can close any transport the same way."""

    async def __aenter__(self) -> "InProcessTransport":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ---------------------------------------------------------------------------------- batching
    async def _submit(self, which: str, payload: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        q = self._queues[which]
        q.pending.append((payload, fut))
        if q.drain is None or q.drain.done():
            q.drain = loop.create_task(self._drain(which))
        return await fut

    async def _drain(self, which: str) -> None:
        q = self._queues[which]
        try:
            while q.pending:
                batch, q.pending = q.pending[: self.max_batch], q.pending[self.max_batch:]
                live = [(p, fut) for p, fut in batch if not fut.cancelled()]
                if not live:
                    continue
                try:
                    results = await asyncio.to_thread(self._run_batch, which, [p for p, _ in live])
                except Exception as e:  # noqa: BLE001 - a failed batch fails exactly its own requests
                    results = [e] * len(live)
                for (_, fut), res in zip(live, results):
                    if fut.done():
                        continue
                    if isinstance(res, BaseException):
                        fut.set_exception(res)
                    else:
                        fut.set_result(res)
        except BaseException as e:  # a cancelled loop must not leave callers waiting forever
            for _, fut in q.pending:
                if not fut.done():
                    fut.set_exception(RuntimeError(f"in-process {which} queue stopped: {e!r}"))
            q.pending = []
            raise

    def _run_batch(self, which: str, payloads: List[Any]) -> List[Any]:
        """Worker thread: validate and decode each request on its own, then the shared batch logic."""
        items: List[Any] = []
        for p in payloads:
            try:
                if which == "judge":
                    items.append(JudgeItem(decode_image(p[0]), decode_text(p[1]), p[2]))
                else:
                    items.append(BoxItem(decode_image(p[0]), p[1]))
            except BadRequest as e:
                items.append(e)
        self.batch_sizes[which].append(sum(not isinstance(it, BaseException) for it in items))
        if which == "judge":
            return serve_judge_batch(self.judge_backend, items, self.max_batch)
        return serve_boxer_batch(self.boxer_backend, items, self.max_batch)
