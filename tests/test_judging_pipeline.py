"""The judging pipeline with scripted test-double backends, through InProcessTransport (and a counting
transport for the concurrency bound). No model, no server: the doubles answer by reading the
instruction lines of the contract, as the toy understanding model does."""

from __future__ import annotations

import asyncio
import io
import re
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
from PIL import Image

from srum_jobs.config import JudgeConfig, RewardConfig
from srum_jobs.judging.backends import BadRequest
from srum_jobs.judging.inprocess import InProcessTransport
from srum_jobs.judging.pipeline import CandidateItem, judge_candidate, judge_global, judge_many, select_boxes
from srum_jobs.judging.protocols import BoxOptions, BoxProposal, JudgeParams, JudgeReply
from srum_jobs.judging.templates import FORMAT_REMINDER
from srum_jobs.records import Prompt, RewardRecord, parse_record

REGION = re.compile(r"^Region (\d+): box \[(\d+), (\d+), (\d+), (\d+)\]$", re.M)
PROMPT = Prompt(id="p7", text="a red circle left of a blue square", category="spatial", index=7)


def png(w: int = 32, h: int = 32, color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="PNG")
    return buf.getvalue()


def kind_of(instruction: str) -> str:
    if "Answer: <yes or no>" in instruction:
        return "verify"
    if "Region ID:" in instruction:
        return "regions"
    return "global"


def region_reply(instruction: str, score_of: Callable[[tuple], float] = lambda box: 0.5) -> str:
    return "\n\n".join(f"Region ID: {i}\nObject: thing{i}\nScore: {score_of(tuple(map(int, b)))}\nReason: r"
                       for i, *b in REGION.findall(instruction))


class ScriptedJudge:
    """A JudgeBackend: `script[kind]` is a function (instruction, attempt) -> reply text."""

    name = "scripted-judge"

    def __init__(self, script: Dict[str, Callable[[str, int], str]]):
        self.script = script
        self.seen: List[str] = []

    def generate(self, images, instructions, params: JudgeParams) -> List[JudgeReply]:
        out = []
        for img, ins in zip(images, instructions):
            assert img.mode == "RGB"
            k = kind_of(ins)
            base = ins.split(FORMAT_REMINDER)[0].rstrip()
            attempt = 1 + sum(s.split(FORMAT_REMINDER)[0].rstrip() == base for s in self.seen)
            self.seen.append(ins)
            out.append(JudgeReply(text=self.script[k](ins, attempt)))
        return out

    def count(self, kind: str) -> int:
        return sum(kind_of(s) == kind for s in self.seen)


class FixedBoxer:
    name = "fixed-boxer"

    def __init__(self, boxes, areas=None):
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.areas = (np.asarray(areas, dtype=np.float32) if areas is not None
                      else (self.boxes[:, 2] - self.boxes[:, 0]) * (self.boxes[:, 3] - self.boxes[:, 1]))
        self.options: List[BoxOptions] = []

    def propose(self, images, options: BoxOptions) -> List[BoxProposal]:
        self.options.append(options)
        return [BoxProposal(self.boxes.copy(), self.areas.copy(), np.ones(len(self.boxes), np.float32))
                for _ in images]


GOOD = {"global": lambda ins, a: "Score: 0.6\nReason: layout ok",
        "regions": lambda ins, a: region_reply(ins),
        "verify": lambda ins, a: "Answer: yes\nObject: circle"}

BOXES = [(0, 0, 8, 8), (10, 10, 30, 30), (4, 4, 20, 12)]      # areas 64, 400, 128


def run(transport, judge=None, reward=None, image=None, **kw) -> RewardRecord:
    judge = judge or JudgeConfig(verify_boxes=False)
    reward = reward or RewardConfig()
    return asyncio.run(judge_candidate(transport, image or png(), PROMPT, candidate_index=2, seed=11,
                                       image_key="c/7/2.png", width=32, height=32, judge=judge, reward=reward, **kw))


# ------------------------------------------------------------------------------------------ one candidate


def test_happy_path_record():
    judge = ScriptedJudge({**GOOD, "regions": lambda ins, a: region_reply(ins, lambda b: round(b[0] / 10 - 0.5, 2))})
    rec = run(InProcessTransport(judge, FixedBoxer(BOXES)))
    assert [r.box.as_tuple() for r in rec.regions] == [(10, 10, 30, 30), (4, 4, 20, 12), (0, 0, 8, 8)]  # by area
    assert [r.score for r in rec.regions] == [0.5, -0.1, -0.5] and all(r.parsed for r in rec.regions)
    assert [r.object for r in rec.regions] == ["thing1", "thing2", "thing3"]
    g = rec.global_judgment
    assert (g.score, g.parsed, g.attempts, g.reason) == (0.6, True, 1, "layout ok")
    assert rec.regions_parsed and rec.regions_attempts == 1 and rec.boxes_proposed == 3
    assert (rec.prompt_id, rec.category, rec.candidate_index, rec.seed) == ("p7", "spatial", 2, 11)
    assert rec.judge_model == "scripted-judge" and len(rec.image_sha256) == 64
    assert judge.count("regions") == 1 and judge.count("global") == 1 and judge.count("verify") == 0
    assert parse_record(rec.to_json_line(), RewardRecord) == rec


def test_max_regions_keeps_the_largest_and_asks_once():
    judge = ScriptedJudge(GOOD)
    boxer = FixedBoxer(BOXES + [(0, 20, 4, 24)])
    rec = run(InProcessTransport(judge, boxer), reward=RewardConfig(max_regions=2))
    assert [r.box.as_tuple() for r in rec.regions] == [(10, 10, 30, 30), (4, 4, 20, 12)]
    regions_instruction = next(s for s in judge.seen if kind_of(s) == "regions")
    assert [int(i) for i, *_ in REGION.findall(regions_instruction)] == [1, 2]
    assert boxer.options[0].max_regions == 2


def test_no_regions_when_max_regions_zero():
    judge = ScriptedJudge(GOOD)
    boxer = FixedBoxer(BOXES)
    rec = run(InProcessTransport(judge, boxer), reward=RewardConfig(max_regions=0))
    assert rec.regions == [] and rec.regions_parsed and rec.boxes_proposed == 0
    assert boxer.options == [] and judge.count("regions") == 0


def test_unusable_and_small_boxes_dropped_and_judged_boxes_clamped():
    boxes = [(np.nan, 0, 5, 5), (9, 9, 2, 2), (-4, -4, 40, 12), (0, 0, 2, 2)]   # NaN, inverted, overhanging, tiny
    judge = ScriptedJudge(GOOD)
    rec = run(InProcessTransport(judge, FixedBoxer(boxes, areas=[25, 49, 528, 4])),
              reward=RewardConfig(min_region_area=0.01))     # 1% of 32x32 = 10.24 px
    assert [r.box.as_tuple() for r in rec.regions] == [(-4, -4, 40, 12)]   # recorded as proposed
    assert REGION.findall(next(s for s in judge.seen if kind_of(s) == "regions")) == [("1", "0", "0", "32", "12")]


def test_verification_on_drops_rejected_boxes_and_off_keeps_top_by_area():
    def verify(ins, attempt):
        _, x0, *_ = REGION.findall(ins)[0]
        return "Answer: no\nObject: none" if x0 == "4" else "Answer: yes\nObject: square"

    judge = ScriptedJudge({**GOOD, "verify": verify})
    rec = run(InProcessTransport(judge, FixedBoxer(BOXES)), judge=JudgeConfig(verify_boxes=True))
    assert [r.box.as_tuple() for r in rec.regions] == [(10, 10, 30, 30), (0, 0, 8, 8)]
    assert judge.count("verify") == 3
    # the renumbered regions are what the region request asked about
    assert REGION.findall(next(s for s in judge.seen if kind_of(s) == "regions")) == [
        ("1", "10", "10", "30", "30"), ("2", "0", "0", "8", "8")]

    judge_off = ScriptedJudge({**GOOD, "verify": verify})
    rec_off = run(InProcessTransport(judge_off, FixedBoxer(BOXES)), judge=JudgeConfig(verify_boxes=False))
    assert len(rec_off.regions) == 3 and judge_off.count("verify") == 0


def test_unreadable_verification_keeps_the_box_and_its_noun_fills_missing_objects():
    judge = ScriptedJudge({**GOOD, "verify": lambda ins, a: "hmm", "regions": lambda ins, a: "Region ID: 1\nScore: 0.2"})
    rec = run(InProcessTransport(judge, FixedBoxer(BOXES[:1])), judge=JudgeConfig(verify_boxes=True, parse_attempts=2))
    assert len(rec.regions) == 1 and rec.regions[0].score == 0.2
    assert judge.count("verify") == 2          # retried, then kept
    judge2 = ScriptedJudge({**GOOD, "regions": lambda ins, a: "Region ID: 1\nScore: 0.2"})
    rec2 = run(InProcessTransport(judge2, FixedBoxer(BOXES[:1])), judge=JudgeConfig(verify_boxes=True))
    assert rec2.regions[0].object == "circle"  # from the verification answer


def test_retry_then_parsed():
    judge = ScriptedJudge({**GOOD, "global": lambda ins, a: "I like it." if a == 1 else "Score: **0.3**"})
    rec = run(InProcessTransport(judge, FixedBoxer(BOXES)), judge=JudgeConfig(verify_boxes=False, parse_attempts=3))
    g = rec.global_judgment
    assert (g.parsed, g.score, g.attempts, g.raw) == (True, 0.3, 2, "Score: **0.3**")
    globals_asked = [s for s in judge.seen if kind_of(s) == "global"]
    assert FORMAT_REMINDER not in globals_asked[0] and globals_asked[1].endswith(FORMAT_REMINDER)


def test_retries_exhausted_give_neutral_default_flagged_unparsed():
    judge = ScriptedJudge({**GOOD, "global": lambda ins, a: f"no idea ({a})", "regions": lambda ins, a: "Score: N/A"})
    rec = run(InProcessTransport(judge, FixedBoxer(BOXES)), judge=JudgeConfig(verify_boxes=False, parse_attempts=3))
    g = rec.global_judgment
    assert (g.parsed, g.score, g.attempts) == (False, 0.0, 3) and g.raw == "no idea (1)"
    assert judge.count("global") == 3 and judge.count("regions") == 3
    assert rec.regions_parsed is False and rec.regions_attempts == 3 and rec.regions_raw == "Score: N/A"
    assert all(r.score is None and not r.parsed for r in rec.regions)


def test_partial_region_answer_is_retried_and_best_kept():
    def regions(ins, attempt):
        return "Region ID: 1\nScore: 0.9" if attempt == 1 else "Region ID: 2\nScore: 0.1\nRegion ID: 3\nScore: 0.2"

    judge = ScriptedJudge({**GOOD, "regions": regions})
    rec = run(InProcessTransport(judge, FixedBoxer(BOXES)), judge=JudgeConfig(verify_boxes=False, parse_attempts=2))
    # attempt 2 scored more regions, so it is kept; region 1 has no score there
    assert [r.score for r in rec.regions] == [None, 0.1, 0.2] and rec.regions_parsed and rec.regions_attempts == 2


def test_sample_kind_and_judge_global():
    judge = ScriptedJudge(GOOD)
    t = InProcessTransport(judge, FixedBoxer(BOXES))
    run(t, global_kind="sample", reward=RewardConfig(max_regions=0))
    assert "Judge the image as a whole" in " ".join(judge.seen[-1].split())
    g = asyncio.run(judge_global(t, png(), "a cat", JudgeConfig()))
    assert g.score == 0.6 and g.parsed


def test_select_boxes_orders_by_area_stably():
    p = BoxProposal(np.array([[0, 0, 2, 2], [0, 0, 4, 1], [0, 0, 1, 1]], np.float32), np.array([4, 4, 9], np.float32),
                    np.array([0.1, 0.2, np.nan], np.float32))
    sel = select_boxes(p, 10, 10, 5)
    assert [b.proposed for b in sel] == [(0, 0, 1, 1), (0, 0, 2, 2), (0, 0, 4, 1)]
    assert sel[0].confidence is None and sel[1].confidence == pytest.approx(0.1)


def test_corrupt_image_fails_alone_with_a_clear_error():
    t = InProcessTransport(ScriptedJudge(GOOD), FixedBoxer(BOXES))
    with pytest.raises(BadRequest, match="not a readable image"):
        run(t, image=b"not a png")


# ---------------------------------------------------------------------------------------------- many


class CountingTransport:
    """A transport double that records how many requests are in flight at once."""

    def __init__(self, delay: float = 0.01, fail_on: Optional[str] = None):
        self.delay, self.fail_on = delay, fail_on
        self.now = self.peak = self.total = 0

    async def _enter(self):
        self.now += 1
        self.total += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(self.delay)
        self.now -= 1

    async def judge(self, image_png, instruction, params):
        await self._enter()
        if self.fail_on and self.fail_on in instruction:
            raise ConnectionError("judge down")
        return JudgeReply(text={"regions": region_reply(instruction), "verify": "Answer: yes\nObject: circle",
                                "global": "Score: 0.1"}[kind_of(instruction)])

    async def propose_boxes(self, image_png, options):
        await self._enter()
        b = np.array(BOXES, np.float32)
        return BoxProposal(b, (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), np.ones(3, np.float32))

    def identity(self):
        return {"judge_model": "counting", "judge_version": "1"}


def items(n: int, prompt_text: str = "a red circle"):
    for i in range(n):
        yield CandidateItem(png(), Prompt(id=f"p{i}", text=f"{prompt_text} {i}", index=i), 0, i, f"k{i}", 32, 32)


def test_judge_many_bounds_requests_in_flight_and_keeps_order():
    t = CountingTransport()
    seen = []
    recs = asyncio.run(judge_many(t, items(12), judge=JudgeConfig(max_in_flight=3, verify_boxes=True),
                                  reward=RewardConfig(), on_result=lambda i, r: seen.append(i)))
    assert t.peak == 3                        # bounded, and the bound is actually reached
    assert t.total == 12 * (1 + 3 + 1 + 1)    # boxes, 3 verifications, regions, global
    assert [r.prompt_id for r in recs] == [f"p{i}" for i in range(12)]
    assert sorted(seen) == list(range(12))


def test_judge_many_accepts_async_iterables_and_async_callbacks():
    async def agen():
        for it in items(5):
            await asyncio.sleep(0)
            yield it

    written = []

    async def write(i, rec):
        await asyncio.sleep(0)
        written.append(rec.prompt_id)

    recs = asyncio.run(judge_many(CountingTransport(delay=0), agen(), judge=JudgeConfig(max_in_flight=2),
                                  reward=RewardConfig(), on_result=write))
    assert len(recs) == 5 and sorted(written) == [f"p{i}" for i in range(5)]


def test_judge_many_first_failure_raises_and_stops_the_rest():
    t = CountingTransport(fail_on="circle 3")
    with pytest.raises(ConnectionError, match="judge down"):
        asyncio.run(judge_many(t, items(40), judge=JudgeConfig(max_in_flight=4), reward=RewardConfig()))
    assert t.total < 40 * 5                   # it did not judge everything before failing


def test_inprocess_transport_batches_concurrent_requests():
    judge = ScriptedJudge(GOOD)
    t = InProcessTransport(judge, FixedBoxer(BOXES), max_batch=8)
    recs = asyncio.run(judge_many(t, items(16), judge=JudgeConfig(max_in_flight=16, verify_boxes=False),
                                  reward=RewardConfig()))
    assert len(recs) == 16 and all(r.global_judgment.parsed for r in recs)
    assert max(t.batch_sizes["judge"]) > 1 and max(t.batch_sizes["judge"]) <= 8
    assert sum(t.batch_sizes["judge"]) == 32 and sum(t.batch_sizes["boxer"]) == 16


def test_verification_sees_more_candidates_than_it_keeps():
    """Issue 15: with judge.verify_candidates the boxer is asked for more boxes and the judge verifies them
    all; the largest reward.max_regions confirmed ones are kept, so a rejected big box makes room for the
    next candidate instead of leaving a region slot empty."""
    def verify(ins, attempt):
        _, x0, *_ = REGION.findall(ins)[0]
        return "Answer: no\nObject: none" if x0 == "10" else "Answer: yes\nObject: square"

    boxer = FixedBoxer(BOXES)
    judge = ScriptedJudge({**GOOD, "verify": verify})
    rec = run(InProcessTransport(judge, boxer), judge=JudgeConfig(verify_boxes=True, verify_candidates=3),
              reward=RewardConfig(max_regions=2))
    assert boxer.options[-1].max_regions == 3 and judge.count("verify") == 3
    assert [r.box.as_tuple() for r in rec.regions] == [(4, 4, 20, 12), (0, 0, 8, 8)]
    # without it (the default) verification sees only the 2 it may keep: the rejected one leaves 1 region
    boxer, judge = FixedBoxer(BOXES), ScriptedJudge({**GOOD, "verify": verify})
    rec = run(InProcessTransport(judge, boxer), judge=JudgeConfig(verify_boxes=True), reward=RewardConfig(max_regions=2))
    assert boxer.options[-1].max_regions == 2 and [r.box.as_tuple() for r in rec.regions] == [(4, 4, 20, 12)]
