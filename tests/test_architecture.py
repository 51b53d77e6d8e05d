"""The package's shape, checked: no import cycles in `srum_jobs/`, and a new stage is two files (its
module and its row in the stage table), which every entry point then runs: `srum stage`, `srum run`
(the local executor) and `srum enqueue` (the cluster builders)."""

from __future__ import annotations

import ast
import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import yaml

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "srum_jobs"


# ----------------------------------------------------------------------------------------- import cycles

def _modules(pkg: Path) -> Dict[str, Path]:
    out = {}
    for path in pkg.rglob("*.py"):
        parts = list(path.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph(pkg: Path, *, deferred: bool) -> Dict[str, Set[str]]:
    """module -> the package's modules it imports. `deferred=False`: only what runs when the module is
    imported (its top level, conditionals included, `if TYPE_CHECKING:` excluded); `deferred=True`: also
    the imports inside functions. `from a import b` is an edge to a.b when b is a module, else to a.
    Importing a.b also runs the package a's __init__, which is not counted as an edge of the importer: a
    package re-exporting its own submodules is not a cycle."""
    mods = _modules(pkg)
    name = pkg.name

    def known(module: str) -> str:
        while module and module not in mods:
            module = module.rpartition(".")[0]
        return module

    graph: Dict[str, Set[str]] = {}
    for mod, path in mods.items():
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        edges: Set[str] = set()

        def visit(node: ast.AST) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not deferred:
                    continue
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                if isinstance(child, ast.Import):
                    edges.update(known(a.name) for a in child.names if a.name.split(".")[0] == name)
                elif isinstance(child, ast.ImportFrom):
                    base = (".".join(here[:len(here) - child.level + 1] + [child.module] if child.module else
                                     here[:len(here) - child.level + 1]) if child.level else child.module or "")
                    if base.split(".")[0] == name:
                        edges.update(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else known(base)
                                     for a in child.names)
                visit(child)

        visit(ast.parse(path.read_text()))
        graph[mod] = edges - {mod, ""}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_the_cycle_finder_finds_cycles(tmp_path):
    pkg = tmp_path / "srum_jobs"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")       # a package re-exporting: no cycle
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import c\n"
                                      "def f():\n    from ..c import g\nthing = 1\n")
    (pkg / "c.py").write_text("import srum_jobs.a\n")
    assert cycles(import_graph(pkg, deferred=False)) == []
    assert cycles(import_graph(pkg, deferred=True)) == [["srum_jobs.a", "srum_jobs.c", "srum_jobs.sub.b"]]


def test_no_module_of_the_package_imports_itself_back_when_imported():
    assert cycles(import_graph(PKG, deferred=False)) == []


def test_no_cycles_through_deferred_imports_either():
    """Imports inside functions hide a cycle from the import-time check, not from the design."""
    assert cycles(import_graph(PKG, deferred=True)) == []


# ------------------------------------------------------------------------------------ adding a stage

HELLO_STAGE = '''"""A throwaway stage: counts the round's prompts of its shard and writes them."""

from __future__ import annotations

from .common import StageContext, round_prompts


def run(exp, round, shard, num_shards, *, progress=True):
    ctx = StageContext.create(exp, round)
    if ctx.layout.shard_done("hello", shard):
        ctx.say(f"hello: shard {shard} already complete")
        return None
    mine = round_prompts(ctx)[shard::num_shards]
    ctx.store.put_json(ctx.layout.key("hello", f"shard-{shard}.json"), {"prompts": len(mine)})
    ctx.layout.mark_done("hello", shard, prompts=len(mine))
    return None
'''

HELLO_ROW = ('    StageSpec("hello", "Count the prompts of a shard (a throwaway stage).",\n'
             '              "srum_jobs.stages.hello", shardable=True, needs_judge=False, needs_gpu=False),\n')


def _copy_with_a_new_stage(dst: Path) -> Path:
    """The package copied under dst with one stage added the documented way; returns the copy."""
    copy = dst / "srum_jobs"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "stages" / "hello.py").write_text(HELLO_STAGE)
    spec = copy / "stages" / "spec.py"
    text = spec.read_text()
    end = text.index("\n)}\n", text.index("STAGES: Dict[str, StageSpec]"))   # the end of the table
    spec.write_text(text[:end + 1] + HELLO_ROW + text[end + 1:])
    return copy


def _changed_files(a: Path, b: Path) -> List[str]:
    out: List[str] = []

    def walk(cmp: filecmp.dircmp, rel: str) -> None:
        out.extend(f"{rel}{n}" for n in cmp.left_only + cmp.right_only + cmp.diff_files)
        for name, sub in cmp.subdirs.items():
            walk(sub, f"{rel}{name}/")

    walk(filecmp.dircmp(a, b, ignore=["__pycache__"]), "")
    return sorted(out)


def test_a_new_stage_is_its_module_and_one_row_and_every_entry_point_runs_it(tmp_path):
    copy = _copy_with_a_new_stage(tmp_path / "src")
    assert _changed_files(PKG, copy) == ["stages/hello.py", "stages/spec.py"]

    # the copy comes first on the path (the editable install's finder comes after PYTHONPATH), children too
    env = dict(os.environ, PYTHONPATH=str(copy.parent), OMP_NUM_THREADS="1")
    runs = tmp_path / "runs"
    exp = {"name": "hello-test", "storage": {"root": f"file://{runs}"},
           "prompts": {"source": "toy://train", "limit": 5, "num_shards": 2, "eval_source": "toy://eval",
                       "eval_limit": 4},
           "model": {"adapter": "toy", "params": {"preset": "test"}},
           "judge": {"backend": "toy", "backend_params": {"preset": "test"}}}
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump(exp))

    def srum(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "srum_jobs.cli", *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    where = srum("stage", "--help")
    assert where.returncode == 0 and "hello" in where.stdout and "a throwaway stage" in where.stdout

    # `srum stage hello`: one shard, then every shard (the first is skipped as complete)
    one = srum("stage", "hello", "--experiment", str(exp_file), "--shard", "1", "--no-progress")
    assert one.returncode == 0, one.stderr
    out = runs / "hello-test" / "round-1"
    assert json.loads((out / "hello" / "shard-1.json").read_text()) == {"prompts": 2}
    both = srum("stage", "hello", "--experiment", str(exp_file), "--no-progress")
    assert both.returncode == 0, both.stderr
    assert "hello: shard 1 already complete" in both.stderr
    assert json.loads((out / "hello" / "shard-0.json").read_text()) == {"prompts": 3}
    assert sorted(p.name for p in (out / "markers" / "hello").iterdir()) == ["shard-00000.json", "shard-00001.json"]

    # `srum run --stages hello` (the local executor, a child process per stage): round 2 from nothing;
    # no stage of this run needs the judge, so no server is started
    local = srum("run", str(exp_file), "--rounds", "2", "--stages", "hello", "--no-progress")
    assert "hello (round 1): already complete in storage, skipped" in local.stderr, local.stderr
    assert "judge server" not in local.stderr
    assert sorted(p.name for p in (runs / "hello-test" / "round-2" / "markers" / "hello").iterdir()) == [
        "shard-00000.json", "shard-00001.json"]
    assert local.returncode == 0, local.stderr

    # `srum enqueue hello --dry-run` (the cluster builders): an Indexed Job of one pod per shard
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(dict(exp, storage={"root": "s3://bucket/srum"},
                                                 judge={"url": "dns:///judge.judge.svc:8001"})))
    job = srum("enqueue", "hello", "--experiment", str(cluster_file), "--dry-run")
    assert job.returncode == 0, job.stderr
    (manifest,) = [d for d in yaml.safe_load_all(job.stdout) if d and d.get("kind") == "Job"]
    assert manifest["spec"]["completions"] == 2 and manifest["spec"]["completionMode"] == "Indexed"
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    argv = container.get("command", []) + container.get("args", [])
    assert argv[argv.index("stage"):argv.index("stage") + 2] == ["stage", "hello"], argv
