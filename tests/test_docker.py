"""docker/: the jobs image and the Triton image.

No Docker engine here, so the images are not built. What is checked: every file they COPY exists and is
sent by their BuildKit ignore files, they install extras that pyproject.toml defines, they run as the
non-root uid the pods expect, and their entrypoints name real commands (the jobs image's through the real
`srum` CLI; the Triton image's `tritonserver` with the repository path k8s/ and the chart use).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from srum_jobs.cli import main
from srum_jobs.cluster.builders import RUN_AS_USER

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def instructions(path):
    """[(INSTRUCTION, argument text)] with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def exec_form(arg):
    value = json.loads(arg)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arg
    return value


def copies(path):
    """[(sources, destination)] of COPY/ADD that read the build context (not --from= stages)."""
    out = []
    for word, arg in instructions(path):
        if word not in ("COPY", "ADD"):
            continue
        parts = shlex.split(arg)
        if any(p.startswith("--from=") for p in parts):
            continue
        parts = [p for p in parts if not p.startswith("--")]
        out.append((parts[:-1], parts[-1]))
    return out


def ignore_allows(dockerfile, source):
    """Does <dockerfile>.dockerignore (allow-list style: `*` then `!path`) send `source`?"""
    ignore = Path(str(dockerfile) + ".dockerignore")
    allowed = False
    for line in ignore.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        if fnmatch.fnmatch(source, pattern.rstrip("/")) or source.startswith(pattern.rstrip("/") + "/"):
            allowed = negate
    return allowed


DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))


def test_both_images_exist():
    assert {p.name for p in DOCKERFILES} == {"jobs.Dockerfile", "triton.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_every_copied_file_exists_and_is_in_the_build_context(dockerfile):
    pairs = copies(dockerfile)
    assert pairs
    for sources, _ in pairs:
        for src in sources:
            assert (ROOT / src).exists(), f"{dockerfile.name} copies {src}, which does not exist"
            assert ignore_allows(dockerfile, src), f"{dockerfile.name}.dockerignore excludes {src}"
    assert not ignore_allows(dockerfile, ".venv") and not ignore_allows(dockerfile, "srum-runs")
    # pip needs the readme that pyproject.toml names
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert any(readme in s for s, _ in pairs)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.stem)
def test_images_install_the_package_with_a_defined_extra_and_run_as_the_pods_uid(dockerfile):
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    runs = " ".join(arg for word, arg in instructions(dockerfile) if word == "RUN")
    for extra in re.findall(r'pip install --constraint constraints\.txt "\.\[([a-z,]+)\]"', runs):
        assert set(extra.split(",")) <= set(extras)
    # issue 15: every Python dependency pinned, through docker/constraints.txt
    assert 'pip install --constraint constraints.txt ".[' in runs
    assert ("COPY", "docker/constraints.txt ./constraints.txt") in instructions(dockerfile)
    users = [arg for word, arg in instructions(dockerfile) if word == "USER"]
    assert users and users[-1] == f"{RUN_AS_USER}:{RUN_AS_USER}"  # numeric: runAsNonRoot can verify it
    # never an unpinned torch: the jobs image takes it from its CUDA PyTorch base, the Triton image pins it
    args = dict(a.split("=", 1) for w, a in instructions(dockerfile) if w == "ARG" and "=" in a)
    torch_spec = args.get("TORCH_SPEC", "").strip('"')
    assert "torch" not in runs.replace("${TORCH_SPEC}", "")
    if torch_spec:
        assert re.fullmatch(r"torch==[\d.]+ torchvision==[\d.]+", torch_spec)


def test_jobs_image_entrypoint_is_the_srum_cli():
    inst = dict(instructions(DOCKER / "jobs.Dockerfile"))
    entry, cmd = exec_form(inst["ENTRYPOINT"]), exec_form(inst["CMD"])
    assert entry == ["srum"]
    # the default command and the build-time smoke test are real CLI invocations
    ctx = main.make_context("srum", list(cmd), resilient_parsing=True)
    assert ctx.command is main
    assert "srum --help" in " ".join(a for w, a in instructions(DOCKER / "jobs.Dockerfile") if w == "RUN")


def test_the_cli_names_the_images_serve_exist():
    """The commands the images' pods run: stages (checked in detail by test_cluster_builders), the
    driver, and `srum judge serve` for a local judge."""
    import click

    for path in (["stage", "generate"], ["stage", "rewards"], ["stage", "train"], ["stage", "eval"],
                 ["stage", "report"], ["orchestrate"], ["judge", "serve"], ["config", "validate"]):
        cmd, ctx = main, click.Context(main, info_name="srum")
        for name in path:
            cmd = cmd.get_command(ctx, name)
            assert cmd is not None, f"srum {' '.join(path)}"
            ctx = click.Context(cmd, info_name=name, parent=ctx)


def test_triton_image_serves_the_repository_that_k8s_and_the_chart_point_at():
    dockerfile = DOCKER / "triton.Dockerfile"
    inst = instructions(dockerfile)
    assert exec_form(dict(inst)["ENTRYPOINT"]) == ["tritonserver"]
    repo_dest = [dest for sources, dest in copies(dockerfile) if sources == ["triton_models"]]
    assert repo_dest == ["/models"]
    assert all((ROOT / "triton_models" / m / "config.pbtxt").exists() for m in ("srum_judge", "srum_boxer"))
    flag = f"--model-repository={repo_dest[0]}"
    assert flag in exec_form(dict(inst)["CMD"])
    k8s = yaml.safe_load((ROOT / "k8s" / "deployment.yaml").read_text())
    c = k8s["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["tritonserver"] and flag in c["args"]
    values = yaml.safe_load((ROOT / "helm" / "srum" / "values.yaml").read_text())
    assert values["triton"]["modelRepository"] == repo_dest[0]


def test_constraints_pin_every_package_and_cover_the_projects_dependencies():
    import tomllib

    lines = [ln.strip() for ln in (DOCKER / "constraints.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    pins = {}
    for ln in lines:
        name, sep, version = ln.partition("==")
        assert sep and version, f"constraints.txt: {ln!r} is not pinned with =="
        pins[name.lower().replace("_", "-")] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["models"]
    for req in wanted:
        name = re.split(r"[<>=\[ ;]", req, 1)[0].lower().replace("_", "-")
        assert name in pins, f"{name} (pyproject.toml) is not pinned in docker/constraints.txt"
