"""`srum bench toy` and `srum toy pretrain` through the CLI, on the test preset (seconds)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from srum_jobs.models.toy import bench as B
from srum_jobs.models.toy import world as w

CATS = set(w.CATEGORIES)


def _check_method(r):
    assert set(r) == {"overall", "overall_std", "per_category"}
    assert 0.0 <= r["overall"] <= 1.0 and r["overall_std"] >= 0.0
    assert set(r["per_category"]) == CATS and all(0.0 <= v <= 1.0 for v in r["per_category"].values())


def test_bench_cli_writes_the_json_shape_of_the_issue(tmp_path):
    from srum_jobs.bench_cli import bench_group

    out = tmp_path / "bench.json"
    res = CliRunner().invoke(bench_group, ["toy", "--preset", "test", "--ablations", "--seeds", "2", "--json",
                                           str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert set(data) == {"preset", "seeds", "judge_agreement", "methods"}
    assert data["preset"] == "test" and data["seeds"] == 2 and 0.0 <= data["judge_agreement"] <= 1.0
    assert list(data["methods"]) == ["base", "sft", "srum", "srum_no_global", "srum_no_ref", "srum_sparse",
                                     "srum_signed"]
    for r in data["methods"].values():
        _check_method(r)
    assert "judge agreement" in res.output and "srum_signed" in res.output


def test_bench_without_ablations_and_its_details():
    details = {}
    data = B.run_bench("test", seeds=1, details=details)
    assert list(data["methods"]) == ["base", "sft", "srum"]
    assert data["methods"]["base"]["overall_std"] == 0.0
    assert details["kept"] and details["kept"][0] > 0
    assert {"generate", "judge", "train", "evaluate"} <= set(details["phases_s"])
    with pytest.raises(ValueError, match="unknown toy preset 'big'"):
        B.run_bench("big")


def test_methods_get_their_reward_settings():
    bench = B.Bench.__new__(B.Bench)
    bench.cfg = B.ROUNDS["demo"]
    assert bench.reward_config("srum").mode == "reference" and bench.reward_config("srum").use_global
    assert bench.reward_config("srum_no_global").use_global is False
    assert bench.reward_config("srum_sparse").mode == "sparse"
    assert bench.reward_config("srum_signed").mode == "signed"
    assert bench.training_config("srum_no_ref", 0).use_reference is False
    assert bench.training_config("srum", 0).use_reference is True
    maps, alphas, lam, use_global = bench.maps("sft", [object()] * 3)
    assert maps.shape == (3, 32, 32) and float(maps.min()) == 1.0 and lam == 0.0 and not use_global


def test_summary_statistics():
    runs = {"srum": [{"overall": 0.5, "per_category": {"color": 0.4}}, {"overall": 0.7, "per_category": {"color": 0.6}}]}
    s = B.summarise(runs)["srum"]
    assert s["overall"] == pytest.approx(0.6) and s["overall_std"] == pytest.approx(0.1414213, rel=1e-5)
    assert s["per_category"] == {"color": pytest.approx(0.5)}


def test_balanced_prompt_selection():
    picked = B._balanced(w.toy_prompts("train"), n_total=12)
    cats = [p.category for p in picked]
    assert len(picked) == 12 and cats[:5] == list(w.CATEGORIES)
    assert len(B._balanced(w.toy_prompts("eval"), per_category=3)) == 15


def test_toy_pretrain_cli_rebuilds_the_preset(monkeypatch, tmp_path):
    from srum_jobs.models.toy import pretrain as pt
    from srum_jobs.models.toy.commands import toy_group

    tiny = {"seed": 1, "perception": {"width": 4, "steps": 2, "batch": 2, "lr": 1e-3},
            "generator": {"channels": [8, 16, 16], "text_dim": 16, "text_layers": 1, "steps": 2, "batch": 2,
                          "lr": 1e-3, "warmup": 1, "ema": 0.5, "p_uncond": 0.1}}
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

    code = ("import sys; import srum_jobs.models.toy.commands as c; "
            "print(sorted(m for m in ('torch', 'numpy', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
