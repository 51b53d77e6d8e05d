"""End to end: a tiny randomly initialised Qwen2.5-VL, served as `srum_evaluator` by a real local
tritonserver (hf backend), scores a handful of images for every benchmark through the eval stage.

Its answers are nonsense, so this asserts the machinery, not the numbers: each benchmark's instructions
reach the model unchanged (the served answer equals the same model's in-process answer to the instruction
the benchmark renders), every answer is parsed by its protocol exactly as offline, unreadable answers are
re-asked per judge.parse_attempts and then excluded and counted (never scored), and the tables aggregate
what was parsed. Fixtures are built here in each published format."""

from __future__ import annotations

import json
import os
import sysconfig

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("torchvision")  # the Qwen2-VL processor's video half imports it

from srum_jobs.config import parse_experiment  # noqa: E402
from srum_jobs.evaluation import load_benchmark  # noqa: E402
from srum_jobs.evaluation.run import Run, read_results, summary_key  # noqa: E402
from srum_jobs.models.base import GeneratedImage  # noqa: E402
from srum_jobs.stages import evaluate  # noqa: E402
from srum_jobs.stages.common import StageContext  # noqa: E402

MAX_NEW_TOKENS = 16


class RandomImages:
    """A stand-in generator: a seeded random 64x64 image per (prompt, seed); no think mode."""

    name, supports_think = "random", False

    def generate(self, prompts, seeds, **kw):
        from PIL import Image

        return [GeneratedImage(Image.fromarray(np.random.default_rng(int(s)).integers(0, 256, (64, 64, 3),
                                                                                      dtype=np.uint8)), int(s))
                for s in seeds]


def _fixtures(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "val.json").write_text(json.dumps([
        {"Question": "a red apple and a green cup", "Category": "color", "Question_id": 1},
        {"Question": "a man riding a horse next to a tree", "Category": "complex", "Question_id": 2}]))
    (d / "geneval.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
         "prompt": "a photo of two clocks"},
        {"tag": "position", "include": [{"class": "kite", "count": 1},
                                        {"class": "dog", "count": 1, "position": ["above", 0]}],
         "prompt": "a photo of a dog above a kite"}]) + "\n")
    (d / "wise.json").write_text(json.dumps([
        {"Prompt": "Traditional food of the Mid-Autumn Festival", "Explanation": "mooncakes",
         "Category": "Cultural knowledge", "Subcategory": "Festival", "prompt_id": 1},
        {"Prompt": "Ice left in the sun for an hour", "Explanation": "a puddle", "Category": "Physical Knowledge",
         "Subcategory": "Thermodynamics", "prompt_id": 801}]))
    rb = d / "reasonbench"
    (rb / "prompts").mkdir(parents=True)
    (rb / "evaluation_qs").mkdir()
    (rb / "prompts" / "idiom_interpretation.json").write_text(json.dumps(
        [{"id": 1, "prompt": "He broke the ice at the meeting.", "idiom": "break the ice", "idiom_meaning": "x",
          "tag": "social"}]))
    (rb / "evaluation_qs" / "evaluation_idiom.json").write_text(json.dumps(
        [{"id": 1, "prompt": "He broke the ice at the meeting.", "image_content": "...",
          "reason_evaluation": {"q1": "Is it a meeting?", "c1": "1: yes; 0.5: unclear; 0: no",
                                "q2": "Are people relaxed?", "c2": "1: yes; 0.5: some; 0: no"},
          "quality_evaluation": {"q1": "Is the image clear?", "c1": "1: clear; 0.5: blurry; 0: broken"}}]))
    return d


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    from srum_jobs.models.hf_judge import save_random_qwen2_5_vl

    return save_random_qwen2_5_vl(tmp_path_factory.mktemp("qwen25vl-evaluator"), seed=0)


@pytest.fixture(scope="module")
def evaluator_server(qwen_dir, tmp_path_factory):
    from srum_jobs.judging.server import EVALUATOR_MODEL, LocalTritonServer, ModelSpec, TritonNotFound

    # The python backend stub must load this interpreter's libpython (see test_hf_judge.py).
    libdir = sysconfig.get_config_var("LIBDIR")
    old = os.environ.get("LD_LIBRARY_PATH")
    if libdir and os.path.exists(os.path.join(libdir, "libpython3.11.so.1.0")):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, old) if p)
    params = {"model_path": str(qwen_dir), "device": "cpu", "dtype": "float32", "max_batch_size": "8"}
    try:
        server = LocalTritonServer({EVALUATOR_MODEL: ModelSpec("hf", params)},
                                   run_dir=tmp_path_factory.mktemp("triton-qwen"))
    except TritonNotFound as e:
        pytest.skip(f"tritonserver not installed: {e}")
    try:
        with server:
            yield server, params
    finally:
        if old is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = old


@pytest.mark.triton
@pytest.mark.slow
def test_every_benchmark_through_a_served_qwen2_5_vl(evaluator_server, tmp_path, monkeypatch):
    from srum_jobs.judging.protocols import JudgeParams
    from srum_jobs.models.hf_judge import HFJudgeBackend

    server, params = evaluator_server
    d = _fixtures(tmp_path / "data")
    exp = parse_experiment({
        "name": "qwen-eval", "storage": {"root": f"file://{tmp_path}/runs"},
        "prompts": {"eval_source": "toy://eval", "eval_limit": 2},
        "model": {"adapter": "diffusers", "checkpoint": "/not/used"},
        "judge": {"url": server.grpc_url, "parse_attempts": 2, "max_in_flight": 16},
        "generation": {"resolution": 64, "batch_size": 8},
        "eval": {"benchmarks": [{"name": "compbench", "prompts": str(d / "val.json")},
                                {"name": "geneval", "prompts": str(d / "geneval.jsonl")},
                                {"name": "wise", "prompts": str(d / "wise.json")},
                                {"name": "reasonbench", "prompts": str(d / "reasonbench" / "prompts" / "idiom_interpretation.json")},
                                {"name": "toy"}],
                 "modes": ["plain"], "understanding": {"enabled": False}, "max_new_tokens": MAX_NEW_TOKENS,
                 "evaluator_backend": "hf", "evaluator_params": {"model_path": "/evaluator/qwen"},
                 "bootstrap_resamples": 200}})
    monkeypatch.setattr(evaluate, "load_round_model", lambda ctx, **kw: RandomImages())
    evaluate.run(exp, 1, 0, 1, progress=False)

    ctx = StageContext.create(exp, 1)
    summary = ctx.store.get_json(summary_key(ctx.layout))
    local = HFJudgeBackend({**params, "max_batch_size": "1"})
    reasks = 0
    for name, expected_items in (("compbench", 2), ("geneval", 2), ("wise", 2), ("reasonbench", 1), ("toy", 2)):
        bench = load_benchmark(name)
        b = summary["benchmarks"][name]
        for variant in ("base", "trained"):
            rows = read_results(ctx.store, ctx.layout, Run(name, variant, "plain"), [0])
            table = b["runs"][f"{variant}/plain"]
            assert len(rows) == table["items"] == expected_items
            assert table["parsed"] + table["unparsed"] == table["items"]
            assert table["parsed"] == sum(r["parsed"] for r in rows)
            for r in rows:
                assert r["answers"], "every item asked the evaluator something"
                for a in r["answers"]:
                    assert isinstance(a["text"], str) and 1 <= a["attempts"] <= 2
                    reasks += a["attempts"] == 2
                    if not a["parsed"]:
                        assert a["attempts"] == 2          # unreadable answers were re-asked, then given up
                if not r["parsed"]:
                    assert r["values"] == {}                 # an unparsed item is never scored
            # the table aggregates exactly the parsed items
            parsed = [r for r in rows if r["parsed"]]
            metric = bench.metrics[0]
            overall = table["metrics"][metric]["rows"].get("overall")
            assert (overall is None) == (not parsed)
        # the same images on both sides (same seeds): the comparison pairs prompts parsed in both
        comp = b["comparisons"][0]
        assert comp["name"] == "trained - base (plain)"
    assert reasks > 0                                         # nonsense answers exercised the retry path
    # what the server answered is what the same model answers in-process to the rendered instruction
    cb = load_benchmark("compbench")
    rows = read_results(ctx.store, ctx.layout, Run("compbench", "base", "plain"), [0])
    from srum_jobs.judging.templates import FORMAT_REMINDER

    for r in rows:
        img = ctx.store.get_png(r["image_key"])
        a = r["answers"][0]
        instruction = cb.templates.render("compbench", prompt=r["prompt"])
        if a["parsed"] and a["attempts"] == 2:     # the re-ask's answer was kept; else the first (best) one
            instruction = f"{instruction}\n\n{FORMAT_REMINDER}"
        expect = local.generate([img], [instruction], JudgeParams(max_new_tokens=MAX_NEW_TOKENS))[0].text
        assert a["text"] == expect
    wise = load_benchmark("wise")
    for r in read_results(ctx.store, ctx.layout, Run("wise", "base", "plain"), [0]):
        from srum_jobs.evaluation.wise import parse_wise

        assert parse_wise(r["answers"][0]["text"]).parsed == r["parsed"]       # parsed as offline
    assert wise.templates.origins["wise"] == "<default wise.txt>"
    assert summary["headline"]["benchmark"] == "compbench"
