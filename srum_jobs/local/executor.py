"""The local executor: `srum run` runs the whole SRUM loop on one machine through the same stage
entrypoints the Kubernetes Jobs run (as child processes, one per stage of the stage table), with a real
local Triton judge server.

With no experiment file it runs the built-in toy world (pretraining its base model first if it is not
cached). A rerun resumes, because every stage resumes from what storage says is done; a stage whose every
shard is marked done is not started at all (nor the judge server, when no judging is left), as the
cluster driver does. One lease object in storage keeps two runs of the same experiment from writing at once.

Stopping: each child leads its own process group (a terminal's Ctrl-C reaches only `srum run`), and is
asked to die with `srum run` (PR_SET_PDEATHSIG, so a SIGKILLed `srum run` leaves no writer behind; the
torchrun launcher and its workers do the same one level down). On Ctrl-C, SIGTERM or SIGHUP, `srum run`
signals every child's group, waits for it (SIGKILL after a grace period, or at once on a second signal),
stops the judge server, and only then releases the lease. Every child also checks, before it commits a
marker or a checkpoint, that the run that started it still holds the lease.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import click

from .. import exitcodes
from ..stages.spec import CLI_MODULE, STAGE_NAMES, StageSpec, get as stage_spec, launcher_argv, parse_stage_list
from ..storage import Lease, LeaseLost
from .process_groups import group_members, signal_group

ALL_STAGES = STAGE_NAMES

# Built-in toy experiments. `demo` is the README's main job; `test` is the test suite's end-to-end run.
PRESETS: Dict[str, Dict[str, Any]] = {
    "demo": {
        # One self-rewarding round as the bench runs it (toy/bench.py ROUNDS["demo"], chosen on the
        # validation split), on fewer prompts so it fits a few minutes on 2 cores.
        "prompts": {"source": "toy://train", "limit": 160, "num_shards": 2, "eval_source": "toy://eval",
                    "eval_limit": 200},
        "model": {"adapter": "toy", "params": {"preset": "demo", "planner": "tidy"}},
        # candidates in think mode (the model plans a layout, then draws it), as the paper generates them
        "generation": {"candidates_per_prompt": 4, "steps": 10, "guidance": 2.0, "resolution": 32, "batch_size": 64,
                       "think": True},
        "judge": {"verify_boxes": True},
        "reward": {"mode": "corrective", "weighting": "debiased", "reference": "base", "lambda_c": 0.5,
                   "push_away": 0.5, "score_unverified": True},
        "training": {"lr": 1e-4, "warmup_steps": 10, "steps": 30, "batch_size": 32, "save_every": 10,
                     "plan_dropout": 0.5},
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
    judge = {"url": None, "backend": "toy", "boxer_backend": "components",
             "backend_params": {"preset": base["model"]["params"]["preset"]}}
    judge.update(base.pop("judge", {}))
    return {"name": f"toy-{preset}", "storage": {"root": root}, "judge": judge,
            "reward": {"mode": "reference"}, "eval": {"benchmarks": [{"name": "toy"}]}, **base}


# ----------------------------------------------------------------------------------------- children
class StageFailed(RuntimeError):
    """A child stage exited non-zero. It printed its own one-line error; this one names the stage and
    passes the child's exit code on (a code srum does not define, or a signal, becomes FAILURE)."""

    def __init__(self, what: str, rc: int):
        self.rc = rc
        self.exit_code = rc if rc in exitcodes.MEANING and rc != exitcodes.OK else exitcodes.FAILURE
        then = ("fix what it says, then rerun" if self.exit_code in exitcodes.PERMANENT
                else "rerun the same command to resume")
        super().__init__(f"stage {what} failed with exit {rc} ({exitcodes.meaning(rc)}); its own error is above; {then}")


class Children:
    """Child processes, each the leader of its own process group, stopped group by group and awaited."""

    GRACE_S = 20.0       # SIGTERM -> SIGKILL: long enough for torchrun to stop its workers

    def __init__(self, echo: Callable[[str], None] = lambda m: click.echo(m, err=True)) -> None:
        from .. import entry

        self.entry, self.echo = entry, echo
        self.procs: List[subprocess.Popen] = []
        self.names: Dict[int, str] = {}
        self.hurry = threading.Event()        # a second stop signal: SIGKILL now

    def run(self, argv: List[str], env: Dict[str, str], what: str) -> None:
        proc = subprocess.Popen(argv, env=self.entry.child_env(env), start_new_session=True)
        self.procs.append(proc)
        self.names[proc.pid] = what
        try:
            rc = proc.wait()
        finally:
            if proc.poll() is not None:   # interrupted while waiting: stop() must still find it
                self.procs.remove(proc)
        if rc != 0:
            raise StageFailed(what, rc)

    def stop(self) -> None:
        """SIGTERM every child's group, wait, SIGKILL what is left, and wait until each group is empty."""
        procs, self.procs = list(self.procs), []
        if not procs:
            return
        self.echo(f"stopping {', '.join(self.names.get(p.pid, str(p.pid)) for p in procs)} ...")
        for proc in procs:
            signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.GRACE_S
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline and not self.hurry.is_set():
            time.sleep(0.05)
        for proc in procs:
            if proc.poll() is None or group_members(proc.pid):
                signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
        deadline = time.monotonic() + 5.0         # helpers a stage left in its group (none should)
        while any(group_members(p.pid) for p in procs) and time.monotonic() < deadline:
            for proc in procs:
                signal_group(proc.pid, signal.SIGKILL)
            time.sleep(0.05)


def stage_argv(spec: StageSpec, exp: Any, exp_file: Path, round: int, *, nproc: int, progress: bool) -> List[str]:
    """How this machine runs one stage of one round: one process doing every shard, or the torchrun
    launcher when the stage is distributed over more than one process."""
    command = spec.command(str(exp_file), round, progress=progress)
    if spec.distributed and nproc > 1:
        return launcher_argv(sys.executable, nproc, command)
    return [sys.executable, "-m", CLI_MODULE, *command]


def run_local(exp_data: Dict[str, Any], *, rounds: int = 1, stages: Sequence[str] = ALL_STAGES, workdir: Path,
              progress: bool = True, nproc: Optional[int] = None,
              echo: Callable[[str], None] = lambda m: click.echo(m, err=True)) -> Dict[str, Any]:
    """Run `stages` for `rounds` rounds of the experiment given as data; returns the report summary."""
    from ..config import parse_experiment
    from ..entry import Stopped, open_checked_store
    from ..layout import RunLayout
    from ..storage import LocalStore

    exp = parse_experiment(exp_data)
    stages = [s for s in ALL_STAGES if s in stages]
    store = open_checked_store(exp)
    workdir.mkdir(parents=True, exist_ok=True)
    lease = Lease(store, RunLayout(store, exp.name).lease_key, warn=echo)
    lease.acquire()
    if lease.took_over:
        echo(f"took over the lease of a run that is no longer running: {lease.took_over}")
    if isinstance(store, LocalStore):
        swept = store.sweep_temp(exp.name)
        if swept:
            echo(f"removed {swept} temporary file(s) of writes an interrupted run never finished")
    children = Children(echo)
    server = None
    state: Dict[str, Any] = {"stopping": None}

    def on_signal(signum: int, frame: Any) -> None:
        if state["stopping"] is None:
            state["stopping"] = signum
            raise Stopped(signum)
        children.hurry.set()      # a second signal: stop the children now, but never abandon the cleanup
        echo(f"{signal.Signals(signum).name} again: killing the children now; the lease is released after")

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in handled} if in_main else {}
    for sig in previous:
        signal.signal(sig, on_signal)
    phases: Dict[str, float] = {}     # wall seconds per phase, printed at the end of the run

    @contextlib.contextmanager
    def phase(name: str):
        t0 = time.perf_counter()
        yield
        phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0

    try:
        from ..registry import MODEL_ADAPTERS

        prepare = MODEL_ADAPTERS.hook(exp.model.adapter, "prepare")
        if prepare is not None:
            with phase("base model (pretrain or cache)"):
                prepare(exp.model)   # once, here, not in every child (the toy world: its base weights)
        layouts = {r: RunLayout(store, exp.name, r) for r in range(1, rounds + 1)}

        def complete(name: str, r: int) -> bool:   # every shard's marker is in storage: nothing to start
            return not layouts[r].shards_missing(name, stage_spec(name).shards(exp))

        judge_work = [(r, s) for r in layouts for s in stages if stage_spec(s).uses_judge(exp) and not complete(s, r)]
        if exp.judge.url is None and judge_work:
            from .judge_server import LocalTritonServer, models_for_experiment

            server = LocalTritonServer(models_for_experiment(exp), run_dir=workdir / "triton")
            with phase("judge server start"):
                server.start()
            exp_data = json.loads(json.dumps(exp_data))
            exp_data.setdefault("judge", {})["url"] = server.grpc_url
            echo(f"local Triton judge server ready at {server.grpc_url} (log: {server.log_path})")
        exp_file = workdir / "experiment.resolved.json"
        exp_file.write_text(json.dumps(exp_data, indent=1))
        env = dict(os.environ, PYTHONUNBUFFERED="1", **lease.env())
        n = nproc or exp.training.nproc_per_node
        for r in range(1, rounds + 1):
            for name in stages:
                if lease.lost:
                    raise LeaseLost(f"lease lost: {lease.lost}; stopping before stage {name}")
                if complete(name, r):
                    echo(f"{name} (round {r}): already complete in storage, skipped")
                    continue
                spec = stage_spec(name)
                # several processes share the cores; one process keeps the caller's thread settings (and numerics)
                child_env = (dict(env, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // n)))
                             if spec.distributed and n > 1 else env)
                with phase(name):
                    children.run(stage_argv(spec, exp, exp_file, r, nproc=n, progress=progress), child_env,
                                 f"{name} (round {r})")
        from ..stages.common import StageContext
        from ..stages.report import headline

        out = headline(StageContext.create(parse_experiment(exp_data), rounds))
        out["phases_s"] = {k: round(v, 1) for k, v in phases.items()}
        return out
    finally:
        # from here on a signal only hurries the stop: nothing may skip the lease release
        state["stopping"] = state["stopping"] or "cleanup"
        try:
            children.stop()
        finally:
            try:
                if server is not None:
                    server.stop()
            finally:
                lease.release()
                for sig, handler in previous.items():
                    signal.signal(sig, handler)


@click.command("run")
@click.argument("experiment", required=False, type=click.Path(dir_okay=False))
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

    Without EXPERIMENT, runs the built-in toy world and writes everything under --out. Exit codes: see
    `srum_jobs/exitcodes.py` and the README (0 done, 78 bad settings or input, 75 temporary, 74 disk
    full, 73 locked by another run, 130/143 stopped by Ctrl-C/SIGTERM: rerun to resume).
    """
    from .. import entry
    from ..config import parse_experiment

    try:
        chosen = parse_stage_list(stages)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--stages") from None
    if experiment:
        loaded = entry.load(experiment)
        data, exp, source = loaded.data, loaded.exp, experiment
    else:
        source = f"built-in preset {preset!r}"
        data = default_experiment(preset, "file://" + str(Path(out).resolve()))
        exp = parse_experiment(data, source)
    for warning in entry.check(exp, chosen, where="run", source=source):
        click.echo(f"warning: {warning}", err=True)
    if exp.storage.root.startswith("file://"):
        root = Path(exp.storage.root[len("file://"):]).resolve()
        workdir = root / exp.name / "local"
        data = dict(data, storage=dict(data.get("storage", {}), root="file://" + str(root)))
    else:
        workdir = Path(tempfile.mkdtemp(prefix=f"srum-{exp.name}-"))
    click.echo(f"srum run: experiment {exp.name!r} ({source}), stages {', '.join(chosen)}, {rounds} round(s)", err=True)
    t0 = time.time()
    summary = run_local(data, rounds=rounds, stages=chosen, workdir=workdir, progress=not no_progress, nproc=nproc)
    click.echo(f"\ndone in {time.time() - t0:.0f} s")
    phases = summary.get("phases_s", {})
    if phases:
        click.echo("phases (wall s, all rounds): " + ", ".join(f"{k} {v:.0f}" for k, v in phases.items()))
    for line in summary.get("lines", []):
        click.echo(line)
