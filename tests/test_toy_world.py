"""The toy world: grammar, prompt sets, renderer, rule-based evaluator, connected components and the
ComponentsBoxer. No torch needed here."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from srum_jobs.judging.protocols import BoxerBackend, BoxOptions
from srum_jobs.toy import evaluator as ev
from srum_jobs.toy import world as w
from srum_jobs.toy.components import ComponentsBoxer, label_classes, label_runs


# --------------------------------------------------------------------------------------------- grammar
@pytest.mark.parametrize("text, objects, relation, intent", [
    ("a red circle and a blue square", ["blue square", "red circle"], None, True),
    ("a round red object and a triangular blue shape", ["blue triangle", "red circle"], None, True),
    ("a red circle to the left of a blue square", ["blue square", "red circle"], "left", True),
    ("a cyan triangle below a purple square", ["cyan triangle", "purple square"], "below", True),
    ("three green triangles", ["green triangle"] * 3, None, True),
    ("one yellow circle and two red squares", ["red square", "red square", "yellow circle"], None, True),
    ("a red circle together with a blue square", ["blue square", "red circle"], None, False),
])
def test_prompts_parse_to_their_objects_and_relation(text, objects, relation, intent):
    spec = w.parse_prompt(text)
    assert [o.phrase() for o in spec.objects] == objects
    assert spec.relation == relation and spec.layout_intent is intent
    if relation:
        assert spec.ordered[0].phrase() == " ".join(text.split()[1:3])


@pytest.mark.parametrize("text", ["a dog", "four red circles", "two red circles to the left of a blue square",
                                  "a red circle and a blue square and a green triangle", ""])
def test_prompts_outside_the_grammar_are_rejected_naming_the_prompt(text):
    with pytest.raises(w.PromptParseError, match="toy world|objects|spatial relation") as e:
        w.parse_prompt(text)
    assert repr(text) in str(e.value)


def test_a_relation_stated_from_either_side_is_one_content():
    a = w.parse_prompt("a red circle to the left of a blue square").content_key()
    b = w.parse_prompt("a blue square to the right of a red circle").content_key()
    c = w.parse_prompt("a blue square to the left of a red circle").content_key()
    assert a == b != c


def test_prompt_sets_are_deterministic_balanced_and_disjoint_by_content():
    for split in w.SPLITS:
        prompts = w.prompt_set(split)
        assert prompts == w.prompt_set.__wrapped__(split)        # recomputed from the seed, not cached state
        counts = Counter(p.category for p in prompts)
        assert set(counts) == set(w.CATEGORIES)
        assert len({p.text for p in prompts}) == len(prompts)
        for p in prompts:
            assert w.parse_prompt(p.text) == p.spec
    assert all(n == 40 for n in Counter(p.category for p in w.prompt_set("eval")).values())
    keys = {s: {p.spec.content_key() for p in w.prompt_set(s)} for s in w.SPLITS}
    for a in w.SPLITS:
        for b in w.SPLITS:
            assert a == b or not keys[a] & keys[b], (a, b)
    # pretraining draws only pretraining compositions: a round's train prompts are new to the base model
    rng = np.random.default_rng(0)
    for _ in range(300):
        p = w.random_prompt(rng, split="pretrain")
        assert w.content_split(p.spec.content_key()) == "pretrain"
    # the val and eval splits are the ones they were before the pretrain/train cut (settings chosen on
    # val before it stay comparable)
    assert w.prompt_set("eval")[0].text == "a blue triangle and a red triangle"


def test_toy_prompts_are_records_with_indices():
    recs = w.toy_prompts("eval")
    assert len(recs) == 200 and [r.index for r in recs] == list(range(200))
    assert recs[0].id == "toy-eval-00000" and recs[0].category == "color"
    with pytest.raises(ValueError, match="unknown toy prompt split 'test'"):
        w.toy_prompts("test")


# ------------------------------------------------------------------------------------------- renderer
def test_renderer_draws_every_object_flat_and_apart():
    rng = np.random.default_rng(11)
    for _ in range(200):
        p = w.random_prompt(rng)
        img, labels, placed = w.render(p.spec, rng)
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        assert Counter(q.obj for q in placed) == Counter(p.spec.objects)
        colours = {tuple(c) for c in img.reshape(-1, 3)}
        assert colours == {w.BACKGROUND} | {w.COLORS[o.color] for o in p.spec.objects}
        for q in placed:
            x0, y0, x1, y1 = q.box
            mask = w.shape_mask(q.obj.shape, q.size)
            assert (labels[y0:y1, x0:x1][mask] == w.class_index(q.obj)).all()
        if p.spec.relation:
            a, b = placed
            assert w.relation_holds((a.x0 + a.size / 2, a.y0 + a.size / 2), (b.x0 + b.size / 2, b.y0 + b.size / 2),
                                    p.spec.relation, margin=2.0)


def test_shapes_have_their_geometry():
    assert w.shape_mask("square", 9).all()
    c = w.shape_mask("circle", 12)
    assert not c[0, 0] and c[6, 6] and 0.7 < c.mean() < 0.85
    t = w.shape_mask("triangle", 12)
    assert t[-1].sum() > 3 * t[1].sum() and 0.45 < t.mean() < 0.55


# ------------------------------------------------------------------------------------------ evaluator
@pytest.mark.parametrize("category", w.CATEGORIES)
def test_evaluator_scores_fresh_ground_truth_at_least_98_percent(category):
    rng = np.random.default_rng(987654)
    prompts = w.prompt_set("eval")
    ok = []
    for p in [q for q in prompts if q.category == category] * 3:
        ok.append(ev.evaluate_image(w.render_prompt(p.text, rng), p.text))
    assert np.mean(ok) >= 0.98, (category, np.mean(ok))


def _scene(objs_and_boxes):
    placed = [w.Placed(w.Obj(c, s), x, y, size) for (c, s), (x, y, size) in objs_and_boxes]
    return w.draw(placed)[0]


def test_evaluator_rejects_what_does_not_match():
    left = _scene([(("red", "circle"), (2, 10, 10)), (("blue", "square"), (20, 10, 10))])
    assert ev.evaluate_image(left, "a red circle to the left of a blue square")
    assert not ev.evaluate_image(left, "a red circle to the right of a blue square")
    assert not ev.evaluate_image(left[:, ::-1], "a red circle to the left of a blue square")
    assert not ev.evaluate_image(left, "a red circle above a blue square")
    assert ev.evaluate_image(left, "a blue square and a red circle")
    assert not ev.evaluate_image(left, "a green circle and a blue square")          # wrong colour
    assert not ev.evaluate_image(left, "a red triangle and a blue square")          # wrong shape
    assert not ev.evaluate_image(left, "one red circle")                            # extra object
    assert not ev.evaluate_image(left, "two red circles and one blue square")       # missing copy
    v = ev.verdict(left, "a green circle and a blue square")
    assert "missing green circle" in v.reason and "extra red circle" in v.reason
    # an unrecognisable blob (a long bar) fails any prompt
    bar = left.copy()
    bar[2:5, 2:28] = w.COLORS["yellow"]
    assert not ev.evaluate_image(bar, "a red circle to the left of a blue square")
    assert "unrecognisable" in ev.verdict(bar, "a red circle to the left of a blue square").reason
    # a speck is ignored
    speck = left.copy()
    speck[28:30, 28:30] = w.COLORS["green"]
    assert ev.evaluate_image(speck, "a red circle to the left of a blue square")


def test_evaluator_reads_soft_edges_at_half_coverage():
    from PIL import ImageFilter

    rng = np.random.default_rng(5)
    ok = []
    for _ in range(150):
        p = w.random_prompt(rng)
        img = w.to_pil(w.render_prompt(p.text, rng)).filter(ImageFilter.GaussianBlur(0.5))
        ok.append(ev.evaluate_image(img, p.text))
    assert np.mean(ok) >= 0.95


def test_score_images_reports_per_category():
    rng = np.random.default_rng(3)
    ps = [p for p in w.prompt_set("val")][::20]
    imgs = [w.render_prompt(p.text, rng) for p in ps]
    imgs[0] = np.full_like(imgs[0], 255)
    res = ev.score_images(imgs, [p.text for p in ps], [p.category for p in ps])
    assert set(res["per_category"]) == {p.category for p in ps}
    assert res["overall"] == pytest.approx((len(ps) - 1) / len(ps))


# ----------------------------------------------------------------------------------- components
def _bfs(classes):
    h, w_ = classes.shape
    lab = np.zeros((h, w_), int)
    n = 0
    for y in range(h):
        for x in range(w_):
            if classes[y, x] and not lab[y, x]:
                n += 1
                stack = [(y, x)]
                lab[y, x] = n
                while stack:
                    a, b = stack.pop()
                    for p, q in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                        if 0 <= p < h and 0 <= q < w_ and not lab[p, q] and classes[p, q] == classes[a, b]:
                            lab[p, q] = n
                            stack.append((p, q))
    return lab, n


def test_label_classes_equals_a_flood_fill():
    rng = np.random.default_rng(0)
    for _ in range(150):
        c = rng.integers(0, 3, size=(int(rng.integers(1, 16)), int(rng.integers(1, 16))))
        got, n = label_classes(c)
        want, m = _bfs(c)
        assert n == m and (got == want).all()
    # a U shape joins through its bottom: one component, found through a later row
    u = np.zeros((5, 5), int)
    u[:, 0] = u[:, 4] = u[4] = 1
    assert label_classes(u)[1] == 1


def test_label_runs_checks_shapes():
    with pytest.raises(ValueError, match="join masks"):
        label_runs(np.ones((3, 3), bool), np.ones((3, 3), bool), np.ones((2, 3), bool))


def test_components_boxer_boxes_the_rendered_objects():
    boxer = ComponentsBoxer({})
    assert isinstance(boxer, BoxerBackend)
    rng = np.random.default_rng(4)
    for _ in range(50):
        p = w.random_prompt(rng)
        img, _, placed = w.render(p.spec, rng)
        prop, = boxer.propose([w.to_pil(img)], BoxOptions(max_regions=16))
        want = []
        for q in placed:
            m = w.shape_mask(q.obj.shape, q.size)
            ys, xs = np.nonzero(m)
            want.append((q.x0 + xs.min(), q.y0 + ys.min(), q.x0 + xs.max() + 1, q.y0 + ys.max() + 1, m.sum()))
        want.sort(key=lambda b: -b[4])
        assert prop.boxes.dtype == np.float32 and prop.boxes.shape == (len(placed), 4)
        assert sorted(map(tuple, prop.boxes.tolist())) == sorted(tuple(map(float, b[:4])) for b in want)
        assert list(prop.areas) == sorted(prop.areas, reverse=True)
        assert ((prop.confidence > 0) & (prop.confidence <= 1)).all()


def test_components_boxer_options_background_and_touching_colours():
    boxer = ComponentsBoxer({"min_pixels": "2"})
    img = np.zeros((40, 50, 3), np.uint8)
    img[:] = (30, 30, 30)                                   # a dark, non-white background
    img[5:15, 5:15] = (220, 40, 40)
    img[5:15, 15:25] = (40, 70, 220)                        # touches the red square: a separate region
    img[30:32, 40:42] = (40, 170, 60)                       # 4 pixels
    for x in range(30, 40):                                 # a soft gradient stays one region
        img[20:30, x] = (200, 200 - 3 * (x - 30), 40)
    prop, = boxer.propose([img], BoxOptions(max_regions=10))
    boxes = [tuple(b) for b in prop.boxes.tolist()]
    assert (5, 5, 15, 15) in boxes and (15, 5, 25, 15) in boxes and (30, 20, 40, 30) in boxes
    assert (40, 30, 42, 32) in boxes and len(boxes) == 4
    assert len(boxer.propose([img], BoxOptions(max_regions=2))[0].boxes) == 2
    assert len(boxer.propose([img], BoxOptions(max_regions=0))[0].boxes) == 0
    big = boxer.propose([img], BoxOptions(max_regions=10, min_area=50 / (40 * 50)))[0]
    assert len(big.boxes) == 3
    with pytest.raises(ValueError, match="unknown parameter"):
        ComponentsBoxer({"tolerence": "3"})
    with pytest.raises(ValueError, match="tolerance='x' is not a number"):
        ComponentsBoxer({"tolerance": "x"})


def test_content_split_is_stratified_and_names_an_unknown_key():
    # every difficulty stratum contributes to every split, so validation is as hard as evaluation
    by_stratum = {}
    for cat in w.CATEGORIES:
        for c in w._compositions(cat):
            spec = w._comp_spec(*c)
            by_stratum.setdefault(w._stratum(spec), Counter())[w.content_split(spec.content_key())] += 1
    large = [n for n in by_stratum.values() if sum(n.values()) >= 10]
    assert large and all(set(n) == set(w.SPLITS) for n in large)
    with pytest.raises(ValueError, match="'nope' is not the content key"):
        w.content_split("nope")


def test_miscaption_changes_exactly_one_respect_and_stays_renderable():
    rng = np.random.default_rng(3)
    seen = set()
    for category in w.CATEGORIES:
        for _ in range(60):
            p = w.random_prompt(rng, category=category, split="pretrain")
            wrong = w.miscaption(p.spec, rng)
            assert wrong != p.spec, p.text
            kinds, wrong_kinds = set(p.spec.objects), set(wrong.objects)
            if wrong.relation is not None and wrong.relation != p.spec.relation:
                seen.add("flip")
                assert wrong.objects == p.spec.objects and wrong.ordered == p.spec.ordered
            elif len(wrong.objects) != len(p.spec.objects):
                seen.add("count")
                assert abs(len(wrong.objects) - len(p.spec.objects)) == 1 and wrong_kinds <= kinds | wrong_kinds
            else:
                seen.add("attribute")
                assert len(kinds - wrong_kinds) == 1     # one kind replaced by another
            w.render(wrong, rng)                     # placeable on the canvas
    assert seen == {"flip", "count", "attribute"}


def test_caption_noise_renders_other_scenes_under_the_same_captions_and_plans_follow_the_image():
    from srum_jobs.toy import pretrain

    clean = pretrain.generator_batch(np.random.default_rng(0), 16)
    same = pretrain.generator_batch(np.random.default_rng(0), 16, caption_noise=0.0)
    assert clean[1] == same[1] and clean[2] == same[2] and bool((clean[0] == same[0]).all())
    _, prompts, plans = pretrain.generator_batch(np.random.default_rng(0), 64, caption_noise=1.0)
    counts = [int(plan.split("asks for ")[1].split(" ")[0]) for plan in plans]
    asked = [len(w.parse_prompt(t).objects) for t in prompts]
    assert any(c != a for c, a in zip(counts, asked))  # some images hold another number of objects


def test_toy_cli_presets_are_the_pretraining_and_bench_presets():
    # the CLI keeps its own list so `srum --help` stays free of numpy/torch; it must not drift
    from srum_jobs.toy import bench, commands, pretrain

    assert list(commands.PRESET_CHOICES.choices) == list(pretrain.PRESETS) == list(bench.ROUNDS)


def test_generator_step_inputs_draw_the_asked_splits_compositions():
    # pretraining streams the pretrain split; benchmarks/toy_clean_continuation.py streams another split
    import torch

    from srum_jobs.toy import pretrain

    cfg = {**pretrain.preset_config("test")["generator"], "p_uncond": 0.0, "batch": 24}
    for split in ("pretrain", "train"):
        args = (cfg, np.random.default_rng(3), torch.Generator().manual_seed(3))
        _, prompts, *_ = pretrain.generator_step_inputs(*args, split=split)
        splits = {w.content_split(w.parse_prompt(p).content_key()) for p in prompts}
        assert splits == {split}
    default = pretrain.generator_step_inputs(cfg, np.random.default_rng(3), torch.Generator().manual_seed(3))
    assert default[1] == pretrain.generator_step_inputs(cfg, np.random.default_rng(3), torch.Generator().manual_seed(3),
                                                        split="pretrain")[1]
