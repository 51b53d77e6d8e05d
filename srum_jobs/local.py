"""The local executor: `srum run` runs the whole SRUM loop on one machine through the same stage
entrypoints the Kubernetes Jobs run (as child processes), with a real local Triton judge server.

With no experiment file it runs the built-in toy world (pretraining its base model first if it is not
cached). Ctrl-C stops every child (Triton, torchrun workers, stage processes); a rerun resumes, because
every stage resumes from what storage says is done. One lease object in storage keeps two runs of the
same experiment from writing at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import click

from . import exitcodes

ALL_STAGES = ("generate", "rewards", "train", "eval", "report")

# Built-in toy experiments. `demo` is the README's main job; `test` is the test suite's end-to-end run.
PRESETS: Dict[str, Dict[str, Any]] = {
    "demo": {
        "prompts": {"source": "toy://train", "limit": 128, "num_shards": 2, "eval_source": "toy://eval",
                    "eval_limit": 200},
        "model": {"adapter": "toy", "params": {"preset": "demo"}},
        "generation": {"candidates_per_prompt": 4, "steps": 10, "guidance": 2.0, "resolution": 32, "batch_size": 64},
        # the round `srum bench toy` uses (models/toy/bench.py ROUNDS["demo"], chosen on the validation split)
        "reward": {"mode": "reference", "min_global_score": 0.0},
        "training": {"lr": 1e-5, "warmup_steps": 10, "steps": 150, "batch_size": 32, "save_every": 50,
                     "timestep_shift": 1.0},
    },
    "test": {
        "prompts": {"source": "toy://train", "limit": 12, "num_shards": 2, "eval_source": "toy://eval",
                    "eval_limit": 16},
        "model": {"adapter": "toy", "params": {"preset": "test"}},
        "generation": {"candidates_per_prompt": 2, "steps": 4, "guidance": 2.0, "resolution": 32, "batch_size": 8},
        "training": {"lr": 1e-4, "warmup_steps": 2, "steps": 6, "batch_size": 4, "save_every": 3},
    },
}


def default_experiment(preset: str, root: str) -> Dict[str, Any]:
    base = json.loads(json.dumps(PRESETS[preset]))
    return {"name": f"toy-{preset}", "storage": {"root": root},
            "judge": {"url": None, "backend": "toy", "boxer_backend": "components",
                      "backend_params": {"preset": base["model"]["params"]["preset"]}},
            "reward": {"mode": "reference"}, "eval": {"benchmark": "toy"}, **base}


# --------------------------------------------------------------------------------------------- lease
class Lease:
    """An object in storage naming the run that owns the experiment. Renewed while the run is alive;
    a lease whose holder stopped renewing it (a crash) expires and can be taken over."""

    TTL_S = 60.0

    def __init__(self, store, key: str):
        self.store, self.key = store, key
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _body(self) -> bytes:
        return json.dumps({"holder": self.token, "expires_at": time.time() + self.TTL_S}).encode()

    def acquire(self) -> None:
        if not self.store.create_exclusive(self.key, self._body()):
            try:
                held = json.loads(self.store.get_bytes(self.key))
            except Exception:
                held = {"holder": "unknown", "expires_at": 0}
            if held.get("expires_at", 0) > time.time():
                raise LeaseHeld(f"another run holds {self.store.uri_for(self.key)} ({held.get('holder')}, "
                                f"expires in {held['expires_at'] - time.time():.0f} s); "
                                "wait for it or stop it before starting this one")
            # expired: its holder died. Take over atomically (delete, then exclusive create again).
            self.store.delete(self.key)
            if not self.store.create_exclusive(self.key, self._body()):
                raise LeaseHeld(f"another run took {self.store.uri_for(self.key)} at the same moment")
        self._thread = threading.Thread(target=self._renew, daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.TTL_S / 3):
            self.store.put_bytes(self.key, self._body())

    def release(self) -> None:
        self._stop.set()
        try:
            if json.loads(self.store.get_bytes(self.key)).get("holder") == self.token:
                self.store.delete(self.key)
        except Exception:
            pass


class LeaseHeld(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------- children
class Children:
    """Child processes in their own sessions, so one Ctrl-C or SIGTERM stops every one of them."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    def run(self, argv: List[str], env: Optional[Dict[str, str]] = None) -> None:
        proc = subprocess.Popen(argv, env=env, start_new_session=True)
        self.procs.append(proc)
        try:
            rc = proc.wait()
        finally:
            self.procs.remove(proc)
        if rc != 0:
            raise StageFailed(f"{' '.join(argv[:6])} ... exited with {rc}", rc)

    def kill_all(self) -> None:
        for proc in list(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        for proc in list(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


class StageFailed(RuntimeError):
    def __init__(self, msg: str, rc: int):
        super().__init__(msg)
        self.rc = rc


def _srum() -> List[str]:
    return [sys.executable, "-m", "srum_jobs.cli"]


def run_local(exp_data: Dict[str, Any], *, rounds: int = 1, stages=ALL_STAGES, workdir: Path,
              progress: bool = True, nproc: Optional[int] = None) -> Dict[str, Any]:
    """Run `stages` for `rounds` rounds of the experiment given as data; returns the report summary."""
    from .config import parse_experiment
    from .stages.common import StageContext

    exp = parse_experiment(exp_data)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext.create(exp, 1)
    lease = Lease(ctx.store, ctx.layout.lease_key)
    lease.acquire()
    children = Children()
    server = None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM,)}

    def on_term(signum, frame):  # SIGTERM behaves like Ctrl-C: stop children, then exit
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    phases: Dict[str, float] = {}     # wall seconds per phase, printed at the end of the run

    @contextlib.contextmanager
    def phase(name: str):
        t0 = time.perf_counter()
        yield
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0

    try:
        if exp.model.adapter == "toy":
            from .models.toy.pretrain import ensure_base

            with phase("base model (pretrain or cache)"):
                ensure_base(exp.model.params.get("preset", "demo"))  # once, here, not in every child
        if exp.judge.url is None and ("generate" in stages or "eval" in stages):
            from .evaluation.evaluator import local_evaluator_models
            from .judging.server import LocalTritonServer, models_for_judge_config

            server = LocalTritonServer({**models_for_judge_config(exp.judge), **local_evaluator_models(exp)},
                                       run_dir=workdir / "triton")
            with phase("judge server start"):
                server.start()
            exp_data = json.loads(json.dumps(exp_data))
            exp_data.setdefault("judge", {})["url"] = server.grpc_url
            click.echo(f"local Triton judge server ready at {server.grpc_url} (log: {server.log_path})", err=True)
        exp_file = workdir / "experiment.resolved.json"
        exp_file.write_text(json.dumps(exp_data, indent=1))
        base = ["--experiment", str(exp_file)] + ([] if progress else ["--no-progress"])
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for r in range(1, rounds + 1):
            rr = ["--round", str(r)]
            if "generate" in stages:
                with phase("generate"):
                    for shard in range(exp.prompts.num_shards):
                        children.run(_srum() + ["stage", "generate"] + base + rr +
                                     ["--shard", str(shard), "--num-shards", str(exp.prompts.num_shards)], env)
            if "rewards" in stages:
                with phase("rewards"):
                    children.run(_srum() + ["stage", "rewards"] + base + rr, env)
            if "train" in stages:
                n = nproc or exp.training.nproc_per_node
                with phase("train"):
                    children.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                  f"--nproc-per-node={n}", "-m", "srum_jobs.stages.train"] + base + rr,
                                 dict(env, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // n))))
            if "eval" in stages:
                with phase("eval"):
                    children.run(_srum() + ["stage", "eval"] + base + rr, env)
            if "report" in stages:
                with phase("report"):
                    children.run(_srum() + ["stage", "report"] + base + rr, env)
        from .stages.report import headline

        out = headline(StageContext.create(parse_experiment(exp_data), rounds))
        out["phases_s"] = {k: round(v, 1) for k, v in phases.items()}
        return out
    except KeyboardInterrupt:
        click.echo("\ninterrupted: stopping every child process; rerun the same command to resume", err=True)
        children.kill_all()
        raise
    finally:
        children.kill_all()
        if server is not None:
            server.stop()
        lease.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@click.command("run")
@click.argument("experiment", required=False, type=click.Path(dir_okay=False, exists=True))
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="demo", show_default=True,
              help="Built-in toy experiment used when no EXPERIMENT file is given.")
@click.option("--rounds", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Self-rewarding rounds; each starts from the previous round's weights.")
@click.option("--stages", default=",".join(ALL_STAGES), show_default=True, help="Comma-separated stages to run.")
@click.option("--out", default="./srum-runs", show_default=True, help="Storage root for the built-in experiment.")
@click.option("--nproc", type=click.IntRange(1, 64), default=None, help="torchrun processes (default: training.nproc_per_node).")
@click.option("--no-progress", is_flag=True)
def run_command(experiment, preset, rounds, stages, out, nproc, no_progress):
    """Run the SRUM loop on this machine: generate -> rewards -> train -> eval -> report.

    Without EXPERIMENT, runs the built-in toy world and writes everything under --out.
    """
    import yaml

    from .config import ConfigError, parse_experiment

    chosen = tuple(s.strip() for s in stages.split(",") if s.strip())
    bad = [s for s in chosen if s not in ALL_STAGES]
    if bad:
        raise click.BadParameter(f"unknown stage(s) {bad}; stages are {', '.join(ALL_STAGES)}", param_hint="--stages")
    if experiment:
        text = Path(experiment).read_text(encoding="utf-8")
        data = json.loads(text) if experiment.endswith(".json") else yaml.safe_load(text)
        source = experiment
    else:
        data = default_experiment(preset, "file://" + str(Path(out).resolve()))
        source = f"built-in preset {preset!r}"
    try:
        exp = parse_experiment(data, source)
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(exitcodes.CONFIG_ERROR)
    if exp.storage.root.startswith("file://"):
        root = Path(exp.storage.root[len("file://"):]).resolve()
        workdir = root / exp.name / "local"
        data = dict(data, storage=dict(data.get("storage", {}), root="file://" + str(root)))
    else:
        workdir = Path(tempfile.mkdtemp(prefix=f"srum-{exp.name}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    click.echo(f"srum run: experiment {exp.name!r} ({source}), stages {', '.join(chosen)}, {rounds} round(s)", err=True)
    t0 = time.time()
    try:
        summary = run_local(data, rounds=rounds, stages=chosen, workdir=workdir, progress=not no_progress, nproc=nproc)
    except LeaseHeld as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(exitcodes.LOCKED)
    except StageFailed as e:
        click.echo(f"error: a stage failed: {e}", err=True)
        sys.exit(e.rc if e.rc in (exitcodes.CONFIG_ERROR, exitcodes.TEMPORARY) else exitcodes.FAILURE)
    except KeyboardInterrupt:
        sys.exit(130)
    click.echo(f"\ndone in {time.time() - t0:.0f} s")
    phases = summary.get("phases_s", {})
    if phases:
        click.echo("phases (wall s, all rounds): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
    for line in summary.get("lines", []):
        click.echo(line)
