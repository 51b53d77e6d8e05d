"""The eval stage: per-item resumption, unparsed answers through the whole stage, think mode, the summary
and the report; and the toy benchmark through the real srum_evaluator Triton model (toy_rules)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest

from srum_jobs.config import parse_experiment
from srum_jobs.evaluation import load_benchmark
from srum_jobs.evaluation.run import Run, RunSpec, Scorer, evaluate_run
from srum_jobs.judging.inprocess import InProcessTransport
from srum_jobs.judging.protocols import JudgeReply
from srum_jobs.toy.rules_evaluator import ToyRulesEvaluator
from srum_jobs.stages import evaluate, report
from srum_jobs.stages.common import StageContext, candidate_seed


def _exp(tmp_path, **eval_section):
    return parse_experiment({
        "name": "ev", "storage": {"root": f"file://{tmp_path}/runs"},
        "prompts": {"eval_source": "toy://eval", "eval_limit": 6},
        "model": {"adapter": "toy", "params": {"preset": "test"}},
        "judge": {"url": "127.0.0.1:1", "parse_attempts": 2},
        "generation": {"steps": 2, "batch_size": 4, "resolution": 32},
        "eval": {"understanding": {"limit": 8}, **eval_section}})


@pytest.fixture(scope="module")
def toy_model():
    from srum_jobs.models.base import load_model

    return load_model("toy", {"preset": "test"})


class Recording:
    """Wraps a model: records the prompts it generates; optionally supports think mode (a plan as think
    text, the same image)."""

    def __init__(self, model, think=False):
        self.model, self.supports_think, self.generated = model, think, []

    def generate(self, prompts, seeds, *, think=False, **kw):
        self.generated += list(prompts)
        out = self.model.generate(prompts, seeds, **kw)
        for x in out:
            x.think_text = "plan: place the objects" if think else None
        return out

    def understand(self, *a, **kw):
        return self.model.understand(*a, **kw)


class FlakyRules(ToyRulesEvaluator):
    """The rules evaluator, except that it answers 'I cannot tell.' for prompts containing `unsure`, and
    raises once `fail_after` answers have been given (a crash mid-shard)."""

    def __init__(self, unsure="", fail_after=None):
        super().__init__({})
        self.unsure, self.fail_after, self.calls = unsure, fail_after, 0

    def generate(self, images, instructions, params):
        out = []
        for img, ins in zip(images, instructions):
            self.calls += 1
            if self.fail_after is not None and self.calls > self.fail_after:
                raise RuntimeError("evaluator crashed")
            if self.unsure and self.unsure in ins:
                out.append(JudgeReply(text="I cannot tell."))
            else:
                out += super().generate([img], [ins], params)
        return out


def _in_process(backend):
    @contextlib.asynccontextmanager
    async def transport(exp, store=None, cache_key=None):
        t = InProcessTransport(backend)
        try:
            yield t
        finally:
            await t.close()
    return transport


def test_an_interrupted_run_continues_item_by_item(tmp_path, toy_model):
    exp = _exp(tmp_path)
    ctx = StageContext.create(exp, 1)
    bench = load_benchmark("toy")
    from srum_jobs.toy.world import toy_prompts

    spec = RunSpec(Run("toy", "base", "plain"), bench, toy_prompts("eval")[:6], samples=1)
    seed_of = lambda p, k: candidate_seed(1234, 0, p.index, k)  # noqa: E731

    async def go(backend, model):
        t = InProcessTransport(backend, max_batch=1)
        try:
            return await evaluate_run(ctx, spec, 0, model, Scorer(t, exp.judge, 64), seed_of=seed_of, think=False)
        finally:
            await t.close()

    crashing = Recording(toy_model)
    with pytest.raises(RuntimeError, match="evaluator crashed"):
        asyncio.run(go(FlakyRules(fail_after=3), crashing))
    prefix = ctx.layout.eval_run_prefix(spec.run, 0)
    done = sorted(k for k in ctx.store.list(prefix + "items/"))
    assert 0 < len(done) < 6 and not ctx.store.exists(ctx.layout.eval_results_key(spec.run, 0))
    before = {k: ctx.store.get_bytes(k) for k in done}
    resumed = Recording(toy_model)
    rows = asyncio.run(go(FlakyRules(), resumed))
    assert len(rows) == 6 and [r["index"] for r in rows] == list(range(6))
    assert len(resumed.generated) == 6 - len(done)                 # finished items are not generated again
    assert all(ctx.store.get_bytes(k) == v for k, v in before.items())
    assert ctx.store.is_complete(ctx.layout.eval_results_key(spec.run, 0))
    again = Recording(toy_model)                                   # nothing left: no image, no judgment
    assert asyncio.run(go(FlakyRules(fail_after=0), again)) == rows and again.generated == []


def test_stage_excludes_unparsed_answers_pairs_runs_and_reports(tmp_path, toy_model, monkeypatch):
    exp = _exp(tmp_path, bootstrap_resamples=200)
    backend = FlakyRules(unsure="Prompt: a blue")                   # prompts "a blue ...": unreadable answers
    monkeypatch.setattr(evaluate, "evaluator_transport", _in_process(backend))
    model = Recording(toy_model, think=True)
    monkeypatch.setattr(evaluate, "load_round_model", lambda ctx, **kw: model)
    evaluate.run(exp, 1, 0, 2, progress=False)
    ctx = StageContext.create(exp, 1)
    assert not ctx.store.exists(ctx.layout.eval_summary_key)             # shard 1 of 2 is not done yet
    evaluate.run(exp, 1, 1, 2, progress=False)
    summary = ctx.store.get_json(ctx.layout.eval_summary_key)
    toy = summary["benchmarks"]["toy"]
    prompts = [json.loads(x) for x in ctx.store.get_text(ctx.layout.key("eval", "toy", "prompts.jsonl")).splitlines()]
    unsure = sum(p["text"].startswith("a blue") for p in prompts)
    assert unsure > 0
    for run in ("base/plain", "trained/plain", "base/think", "trained/think"):
        t = toy["runs"][run]
        assert t["items"] == 6 and t["unparsed"] == unsure and t["parsed"] == 6 - unsure
    # the same weights and seeds on both sides: every paired difference is exactly zero
    names = [c["name"] for c in toy["comparisons"]]
    assert names == ["trained - base (plain)", "trained - base (think)", "think - plain (base)",
                     "think - plain (trained)"]
    for c in toy["comparisons"]:
        o = c["accuracy"]["rows"]["overall"]
        assert o["diff"] == 0.0 and o["ci"] == [0.0, 0.0] and c["accuracy"]["prompts"] == 6 - unsure
    assert summary["headline"]["runs"]["base/think"]["unparsed"] == unsure
    assert set(summary["understanding"]["runs"]) == {"base", "trained"}
    assert summary["understanding"]["runs"]["base"]["items"] == 8
    # the marker is written last; a rerun of a finished shard does nothing
    calls = backend.calls
    evaluate.run(exp, 1, 0, 2, progress=False)
    assert backend.calls == calls
    report.run(exp, 1)
    page = ctx.store.get_text(ctx.layout.key("report", "report.html"))
    md = ctx.store.get_text(ctx.layout.key("report", "report.md"))
    assert "trained - base (plain) [95% CI]" in page and "Unparsed evaluator answers" in page
    assert "Understanding regression" in page and "data:image/png;base64," in page
    assert f"images (unparsed) | 6 ({unsure})" in md
    assert "no measurable change (interval includes 0)" in page and "no measurable change" in md
    assert "README, section &#x27;The toy world&#x27;" in page
    lines = report.headline(ctx)["lines"]
    assert any("after SRUM round 1" in line for line in lines)
    assert any(f"unparsed evaluator answers (excluded): {4 * unsure}" in line for line in lines)
    # identical weights: every change is zero and the headline says so in words
    assert any("trained - base (plain): +0.0 [+0.0, +0.0]" in line and "no measurable change" in line
               for line in lines)


@pytest.mark.parametrize("ci, words", [([0.01, 0.05], "a measured gain"), ([-0.05, -0.01], "a measured loss"),
                                       ([-0.01, 0.05], "no measurable change"), ([0.0, 0.03], "no measurable change")])
def test_headline_says_what_the_interval_means(ci, words):
    from srum_jobs.evaluation import tables

    assert tables.verdict({"diff": sum(ci) / 2, "ci": ci, "prompts": 10}).startswith(words)
    assert tables.verdict(None) == "not measured"


def test_think_mode_is_skipped_and_said_when_the_model_has_none(tmp_path, toy_model, monkeypatch):
    exp = _exp(tmp_path, understanding={"enabled": False})
    monkeypatch.setattr(evaluate, "evaluator_transport", _in_process(FlakyRules()))
    monkeypatch.setattr(evaluate, "load_round_model", lambda ctx, **kw: Recording(toy_model, think=False))
    evaluate.run(exp, 1, 0, 1, progress=False)
    ctx = StageContext.create(exp, 1)
    s = ctx.store.get_json(ctx.layout.eval_summary_key)
    assert set(s["benchmarks"]["toy"]["runs"]) == {"base/plain", "trained/plain"}
    assert s["benchmarks"]["toy"]["skipped"]["base/think"] == evaluate.THINK_UNSUPPORTED
    assert "understanding" not in s


def test_stage_refuses_to_evaluate_with_the_trained_model(tmp_path):
    from srum_jobs.config import ConfigError

    exp = _exp(tmp_path, evaluator_backend="toy")
    with pytest.raises(ConfigError, match="understanding side of the toy model"):
        evaluate.run(exp, 1, 0, 1, progress=False)


@pytest.mark.triton
def test_toy_benchmark_through_the_triton_evaluator(triton_server, tmp_path, toy_model, monkeypatch):
    """The real path: instruction -> srum_evaluator (toy_rules) over gRPC -> parser -> aggregation; the
    verdicts equal the rule-based evaluator's own."""
    from srum_jobs.toy.evaluator import evaluate_image

    exp = parse_experiment({**_exp(tmp_path).model_dump(mode="json"), "judge": {"url": triton_server.grpc_url},
                            "eval": {"understanding": {"enabled": False}, "modes": ["plain"]}})
    monkeypatch.setattr(evaluate, "load_round_model", lambda ctx, **kw: toy_model)
    evaluate.run(exp, 1, 0, 1, progress=False)
    ctx = StageContext.create(exp, 1)
    rows = [json.loads(x) for x in ctx.store.get_text(ctx.layout.eval_results_key(Run("toy", "base", "plain"), 0)).splitlines()]
    assert len(rows) == 6 and all(r["parsed"] for r in rows)
    for r in rows:
        assert r["values"]["accuracy"] == float(evaluate_image(ctx.store.get_png(r["image_key"]), r["prompt"]))
        assert r["answers"][0]["text"].startswith("Answer: ")
    assert ctx.store.get_json(ctx.layout.eval_summary_key)["benchmarks"]["toy"]["runs"]["base/plain"]["items"] == 6


def test_analyses_per_step_and_clusters_on_the_toy_world(tmp_path, monkeypatch):
    """Both analyses for base, trained and a named extra checkpoint; the last sampling step's prediction
    is the generated image; resumable per checkpoint; tables and plots reach the report."""
    import srum_jobs.evaluation.evaluator as evaluator_mod
    import srum_jobs.stages.common as common
    from srum_jobs.evaluation import analyses
    from srum_jobs.models.base import load_model
    from srum_jobs.toy.pretrain import ensure_base

    monkeypatch.setattr(evaluator_mod, "evaluator_transport", _in_process(ToyRulesEvaluator({})))
    loads = []

    def fresh(ctx, **kw):
        loads.append(kw)
        return load_model("toy", {"preset": "test"})
    monkeypatch.setattr(common, "load_round_model", fresh)
    exp = _exp(tmp_path, per_step={"enabled": True, "prompts": 4, "steps": [1, 2],
                                   "checkpoints": {"sft": str(ensure_base("test"))}},
               clusters={"enabled": True, "inputs": 4, "clusters": 3})
    ctx = StageContext.create(exp, 1)
    analyses.run_analyses(ctx, progress=False)
    a = analyses.load_analyses(ctx)
    assert set(a["per_step"]) == {"base", "trained", "sft"} and set(a["clusters"]) == {"base", "trained"}
    for r in a["per_step"].values():
        assert set(r["scores"]) == {"1", "2"}
        for cell in r["scores"].values():
            assert cell["n"] == 4 and all(0 <= cell[k] <= 100 for k in ("layout", "detail"))
    base = a["clusters"]["base"]["clusters"]
    assert [c["cluster"] for c in base] == [0, 1, 2]
    assert sum(c["units"] for c in base) + a["clusters"]["base"]["inactive_units"] == a["clusters"]["base"]["units"]
    assert base[0]["specialisation"] >= base[-1]["specialisation"]      # ordered und-specific -> gen-specific
    # the toy's understanding side and generator share no layer: the extreme clusters are fully specialised
    assert base[0]["specialisation"] == pytest.approx(1.0) and base[-1]["specialisation"] == pytest.approx(-1.0)
    n = len(loads)
    analyses.run_analyses(ctx, progress=False)                             # done: nothing is loaded again
    assert len(loads) == n
    tables = dict(analyses.analysis_tables(a))
    assert any(t.startswith("Per-step") for t in tables) and len(analyses.analysis_figures(a)) == 2


def test_predicted_x0_last_step_is_the_generated_image(toy_model):
    import numpy as np

    prompts, seeds = ["a red circle above a blue square", "two green triangles"], [3, 4]
    x0 = toy_model.predicted_x0(prompts, seeds, steps=3, guidance=2.0, at_steps=[1, 3])
    final = toy_model.generate(prompts, seeds, steps=3, guidance=2.0)
    assert all(np.array_equal(np.asarray(a), np.asarray(b.image)) for a, b in zip(x0[3], final))
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(x0[1], x0[3]))
    with pytest.raises(ValueError, match="outside 1..3"):
        toy_model.predicted_x0(prompts, seeds, steps=3, at_steps=[4])
