"""`srum bench toy` and `srum toy pretrain` through the CLI, on the test preset (seconds); the methods'
reward settings, the paired statistics and the summary."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from srum_jobs.toy import bench as B
from srum_jobs.toy import world as w

CATS = set(w.CATEGORIES)
CONTRACT = ["base", "base_think", "sft", "sft_filtered", "sample_reward", "srum_paper", "srum_debiased", "srum",
            "srum_no_global", "srum_no_ref", "srum_no_anchor", "srum_sparse", "srum_signed", "srum_lambda_0", "srum_lambda_1",
            "sft_think", "srum_think"]


def _check_method(name, r):
    assert {"overall", "overall_std", "per_category", "overall_ci", "per_category_ci", "diagnostics"} <= set(r)
    assert 0.0 <= r["overall"] <= 1.0 and r["overall_std"] >= 0.0
    assert set(r["per_category"]) == CATS and all(0.0 <= v <= 1.0 for v in r["per_category"].values())
    lo, hi = r["overall_ci"]
    assert -100.0 <= lo <= hi <= 100.0
    assert set(r["diagnostics"]) == {"object_pixels", "extra_objects", "blobs", "x0_mass_t1"}


@pytest.mark.slow
def test_bench_cli_writes_the_json_shape_of_the_issue(tmp_path):
    from srum_jobs.bench_cli import bench_group

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(bench_group, ["toy", "--preset", "test", "--ablations", "--lambda-c", "0,1", "--seeds",
                                           "2", "--json", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert set(data) >= {"preset", "seeds", "judge_agreement", "methods"}
    assert data["preset"] == "test" and data["seeds"] == 2 and 0.0 <= data["judge_agreement"] <= 1.0
    assert list(data["methods"]) == CONTRACT
    for name, r in data["methods"].items():
        _check_method(name, r)
    assert data["methods"]["base"]["overall_ci"] == [0.0, 0.0]
    assert "overall_ci_vs_base_think" in data["methods"]["srum_think"]
    # trained rows are paired with the SFT row of their mode too; SFT and the base rows are not
    assert "overall_ci_vs_sft" in data["methods"]["srum"] and "overall_ci_vs_sft" in data["methods"]["srum_think"]
    assert set(data["methods"]["srum"]["per_category_ci_vs_sft"]) == CATS
    assert not {"overall_ci_vs_sft"} & (set(data["methods"]["sft"]) | set(data["methods"]["base_think"]))
    assert "95% CI vs sft of the same mode" in res.output
    # the default recipe is the debiased weighting: one training, two names
    assert data["aliases"] == {"srum": "srum_debiased"}
    assert data["methods"]["srum"] == data["methods"]["srum_debiased"]
    assert "judge agreement" in res.output and "srum_signed" in res.output and "x0_mass_t1" in res.output
    bad = CliRunner().invoke(bench_group, ["toy", "--preset", "test", "--lambda-c", "0,x"])
    assert bad.exit_code != 0 and "0,x" in bad.output


def test_bench_base_methods_and_details(tmp_path):
    details = {}
    data = B.run_bench("test", seeds=1, details=details, round_cfg=B.RoundConfig(
        **{**B.asdict(B.ROUNDS["test"]), "diagnostics": False}))
    assert list(data["methods"]) == ["base", "base_think", "sft", "sft_filtered", "sample_reward", "srum_paper",
                                     "srum_debiased", "srum", "sft_think", "srum_think"]
    assert data["methods"]["base"]["overall_std"] == 0.0 and "diagnostics" not in data["methods"]["base"]
    assert details["kept"]["sft"] == [10] and details["train_prompts"] == 5
    assert details["train"]["sft"][0]["steps"] == B.ROUNDS["test"].steps(10) == 5
    assert {"generate", "judge", "train", "evaluate"} <= set(details["phases_s"])
    # per-prompt accuracy of every row, aligned with one prompt list, reproduces each row's overall
    table = details["per_prompt"]
    assert set(table["accuracy"]) == set(details["per_seed"])
    assert len(table["prompts"]) == details["eval_items"] // B.ROUNDS["test"].eval_samples
    for m, acc in table["accuracy"].items():
        assert len(acc) == len(table["prompts"])
        assert np.mean(acc) == pytest.approx(details["per_seed"][m][0]["overall"], abs=1e-3), m
    _check_toy_pair(tmp_path, details, data)


def _check_toy_pair(tmp_path, details, data):
    """`srum bench toy-pair` on a finished bench's details: the same interval the bench gives vs base."""
    from srum_jobs.bench_cli import bench_group

    path = tmp_path / "bench.json.details.json"
    path.write_text(json.dumps(details))
    res = CliRunner().invoke(bench_group, ["toy-pair", str(path), "srum", "base"])
    assert res.exit_code == 0, res.output
    overall = next(line for line in res.output.splitlines() if line.strip().startswith("overall"))
    lo, hi = data["methods"]["srum"]["overall_ci"]
    diff = 100.0 * (data["methods"]["srum"]["overall"] - data["methods"]["base"]["overall"])
    assert f"{diff:+.1f} [{lo:+.1f}, {hi:+.1f}]" in overall
    assert "srum - base over" in res.output and all(c in res.output for c in CATS)
    bad = CliRunner().invoke(bench_group, ["toy-pair", str(path), "srum", "magic"])
    assert bad.exit_code != 0 and "row 'magic' is not in the details file" in bad.output
    path.write_text(json.dumps({k: v for k, v in details.items() if k != "per_prompt"}))
    old = CliRunner().invoke(bench_group, ["toy-pair", str(path), "srum", "base"])
    assert old.exit_code != 0 and "no per_prompt table" in old.output
    path.write_text("{not json")
    broken = CliRunner().invoke(bench_group, ["toy-pair", str(path), "srum", "base"])
    assert broken.exit_code != 0 and "is not JSON" in broken.output
    with pytest.raises(ValueError, match="unknown toy preset 'big'"):
        B.run_bench("big")


def _record(g, regions=()):
    from srum_jobs.records import Box, GlobalJudgment, RegionJudgment, RewardRecord

    rj = [RegionJudgment(region_id=i, box=Box(x0=b[0], y0=b[1], x1=b[2], y1=b[3]), score=s, parsed=True,
                         verified=v) for i, (b, s, v) in enumerate(regions, start=1)]
    return RewardRecord(prompt_id="p", prompt="a red circle", category="color", candidate_index=0, seed=0,
                        image_key="k", image_sha256="0" * 64, width=32, height=32, regions=rj,
                        global_judgment=GlobalJudgment(score=g, parsed=True), think_text="Plan: red circle at top left")


def test_seeds_in_worker_processes_match_one_process_and_die_with_the_bench(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from srum_jobs.local.process_groups import group_members

    cfg = B.RoundConfig(**{**B.asdict(B.ROUNDS["test"]), "diagnostics": False})
    one = B.run_bench("test", seeds=2, round_cfg=cfg, methods=["srum"])
    two = B.run_bench("test", seeds=2, round_cfg=cfg, methods=["srum"], workers=2)
    for m in one["methods"]:
        assert two["methods"][m]["overall"] == pytest.approx(one["methods"][m]["overall"], abs=1e-9), m
    # a bench killed outright (SIGKILL: no handler runs) must not leave its seeds running
    proc = subprocess.Popen([sys.executable, "-m", "srum_jobs.cli", "bench", "toy", "--preset", "test", "--seeds", "2",
                             "--workers", "2", "--set", "epochs=400"], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while len(group_members(proc.pid)) < 3 and time.monotonic() < deadline:   # the bench and its 2 workers
            time.sleep(0.2)
        assert len(group_members(proc.pid)) >= 3, "the bench never started its workers"
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 30
        while group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert group_members(proc.pid) == [], "bench workers outlived the bench"
    finally:
        if group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)


def test_sweep_and_ablation_rows_add_to_an_explicit_method_list():
    cfg = B.ROUNDS["demo"]
    rows = B.bench_methods(cfg, ["srum", "sft"], ablations=True, lambda_sweep=(0.0, 1.0))
    assert rows == ["base", "srum", "sft", *B.ABLATIONS, "srum_lambda_0", "srum_lambda_1"]
    assert B.bench_methods(cfg, lambda_sweep=(2.0,))[-1] == "srum_lambda_2"
    assert B.bench_methods(cfg, ["srum", "base", "srum"]) == ["base", "srum"]
    with pytest.raises(ValueError, match="srum_nope"):
        B.bench_methods(cfg, ["srum_nope"])


def test_methods_get_the_papers_baselines_and_the_recipe():
    from srum_jobs.rewards import reward_map_from_record, training_filter

    cfg = B.ROUNDS["demo"]
    passed = _record(0.9, [((0, 0, 10, 10), 0.9, True), ((20, 20, 24, 24), -0.6, False)])
    failed = _record(-0.8, [((0, 0, 10, 10), -1.0, True)])

    def use(method, rec):
        return training_filter(rec, B.method_configs(method, cfg)[0])[0]

    def rmap(method, rec):
        return reward_map_from_record(rec, B.method_configs(method, cfg)[0])

    # sft: every candidate, uniform weights, no reference term
    assert use("sft", failed) and use("sft", passed)
    assert np.all(rmap("sft", failed).pixels == 1) and rmap("sft", failed).alpha == 1.0
    assert B.method_configs("sft", cfg)[0].lambda_c == 0.0
    # sft_filtered: only what the judge scored above 0
    assert use("sft_filtered", passed) and not use("sft_filtered", failed)
    # sample_reward: the global score as one weight per image, the paper's loss
    sr = rmap("sample_reward", failed)
    assert np.all(sr.pixels == 1) and sr.alpha == pytest.approx(0.1)
    assert B.method_configs("sample_reward", cfg)[0].weighting == "paper"
    # srum_paper: reference map, rejected boxes left out, failures kept
    paper = rmap("srum_paper", passed)
    assert paper.boxes_used == 1 and paper.pixels[2, 2] == pytest.approx(0.95 * 0.95)
    assert use("srum_paper", failed)
    # srum (the recipe): debiased, corrective map scoring the rejected speck, anchored to the base
    rc, train = B.method_configs("srum", cfg)
    assert (rc.weighting, rc.mode, rc.reference) == ("debiased", "corrective", "base") and train == {}
    m = rmap("srum", passed)
    assert m.pixels[22, 22] == pytest.approx(-0.6) and m.pixels[2, 2] == 1.0 and m.alpha == pytest.approx(0.95)
    assert use("srum", failed)
    # ablations change one thing each
    assert B.method_configs("srum_no_global", cfg)[0].use_global is False
    assert B.method_configs("srum_no_ref", cfg)[1] == {"use_reference": False}
    no_anchor = B.method_configs("srum_no_anchor", cfg)
    assert (no_anchor[0].anchor, no_anchor[0].weighting, no_anchor[1]) == ("self", "debiased", {"use_reference": False})
    assert B.method_configs("srum_sparse", cfg)[0].mode == "sparse"
    assert B.method_configs("srum_signed", cfg)[0].mode == "signed"
    assert B.method_configs("srum_lambda_2", cfg)[0].lambda_c == 2.0
    assert B.method_configs("srum_paper_anchor", cfg)[0].reference == "base"
    with pytest.raises(ValueError, match="unknown bench method 'magic'"):
        B.method_configs("magic", cfg)
    with pytest.raises(ValueError, match="'x' is not a number"):
        B.method_configs("srum_lambda_x", cfg)


def test_summary_pairs_prompts_across_seeds():
    prompts = [B._balanced(w.toy_prompts("eval"), per_category=2)[i] for i in range(10)]
    base = [B.Evaluation([False] * 10, prompts, {})]
    better = [B.Evaluation([True] * 5 + [False] * 5, prompts, {})]
    out = B.summarise({"base": base, "m": better}, resamples=2000)
    assert out["m"]["overall"] == 0.5 and out["base"]["overall_ci"] == [0.0, 0.0]
    lo, hi = out["m"]["overall_ci"]
    assert 0.0 < lo <= 50.0 <= hi <= 100.0
    assert set(out["m"]["per_category_ci"]) == CATS
    assert "overall_ci_vs_sft" not in out["m"]


def test_summary_pairs_trained_rows_with_sft_of_their_mode():
    prompts = [B._balanced(w.toy_prompts("eval"), per_category=2)[i] for i in range(10)]

    def ev(n_right):
        return [B.Evaluation([True] * n_right + [False] * (10 - n_right), prompts, {})]

    out = B.summarise({"base": ev(0), "base_think": ev(0), "sft": ev(5), "m": ev(5), "sft_think": ev(0),
                       "m_think": ev(10)}, resamples=2000)
    # same verdicts as sft: a zero-width interval at 0; think rows against sft_think, not sft
    assert out["m"]["overall_ci_vs_sft"] == [0.0, 0.0] and set(out["m"]["per_category_ci_vs_sft"]) == CATS
    lo, hi = out["m_think"]["overall_ci_vs_sft"]
    assert 0.0 < lo <= 100.0 == hi
    assert "overall_ci_vs_sft" not in out["sft"] and "overall_ci_vs_sft" not in out["sft_think"]


def test_round_settings_from_the_command_line():
    from srum_jobs.bench_cli import bench_group

    cfg = B.round_config("demo", {"lr": "3e-4", "train_prompts": "100", "ema": "0.99", "min_global": "none",
                                  "think": "false", "weighting": "paper"})
    assert (cfg.lr, cfg.train_prompts, cfg.ema, cfg.min_global, cfg.think) == (3e-4, 100, 0.99, None, False)
    for bad, msg in (({"lr": "fast"}, "lr='fast' is not a float"), ({"speed": "1"}, "unknown round setting 'speed'"),
                     ({"think": "maybe"}, "not true or false")):
        with pytest.raises(ValueError, match=msg):
            B.round_config("demo", bad)
    for args, msg in ((["--set", "lr"], "'lr' is not KEY=VALUE"), (["--set", "epochs=x"], "epochs='x'"),
                      (["--methods", "sft,magic"], "unknown bench method 'magic'"),
                      (["--set", "weighting=fancy"], "weighting")):
        res = CliRunner().invoke(bench_group, ["toy", "--preset", "test", *args])
        assert res.exit_code != 0 and msg in res.output, res.output


def test_balanced_prompt_selection():
    picked = B._balanced(w.toy_prompts("train"), n_total=12)
    cats = [p.category for p in picked]
    assert len(picked) == 12 and cats[:5] == list(w.CATEGORIES)
    assert len(B._balanced(w.toy_prompts("eval"), per_category=3)) == 15


def test_toy_pretrain_cli_rebuilds_the_preset(monkeypatch, tmp_path):
    from srum_jobs.toy import pretrain as pt
    from srum_jobs.toy.commands import toy_group

    tiny = {"seed": 1, "perception": {"width": 4, "steps": 2, "batch": 2, "lr": 1e-3},
            "generator": {"channels": [8, 16, 16], "text_dim": 16, "text_layers": 1, "steps": 2, "batch": 2,
                          "lr": 1e-3, "warmup": 1, "ema": 0.5, "p_uncond": 0.1, "plan_channels": 8,
                          "p_plan_drop": 0.5}}
    monkeypatch.setitem(pt.PRESETS, "test", tiny)
    monkeypatch.setenv("SRUM_CACHE_DIR", str(tmp_path))
    res = CliRunner().invoke(toy_group, ["pretrain", "--preset", "test", "--threads", "1"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # logs go to stderr; click mixes both into .output
    assert out["path"] == str(pt.cache_dir("test")) and pt.is_complete(pt.cache_dir("test"))
    bad = CliRunner().invoke(toy_group, ["pretrain", "--preset", "huge"])
    assert bad.exit_code != 0 and "huge" in bad.output


def test_commands_module_imports_only_click():
    import subprocess
    import sys

    code = ("import sys; import srum_jobs.toy.commands as c; "
            "print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_later_rounds_judge_the_trained_models_own_candidates_and_continue_its_weights(tmp_path):
    """rounds=2: round 2's candidates come from round 1's weights (new ones, judged and cached under
    those weights), its training starts from round 1's weights, and round 1 is reported as its own row
    equal to a one-round bench of the same seed."""
    cfg1 = B.RoundConfig(**{**B.asdict(B.ROUNDS["test"]), "diagnostics": False})
    cfg2 = B.replace(cfg1, rounds=2)
    details = {}
    one = B.run_bench("test", seeds=1, round_cfg=cfg1, methods=["srum"], cache_dir=tmp_path)
    two = B.run_bench("test", seeds=1, round_cfg=cfg2, methods=["srum"], cache_dir=tmp_path, details=details)
    assert list(two["methods"]) == ["base", "base_think", "srum_round1", "srum", "srum_think"]
    assert two["methods"]["srum_round1"]["overall"] == one["methods"]["srum"]["overall"]
    assert two["methods"]["base"]["overall"] == one["methods"]["base"]["overall"]
    info = details["train"]["srum"][0]
    assert info["steps"] == info["previous"]["steps"] == B.ROUNDS["test"].steps(10)
    assert 0.0 <= info["candidates_accuracy"] <= 1.0
    # round 1's candidates (the base's) and round 2's (round 1's weights) are cached apart
    assert len(list(tmp_path.glob("candidates-*"))) == 2

    bench = B.Bench("test", cfg2)
    images, records = bench.candidates(0)
    bench.finetune("srum", 0, images, records)
    after_one = B.copy.deepcopy(bench.model.state_dict())
    later, _ = bench.candidates(0, after_one, round_index=2)
    assert not np.array_equal(later, images)   # the trained model's own samples, with new noise
    bench.finetune("srum", 0, images, records, after_one, round_index=2)
    continued = B.copy.deepcopy(bench.model.state_dict())   # state_dict() views the live weights
    bench.finetune("srum", 0, images, records, round_index=2)
    from_base = bench.model.state_dict()
    assert any(not B.np.array_equal(continued[k].numpy(), from_base[k].numpy()) for k in continued)
    assert B.state_digest(after_one) != B.state_digest(bench.base_state)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        B.run_bench("test", seeds=1, round_cfg=B.replace(cfg1, rounds=0))
    from srum_jobs.bench_cli import bench_group

    bad = CliRunner().invoke(bench_group, ["toy", "--preset", "test", "--set", "rounds=0"])
    assert bad.exit_code == 2 and "rounds must be >= 1, got 0" in bad.output
