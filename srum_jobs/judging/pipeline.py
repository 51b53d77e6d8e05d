"""The judging pipeline: one candidate image + its prompt -> a RewardRecord; many candidates concurrently.

For one candidate:
  1. boxes from the boxer (`transport.propose_boxes`);
  2. drop unusable boxes (non-finite, inverted, empty after clamping, smaller than reward.min_region_area),
     keep the largest reward.max_regions by area;
  3. optional box verification (judge.verify_boxes, the paper's step): one `verify` question per box, over
     the largest max(reward.max_regions, judge.verify_candidates) boxes; the largest reward.max_regions
     confirmed ones are kept,
     a box the judge says shows no prompt object is dropped (an unreadable verification keeps the box:
     a confused verifier must not erase signal); with reward.score_unverified it is kept, judged like the
     others and recorded with verified=false, so artefacts (specks, stray objects) get their (negative)
     score instead of vanishing; with verification off this is the reference code's behaviour, top
     regions by area;
  4. one region-judgment request for the kept boxes and one global request (layout, or the whole-sample
     judgment for the ablation), sent concurrently;
  5. each parsed with retries (judge.parse_attempts; a re-ask appends a format reminder); after that a
     neutral default flagged parsed=false with the raw text (global: score 0.0; a region without a score:
     score None, which the reward map treats as background), so the training data can filter it.

Transport-agnostic: the same code judges over Triton gRPC and in-process (judging/inprocess.py).
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from typing import Any, AsyncIterable, Awaitable, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar, Union

import numpy as np

from ..config import JudgeConfig, RewardConfig
from ..records import Box, GlobalJudgment, Prompt, RegionJudgment, RewardRecord
from ..rewards import check_boxes
from ..storage import sha256_hex
from .parse import RegionsParse, parse_global, parse_regions, parse_sample, parse_verify
from .protocols import BoxOptions, BoxProposal, JudgeParams, JudgeTransport
from .templates import FORMAT_REMINDER, Templates, load_templates

T = TypeVar("T")

# The neutral global score recorded when the judge never gave a readable one (flagged parsed=false).
NEUTRAL_GLOBAL = 0.0


@dataclass(frozen=True)
class SelectedBox:
    """A box the pipeline judges: as proposed (for the record) and clamped to the image (for the judge)."""

    proposed: Tuple[float, float, float, float]
    clamped: Tuple[float, float, float, float]
    area: float
    confidence: Optional[float]


def _finite_or_none(x: Any) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def select_boxes(proposal: BoxProposal, width: int, height: int, max_regions: int,
                 min_area: float = 0.0) -> List[SelectedBox]:
    """Usable boxes, largest first, at most `max_regions`; `min_area` is a fraction of the image."""
    if max_regions <= 0:
        return []
    boxes = np.asarray(proposal.boxes, dtype=np.float64).reshape(-1, 4)
    checked = check_boxes(boxes, height, width)
    areas = np.asarray(proposal.areas, dtype=np.float64).reshape(-1)
    conf = np.asarray(proposal.confidence, dtype=np.float64).reshape(-1)
    out: List[SelectedBox] = []
    for px, i in zip(checked.pixels, checked.index):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        clamped = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
        # the boxer's area (a mask's pixel count for SAM) ranks regions; the box area stands in for it
        area = _finite_or_none(areas[i]) if i < len(areas) else None
        if area is None or area <= 0:
            area = (clamped[2] - clamped[0]) * (clamped[3] - clamped[1])
        if area < min_area * width * height:
            continue
        out.append(SelectedBox((x0, y0, x1, y1), clamped, area, _finite_or_none(conf[i]) if i < len(conf) else None))
    out.sort(key=lambda b: -b.area)  # stable: equal areas keep the boxer's order
    return out[:max_regions]


async def _limited(limiter: Optional[asyncio.Semaphore], call: Callable[..., Awaitable[T]], *args: Any) -> T:
    # the coroutine is created only once a slot is held: one cancelled while waiting is never created
    if limiter is None:
        return await call(*args)
    async with limiter:
        return await call(*args)


async def ask(transport: JudgeTransport, image_png: bytes, instruction: str, params: JudgeParams,
              parse_fn: Callable[[str], T], quality: Callable[[T], int], target: int, attempts: int,
              limiter: Optional[asyncio.Semaphore] = None) -> Tuple[T, str, int]:
    """Ask until the parse reaches `target` quality or `attempts` run out.

    Returns (the best parse, its raw text, attempts made). Re-asks carry a format reminder."""
    best: Optional[Tuple[T, str]] = None
    best_q = -1
    made = 0
    for a in range(1, max(1, attempts) + 1):
        made = a
        text = instruction if a == 1 else f"{instruction}\n\n{FORMAT_REMINDER}"
        reply = await _limited(limiter, transport.judge, image_png, text, params)
        result = parse_fn(reply.text)
        q = quality(result)
        if q > best_q:
            best, best_q = (result, reply.text), q
        if q >= target:
            break
    assert best is not None
    return best[0], best[1], made


async def _verify(transport: JudgeTransport, png: bytes, prompt: str, boxes: List[SelectedBox], width: int,
                  height: int, templates: Templates, params: JudgeParams, attempts: int,
                  limiter: Optional[asyncio.Semaphore]) -> List[Tuple[SelectedBox, Optional[str], bool]]:
    """(box, object noun, verified) for every box; unreadable verifications count as verified."""
    async def one(b: SelectedBox) -> Tuple[bool, Optional[str]]:
        res, _, _ = await ask(transport, png, templates.render_verify(prompt, b.clamped, width, height), params,
                              parse_verify, lambda r: int(r.parsed), 1, attempts, limiter)
        return (res.answer is not False), res.object   # unreadable: keep the box

    verdicts = await asyncio.gather(*(one(b) for b in boxes))
    return [(b, noun, keep) for b, (keep, noun) in zip(boxes, verdicts)]


async def judge_global(transport: JudgeTransport, image_png: bytes, prompt: str, judge: JudgeConfig, *,
                       reward: Optional[RewardConfig] = None, templates: Optional[Templates] = None,
                       kind: str = "global", width: Optional[int] = None, height: Optional[int] = None,
                       limiter: Optional[asyncio.Semaphore] = None) -> GlobalJudgment:
    """One global-layout (or, kind="sample", whole-image) judgment with retries; unreadable after
    judge.parse_attempts: score NEUTRAL_GLOBAL, parsed=False, the raw text kept."""
    if kind not in ("global", "sample"):
        raise ValueError(f"global judgment kind must be 'global' or 'sample', got {kind!r}")
    tpl = templates or load_templates(judge.templates_dir, reward)
    params = JudgeParams(max_new_tokens=judge.max_new_tokens, temperature=judge.temperature, think=judge.think)
    if kind == "global":
        instruction, parser = tpl.render_global(prompt, width, height), parse_global
    else:
        instruction, parser = tpl.render_sample(prompt, width, height), parse_sample
    g, raw, made = await ask(transport, image_png, instruction, params, parser, lambda r: int(r.parsed), 1,
                             judge.parse_attempts, limiter)
    return GlobalJudgment(score=g.score if g.parsed else NEUTRAL_GLOBAL, reason=g.reason, parsed=g.parsed,
                          clamped=g.clamped, attempts=made, raw=raw)


async def judge_candidate(transport: JudgeTransport, image_png: bytes, prompt: Prompt, *, candidate_index: int,
                          seed: int, image_key: str, width: int, height: int, judge: JudgeConfig,
                          reward: RewardConfig, image_sha256: Optional[str] = None,
                          templates: Optional[Templates] = None, global_kind: str = "global",
                          limiter: Optional[asyncio.Semaphore] = None,
                          think_text: Optional[str] = None) -> RewardRecord:
    """Boxes -> selection -> (verification) -> region + global judgments -> a RewardRecord.

    `global_kind` "sample" asks the whole-image judgment (the sample-level ablation baseline) instead of
    the layout one. `limiter` bounds the judge/boxer requests in flight (shared across candidates)."""
    if global_kind not in ("global", "sample"):
        raise ValueError(f"global_kind must be 'global' or 'sample', got {global_kind!r}")
    width, height = int(width), int(height)
    tpl = templates or load_templates(judge.templates_dir, reward)
    params = JudgeParams(max_new_tokens=judge.max_new_tokens, temperature=judge.temperature, think=judge.think)
    attempts = judge.parse_attempts

    selected: List[SelectedBox] = []
    n_proposed = 0
    # with verification, the judge may see more candidate boxes (judge.verify_candidates) than are kept
    n_candidates = max(reward.max_regions, judge.verify_candidates) if judge.verify_boxes else reward.max_regions
    if reward.max_regions > 0:
        options = BoxOptions(max_regions=n_candidates, min_area=reward.min_region_area)
        proposal = await _limited(limiter, transport.propose_boxes, image_png, options)
        n_proposed = int(np.asarray(proposal.boxes).reshape(-1, 4).shape[0])
        selected = select_boxes(proposal, width, height, n_candidates, reward.min_region_area)
    kept: List[Tuple[SelectedBox, Optional[str], Optional[bool]]]
    if judge.verify_boxes and selected:
        checked = await _verify(transport, image_png, prompt.text, selected, width, height, tpl, params, attempts,
                                limiter)
        kept = [k for k in checked if k[2] or reward.score_unverified][:reward.max_regions]
    else:
        kept = [(b, None, None) for b in selected]

    async def regions_job() -> Tuple[Optional[RegionsParse], str, int]:
        if not kept:
            return None, "", 1
        instruction = tpl.render_regions(prompt.text, [b.clamped for b, _, _ in kept], width, height)
        return await ask(transport, image_png, instruction, params, lambda t: parse_regions(t, len(kept)),
                         lambda r: r.scored, len(kept), attempts, limiter)

    (rparse, rraw, rattempts), global_judgment = await asyncio.gather(
        regions_job(), judge_global(transport, image_png, prompt.text, judge, reward=reward, templates=tpl,
                                    kind=global_kind, width=width, height=height, limiter=limiter))

    regions: List[RegionJudgment] = []
    for i, (b, noun, verified) in enumerate(kept, start=1):
        r = rparse.regions.get(i) if rparse is not None else None
        box = Box(x0=b.proposed[0], y0=b.proposed[1], x1=b.proposed[2], y1=b.proposed[3], area=b.area,
                  confidence=b.confidence)
        regions.append(RegionJudgment(region_id=i, box=box, object=(r.object if r and r.object else noun),
                                      score=None if r is None else r.score, parsed=r is not None,
                                      clamped=bool(r and r.clamped), verified=verified))
    ident = transport.identity()
    return RewardRecord(
        prompt_id=prompt.id, prompt=prompt.text, category=prompt.category, candidate_index=candidate_index,
        seed=seed, image_key=image_key, image_sha256=image_sha256 or sha256_hex(image_png), width=width,
        height=height, boxes_proposed=n_proposed, regions=regions, global_judgment=global_judgment,
        regions_parsed=(rparse is None or rparse.parsed), regions_attempts=rattempts, regions_raw=rraw,
        judge_model=str(ident.get("judge_model", "")), judge_version=str(ident.get("judge_version", "")),
        think_text=think_text)


# ------------------------------------------------------------------------------------------- many


@dataclass(frozen=True)
class CandidateItem:
    """One candidate to judge: its encoded image and identity."""

    image_png: bytes
    prompt: Prompt
    candidate_index: int
    seed: int
    image_key: str
    width: int
    height: int
    image_sha256: Optional[str] = None
    think_text: Optional[str] = None


async def _aiter(items: Union[Iterable[T], AsyncIterable[T]]):
    if hasattr(items, "__aiter__"):
        async for x in items:  # type: ignore[union-attr]
            yield x
    else:
        for x in items:  # type: ignore[union-attr]
            yield x


async def judge_many(transport: JudgeTransport, items: Union[Iterable[CandidateItem], AsyncIterable[CandidateItem]],
                     *, judge: JudgeConfig, reward: RewardConfig, templates: Optional[Templates] = None,
                     global_kind: str = "global",
                     on_result: Optional[Callable[[int, RewardRecord], Any]] = None) -> List[RewardRecord]:
    """Judge many candidates concurrently; records come back in input order.

    At most judge.max_in_flight requests are in flight at once (one semaphore around every boxer and
    judge call) and at most that many candidates are open, so `items` is consumed lazily (a generator
    or an async generator fed by image generation works). `on_result(index, record)` (sync or async) is
    called as each finishes, e.g. to write it to storage. The first failure cancels the rest and raises."""
    tpl = templates or load_templates(judge.templates_dir, reward)
    limiter = asyncio.Semaphore(judge.max_in_flight)
    open_slots = asyncio.Semaphore(judge.max_in_flight)
    results: Dict[int, RewardRecord] = {}
    tasks: set = set()
    errors: List[BaseException] = []

    async def run(index: int, item: CandidateItem) -> None:
        try:
            rec = await judge_candidate(transport, item.image_png, item.prompt, candidate_index=item.candidate_index,
                                        seed=item.seed, image_key=item.image_key, width=item.width,
                                        height=item.height, judge=judge, reward=reward,
                                        image_sha256=item.image_sha256, templates=tpl, global_kind=global_kind,
                                        limiter=limiter, think_text=item.think_text)
            results[index] = rec
            if on_result is not None:
                done = on_result(index, rec)
                if inspect.isawaitable(done):
                    await done
        except Exception as e:  # noqa: BLE001 - recorded here, raised once by judge_many
            errors.append(e)
        finally:
            open_slots.release()

    count = 0
    try:
        async for item in _aiter(items):
            await open_slots.acquire()
            if errors:
                raise errors[0]
            task = asyncio.ensure_future(run(count, item))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            count += 1
        while tasks and not errors:
            await asyncio.wait(list(tasks), return_when=asyncio.FIRST_COMPLETED)
        if errors:
            raise errors[0]
    finally:
        # on failure or cancellation: stop the candidates still open, and wait until they have stopped
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)
    return [results[i] for i in range(count)]
