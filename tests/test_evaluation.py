"""The evaluation package: every benchmark's parser, protocol and aggregation, the paired bootstrap,
the exclusion of unparsed answers, prompt imports of every published format (fixtures built here), the
evaluator checks and the config's eval section."""

from __future__ import annotations

import asyncio
import json
from typing import Dict, List

import numpy as np
import pytest

from srum_jobs.config import ConfigError, parse_experiment
from srum_jobs.evaluation import load_benchmark
from srum_jobs.evaluation.compbench import COMPLEX_COLUMN, parse_compbench
from srum_jobs.evaluation.evaluator import check_evaluator
from srum_jobs.evaluation.protocol import Answer
from srum_jobs.evaluation.reasonbench import parse_scores
from srum_jobs.evaluation.stats import category_means, paired_bootstrap, prompt_values, summarise_run
from srum_jobs.evaluation.wise import parse_wise, wiscore
from srum_jobs.prompts import PromptError, load_prompts
from srum_jobs.records import Prompt

# ------------------------------------------------------------------------------------------ parsers


@pytest.mark.parametrize("text, score", [
    ('{"score": 72, "explanation": "mostly right"}', 72.0),
    ('```json\n{"score": "85", "explanation": "x"}\n```', 85.0),
    ("score: 40", 40.0), ("Score: 0", 0.0), ("100", 100.0), ('{"score": 72,5}', 72.5),   # a decimal comma, read whole
])
def test_compbench_parser(text, score):
    r = parse_compbench(text)
    assert r.parsed == (score is not None) and r.value == score


@pytest.mark.parametrize("text", ['{"score": 150}', "score: -3", "score: 70-80", "score: 72%", "I like it",
                                  '{"explanation": "no score"}', "score: 7,2,1"])
def test_compbench_parser_never_reads_a_prefix_or_out_of_range(text):
    assert parse_compbench(text).parsed is False


@pytest.mark.parametrize("text, got", [
    ("Consistency: 2\nRealism: 1\nAesthetic Quality: 0", (2, 1, 0)),
    ("**Consistency**: 1\n**Realism:** 2\n**Aesthetic Quality**: 1", (1, 2, 1)),
    ('{"consistency": 2, "realism": 2, "aesthetic_quality": 1}', (2, 2, 1)),
    ("2\n1\n0", (2, 1, 0)),                                   # the reference's bare three-line fallback
])
def test_wise_parser(text, got):
    r = parse_wise(text)
    assert r.parsed and (r.value["consistency"], r.value["realism"], r.value["aesthetic"]) == got


@pytest.mark.parametrize("text", [
    "Consistency: 10\nRealism: 1\nAesthetic Quality: 0",     # the reference would read "1" of "10"
    "Consistency: 2\nRealism: 1",                             # one missing
    "Consistency: <your score>\nRealism: <your score>\nAesthetic Quality: <your score>",   # the format echoed
    "Consistency: 1,5\nRealism: 1\nAesthetic Quality: 3",
])
def test_wise_parser_unparsed(text):
    assert parse_wise(text).parsed is False


def test_wiscore_formula():
    assert wiscore(2, 2, 2) == pytest.approx(1.0) and wiscore(0, 0, 0) == 0.0
    assert wiscore(2, 1, 0) == pytest.approx((0.7 * 2 + 0.2 * 1) / 2)


@pytest.mark.parametrize("text, n, got", [
    ('{"reason": "x", "score": [1, 0.5, 0]}', 3, [1.0, 0.5, 0.0]),
    ('```json\n{"reason": ["a"], "score": ["1", "0.5"]}\n```', 2, [1.0, 0.5]),
    ("reason: ...\nscore: [0, 1]", 2, [0.0, 1.0]),
])
def test_reasonbench_parser(text, n, got):
    r = parse_scores(text, n)
    assert r.parsed and r.value == got


@pytest.mark.parametrize("text, n", [('{"score": [1, 0.7]}', 2), ('{"score": [1]}', 2), ('{"score": [1, 0, 1]}', 2),
                                     ("no json", 2), ('{"score": "1"}', 1)])
def test_reasonbench_parser_unparsed(text, n):
    assert parse_scores(text, n).parsed is False


# ------------------------------------------------------------------------------------ protocols


def _asker(answers: Dict[str, str], log: List[str] = None):
    """A stand-in for the evaluator: a canned answer per question key (keys not listed: 'no idea')."""
    async def ask(key, instruction, parse):
        if log is not None:
            log.append(key)
        text = answers.get(key, "no idea")
        r = parse(text)
        return Answer(parsed=bool(r.parsed), value=r.value, text=text)
    return ask


def _score(bench, prompt, answers, log=None):
    return asyncio.run(bench.score(_asker(answers, log), prompt))


def _geneval_prompt(meta, text="a photo"):
    return Prompt(id="g", text=text, category=meta["tag"], index=0, meta=meta)


def test_geneval_counting_uses_include_and_exclude():
    g = load_benchmark("geneval")
    p = _geneval_prompt({"tag": "counting", "include": [{"class": "clock", "count": 2}],
                         "exclude": [{"class": "clock", "count": 3}]})
    assert _score(g, p, {"count:clock": "Answer: 2"}).values == {"accuracy": 1.0}
    assert _score(g, p, {"count:clock": "There are three clocks."}).values == {"accuracy": 0.0}   # exclude
    assert _score(g, p, {"count:clock": "1"}).values == {"accuracy": 0.0}
    r = _score(g, p, {"count:clock": "2 or 3"})
    assert not r.parsed and r.values == {}                          # an unreadable count is never right or wrong


def test_geneval_color_and_position_follow_genevals_rules():
    g = load_benchmark("geneval")
    color = _geneval_prompt({"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "green"},
                                                               {"class": "cat", "count": 1, "color": "red"}]})
    ok = {"count:bus": "1", "count:green bus": "1", "count:cat": "1", "count:red cat": "1"}
    assert _score(g, color, ok).values["accuracy"] == 1.0
    assert _score(g, color, {**ok, "count:red cat": "0"}).values["accuracy"] == 0.0
    pos = _geneval_prompt({"tag": "position", "include": [{"class": "teddy bear", "count": 1},
                                                           {"class": "dog", "count": 1, "position": ["right of", 0]}]})
    base = {"count:teddy bear": "1", "count:dog": "1"}
    assert _score(g, pos, {**base, "position:1": "Yes."}).values["accuracy"] == 1.0
    assert _score(g, pos, {**base, "position:1": "No"}).values["accuracy"] == 0.0
    log: List[str] = []
    r = _score(g, pos, {"count:teddy bear": "0", "count:dog": "1"}, log)
    assert r.values["accuracy"] == 0.0 and "position:1" not in log   # no matched target: position is not asked
    assert not _score(g, pos, {**base, "position:1": "Answer: <your answer>"}).parsed


def test_geneval_aggregates_the_mean_over_tasks():
    g = load_benchmark("geneval")
    rows = g.aggregate({"single_object": 1.0, "counting": 0.5, "position": 0.0}, {"single_object": 80,
                                                                                  "counting": 10, "position": 5})
    assert rows["overall"] == pytest.approx(0.5)


def test_compbench_table_combines_the_three_complex_categories_like_the_reference():
    c = load_benchmark("compbench")
    means = {"color": 80.0, "shape": 60.0, "complex": 50.0, "complex_action": 70.0, "complex_spatial": 30.0}
    rows = c.aggregate(means, {k: 10 for k in means})
    assert rows[COMPLEX_COLUMN] == pytest.approx(50.0)
    assert rows["overall"] == pytest.approx((80 + 60 + 50) / 3)
    assert c.rows(list(means)) == ["color", "shape", "complex", "complex_action", "complex_spatial",
                                   COMPLEX_COLUMN, "overall"]
    p = Prompt(id="1", text="a red apple", category="color", index=0)
    assert _score(c, p, {"score": '{"score": 64, "explanation": "ok"}'}).values == {"score": 64.0}
    assert "a red apple" in c.templates.render("compbench", prompt="a red apple")


def test_wise_item_and_table():
    w = load_benchmark("wise")
    p = Prompt(id="wise-1", text="Traditional food", category="culture", index=0, meta={"explanation": "mooncakes"})
    r = _score(w, p, {"wiscore": "Consistency: 2\nRealism: 1\nAesthetic Quality: 1"})
    assert r.values["wiscore"] == pytest.approx((1.4 + 0.2 + 0.1) / 2)
    rows = w.aggregate({"culture": 0.5, "time": 1.0}, {"culture": 400, "time": 100})
    assert rows["overall"] == pytest.approx((0.5 * 400 + 100) / 500)   # categories weighted by size


def test_reasonbench_item_weights_and_describes_first():
    rb = load_benchmark("reasonbench")
    groups = {"entity_evaluation": {"q1": "a?", "c1": "1/0.5/0", "q2": "b?", "c2": "..."},
              "other_details_evaluation": {"q1": "c?", "c1": "..."},
              "quality_evaluation": {"aq1": "d?", "ac1": "...", "scoring": "note"}}
    p = Prompt(id="entity-0001", text="The city hosting ...", category="entity", index=0,
               meta={"dimension": "entity", "groups": groups})
    log: List[str] = []
    r = _score(rb, p, {"describe": "A city.", "entity_evaluation": '{"score": [1, 0.5]}',
                       "other_details_evaluation": '{"score": [0]}', "quality_evaluation": '{"score": [1]}'}, log)
    assert log[0] == "describe"
    assert r.values["accuracy"] == pytest.approx(0.7 * 0.75 + 0.3 * 0.0) and r.values["quality"] == 1.0
    bad = _score(rb, p, {"describe": "A city.", "entity_evaluation": '{"score": [1]}',
                         "other_details_evaluation": '{"score": [0]}', "quality_evaluation": '{"score": [1]}'})
    assert not bad.parsed and "entity_evaluation" in bad.note
    assert not _score(rb, p, {}).parsed                    # no description: nothing else is asked


def test_toy_protocol_reads_yes_no():
    t = load_benchmark("toy")
    p = Prompt(id="t", text="a red circle", category="color", index=0)
    assert _score(t, p, {"match": "Answer: yes\nReason: ok"}).values == {"accuracy": 1.0}
    assert _score(t, p, {"match": "Answer: no"}).values == {"accuracy": 0.0}
    assert not _score(t, p, {"match": "I cannot tell."}).parsed


def test_templates_override_and_checks(tmp_path):
    from srum_jobs.judging.templates import TemplateError

    (tmp_path / "compbench.txt").write_text("Rate $prompt from 0 to 100.")
    assert load_benchmark("compbench", str(tmp_path)).templates.render("compbench", prompt="x") == "Rate x from 0 to 100."
    (tmp_path / "compbench.txt").write_text("Rate it.")
    with pytest.raises(TemplateError, match=r"compbench.txt is missing required placeholder\(s\) \$prompt"):
        load_benchmark("compbench", str(tmp_path))
    (tmp_path / "compbench.txt").write_text("Rate $prompt $oops.")
    with pytest.raises(TemplateError, match=r"unknown placeholder\(s\) \$oops"):
        load_benchmark("compbench", str(tmp_path))


# ------------------------------------------------------------------- unparsed answers are excluded


def _item(pid, cat, value, parsed=True, sample=0):
    return {"prompt_id": pid, "category": cat, "sample": sample, "parsed": parsed,
            "values": {"accuracy": value} if parsed else {}}


def test_an_unparsed_answer_is_excluded_and_counted_never_scored():
    """The issue's bug: 'I cannot tell.' became 0.5. Here it is out of every mean and shows in the counts."""
    items = [_item("a", "color", 1.0), _item("b", "color", 0.0), _item("c", "color", None, parsed=False),
             _item("d", "shape", 1.0)]
    t = summarise_run(items, ("accuracy",), load_benchmark("toy").aggregate)
    assert t["items"] == 4 and t["parsed"] == 3 and t["unparsed"] == 1
    assert t["unparsed_by_category"] == {"color": 1}
    assert t["metrics"]["accuracy"]["rows"]["color"] == 0.5          # (1 + 0) / 2: "c" is not in it
    assert t["metrics"]["accuracy"]["rows"]["overall"] == pytest.approx(2 / 3)


def test_prompt_values_average_samples_of_a_prompt():
    items = [_item("a", "color", 1.0, sample=0), _item("a", "color", 0.0, sample=1), _item("b", "color", 1.0),
             _item("c", "color", None, parsed=False)]
    v = prompt_values(items, "accuracy")
    assert v == {"a": ("color", 0.5), "b": ("color", 1.0)}
    assert category_means(v) == ({"color": 0.75}, {"color": 2})


# --------------------------------------------------------------------------------------- bootstrap


def _values(rng, n, p, cats=("x", "y")):
    return {f"{c}{i}": (c, float(rng.random() < p)) for c in cats for i in range(n)}


def test_paired_bootstrap_identical_runs_have_a_zero_interval():
    rng = np.random.default_rng(0)
    a = _values(rng, 30, 0.5)
    out = paired_bootstrap(a, dict(a), load_benchmark("toy").aggregate, resamples=500)
    assert out["rows"]["overall"]["diff"] == 0.0 and out["rows"]["overall"]["ci"] == [0.0, 0.0]
    assert out["prompts"] == 60 and out["unpaired"] == 0


def test_paired_bootstrap_covers_a_known_shift_and_pairs_only_shared_prompts():
    rng = np.random.default_rng(1)
    b = {f"p{i}": ("x" if i % 2 else "y", float(rng.normal())) for i in range(400)}
    a = {k: (c, v + 0.3 + 0.1 * float(rng.normal())) for k, (c, v) in b.items()}
    a["only-a"] = ("x", 100.0)                                       # not in b: not paired
    out = paired_bootstrap(a, b, load_benchmark("toy").aggregate, resamples=1000, seed=3)
    o = out["rows"]["overall"]
    assert o["diff"] == pytest.approx(0.3, abs=0.02) and o["ci"][0] < 0.3 < o["ci"][1]
    assert o["ci"][1] - o["ci"][0] < 0.05                             # paired: the shared noise cancels
    assert out["unpaired"] == 1 and out["prompts"] == 400
    again = paired_bootstrap(a, b, load_benchmark("toy").aggregate, resamples=1000, seed=3)
    assert again == out                                               # deterministic in its seed


def test_paired_bootstrap_runs_the_benchmarks_own_aggregation():
    c = load_benchmark("compbench")
    rng = np.random.default_rng(2)
    cats = ("color", "complex", "complex_action")
    b = {f"{cat}{i}": (cat, float(rng.uniform(0, 100))) for cat in cats for i in range(20)}
    a = {k: (cat, v + (10.0 if cat == "color" else 0.0)) for k, (cat, v) in b.items()}
    rows = paired_bootstrap(a, b, c.aggregate, resamples=300)["rows"]
    assert rows["color"]["diff"] == pytest.approx(10.0) and rows[COMPLEX_COLUMN]["diff"] == pytest.approx(0.0)
    assert rows["overall"]["diff"] == pytest.approx(5.0)             # mean of color and the complex column
    assert rows["overall"]["ci"][0] == pytest.approx(5.0) and rows["overall"]["ci"][1] == pytest.approx(5.0)


# ---------------------------------------------------------------------------------------- imports


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_geneval_metadata_imports_as_published_with_its_clauses(tmp_path):
    lines = [{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
             {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
              "prompt": "a photo of two clocks"},
             {"tag": "position", "include": [{"class": "kite", "count": 1},
                                             {"class": "wine glass", "count": 1, "position": ["above", 0]}],
              "prompt": "a photo of a wine glass above a kite"}]
    src = _write(tmp_path / "evaluation_metadata.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    ps = load_prompts(src)                                           # auto-detected from the content
    assert [p.category for p in ps] == ["single_object", "counting", "position"]
    assert ps[1].meta["exclude"] == [{"class": "clock", "count": 3}] and ps[2].meta["include"][1]["position"] == ["above", 0]
    assert [p.id for p in ps] == ["geneval-0001", "geneval-0002", "geneval-0003"]
    bad = _write(tmp_path / "bad.jsonl", json.dumps({"tag": "position", "include": [
        {"class": "dog", "count": 1, "position": ["near", 0]}], "prompt": "x"}) + "\n")
    with pytest.raises(PromptError, match=r"bad.jsonl: line 1: include\[0\].position must be"):
        load_prompts(bad)
    bad2 = _write(tmp_path / "bad2.jsonl", json.dumps({"tag": "x", "include": [{"class": "dog", "count": 0}],
                                                       "prompt": "x"}) + "\n")
    with pytest.raises(PromptError, match=r"line 1: include\[0\].count must be an integer >= 1"):
        load_prompts(bad2)


def test_wise_files_import_with_explanation_and_wise_categories(tmp_path):
    rows = [{"Prompt": "Traditional food of the Mid-Autumn Festival", "Explanation": "mooncakes",
             "Category": "Cultural knowledge", "Subcategory": "Festival", "prompt_id": 1},
            {"Prompt": "An apple tree in autumn", "Explanation": "yellow leaves", "Category": "Biology",
             "Subcategory": "State", "prompt_id": 701},
            {"Prompt": "Sydney at 8 AM in San Francisco", "Explanation": "evening", "Category": "time",
             "Subcategory": "Horizontal time", "prompt_id": 401}]
    ps = load_prompts(_write(tmp_path / "w.json", json.dumps(rows)))
    assert [(p.id, p.category) for p in ps] == [("wise-1", "culture"), ("wise-701", "biology"), ("wise-401", "time")]
    assert ps[0].meta["explanation"] == "mooncakes" and ps[0].meta["subcategory"] == "Festival"
    rows[1]["Category"] = "Astrology"
    with pytest.raises(PromptError, match=r"w2.json: entry 1: field 'Category' is 'Astrology'"):
        load_prompts(_write(tmp_path / "w2.json", json.dumps(rows)))


def _reasonbench(root, n=3):
    prompts = [{"id": i, "prompt": f"idiom {i}", "idiom": "break the ice", "idiom_meaning": "relax", "tag": "x"}
               for i in range(1, n + 1)]
    qs = [{"id": i, "prompt": f"idiom {i}", "image_content": "...",
           "reason_evaluation": {"q1": "a?", "c1": "1/0.5/0", "q2": "b?", "c2": {"score": "1=..."}},
           "quality_evaluation": {"aq1": "c?", "ac1": "..."}} for i in range(1, n + 1)]
    _write(root / "prompts" / "idiom_interpretation.json", json.dumps(prompts))
    _write(root / "evaluation_qs" / "evaluation_idiom.json", json.dumps(qs))
    sci = [{"id": 1, "prompt": "wood and iron in water", "explicit_meaning": "wood floats", "tag": "physics"}]
    sci_qs = [{"id": 1, "prompt": "a different, explicit prompt", "scientific_evaluation": {"q1": "floats?", "c1": "."},
               "other_details_evaluation": {"q1": "shapes?", "c1": "."}, "quality_evaluation": {"q1": "clear?", "c1": "."}}]
    _write(root / "prompts" / "scientific_reasoning.json", json.dumps(sci))
    _write(root / "evaluation_qs" / "evaluation_scientific.json", json.dumps(sci_qs))


def test_reasonbench_joins_prompts_with_their_questions(tmp_path):
    _reasonbench(tmp_path / "rb")
    one = load_prompts(str(tmp_path / "rb" / "prompts" / "idiom_interpretation.json"))
    assert len(one) == 3 and one[0].id == "idiom-0001" and one[0].category == "idiom"
    assert set(one[0].meta["groups"]) == {"reason_evaluation", "quality_evaluation"}
    sci = load_prompts(str(tmp_path / "rb" / "prompts" / "scientific_reasoning.json"))
    assert sci[0].text == "wood and iron in water"               # the generation prompt, not the evaluation one
    (tmp_path / "rb" / "evaluation_qs" / "evaluation_idiom.json").write_text(json.dumps([{"id": 1}]))
    with pytest.raises(PromptError, match=r"no evaluation questions for prompt id\(s\) \[2, 3\]"):
        load_prompts(str(tmp_path / "rb" / "prompts" / "idiom_interpretation.json"))


def test_reasonbench_folder_imports_every_dimension(tmp_path):
    _reasonbench(tmp_path / "rb")
    with pytest.raises(PromptError, match="prompt file not found.*textual_image_design.json"):
        load_prompts(str(tmp_path / "rb"))                        # a folder means all four dimensions
    for pfile, efile, groups in (("textual_image_design.json", "evaluation_textual_image.json",
                                  ("reason_evaluation", "quality_evaluation")),
                                 ("entity_reasoning.json", "evaluation_entity.json",
                                  ("entity_evaluation", "other_details_evaluation", "quality_evaluation"))):
        _write(tmp_path / "rb" / "prompts" / pfile, json.dumps([{"id": 1, "prompt": "p"}]))
        _write(tmp_path / "rb" / "evaluation_qs" / efile,
               json.dumps([{"id": 1, **{g: {"q1": "?", "c1": "."} for g in groups}}]))
    ps = load_prompts(str(tmp_path / "rb"))
    assert [p.category for p in ps] == ["idiom"] * 3 + ["textual", "entity", "scientific"]
    assert [p.index for p in ps] == list(range(6)) and len({p.id for p in ps}) == 6


def test_imported_jsonl_keeps_metadata_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from srum_jobs.cli import main

    lines = [{"tag": "counting", "include": [{"class": "clock", "count": 2}], "prompt": "two clocks"}]
    src = _write(tmp_path / "meta.jsonl", json.dumps(lines[0]) + "\n")
    res = CliRunner().invoke(main, ["prompts", "import", src, f"file://{tmp_path}/out.jsonl"])
    assert res.exit_code == 0, res.output
    back = load_prompts(str(tmp_path / "out.jsonl"))
    assert back[0].meta["include"] == [{"class": "clock", "count": 2}] and back[0].category == "counting"
    plain = _write(tmp_path / "plain.jsonl", json.dumps({"prompt": "x", "tag": "counting", "include": []}) + "\n")
    with pytest.raises(PromptError, match="GenEval metadata: import it with --format geneval"):
        load_prompts(plain, "jsonl")


def test_prompt_without_metadata_serialises_as_before():
    p = Prompt(id="1", text="a cat", category="x", index=0)
    assert "meta" not in p.to_json_line()
    assert '"meta":{"a":1}' in Prompt(id="1", text="a cat", index=0, meta={"a": 1}).to_json_line()


# ---------------------------------------------------------------------------- config and evaluator


def test_eval_section_reads_old_files_and_names_the_new_field():
    exp = parse_experiment({"name": "x", "eval": {"benchmark": "compbench", "understanding_check": False}})
    assert [b.name for b in exp.eval.benchmarks] == ["compbench"] and exp.eval.judge_agreement is False
    with pytest.raises(ConfigError, match="replaced by eval.benchmarks"):
        parse_experiment({"name": "x", "eval": {"benchmark": "toy", "benchmarks": [{"name": "toy"}]}})
    with pytest.raises(ConfigError, match=r"listed twice"):
        parse_experiment({"name": "x", "eval": {"benchmarks": [{"name": "toy"}, {"name": "toy"}]}})


@pytest.mark.parametrize("changes, match", [
    ({"judge": {"evaluator_model": None}}, "judge.evaluator_model is not set"),
    ({"judge": {"evaluator_model": "srum_judge"}}, "same Triton model as judge.judge_model"),
    ({"eval": {"evaluator_backend": "toy"}}, "understanding side of the toy model being trained"),
    ({"model": {"adapter": "bagel", "checkpoint": "/w/bagel"},
      "eval": {"evaluator_backend": "hf", "evaluator_params": {"model_path": "file:///w/bagel/"}}}, "is model.checkpoint"),
])
def test_evaluation_refuses_the_model_being_trained(changes, match):
    with pytest.raises(ConfigError, match=match):
        check_evaluator(parse_experiment({"name": "x", **changes}))


def test_a_different_evaluator_is_accepted():
    check_evaluator(parse_experiment({"name": "x"}))                          # toy_rules for the toy model
    check_evaluator(parse_experiment({"name": "x", "model": {"adapter": "bagel", "checkpoint": "/w/bagel"},
                                      "eval": {"evaluator_backend": "hf",
                                               "evaluator_params": {"model_path": "/w/qwen72b"}}}))
