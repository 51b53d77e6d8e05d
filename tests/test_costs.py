"""`srum bench costs`: per-item costs measured with the experiment's own model and backends, written as
a costs file that `srum plan --costs` accepts and uses."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from srum_jobs.cli import main
from srum_jobs.config import load_experiment, parse_experiment
from srum_jobs.capacity.measure import measure_costs
from srum_jobs.capacity.assumptions import MEASURED_KEYS
from srum_jobs.capacity.costs_file import load_costs
from srum_jobs.capacity.plan import make_plan

BAGEL = Path(__file__).parent.parent / "examples" / "bagel-s3.yaml"


def _toy(tmp_path, steps: int = 4) -> dict:
    return {"name": "costs-test", "storage": {"root": f"file://{tmp_path}/runs"},
            "prompts": {"source": "toy://train", "limit": 20},
            "model": {"adapter": "toy", "params": {"preset": "test"}},
            "judge": {"backend": "toy", "boxer_backend": "components", "backend_params": {"preset": "test"}},
            "generation": {"candidates_per_prompt": 2, "steps": steps},
            "training": {"batch_size": 3, "steps": 5, "warmup_steps": 1}}


def test_cli_writes_a_costs_file_the_plan_uses(tmp_path):
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump(_toy(tmp_path)))
    out = tmp_path / "costs.yaml"
    res = CliRunner().invoke(main, ["bench", "costs", "--experiment", str(exp_file), "--items", "3",
                                    "--out", str(out), "--threads", "1"])
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "CPU-seconds, not GPU-seconds" in text            # a CPU measurement says what it is
    costs = load_costs(str(out))                              # the plan's own validation accepts it
    measured = costs["measured"]
    assert set(measured) == set(MEASURED_KEYS) - {"evaluator_s_per_call"}
    assert all(v > 0 for v in measured.values()), measured
    plan = make_plan(load_experiment(BAGEL), 8, costs)
    for key in measured:
        assert plan["costs"][key] == {"value": measured[key], "how": "measured (costs file)"}
    assert plan["costs"]["evaluator_s_per_call"]["how"] != "measured (costs file)"

    again = CliRunner().invoke(main, ["bench", "costs", "--experiment", str(exp_file), "--out", str(out)])
    assert again.exit_code != 0 and "exists" in again.output   # never overwrites a measurement
    assert out.read_text() == text


def test_generation_cost_follows_the_sampler_steps(tmp_path):
    """Not a constant: four times the Euler steps cost clearly more per image."""
    few = measure_costs(parse_experiment(_toy(tmp_path, steps=2)), items=3)["measured"]
    many = measure_costs(parse_experiment(_toy(tmp_path, steps=16)), items=3)["measured"]
    assert many["generate_s_per_image"] > 2.0 * few["generate_s_per_image"]
    assert many["checkpoint_gb"] == few["checkpoint_gb"]      # same model, same trainable state


def test_too_few_items_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--items"):
        measure_costs(parse_experiment(_toy(tmp_path)), items=1)


def test_a_prompt_source_with_too_few_prompts_is_named(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("a red circle\n")
    data = _toy(tmp_path)
    data["prompts"] = {"source": str(one), "format": "text"}
    with pytest.raises(ValueError, match="one.txt gave 1 prompt"):
        measure_costs(parse_experiment(data), items=3)
