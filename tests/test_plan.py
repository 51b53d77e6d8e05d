"""`srum plan`: the capacity model's arithmetic, monotonicity, bottleneck shifts and bad costs files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from srum_jobs import exitcodes
from srum_jobs.cli import main
from srum_jobs.config import load_experiment, parse_experiment
from srum_jobs.capacity.assumptions import HARDWARE, MODEL_PROFILES
from srum_jobs.capacity.costs_file import PlanError, load_costs, validate_costs
from srum_jobs.capacity.plan import make_plan

BAGEL = Path(__file__).parent.parent / "examples" / "bagel-s3.yaml"
_EXP = load_experiment(BAGEL)


@pytest.fixture(scope="module")
def exp():
    return load_experiment(BAGEL)


def _stage(plan, name):
    return next(s for s in plan["stages"] if s["stage"] == name)


def test_workload_arithmetic(exp):
    plan = make_plan(exp, 32, prompts=6234, eval_prompts=300)
    w = plan["workload"]
    assert w["images"] == 6234 * exp.generation.candidates_per_prompt
    # 1 global + 1 regions + one verification per region (reward.max_regions, verification on)
    assert w["judge_calls_per_image"] == 2 + exp.reward.max_regions
    assert w["global_batch"] == exp.training.batch_size * exp.training.nproc_per_node * exp.training.nnodes
    assert w["eval_images"] == 300 * exp.eval.samples_per_prompt * 2
    assert math.isclose(plan["total"]["gpu_hours"], sum(s["gpu_hours"] for s in plan["stages"]))
    for s in plan["stages"]:
        assert math.isclose(s["gpu_hours"], s["gpus"] * s["wall_s"] / 3600)
    assert math.isclose(plan["total"]["wall_s"], sum(s["wall_s"] for s in plan["stages"]))


def test_generation_cost_is_the_stated_flop_arithmetic(exp):
    c = make_plan(exp, 8)["costs"]["generate_s_per_image"]
    prof, hw, g = MODEL_PROFILES["bagel"], HARDWARE, exp.generation
    tokens = (min(g.resolution // 16, exp.model.params.get("max_latent_size", g.resolution // 16))) ** 2
    per_pass = 2 * prof["active_params_b"] * 1e9 * tokens + 4 * prof["layers"] * tokens ** 2 * prof["hidden"]
    flops = g.steps * 2 * per_pass
    think = 300 * (prof["weights_gb"] * 1e9 / 2 / (hw["hbm_tb_per_s"] * 1e12 * hw["decode_efficiency"])) / g.batch_size
    assert math.isclose(c["value"], flops / (hw["bf16_tflops"] * 1e12 * hw["mfu_generate"]) + think, rel_tol=1e-9)
    assert "50 steps x 2 pass" in c["how"] and "MFU" in c["how"]


def test_more_gpus_never_take_longer(exp):
    walls = [make_plan(exp, n)["total"]["wall_s"] for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)]
    assert all(b <= a + 1e-6 for a, b in zip(walls, walls[1:])), walls
    assert walls[-1] < walls[0] / 50


def test_each_scaling_dimension_is_monotone_and_saturates(exp):
    sc = make_plan(exp, 128)["scaling"]
    for table in ("generate_by_gen_shards", "generate_by_judge_replicas", "train_by_nodes"):
        walls = [r["wall_s"] for r in sc[table]["rows"]]
        assert all(b <= a + 1e-6 for a, b in zip(walls, walls[1:])), (table, walls)
    train = sc["train_by_nodes"]["rows"]
    # beyond one sample per GPU (global batch 64 = 8 nodes of 8) extra nodes buy nothing
    assert [r["saturated"] for r in train] == [r["nodes"] > 8 for r in train]
    assert train[-1]["wall_s"] == next(r for r in train if r["nodes"] == 8)["wall_s"]


def test_bottleneck_moves_from_generation_to_the_judge(exp):
    """A shared judge of fixed size: more generation shards help until the judge saturates."""
    plan = make_plan(exp, 256, judge_replicas=4)
    rows = plan["scaling"]["generate_by_gen_shards"]["rows"]
    necks = [r["bottleneck"] for r in rows]
    assert necks[0] == "generation" and necks[-1] == "judge"
    flip = necks.index("judge")
    assert all(n == "generation" for n in necks[:flip]) and all(n == "judge" for n in necks[flip:])
    walls = [r["wall_s"] for r in rows]
    assert walls[-1] == pytest.approx(walls[flip], rel=0.01), "past the flip, more shards do not help"
    assert _stage(plan, "generate")["bottleneck"] == "judge"


def test_train_bottleneck_moves_from_compute_to_fixed_costs(exp):
    rows = make_plan(exp, 128)["scaling"]["train_by_nodes"]["rows"]
    assert rows[0]["bottleneck"] == "compute"
    unsaturated = [r for r in rows if not r["saturated"]]
    assert unsaturated[-1]["bottleneck"] in ("checkpoint upload", "startup", "cross-node gradient sync")


def test_judge_inside_the_budget_is_balanced(exp):
    gen = _stage(make_plan(exp, 64), "generate")
    assert gen["gen_gpus"] + gen["judge_gpus"] == 64
    d = gen["detail"]
    # moving one GPU either way would not shorten the stage
    g, j = gen["gen_gpus"], gen["judge_gpus"]
    work_g, work_j = d["gen_s"] * g, d["judge_s"] * j
    best = max(work_g / g, work_j / j)
    assert best <= max(work_g / (g + 1), work_j / (j - 1)) + 1e-9
    assert best <= max(work_g / (g - 1), work_j / (j + 1)) + 1e-9


def test_measured_costs_replace_derived_ones(exp, tmp_path):
    f = tmp_path / "costs.yaml"
    f.write_text("measured:\n  generate_s_per_image: 2.0\n  judge_s_per_call: 0.1\nhardware:\n  name: A100\n")
    costs = load_costs(str(f))
    plan = make_plan(exp, 16, costs, judge_replicas=64)          # a judge so large generation is the bottleneck
    assert plan["costs"]["generate_s_per_image"] == {"value": 2.0, "how": "measured (costs file)"}
    assert plan["hardware"] == "A100"
    slower = make_plan(exp, 16, {"measured": {"generate_s_per_image": 4.0, "judge_s_per_call": 0.1}},
                       judge_replicas=64)
    body = lambda p: _stage(p, "generate")["wall_s"] - p["costs"]["pod_startup_s"]["value"]   # noqa: E731
    assert body(slower) == pytest.approx(2 * body(plan), rel=1e-9)


def test_prompts_are_counted_in_a_local_file(tmp_path):
    (tmp_path / "p.txt").write_text("".join(f"prompt {i}\n" for i in range(10)))
    exp = parse_experiment({"name": "x", "model": {"adapter": "bagel"},
                            "prompts": {"source": str(tmp_path / "p.txt"), "eval_source": None}})
    w = make_plan(exp, 4)["workload"]
    assert (w["prompts"], w["images"]) == (10, 10 * exp.generation.candidates_per_prompt)
    assert w["prompts_from"].startswith("counted") and w["eval_prompts_from"] == "assumed"


def test_unknown_adapter_needs_a_model_profile(tmp_path):
    exp = parse_experiment({"name": "x", "model": {"adapter": "diffusers"}})
    with pytest.raises(PlanError, match=r"no built-in cost profile for model.adapter 'diffusers'.*active_params_b"):
        make_plan(exp, 8)
    plan = make_plan(exp, 8, {"model": dict(MODEL_PROFILES["bagel"])})
    assert plan["total"]["wall_s"] > 0


def test_one_gpu_time_shares_generation_and_judging(exp):
    plan = make_plan(exp, 1)
    gen = _stage(plan, "generate")
    assert gen["gpus"] == 1 and gen["bottleneck"] == "one GPU for both"
    assert "grows 8.0x" in _stage(plan, "train")["detail"]["memory_note"]


@pytest.mark.parametrize("body, name, where", [
    ("measured:\n  generate_s_per_image: fast\n", "c.yaml", "measured.generate_s_per_image: must be a number"),
    ("measured:\n  generate_s_per_image: -1\n", "c.yaml", "measured.generate_s_per_image: must be > 0"),
    ("measured:\n  generate_s_per_image: 0\n", "c.yaml", "measured.generate_s_per_image: must be > 0"),
    ("measured:\n  generate_s_per_image: .inf\n", "c.yaml", "measured.generate_s_per_image: must be finite"),
    ("measured:\n  generate_s_per_image: true\n", "c.yaml", "measured.generate_s_per_image: must be a number"),
    ("measured:\n  gen_per_image: 1\n", "c.yaml", "measured.gen_per_image: unknown key"),
    ("hardware:\n  mfu_train: 30\n", "c.yaml", "hardware.mfu_train: is a fraction"),
    ("overheads:\n  overlap_factor: 0.5\n", "c.yaml", "overheads.overlap_factor: is at least 1"),
    ("workload:\n  prompts: 10.5\n", "c.yaml", "workload.prompts: must be a whole number"),
    ("timing:\n  x: 1\n", "c.yaml", "unknown section 'timing'"),
    ("measured: 5\n", "c.yaml", "measured: must be a mapping"),
    ("- 1\n- 2\n", "c.yaml", "the top level must be a mapping"),
    ("measured: {generate_s_per_image: [1\n", "c.yaml", "is not valid YAML"),
    ("measured:\n  pod_startup_s: 2001-13-45\n", "c.yaml", "is not valid YAML"),
    ("measured:\n  judge_s_per_call: 1\n  judge_s_per_call: 2\n", "c.yaml", "judge_s_per_call"),   # repeated key
    ('{"measured": {"generate_s_per_image": }}', "c.json", "is not valid JSON"),
    ('{"workload": {"prompts": ' + "1" * 5000 + "}}", "c.json", "is not valid JSON"),
])
def test_bad_costs_file_is_named_with_the_key(tmp_path, body, name, where):
    f = tmp_path / name
    f.write_text(body)
    with pytest.raises(PlanError) as err:
        load_costs(str(f))
    assert str(f) in str(err.value) and where in str(err.value), str(err.value)
    r = CliRunner().invoke(main, ["plan", "-e", str(BAGEL), "--gpus", "8", "--costs", str(f)])
    assert r.exit_code == exitcodes.CONFIG_ERROR and str(f) in r.output and where in r.output


_scalars = st.none() | st.booleans() | st.integers(-(10 ** 400), 10 ** 400) | st.floats() | st.text(max_size=6)
_sections = st.sampled_from(["hardware", "model", "workload", "overheads", "measured", "other"])
_keys = st.sampled_from(sorted({k for sec in ("hardware", "model", "workload", "overheads") for k in
                                 __import__("srum_jobs.capacity.assumptions", fromlist=["x"]).COSTS_FILE_SECTIONS[sec]}
                                | {"generate_s_per_image", "nope"}))


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(data=st.dictionaries(_sections, st.dictionaries(_keys, _scalars, max_size=4) | _scalars, max_size=3)
       | _scalars)
def test_any_costs_document_is_accepted_or_rejected_with_plan_error(data):
    try:
        costs = validate_costs(data, "fuzz.yaml")
    except PlanError as e:
        assert str(e).startswith("fuzz.yaml: ")
        return
    for section in costs.values():
        for key, v in section.items():
            assert key == "name" or (math.isfinite(v) and v >= 0)
    plan = make_plan(_EXP, 16, costs)            # whatever validates, plans: finite, positive times
    assert all(math.isfinite(s["wall_s"]) and s["wall_s"] > 0 for s in plan["stages"])
    json.dumps(plan, allow_nan=False)


def test_costs_file_reads_numbers_as_the_experiment_file_does(tmp_path):
    # YAML 1.1 reads `2e-4` (no dot) as a string; the experiment file's loader reads a number, and so must this
    f = tmp_path / "costs.yaml"
    f.write_text("measured:\n  judge_s_per_call: 2e-4\noverheads:\n  rewards_s_per_record: 1E-3\n")
    assert load_costs(str(f)) == {"measured": {"judge_s_per_call": 2e-4}, "overheads": {"rewards_s_per_record": 1e-3}}


def test_costs_file_missing_or_not_utf8(tmp_path):
    with pytest.raises(PlanError, match="costs file not found"):
        load_costs(str(tmp_path / "nope.yaml"))
    (tmp_path / "b.yaml").write_bytes(b"measured:\n  x: \xff\n")
    with pytest.raises(PlanError, match=r"b.yaml is not UTF-8 text \(byte 15\)"):
        load_costs(str(tmp_path / "b.yaml"))
    assert validate_costs(None) == {} and validate_costs({"measured": None}) == {}


def test_cli_text_and_json(tmp_path):
    r = CliRunner().invoke(main, ["plan", "-e", str(BAGEL), "--gpus", "32"])
    assert r.exit_code == 0, r.output
    assert "ESTIMATE" in r.output and "not a measurement" in r.output
    for word in ("generate", "rewards", "train", "eval", "report", "total", "by generation shards", "by judge replicas",
                 "by nodes of 8 GPUs", "per-item costs used"):
        assert word in r.output
    r = CliRunner().invoke(main, ["plan", "-e", str(BAGEL), "--gpus", "32", "--json", "--judge-replicas", "4",
                                  "--prompts", "1000", "--eval-prompts", "100"])
    plan = json.loads(r.output)
    assert plan["estimate"] is True and plan["workload"]["prompts"] == 1000 and plan["workload"]["eval_prompts"] == 100
    assert _stage(plan, "generate")["judge_gpus"] == 4 and _stage(plan, "generate")["gen_gpus"] == 32
    r = CliRunner().invoke(main, ["plan", "-e", str(BAGEL), "--gpus", "0"])
    assert r.exit_code == exitcodes.USAGE


def test_module_imports_only_click():
    code = ("import sys; import srum_jobs.capacity.commands; heavy = {'yaml', 'pydantic', 'numpy', 'torch', 'srum_jobs.config'};"
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
