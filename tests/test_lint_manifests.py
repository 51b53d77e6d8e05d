"""checkov over every Kubernetes object srum deploys, hadolint over both Dockerfiles.

What is scanned: the Helm chart rendered with its defaults and with every file of helm/values/ (Helm's own
engine, offline), the shared judge server's k8s/ manifests (and k8s/monitoring/), and the objects `srum enqueue all` submits for
every example experiment that targets a cluster. Every finding is either fixed or suppressed in place with a
reason (a `checkov.io/skip<N>` annotation on the object, a `# hadolint ignore=` comment above the line), so
the expected count is zero.

checkov and hadolint are not project dependencies (checkov pins libraries the project uses in other
versions): they live in their own virtualenv, `make lint-tools` (.venv-lint/), or wherever
`SRUM_CHECKOV` / `SRUM_HADOLINT` point. Without them these tests are skipped, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    env = os.environ.get(f"SRUM_{name.upper()}")
    for candidate in (env, str(ROOT / ".venv-lint" / "bin" / name), shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip(f"{name} is not installed: run `make lint-tools` (a separate virtualenv .venv-lint/) "
                f"or set SRUM_{name.upper()}")


def write_targets(dest: Path) -> list:
    """Every object srum deploys, one YAML file per source, into `dest`; returns the file names."""
    from click.testing import CliRunner

    from srum_jobs.cli import main
    from tests.test_helm import CASES, _id, load_values, render

    names = []
    for case in CASES:
        docs, _ = render(load_values(case))
        path = dest / f"chart-{_id(case)}.yaml"
        path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        names.append(path.name)
    for f in sorted((ROOT / "k8s").glob("*.yaml")) + sorted((ROOT / "k8s" / "monitoring").glob("*.yaml")):
        if f.name != "kustomization.yaml":
            name = f"k8s-{f.parent.name}-{f.name}"
            shutil.copy(f, dest / name)
            names.append(name)
    for exp in sorted((ROOT / "examples").glob("*.yaml")):
        res = CliRunner().invoke(main, ["enqueue", "all", "--dry-run", "--experiment", str(exp)])
        if res.exit_code == 0:
            (dest / f"enqueue-{exp.stem}.yaml").write_text(res.output)
            names.append(f"enqueue-{exp.stem}.yaml")
    return names


def checkov_findings(directory: Path) -> list:
    out = subprocess.run([_tool("checkov"), "-d", str(directory), "--framework", "kubernetes", "-o", "json",
                          "--quiet", "--compact", "--skip-download"],
                         capture_output=True, text=True, timeout=600)
    if out.returncode not in (0, 1):
        raise AssertionError(f"checkov failed ({out.returncode}): {out.stderr[-2000:]}")
    doc = json.loads(out.stdout or "{}")
    reports = doc if isinstance(doc, list) else [doc]
    return [f"{c['file_path']}: {c['resource']}: {c['check_id']} {c['check_name']}"
            for r in reports for c in r.get("results", {}).get("failed_checks", [])]


@pytest.mark.slow
def test_checkov_finds_nothing_in_what_srum_deploys(tmp_path):
    names = write_targets(tmp_path)
    assert any(n.startswith("chart-") for n in names) and any(n.startswith("enqueue-") for n in names)
    findings = checkov_findings(tmp_path)
    assert findings == [], f"{len(findings)} checkov findings:\n" + "\n".join(findings)


def test_hadolint_finds_nothing_in_the_dockerfiles():
    hadolint = _tool("hadolint")
    for dockerfile in sorted((ROOT / "docker").glob("*.Dockerfile")):
        out = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{dockerfile.name}:\n{out.stdout}{out.stderr}"
