import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from srum_jobs import exitcodes
from srum_jobs.cli import main
from srum_jobs.config import ConfigError, Experiment, json_schema, load_experiment, parse_experiment

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))


def test_minimal_file_gets_paper_defaults():
    exp = parse_experiment({"name": "exp-1"})
    t = exp.training
    # timestep_shift None: the model's own, 4.0 (the paper's) unless the adapter declares another
    assert (t.lr, t.betas, t.eps, t.weight_decay, t.warmup_steps, t.grad_clip, t.timestep_shift) == \
        (2.5e-5, [0.9, 0.95], 1e-15, 0.0, 500, 1.0, None)
    assert exp.reward.lambda_c == 0.5 and exp.reward.max_regions == 5 and exp.reward.mode == "reference"
    assert exp.reward.neutral_band == [-0.4, 0.4] and exp.reward.severe_band == [-0.9, -0.5]
    assert exp.storage.root.startswith("file://")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_validates(path):
    assert isinstance(load_experiment(path), Experiment)


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"toy-local.yaml", "bagel-s3.yaml"} <= names


@pytest.mark.parametrize("data, field", [
    ({"name": "x", "trainig": {}}, "trainig"),                                   # unknown top-level key
    ({"name": "x", "training": {"lr": "1e-4"}}, "training.lr"),                   # wrong type (strict)
    ({"name": "x", "training": {"steps": -1}}, "training.steps"),                 # negative count
    ({"name": "x", "reward": {"lambda_c": -0.1}}, "reward.lambda_c"),
    ({"name": "x", "storage": {"root": "s3://"}}, "storage.root"),                 # s3 without bucket
    ({"name": "x", "storage": {"root": "s3:///prefix"}}, "storage.root"),
    ({"name": "x", "storage": {"root": "/tmp/x"}}, "storage.root"),               # no scheme
    ({"name": "x", "generation": {"candidates_per_prompt": 0}}, "generation.candidates_per_prompt"),
    ({"name": "x", "reward": {"mode": "dense"}}, "reward.mode"),
    ({"name": "x", "reward": {"neutral_band": [0.4, -0.4]}}, "reward.neutral_band"),
    ({"name": "Bad_Name"}, "name"),
    ({}, "name"),
    ({"name": "x", "judge": {"url": "not a url"}}, "judge.url"),
    ({"name": "x", "judge": {"max_in_flight": 0}}, "judge.max_in_flight"),
    ({"name": "x", "training": {"betas": [0.9]}}, "training.betas"),
    ({"name": "x", "cluster": {"train": {"gpu": -1}}}, "cluster.train.gpu"),
])
def test_bad_values_name_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        parse_experiment(data, "exp.yaml")
    msg = str(err.value)
    assert "exp.yaml" in msg and f"  {field}:" in msg


def test_top_level_must_be_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        parse_experiment([1, 2], "x.yaml")


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_experiment(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml is not valid YAML"):
        load_experiment(bad)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_experiment(binary)
    js = tmp_path / "e.json"
    js.write_text(json.dumps({"name": "j", "training": {"steps": 3}}))
    assert load_experiment(js).training.steps == 3


def test_credentials_have_no_place_in_the_file():
    with pytest.raises(ConfigError, match="storage.aws_secret_access_key"):
        parse_experiment({"name": "x", "storage": {"aws_secret_access_key": "abc"}}, "e.yaml")


def test_schema_is_generated_from_models():
    schema = json_schema()
    assert set(schema["properties"]) >= {"name", "storage", "prompts", "model", "judge", "generation",
                                         "reward", "training", "eval", "cluster"}
    assert schema["additionalProperties"] is False


def test_cli_validate_and_show(tmp_path):
    runner = CliRunner()
    good = EXAMPLES[0]
    r = runner.invoke(main, ["config", "validate", str(good)])
    assert r.exit_code == 0 and "ok:" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "reward": {"lambda_c": -1}}))
    r = runner.invoke(main, ["config", "validate", str(good), str(bad)])
    assert r.exit_code == exitcodes.CONFIG_ERROR and "reward.lambda_c" in r.output
    mini = tmp_path / "mini.yaml"
    mini.write_text("name: mini\n")
    r = runner.invoke(main, ["config", "show", str(mini)])
    shown = yaml.safe_load(r.output)
    assert r.exit_code == 0 and shown["training"]["warmup_steps"] == 500 and shown["judge"]["retries"] == 4
    assert parse_experiment(shown).model_dump() == load_experiment(mini).model_dump()  # round-trips
    r = runner.invoke(main, ["config", "schema"])
    assert json.loads(r.output)["title"] == "Experiment"


def test_yaml_exponent_without_dot_is_a_number(tmp_path):
    f = tmp_path / "e.yaml"
    f.write_text("name: e\ntraining:\n  lr: 2e-5\n  eps: 1E-15\n")
    exp = load_experiment(f)
    assert exp.training.lr == 2e-5 and exp.training.eps == 1e-15
