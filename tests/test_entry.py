"""The one entry path: every command loads, checks and fails the same way.

Each bad input is given to every command that takes an experiment (`srum config validate`, `srum run`,
`srum stage`, `srum enqueue --dry-run`) and must get one line naming the problem, the code of the one
classification (entry.classify), no traceback, and nothing written to storage.
"""

from __future__ import annotations

import ast
import errno
import importlib
import json
import signal
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from srum_jobs import entry, exitcodes
from srum_jobs.cli import main
from srum_jobs.config import MAX_EXPERIMENT_BYTES, ConfigError, load_experiment
from srum_jobs.stages.spec import STAGE_NAMES, STAGES, parse_stage_list

PKG = Path(__file__).resolve().parents[1] / "srum_jobs"


def _exp(tmp_path: Path, **sections) -> dict:
    """A small valid toy experiment whose storage lives under tmp_path."""
    data = {"name": "entry-test", "storage": {"root": f"file://{tmp_path / 'runs'}"},
            "prompts": {"source": "toy://train", "limit": 4, "eval_source": "toy://eval", "eval_limit": 4},
            "model": {"adapter": "toy", "params": {"preset": "test"}},
            "judge": {"url": "127.0.0.1:1", "backend": "toy", "backend_params": {"preset": "test"}}}
    for section, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    return data


def _write(tmp_path: Path, data, name: str = "exp.yaml") -> Path:
    p = tmp_path / name
    if isinstance(data, bytes):
        p.write_bytes(data)
    elif isinstance(data, str):
        p.write_text(data)
    else:
        p.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return p


COMMANDS = {
    "validate": lambda f: ["config", "validate", str(f)],
    "run": lambda f: ["run", str(f), "--no-progress"],
    "stage": lambda f: ["stage", "rewards", "--experiment", str(f), "--no-progress"],
    "enqueue": lambda f: ["enqueue", "generate", "--dry-run", "-e", str(f)],
}


def _invoke(args, **kw):
    return CliRunner().invoke(main, args, **kw)


def _one_error_line(result, *needles: str) -> str:
    out = result.output
    assert "Traceback" not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert errors, out
    for n in needles:
        assert n in out, (n, out)
    return errors[0]


def _nothing_written(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(p.is_file() for p in runs.rglob("*")), sorted(runs.rglob("*"))


# ------------------------------------------------------------------------------------- bad files

BAD_FILES = {
    "yaml-syntax": ("name: [unclosed\n", "is not valid YAML: line 2"),
    "json-syntax": ('{"name": "x",}', "is not valid JSON: line 1"),
    "binary": (b"name: x\n\x00\x01\x02", "is binary"),
    "not-utf8": (b"name: caf\xe9\n", "not UTF-8 text (byte 9)"),
    "duplicate-yaml-key": ("name: a\ntraining: {steps: 3}\ntraining: {steps: 4}\n", "key 'training' appears twice"),
    "duplicate-json-key": ('{"name": "a", "name": "b"}', "key 'name' appears twice"),
    "huge": ("name: x\n# " + "x" * MAX_EXPERIMENT_BYTES, "larger than 1 MiB"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_experiment_files_get_one_line_and_78_from_every_command(tmp_path, case, command):
    body, needle = BAD_FILES[case]
    f = _write(tmp_path, body, "exp.json" if case.startswith("json") or case == "duplicate-json-key" else "exp.yaml")
    r = _invoke(COMMANDS[command](f))
    assert r.exit_code == exitcodes.CONFIG_ERROR, r.output
    assert str(f) in _one_error_line(r, needle)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_dev_zero_fails_fast(command):
    t0 = time.perf_counter()
    r = _invoke(COMMANDS[command]("/dev/zero"))
    assert r.exit_code == exitcodes.CONFIG_ERROR
    _one_error_line(r, "/dev/zero is larger than 1 MiB")
    assert time.perf_counter() - t0 < 5


def test_the_one_loader_reads_exponents_as_numbers_in_srum_run_too(tmp_path, monkeypatch):
    """`lr: 2e-5` (YAML 1.1 would read a string) passes validate and reaches `srum run`'s stages as a number."""
    f = _write(tmp_path, "name: lr-case\nstorage: {root: 'file://%s'}\ntraining: {lr: 2e-5, eps: 1E-15}\n"
               % (tmp_path / "runs"))
    assert load_experiment(f).training.lr == 2e-5
    seen = {}

    def fake_run_local(data, **kw):
        seen.update(data)
        return {"lines": []}

    monkeypatch.setattr("srum_jobs.local.executor.run_local", fake_run_local)
    r = _invoke(["run", str(f), "--stages", "train"])
    assert r.exit_code == 0, r.output
    assert seen["training"]["lr"] == 2e-5 and isinstance(seen["training"]["lr"], float)


def test_merge_keys_may_override_without_counting_as_duplicates(tmp_path):
    f = _write(tmp_path, "base: &b {steps: 3, lr: 1.0e-4}\nname: m\n")
    with pytest.raises(ConfigError, match="base: unknown key"):     # the schema refuses the anchor holder...
        load_experiment(f)
    f = _write(tmp_path, "name: m\ntraining:\n  <<: {steps: 3, lr: 1.0e-4}\n  steps: 5\n")
    assert load_experiment(f).training.steps == 5                   # ...but a merge override is no duplicate


# ------------------------------------------------------------------------ settings checked up front

def _bad_settings(tmp_path: Path, write: bool = True) -> dict:
    prompts = tmp_path / "hostile.jsonl"
    if write:
        prompts.write_text(json.dumps({"prompt": "a red cube", "id": "../../escape"}) + "\n")
    return {
        "unknown-adapter": (_exp(tmp_path, model={"adapter": "nope"}), "model.adapter: 'nope' is not one of"),
        "unknown-judge-backend": (_exp(tmp_path, judge={"url": None, "backend": "vlm9000"}),
                                  "judge.backend: 'vlm9000' is not one of"),
        "unknown-boxer-backend": (_exp(tmp_path, judge={"boxer_backend": "magic"}), "judge.boxer_backend: 'magic'"),
        "foreign-backend-not-installed": (_exp(tmp_path, judge={"backend": "no_such_pkg.judges:Mine"}),
                                          "module 'no_such_pkg.judges' of"),
        "unknown-toy-preset": (_exp(tmp_path, model={"params": {"preset": "huge"}}),
                               "model.params.preset: 'huge' is not one of"),
        "missing-templates-dir": (_exp(tmp_path, judge={"templates_dir": str(tmp_path / "nope")}),
                                  "judge.templates_dir:"),
        "missing-prompt-file": (_exp(tmp_path, prompts={"source": str(tmp_path / "missing.jsonl")}),
                                "prompts.source: prompt file not found"),
        "missing-eval-file": (_exp(tmp_path, prompts={"eval_source": f"file://{tmp_path}/missing.json"}),
                              "prompts.eval_source: prompt file not found"),
        "no-eval-file": (_exp(tmp_path, prompts={"eval_source": None}), "prompts.eval_source: not set"),
        "hostile-prompt-id": (_exp(tmp_path, prompts={"source": str(prompts)}),
                              "field 'id' '../../escape' contains a '/'"),
        "unknown-toy-split": (_exp(tmp_path, prompts={"source": "toy://tran"}), "unknown toy prompt split 'tran'"),
        "missing-checkpoint": (_exp(tmp_path, model={"checkpoint": str(tmp_path / "weights")}),
                               "model.checkpoint:"),
        "root-is-a-file": (_exp(tmp_path, storage={"root": f"file://{prompts}"}), "is a file, not a folder"),
        "root-with-dotdot": (_exp(tmp_path, storage={"root": f"file://{tmp_path}/a/../runs"}),
                             "storage.root: Value error, a file:// root may not contain '..'"),
        "steps-beyond-bound": (_exp(tmp_path, training={"steps": 10 ** 7}), "training.steps"),
        "keep-no-checkpoint": (_exp(tmp_path, training={"keep_checkpoints": 0}), "training.keep_checkpoints"),
    }


CASES = sorted(_bad_settings(Path("/x"), write=False))


@pytest.mark.parametrize("case", CASES)
def test_config_validate_refuses_what_the_run_would_refuse(tmp_path, case):
    data, needle = _bad_settings(tmp_path)[case]
    f = _write(tmp_path, data)
    r = _invoke(["config", "validate", str(f)])
    assert r.exit_code == exitcodes.CONFIG_ERROR, r.output
    _one_error_line(r, needle)


@pytest.mark.parametrize("case", [c for c in CASES if c not in ("unknown-judge-backend",)])
def test_srum_run_refuses_before_any_work(tmp_path, case):
    data, needle = _bad_settings(tmp_path)[case]
    r = _invoke(COMMANDS["run"](_write(tmp_path, data)))
    assert r.exit_code == exitcodes.CONFIG_ERROR, r.output
    _one_error_line(r, needle)
    if case != "root-is-a-file":
        _nothing_written(tmp_path)


@pytest.mark.parametrize("case", ["unknown-adapter", "unknown-toy-preset", "missing-eval-file", "root-is-a-file",
                                  "missing-templates-dir"])
def test_srum_stage_refuses_before_any_work(tmp_path, case):
    data, needle = _bad_settings(tmp_path)[case]
    f = _write(tmp_path, data)
    stage = "eval" if "eval" in case else "generate"
    r = _invoke(["stage", stage, "--experiment", str(f), "--no-progress"])
    assert r.exit_code == exitcodes.CONFIG_ERROR, r.output
    _one_error_line(r, needle)
    if case != "root-is-a-file":
        _nothing_written(tmp_path)


def test_srum_enqueue_checks_names_and_settings(tmp_path):
    data = _exp(tmp_path, model={"adapter": "bagle"}, storage={"root": "s3://bucket-x/p"})
    r = _invoke(COMMANDS["enqueue"](_write(tmp_path, data)))
    assert r.exit_code == exitcodes.CONFIG_ERROR
    _one_error_line(r, "model.adapter: 'bagle'")


def test_a_stage_without_a_judge_url_is_refused_but_srum_run_starts_its_own(tmp_path):
    f = _write(tmp_path, _exp(tmp_path, judge={"url": None}))
    r = _invoke(["stage", "generate", "--experiment", str(f)])
    assert r.exit_code == exitcodes.CONFIG_ERROR
    _one_error_line(r, "judge.url: not set, and `srum stage generate` needs a running judge server")
    assert _invoke(["config", "validate", str(f)]).exit_code == 0       # srum run would start one


def test_duplicate_prompt_texts_are_kept_counted_and_warned(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t, "id": i}) + "\n"
                               for i, t in enumerate(["a red cube", "a blue ball", "a red cube", "a red cube"])))
    f = _write(tmp_path, _exp(tmp_path, prompts={"source": str(prompts)}))
    r = _invoke(["config", "validate", str(f)])
    assert r.exit_code == 0, r.output
    assert "prompts.source: 2 of 4 prompts repeat an earlier prompt's text" in r.output
    r = _invoke(["prompts", "import", str(prompts), f"file://{tmp_path}/store/p.jsonl"])
    assert r.exit_code == 0 and "imported 4 prompts" in r.output and "2 prompts repeat" in r.output


def test_hostile_prompt_ids_are_refused_at_import(tmp_path):
    src = tmp_path / "p.json"
    src.write_text(json.dumps([{"Question": "a cube", "Category": "shape", "Question_id": "../x"}]))
    r = _invoke(["prompts", "import", str(src), f"file://{tmp_path}/store/p.jsonl"])
    assert r.exit_code == exitcodes.CONFIG_ERROR
    _one_error_line(r, "entry 0: field 'id' '../x'")
    assert not (tmp_path / "store").exists()


def test_unknown_stage_names_are_a_usage_error(tmp_path):
    f = _write(tmp_path, _exp(tmp_path))
    for args in (["run", str(f), "--stages", "generate,trian"], ["config", "validate", str(f), "--stages", "x"]):
        r = _invoke(args)
        assert r.exit_code == exitcodes.USAGE and "unknown stage(s) ['trian']" in r.output or "['x']" in r.output


def test_debug_adds_the_traceback(tmp_path, monkeypatch):
    f = _write(tmp_path, _exp(tmp_path, model={"adapter": "nope"}))
    monkeypatch.setenv(entry.DEBUG_ENV, "0")       # recorded, so the "1" that --debug sets is undone after the test
    plain = _invoke(["stage", "rewards", "--experiment", str(f)])
    assert "Traceback" not in plain.output
    loud = _invoke(["--debug", "stage", "rewards", "--experiment", str(f)])
    assert loud.exit_code == exitcodes.CONFIG_ERROR and "Traceback" in loud.output
    assert "error: invalid experiment" in loud.output


# ------------------------------------------------------------------------------------ classification

def _classified():
    from srum_jobs.config import ConfigError as CE
    from srum_jobs.judging.backends import BackendError
    from srum_jobs.judging.client import JudgeClientError, JudgeRequestError
    from srum_jobs.judging.templates import TemplateError
    from srum_jobs.capacity.costs_file import PlanError
    from srum_jobs.prompts import PromptError
    from srum_jobs.records import RecordError
    from srum_jobs.rewards import RewardMapError
    from srum_jobs.storage import (ChecksumMismatch, DamagedData, InvalidKey, LeaseHeld, LeaseLost, NoSpace, NotFound,
                                   StorageError, StorageRefused, StorageUnavailable)
    from srum_jobs.training.checkpoint import CorruptCheckpoint

    C, T = exitcodes.CONFIG_ERROR, exitcodes.TEMPORARY
    return [
        (CE("bad"), C), (PromptError("p"), C), (RecordError("r"), C), (RewardMapError("m"), C), (PlanError("x"), C),
        (TemplateError("t"), C), (BackendError("b"), C), (InvalidKey("../x"), C), (ChecksumMismatch("c"), C),
        (DamagedData("d"), C), (CorruptCheckpoint("k"), C), (StorageRefused("ro"), C), (NotFound("n"), C),
        (LeaseHeld("l"), exitcodes.LOCKED), (LeaseLost("l"), exitcodes.LOCKED), (NoSpace("full"), exitcodes.NO_SPACE),
        (StorageUnavailable("silent"), T), (StorageError("5xx"), T), (JudgeClientError("down"), T),
        (JudgeRequestError("refused"), exitcodes.FAILURE), (ConnectionRefusedError("x"), T),
        (OSError(errno.ENOSPC, "No space left on device", "/d/f"), exitcodes.NO_SPACE),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), exitcodes.NO_SPACE),
        (PermissionError(errno.EACCES, "Permission denied", "/r"), C), (OSError(errno.EROFS, "Read-only"), C),
        (KeyboardInterrupt(), exitcodes.INTERRUPTED), (entry.Stopped(signal.SIGTERM), 128 + signal.SIGTERM),
        (ZeroDivisionError("bug"), exitcodes.FAILURE), (MemoryError(), exitcodes.FAILURE),
    ]


def test_every_error_kind_gets_its_one_code():
    for exc, code in _classified():
        got, message = entry.classify(exc)
        assert got == code, (type(exc).__name__, got, message)
        assert "\n" not in message or isinstance(exc, ConfigError)


def test_the_classification_table_names_real_classes():
    for name in entry._CODES:
        module, cls = name.split(":")
        assert isinstance(getattr(importlib.import_module(module), cls), type), name


def test_errors_that_carry_their_own_code_keep_it():
    from srum_jobs.cluster.api import ClusterError
    from srum_jobs.local.executor import StageFailed

    assert entry.classify(ClusterError("quota", exitcodes.TEMPORARY))[0] == exitcodes.TEMPORARY
    assert entry.classify(StageFailed("train (round 1)", 78))[0] == exitcodes.CONFIG_ERROR
    assert entry.classify(StageFailed("train (round 1)", -9))[0] == exitcodes.FAILURE      # killed by a signal
    assert "killed by SIGKILL" in str(StageFailed("generate", -9))


def test_an_unexpected_error_is_one_line_pointing_at_debug():
    code, message = entry.classify(ValueError("first\nsecond"))
    assert code == exitcodes.FAILURE and message.startswith("unexpected ValueError: first (rerun with --debug")


# ------------------------------------------------------------------------------------ one of each

def test_nothing_imports_the_cli_module():
    offenders = []
    for path in PKG.rglob("*.py"):
        if path.name == "cli.py" and path.parent == PKG:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = [f"{'.' * node.level}{node.module or ''}"] + [f"{'.' * node.level}{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n in ("srum_jobs.cli", ".cli", "..cli") or n.endswith(".cli") and n.startswith(".") for n in names):
                offenders.append(str(path.relative_to(PKG)))
    assert offenders == []


def test_every_part_reads_the_one_stage_table():
    from srum_jobs.local import executor as local
    from srum_jobs.cluster import builders, commands as cluster_commands
    from srum_jobs.stages.commands import stage_group
    from srum_jobs.layout import RunLayout
    from srum_jobs.storage import LocalStore

    assert sorted(stage_group.commands) == sorted(STAGE_NAMES)
    assert local.ALL_STAGES == STAGE_NAMES
    assert set(cluster_commands.ENQUEUE_TARGETS) == set(STAGE_NAMES) | {"judge"}
    # the builders read the table (tests/test_architecture.py adds a stage and enqueues it)
    assert not hasattr(builders, "STAGE_ORDER") and not hasattr(builders, "SHARDED_STAGES")
    layout = RunLayout(LocalStore("/tmp"), "x")
    for name in STAGE_NAMES:
        layout.marker_key(name)
    assert parse_stage_list("report, generate") == ("generate", "report")


def test_the_local_executor_builds_each_stage_command_from_the_table(tmp_path):
    from srum_jobs.config import parse_experiment
    from srum_jobs.local.executor import stage_argv

    exp = parse_experiment(_exp(tmp_path))
    for name, spec in STAGES.items():
        argv = stage_argv(spec, exp, tmp_path / "e.json", 2, nproc=1, progress=False)
        assert argv[1:5] == ["-m", "srum_jobs.cli", "stage", name] and argv[-1] == "--no-progress"
    train = stage_argv(STAGES["train"], exp, tmp_path / "e.json", 2, nproc=3, progress=True)
    assert train[1:4] == ["-m", "srum_jobs.stages.launch", "--nproc-per-node=3"]
    assert train[train.index("--") + 1:] == ["stage", "train", "--experiment", str(tmp_path / "e.json"), "--round", "2"]


def test_the_launcher_passes_the_cause_through_not_the_peers_broken_collective():
    from types import SimpleNamespace

    from srum_jobs.stages.launch import _cause

    def failures(**codes_at):
        return SimpleNamespace(failures={int(r[1:]): SimpleNamespace(exitcode=c, timestamp=t)
                                         for r, (c, t) in codes_at.items()})

    # rank 0 ran out of disk; rank 1 then failed on the dead all-reduce (1), even if reported first
    assert _cause(failures(r0=(74, 10), r1=(1, 9))) == (0, 74)
    assert _cause(failures(r0=(1, 10), r1=(78, 11))) == (1, 78)
    assert _cause(failures(r0=(1, 10), r1=(1, 9))) == (1, 1)          # nothing specific: the earliest
    assert _cause(failures(r0=(-9, 10))) == (0, -9)                   # killed by a signal
