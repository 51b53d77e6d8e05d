"""Think mode of the toy model: plan text, its parser, the planner, the layout the generator reads, and
what conditioning on a plan does to generation and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from srum_jobs.toy import plan as P
from srum_jobs.toy import world as w


def test_plan_text_round_trips_through_the_parser():
    plan = P.Plan((P.PlannedObject(w.Obj("red", "circle"), 1, 0), P.PlannedObject(w.Obj("blue", "square"), 0, 2)))
    text = plan.text()
    assert text == "The prompt asks for 2 objects. Plan: red circle at middle left; blue square at top right."
    assert P.parse_plan(text) == plan
    # wording around the plan (a think preamble) does not matter, the items do
    assert P.parse_plan("Let me think. Plan: green triangle at bottom center") == P.Plan(
        (P.PlannedObject(w.Obj("green", "triangle"), 2, 1),))


@pytest.mark.parametrize("text, msg", [
    ("no plan here", "holds no 'Plan: ...'"),
    ("Plan: ", "holds no 'Plan: ...'"),
    ("Plan: red circle at middle", "is not '<colour> <shape> at <row> <column>'"),
    ("Plan: pink circle at top left", "'pink circle at top left'"),
    ("Plan: red circle at top left; red circle at top center; red circle at top right; red circle at bottom left",
     "plans 4 objects"),
])
def test_unreadable_plans_are_rejected_quoting_the_text(text, msg):
    with pytest.raises(P.PlanParseError, match=msg):
        P.parse_plan(text)


@pytest.mark.parametrize("planner", P.PLANNERS)
def test_the_planner_writes_valid_layouts_for_every_category(planner):
    rng = np.random.default_rng(0)
    for p in w.prompt_set("val"):
        plan = P.write_plan(w.parse_prompt(p.text), rng, planner)
        assert sorted(o.obj for o in plan.objects) == list(p.spec.objects)
        cells = [(o.row, o.col) for o in plan.objects]
        assert len(set(cells)) == len(cells)
        if p.spec.relation:
            a, b = plan.objects
            assert (a.obj, b.obj) == p.spec.ordered
            assert w.relation_holds(a.centre, b.centre, p.spec.relation, margin=2.0)


def test_think_text_is_seeded_and_names_prompts_outside_the_grammar():
    a, plan = P.think_text("three purple squares", 5)
    assert a == P.think_text("three purple squares", 5)[0] and len(plan.objects) == 3
    texts = {P.think_text("a red circle to the left of a blue square", s, "random")[0] for s in range(12)}
    assert len(texts) > 1                      # the random planner gives K candidates K plans
    assert P.think_text("a photo of a dog", 1, "random") == (P.NO_PLAN_TEXT, None)
    with pytest.raises(ValueError, match="unknown planner 'messy'"):
        P.think_text("a red circle", 1, "messy")
    assert P.think_text("a photo of a dog", 1) == (P.NO_PLAN_TEXT, None)
    assert P.plan_of(P.NO_PLAN_TEXT) is None and P.plan_of(None) is None and P.plan_of("") is None


@pytest.mark.parametrize("prompt, plan", [
    ("a red circle to the left of a blue square", "red circle at middle left; blue square at middle right"),
    ("a red circle to the right of a blue square", "red circle at middle right; blue square at middle left"),
    ("a red circle above a blue square", "red circle at top center; blue square at bottom center"),
    ("a red circle below a blue square", "red circle at bottom center; blue square at top center"),
    ("a green triangle", "green triangle at middle center"),
    # the prompt's order, not the spec's sorted one
    ("a yellow square and a blue circle", "yellow square at middle left; blue circle at middle right"),
    ("two red circles and a blue square",
     "red circle at middle left; red circle at middle center; blue square at middle right"),
])
def test_the_tidy_planner_settles_on_one_canonical_layout(prompt, plan):
    texts = {P.think_text(prompt, s, "tidy")[0] for s in range(6)}
    assert texts == {P.think_text(prompt, 0)[0]}                 # tidy is the default, one plan per prompt
    assert texts.pop().endswith(f"Plan: {plan}.")


def test_ground_truth_renders_follow_their_plans():
    rng = np.random.default_rng(3)
    for p in list(w.prompt_set("pretrain"))[:50]:
        img, labels, placed = w.render(p.spec, rng)
        plan = P.plan_from_placements(placed)
        for o, pl in zip(plan.objects, placed):
            cy, cx = pl.y0 + pl.size / 2, pl.x0 + pl.size / 2
            assert P.EDGES[o.row] <= cy <= P.EDGES[o.row + 1] and P.EDGES[o.col] <= cx <= P.EDGES[o.col + 1]


def test_layout_channels_hold_colour_shape_and_cell():
    plan = P.parse_plan("Plan: red circle at top left; cyan triangle at bottom right")
    lay = P.layout_array(plan)
    assert lay.shape == (P.PLAN_CHANNELS, 32, 32)
    red = np.array(w.COLORS["red"]) / 127.5 - 1
    assert np.allclose(lay[0:3, 5, 5], red) and lay[3, 5, 5] == 1 and lay[4:6, 5, 5].sum() == 0
    assert lay[5, 30, 30] == 1 and lay[6, 30, 30] == 1
    assert lay[6, 15, 15] == 0 and lay[:7, 15, 15].sum() == 0 and np.all(lay[7] == 1)
    assert not P.layout_array(None).any()                    # plain mode: all zeros
    shared = P.layout_array(P.parse_plan("Plan: red circle at top left; blue square at top left"))
    assert np.allclose(shared[3:5, 2, 2], [0.5, 0.5])        # two objects planned into one cell share it


@pytest.fixture(scope="module")
def toy():
    from srum_jobs.models.base import load_model

    return load_model("toy", {"preset": "test"})


def test_think_mode_generates_with_plans_and_conditioning_changes_the_image(toy):
    assert toy.supports_think
    prompts = ["a red circle to the left of a blue square", "two green triangles"]
    think = toy.generate(prompts, [4, 5], steps=3, think=True)
    plain = toy.generate(prompts, [4, 5], steps=3)
    assert all(g.think_text and P.parse_plan(g.think_text) for g in think)
    assert all(g.think_text is None for g in plain)
    assert not np.array_equal(np.asarray(think[0].image), np.asarray(plain[0].image))
    again = toy.generate(prompts[:1], [4], steps=3, think=True)
    assert again[0].think_text == think[0].think_text
    assert np.array_equal(np.asarray(again[0].image), np.asarray(think[0].image))
    # no plan is plain mode exactly: the generator reads a zero layout
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(toy.velocity(x, 0.7, prompts, None), toy.velocity(x, 0.7, prompts, [None, P.NO_PLAN_TEXT]))


def test_training_forward_conditions_on_plans(toy):
    x0 = torch.rand(2, 3, 32, 32) * 2 - 1
    t = torch.tensor([0.4, 0.9])
    plans = [P.think_text("two green triangles", 1)[0], None]
    g = lambda: torch.Generator().manual_seed(0)   # noqa: E731
    with torch.no_grad():
        a = toy.training_forward(x0, ["two green triangles", "a red circle"], t, generator=g(), plans=plans)
        b = toy.training_forward(x0, ["two green triangles", "a red circle"], t, generator=g())
    assert torch.equal(a.target, b.target)
    assert not torch.allclose(a.v[0], b.v[0]) and torch.allclose(a.v[1], b.v[1])


def test_a_generator_without_plan_channels_has_no_think_mode(toy):
    from srum_jobs.toy.model import ToyModel
    from srum_jobs.toy.nets import FlowUNet

    plain_only = ToyModel(FlowUNet(channels=(8, 16, 16), text_dim=16, text_layers=1),
                          toy.understanding.perception.net)
    assert plain_only.supports_think is False
    with pytest.raises(ValueError, match="no think mode"):
        plain_only.generate(["two green triangles"], [0], steps=1, think=True)


def test_an_unknown_planner_in_the_model_params_is_named():
    from srum_jobs.toy.model import ToyModel

    with pytest.raises(ValueError, match=r"model.params.planner: 'messy' is not a toy planner; planners are tidy, random"):
        ToyModel(None, None, planner="messy")
