"""The toy judge: instruction reading by the contract, the symbolic comparison, the answer format (read by
the project's own parser), the backend protocol, and the learned perception's accuracy."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest

from srum_jobs.judging.parse import parse_global, parse_regions, parse_sample, parse_verify
from srum_jobs.judging.protocols import JudgeBackend, JudgeParams
from srum_jobs.judging.templates import load_templates
from srum_jobs.toy import judge as J
from srum_jobs.toy.judge_backend import ToyJudgeBackend
from srum_jobs.toy import world as w


# --------------------------------------------------------------------------------------- instructions
def test_every_default_template_is_read_by_the_contract():
    tpl = load_templates()
    prompt = "a red circle to the left of a blue square"
    boxes = [[1, 2, 10, 11], [14.4, 3, 30, 29.6]]
    cases = {"global": tpl.render_global(prompt, 32, 32), "sample": tpl.render_sample(prompt, 32, 32),
             "regions": tpl.render_regions(prompt, boxes, 32, 32), "verify": tpl.render_verify(prompt, boxes[1], 32, 32)}
    for kind, text in cases.items():
        ins = J.read_instruction(text)
        assert ins.kind == kind and ins.prompt == prompt
    assert J.read_instruction(cases["regions"]).regions == ((1, (1, 2, 10, 11)), (2, (14, 3, 30, 30)))
    assert J.read_instruction(cases["verify"]).regions == ((1, (14, 3, 30, 30)),)


def test_a_broken_instruction_is_an_error_that_says_what_is_missing():
    with pytest.raises(J.InstructionError, match="no 'Prompt: <text>' line"):
        J.read_instruction("Score this image.\nScore: <n>")
    with pytest.raises(J.InstructionError, match="no 'Region <i>: box"):
        J.read_instruction("Prompt: a red circle\nRegion ID: <n>\nScore: <n>")
    with pytest.raises(J.InstructionError, match="not four numbers"):
        J.read_instruction("Prompt: a red circle\nRegion 1: box [1, 2, 3]\nRegion ID:")


# ---------------------------------------------------------------------------------- symbolic analysis
def _seen(*objs):
    """A Perceived built by hand: (colour, shape|None, (cx, cy), area) per object, one component each."""
    labels = np.zeros((32, 32), np.int32)
    seen = []
    for i, (color, shape, (cx, cy), area) in enumerate(objs, start=1):
        x0, y0 = int(cx) - 3, int(cy) - 3
        labels[y0:y0 + 6, x0:x0 + 6] = i
        seen.append(J.Seen(i, color, shape, area, (x0, y0, x0 + 6, y0 + 6), (cx, cy), 0.9))
    big = [s for s in seen if s.area >= J.MIN_OBJECT_AREA]
    specks = [s for s in seen if s.area < J.MIN_OBJECT_AREA]
    return J.Perceived(big, specks, labels, (32, 32), (1.0, 1.0))


def test_analysis_assigns_every_seen_object_a_role():
    spec = w.parse_prompt("one red circle and two blue squares")
    seen = _seen(("red", "circle", (5, 5), 40), ("blue", "square", (15, 5), 50), ("blue", "square", (25, 5), 45),
                 ("blue", "square", (5, 15), 30), ("red", "triangle", (15, 15), 40), ("green", "triangle", (25, 25), 40),
                 ("yellow", None, (5, 25), 40))
    a = J.analyse(seen, spec)
    assert a.roles == {1: "match", 2: "match", 3: "match", 4: "surplus", 5: "wrong", 6: "unrelated", 7: "unclear"}
    assert not a.ok and a.missing == []
    exact = J.analyse(_seen(("red", "circle", (5, 5), 40), ("blue", "square", (15, 5), 50),
                            ("blue", "square", (25, 5), 45)), spec)
    assert exact.ok
    short = J.analyse(_seen(("red", "circle", (5, 5), 40), ("blue", "square", (15, 5), 50)), spec)
    assert not short.ok and [o.phrase() for o in short.missing] == ["blue square"]


def test_spatial_relation_and_scores_follow_the_bands():
    left = _seen(("red", "circle", (6, 16), 40), ("blue", "square", (24, 16), 50))
    right = _seen(("red", "circle", (24, 16), 40), ("blue", "square", (6, 16), 50))
    prompt = "a red circle to the left of a blue square"
    spec = w.parse_prompt(prompt)
    assert J.analyse(left, spec).relation_ok is True and J.analyse(right, spec).relation_ok is False
    good, _ = J._whole_image(left, spec, "global")
    bad, reason = J._whole_image(right, spec, "global")
    assert 0.75 <= good <= 1.0 and -1.0 <= bad <= -0.5 and "arrangement" in reason
    # the non-spatial control stays in the neutral band, still signed
    ns = w.parse_prompt("a red circle together with a blue square")
    assert J._whole_image(left, ns, "global")[0] == 0.3
    assert J._whole_image(_seen(("red", "circle", (6, 16), 40)), ns, "global")[0] == -0.3
    assert J._whole_image(_seen(("red", "circle", (6, 16), 40)), ns, "sample")[0] <= -0.5
    # a prompt outside the grammar: neutral 0, which the reference filter drops
    assert J._whole_image(left, None, "global")[0] == 0.0
    # regions: the right object scores high, misplaced 0, background 0, speck artifact, wrong attribute -1
    assert J._region_score(left, spec, (3, 13, 9, 19))[1] >= 0.75
    assert J._region_score(right, spec, (21, 13, 27, 19))[1] == 0.0
    assert J._region_score(left, spec, (12, 0, 16, 4)) == ("background", 0.0, "no object in this region")
    wrong = _seen(("red", "square", (6, 16), 40), ("blue", "square", (24, 16), 50), ("green", "circle", (16, 4), 3))
    assert J._region_score(wrong, spec, (3, 13, 9, 19))[:2] == ("red square", -1.0)
    assert J._region_score(wrong, spec, (13, 1, 19, 7))[1] == -0.6


def test_verification_names_the_noun_as_the_prompt_spells_it():
    seen = _seen(("red", "circle", (6, 16), 40), ("green", "triangle", (24, 16), 40))
    assert J._verify(seen, w.parse_prompt("two red circles"), "two red circles", (3, 13, 9, 19)) == (True, "circles")
    p = "a round red object and a square blue object"
    assert J._verify(seen, w.parse_prompt(p), p, (3, 13, 9, 19)) == (True, "object")
    assert J._verify(seen, w.parse_prompt("two red circles"), "two red circles", (21, 13, 27, 19)) == (False, None)
    assert J._verify(seen, w.parse_prompt("two red circles"), "two red circles", (0, 0, 2, 2)) == (False, None)


def test_answers_are_truncated_like_a_decoder_budget():
    assert J._truncate("Score: 0.9\nReason: a b c.", 3) == "Score: 0.9\n"
    assert J._truncate("Score: 0.9", 256) == "Score: 0.9"


# ------------------------------------------------------------------------------------- the backend
@pytest.fixture(scope="module")
def toy_judge():
    return ToyJudgeBackend({"preset": "test"})


def test_backend_implements_the_protocol_and_answers_parse(toy_judge):
    assert isinstance(toy_judge, JudgeBackend)
    tpl = load_templates()
    rng = np.random.default_rng(0)
    prompts = [p for p in w.prompt_set("val")][::25]
    images = [w.to_pil(w.render_prompt(p.text, rng)) for p in prompts]
    boxes = [[0, 0, 16, 16], [16, 16, 32, 32], [4, 4, 28, 28]]
    for img, p in zip(images, prompts):
        g, s, r, v = toy_judge.generate([img] * 4, [tpl.render_global(p.text, 32, 32), tpl.render_sample(p.text, 32, 32),
                                                    tpl.render_regions(p.text, boxes, 32, 32),
                                                    tpl.render_verify(p.text, boxes[2], 32, 32)], JudgeParams())
        assert parse_global(g.text).parsed and parse_sample(s.text).parsed and g.think_text == ""
        rp = parse_regions(r.text, 3)
        assert rp.complete and all(x.object for x in rp.regions.values())
        assert parse_verify(v.text).parsed
    think = toy_judge.generate(images[:1], [tpl.render_global(prompts[0].text, 32, 32)], JudgeParams(think=True))[0]
    assert think.think_text.startswith("I see:")
    with pytest.raises(ValueError, match="unknown parameter"):
        ToyJudgeBackend({"presett": "test"})
    with pytest.raises(ValueError, match="preset='huge'"):
        ToyJudgeBackend({"preset": "huge"})


def test_backend_reads_other_image_sizes_and_scales_boxes(toy_judge):
    from PIL import Image

    rng = np.random.default_rng(1)
    p = w.prompt_set("val")[0]
    img = w.to_pil(w.render_prompt(p.text, rng))
    big = img.resize((128, 128), Image.NEAREST)
    tpl = load_templates()
    boxes = [[0, 0, 16, 16], [8, 8, 30, 30]]
    small_ans = toy_judge.generate([img], [tpl.render_regions(p.text, boxes, 32, 32)], JudgeParams())[0].text
    big_boxes = [[4 * c for c in b] for b in boxes]
    big_ans = toy_judge.generate([big], [tpl.render_regions(p.text, big_boxes, 128, 128)], JudgeParams())[0].text
    assert [r.object for r in parse_regions(small_ans, 2).regions.values()] == \
        [r.object for r in parse_regions(big_ans, 2).regions.values()]


def test_the_judging_pipeline_runs_on_the_toy_backends(toy_judge):
    from srum_jobs.config import JudgeConfig, RewardConfig
    from srum_jobs.judging.inprocess import InProcessTransport
    from srum_jobs.judging.pipeline import CandidateItem, judge_many
    from srum_jobs.toy.components import ComponentsBoxer

    rng = np.random.default_rng(2)
    prompts = w.toy_prompts("val")[::40]
    items = []
    for i, p in enumerate(prompts):
        buf = io.BytesIO()
        w.to_pil(w.render_prompt(p.text, rng)).save(buf, format="PNG")
        items.append(CandidateItem(buf.getvalue(), p, 0, i, f"img/{i}.png", 32, 32))
    transport = InProcessTransport(toy_judge, ComponentsBoxer({}))
    for verify in (True, False):
        records = asyncio.run(judge_many(transport, items, judge=JudgeConfig(verify_boxes=verify),
                                         reward=RewardConfig()))
        assert len(records) == len(prompts)
        for rec, p in zip(records, prompts):
            n = len(w.parse_prompt(p.text).objects)
            assert rec.global_judgment.parsed and rec.regions_parsed and rec.prompt == p.text
            assert rec.boxes_proposed == n            # the boxer finds every drawn object
            # verification may drop boxes; without it, every object's box is judged
            assert len(rec.regions) <= n if verify else len(rec.regions) == n
            assert all(r.parsed and r.object for r in rec.regions)


def test_artefact_boxes_are_scored_not_dropped_with_score_unverified(toy_judge):
    """A stray speck and an unrelated object: verification rejects both; with reward.score_unverified they
    stay in the record, scored negative and marked unverified, and the think text travels with it."""
    from srum_jobs.config import JudgeConfig, RewardConfig
    from srum_jobs.judging.inprocess import InProcessTransport
    from srum_jobs.judging.pipeline import CandidateItem, judge_many
    from srum_jobs.toy.components import ComponentsBoxer
    from srum_jobs.records import Prompt
    from srum_jobs.rewards import reward_map_from_record

    rng = np.random.default_rng(5)
    img, _, placed = w.render(w.parse_prompt("two green triangles"), rng)
    img = img.copy()
    # a 2x3 speck of red and a blue square the prompt never mentions, away from the triangles
    taken = np.zeros((32, 32), bool)
    for pl in placed:
        taken[max(0, pl.y0 - 2):pl.y0 + pl.size + 2, max(0, pl.x0 - 2):pl.x0 + pl.size + 2] = True
    spots = [(y, x) for y in range(0, 24) for x in range(0, 24) if not taken[y:y + 9, x:x + 9].any()]
    (sy, sx), (by, bx) = spots[0], spots[-1]
    img[sy:sy + 2, sx:sx + 3] = w.COLORS["red"]
    img[by + 1:by + 8, bx + 1:bx + 8] = w.COLORS["blue"]
    buf = io.BytesIO()
    w.to_pil(img).save(buf, format="PNG")
    prompt = Prompt(id="p", text="two green triangles", category="numeracy", index=0)
    item = CandidateItem(buf.getvalue(), prompt, 0, 1, "img.png", 32, 32, think_text="Plan: green triangle at top left")
    transport = InProcessTransport(toy_judge, ComponentsBoxer({}))

    def judged(score_unverified):
        return asyncio.run(judge_many(transport, [item], judge=JudgeConfig(verify_boxes=True),
                                      reward=RewardConfig(score_unverified=score_unverified)))[0]

    dropped, scored = judged(False), judged(True)
    assert dropped.think_text == scored.think_text == "Plan: green triangle at top left"
    assert scored.boxes_proposed == len(scored.regions) == 4          # two triangles, the speck, the square
    assert all(r.verified is True for r in dropped.regions)
    rejected = [r for r in scored.regions if r.verified is False]
    assert rejected and len(scored.regions) == len(dropped.regions) + len(rejected)
    assert [r.box for r in scored.regions if r.verified] == [r.box for r in dropped.regions]
    assert all(r.parsed and r.score is not None for r in rejected)
    # what the reward map makes of them is the reward config's choice (rewards.py)
    with_rejected = reward_map_from_record(scored, RewardConfig(mode="signed", score_unverified=True))
    assert with_rejected.boxes_used == 4
    assert reward_map_from_record(scored, RewardConfig(mode="signed")).boxes_used == len(dropped.regions)


# ------------------------------------------------------------------------------- learned perception
@pytest.mark.parametrize("preset", ["demo", "demo-noisy"])
def test_shipped_demo_judge_reads_fresh_renders(monkeypatch, preset):
    """The demo judge (when its checkpoint ships with the package) agrees with the ground truth of fresh
    renders: every global judgment positive on correct images, negative on images of another prompt."""
    from srum_jobs.toy.pretrain import shipped_dir

    d = shipped_dir(preset)
    if d is None:
        pytest.skip(f"no {preset} checkpoint ships with this tree (srum toy pretrain --preset {preset} builds one)")
    judge = ToyJudgeBackend({"checkpoint": str(d)})
    tpl = load_templates()
    rng = np.random.default_rng(77)
    prompts = list(w.prompt_set("eval"))[::2]
    images = [w.to_pil(w.render_prompt(p.text, rng)) for p in prompts]
    right = judge.generate(images, [tpl.render_global(p.text) for p in prompts], JudgeParams())
    wrong = judge.generate(images, [tpl.render_global(q.text) for q in prompts[1:] + prompts[:1]], JudgeParams())
    pos = np.mean([parse_global(r.text).score > 0 for r in right])
    neg = np.mean([parse_global(r.text).score < 0 for r in wrong])
    assert pos >= 0.95 and neg >= 0.95, (pos, neg)
