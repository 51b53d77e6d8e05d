"""The one way in: every command loads its experiment, checks it and opens its storage here, and every
failure leaves through `classify`, the one mapping from errors to exit codes.

- `load(path)`: the experiment file through config's one reader (size cap, UTF-8, duplicate keys refused,
  `2e-5` is a number) and the schema.
- `check(exp, stages, where)`: everything that can be checked without running: registry names (adapter,
  judge and boxer backends, toy presets), the templates directory, prompt and eval files (parsed, hostile
  ids refused, duplicate texts counted), a local checkpoint, the storage root, and what each chosen stage
  needs (a judge server, held-out prompts). `srum config validate` runs it too, so validate passes nothing
  the run rejects later for a reason known before running.
- `open_checked_store(exp)`: the store, probed (a silent S3 endpoint is named within
  storage.probe_timeout_s; an unwritable root fails before any work).
- `classify(exc)` -> (exit code, one line); `guarded()` applies it; `--debug` / SRUM_DEBUG=1 add the
  traceback.
- `die_with_parent()`: a child of `srum run` dies with it, even when `srum run` is SIGKILLed.

Imports are lazy: the CLI imports this module to answer `srum --help`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from . import exitcodes

DEBUG_ENV = "SRUM_DEBUG"
PARENT_ENV = "SRUM_PARENT_PID"      # set by a parent that wants its child to die with it


# --------------------------------------------------------------------------------------------- loading
@dataclass
class Loaded:
    exp: Any            # config.Experiment
    data: Dict[str, Any]
    text: str
    source: str


def load(path: str) -> Loaded:
    """Read and validate an experiment file; ConfigError names the file and the field."""
    from .config import parse_experiment, read_experiment_data

    data, text = read_experiment_data(path)
    return Loaded(parse_experiment(data, str(path)), data, text, str(path))


# ---------------------------------------------------------------------------------------------- checks
def check(exp: Any, stages: Sequence[str] = (), *, where: str = "validate", source: str = "") -> List[str]:
    """Raise ConfigError listing every problem of `exp` that shows without running `stages`
    (all stages when empty); return warnings. `where`: "validate", "run" (srum run, which starts a local
    judge server when judge.url is empty), "stage" (one stage process, which does not) or "cluster" (the
    pods run elsewhere: files of this machine are not theirs, so only names and settings are checked)."""
    from .config import ConfigError
    from .stages.spec import STAGE_NAMES, get

    chosen = [get(s) for s in (stages or STAGE_NAMES)]
    problems: List[str] = []
    warnings: List[str] = []
    _check_registries(exp, problems)
    if "eval" in {s.name for s in chosen} and not exp.prompts.eval_source:
        problems.append("prompts.eval_source: not set, and the eval stage needs held-out prompts")
    if where != "cluster":
        _check_files(exp, chosen, problems, warnings)
        _check_storage_root(exp, problems)
    if where == "stage" and exp.judge.url is None:
        for spec in chosen:
            if spec.uses_judge(exp):
                problems.append(f"judge.url: not set, and `srum stage {spec.name}` needs a running judge server: set "
                                "judge.url (host:port of its gRPC endpoint), or use `srum run`, which starts one")
    if problems:
        raise ConfigError(f"invalid experiment {source or repr(exp.name)}:\n" +
                          "\n".join(f"  {p}" for p in problems))
    return warnings


def _check_registries(exp: Any, problems: List[str]) -> None:
    from .judging.backends import BOXER_BACKENDS, JUDGE_BACKENDS
    from .models.base import MODEL_ADAPTERS

    if exp.model.adapter not in MODEL_ADAPTERS:
        problems.append(f"model.adapter: {exp.model.adapter!r} is not one of {', '.join(sorted(MODEL_ADAPTERS))}")
    for field, name, registry in (("judge.backend", exp.judge.backend, JUDGE_BACKENDS),
                                  ("judge.boxer_backend", exp.judge.boxer_backend, BOXER_BACKENDS)):
        problem = _backend_name_problem(name, registry)
        if problem:
            problems.append(f"{field}: {problem}")
    # Parameters the built-in toy world checks by name. Other adapters validate their params when they load.
    if exp.model.adapter == "toy" and not exp.model.checkpoint:
        _toy_preset("model.params.preset", exp.model.params.get("preset", "demo"), problems)
    if exp.judge.url is None and exp.judge.backend == "toy" and not exp.judge.backend_params.get("checkpoint"):
        _toy_preset("judge.backend_params.preset", exp.judge.backend_params.get("preset") or "demo", problems)


def _backend_name_problem(name: str, registry: Dict[str, str]) -> Optional[str]:
    if ":" in name:   # "package.module:Class", an operator's own backend: its module must be installed
        import importlib.util

        module = name.split(":", 1)[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        return None if found else f"module {module!r} of {name!r} is not installed"
    if name not in registry:
        return f"{name!r} is not one of {', '.join(sorted(registry))} (or 'package.module:Class')"
    return None


def _toy_preset(field: str, preset: Any, problems: List[str]) -> None:
    from .models.toy.pretrain import PRESETS

    if str(preset) not in PRESETS:
        problems.append(f"{field}: {preset!r} is not one of {', '.join(sorted(PRESETS))}")


def _local_path(uri: str) -> Optional[Path]:
    """The local path of a file:// URI or plain path; None for s3:// and toy://."""
    if uri.startswith(("s3://", "toy://")):
        return None
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def _check_files(exp: Any, chosen: Sequence[Any], problems: List[str], warnings: List[str]) -> None:
    from .judging.templates import TemplateError, load_templates
    from .prompts import PromptError, duplicate_texts, load_prompts

    names = {s.name for s in chosen}
    p = exp.prompts
    sources = []
    if "generate" in names:
        sources.append(("prompts.source", p.source, p.format, p.limit, p.categories))
    if "eval" in names and p.eval_source:
        sources.append(("prompts.eval_source", p.eval_source, "auto", p.eval_limit, None))
    for field, uri, fmt, limit, categories in sources:
        try:
            if uri.startswith("s3://"):
                continue   # read by the stage itself (and frozen in storage on first use)
            prompts = load_prompts(uri, fmt, storage=exp.storage, limit=limit, categories=categories)
        except PromptError as e:
            problems.append(f"{field}: {e}")
            continue
        dups = duplicate_texts(prompts)
        if dups:
            warnings.append(f"{field}: {sum(dups.values())} of {len(prompts)} prompts repeat an earlier prompt's text "
                            f"(e.g. {next(iter(dups))!r}); they are kept, each with its own id")
    if exp.judge.templates_dir is not None or names & {"generate", "eval"}:
        try:
            load_templates(exp.judge.templates_dir, exp.reward)
        except TemplateError as e:
            problems.append(f"judge.templates_dir: {e}")
    ckpt = exp.model.checkpoint
    if ckpt and _local_path(ckpt) is not None and not _local_path(ckpt).exists():
        problems.append(f"model.checkpoint: {ckpt} does not exist")


def _check_storage_root(exp: Any, problems: List[str]) -> None:
    root = exp.storage.root
    if not root.startswith("file://"):
        return
    path = Path(root[len("file://"):]).expanduser()
    if path.exists():
        if not path.is_dir():
            problems.append(f"storage.root: {root} is a file, not a folder")
        elif not os.access(path, os.W_OK | os.X_OK):
            problems.append(f"storage.root: {root} {_unwritable(path)}")
        return
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        problems.append(f"storage.root: {root} cannot be created: {parent} is a file, not a folder")
    elif not os.access(parent, os.W_OK | os.X_OK):
        problems.append(f"storage.root: {root} cannot be created: {parent} {_unwritable(parent)}")


def _unwritable(path: Path) -> str:
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "is on a read-only file system"
    except OSError:
        pass
    return "is not writable by this user"


def open_checked_store(exp: Any) -> Any:
    """The experiment's store, probed now (see ObjectStore.probe)."""
    from .storage import open_store

    store = open_store(exp.storage)
    store.probe()
    return store


# ---------------------------------------------------------------------------------------------- stages
def run_stage(name: str, experiment_file: str, round: int, shard: Optional[int] = None,
              num_shards: Optional[int] = None, *, progress: bool = True) -> Any:
    """What `srum stage NAME` (and the torchrun worker of a distributed stage) does: load and check the
    experiment for this stage, probe storage, then run one shard, or every shard when none is given and
    $JOB_COMPLETION_INDEX is not set."""
    from .config import ConfigError
    from .stages.spec import get

    spec = get(name)
    previous = stop_on_signals()
    try:
        loaded = load(experiment_file)
        for warning in check(loaded.exp, (name,), where="stage", source=experiment_file):
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        n = num_shards or spec.shards(loaded.exp)
        if spec.shardable and shard is None and os.environ.get("JOB_COMPLETION_INDEX", "").isdigit():
            shard = int(os.environ["JOB_COMPLETION_INDEX"])
        if shard is not None and shard >= n:
            raise ConfigError(f"shard {shard} is out of range for {n} shards (--shard, --num-shards)")
        open_checked_store(loaded.exp)
        return spec.run(loaded.exp, round, shard, n, progress=progress)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -------------------------------------------------------------------------------------- exit codes
# The one mapping from errors to exit codes, looked up along the exception's class hierarchy (most
# specific first) by "module:Class", so classifying imports nothing. Objects that carry their own
# `exit_code` (the cluster layer's errors, a failed child stage) keep it.
_CODES: Dict[str, Tuple[int, str]] = {
    # permanent: fix the settings or the input, then rerun
    "srum_jobs.config:ConfigError": (exitcodes.CONFIG_ERROR, ""),
    "srum_jobs.prompts:PromptError": (exitcodes.CONFIG_ERROR, "prompts: "),
    "srum_jobs.records:RecordError": (exitcodes.CONFIG_ERROR, "damaged record: "),
    "srum_jobs.rewards:RewardMapError": (exitcodes.CONFIG_ERROR, "damaged reward map: "),
    "srum_jobs.plan:PlanError": (exitcodes.CONFIG_ERROR, ""),
    "srum_jobs.judging.templates:TemplateError": (exitcodes.CONFIG_ERROR, "judge templates: "),
    "srum_jobs.judging.backends:BackendError": (exitcodes.CONFIG_ERROR, ""),
    "srum_jobs.storage:InvalidKey": (exitcodes.CONFIG_ERROR, "storage: refused: "),
    "srum_jobs.storage:DamagedData": (exitcodes.CONFIG_ERROR, "storage: damaged data: "),
    "srum_jobs.storage:StorageRefused": (exitcodes.CONFIG_ERROR, "storage: "),
    "srum_jobs.storage:NotFound": (exitcodes.CONFIG_ERROR, "storage: "),
    # the experiment is someone else's right now
    "srum_jobs.storage:LeaseHeld": (exitcodes.LOCKED, ""),
    "srum_jobs.storage:LeaseLost": (exitcodes.LOCKED, ""),
    # full disk: free space, rerun
    "srum_jobs.storage:NoSpace": (exitcodes.NO_SPACE, "storage: "),
    # temporary: retrying may help
    "srum_jobs.storage:StorageUnavailable": (exitcodes.TEMPORARY, "storage: "),
    "srum_jobs.storage:StorageError": (exitcodes.TEMPORARY, "storage: "),
    "srum_jobs.judging.client:JudgeRequestError": (exitcodes.FAILURE, "judge request: "),
    "srum_jobs.judging.client:JudgeClientError": (exitcodes.TEMPORARY, "judge server: "),
    "builtins:ConnectionError": (exitcodes.TEMPORARY, "judge server: "),
    "builtins:MemoryError": (exitcodes.FAILURE, "out of memory: "),
}
_OS_CODES = {
    "ENOSPC": (exitcodes.NO_SPACE, "disk full"), "EDQUOT": (exitcodes.NO_SPACE, "disk quota exceeded"),
    "EACCES": (exitcodes.CONFIG_ERROR, "permission denied"), "EPERM": (exitcodes.CONFIG_ERROR, "not permitted"),
    "EROFS": (exitcodes.CONFIG_ERROR, "read-only file system"),
}


class Stopped(KeyboardInterrupt):
    """Raised in the main thread by a stop signal (SIGTERM, SIGHUP), like Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def classify(exc: BaseException) -> Tuple[int, str]:
    """(exit code, one-line message) for any exception."""
    import errno as errno_mod

    if isinstance(exc, KeyboardInterrupt):
        signum = getattr(exc, "signum", signal.SIGINT)
        name = signal.Signals(signum).name
        return 128 + signum, f"stopped by {name}; rerun the same command to resume"
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and not isinstance(code, bool):
        return code, str(exc)
    for cls in type(exc).__mro__:
        hit = _CODES.get(f"{cls.__module__}:{cls.__qualname__}")
        if hit:
            return hit[0], hit[1] + str(exc)
    if isinstance(exc, OSError) and exc.errno is not None:
        hit = _OS_CODES.get(errno_mod.errorcode.get(exc.errno, ""))
        if hit:
            where = f" {exc.filename}" if exc.filename else ""
            return hit[0], f"{hit[1]}:{where} ({exc.strerror})"
    first = (str(exc).strip().splitlines() or [""])[0]
    return exitcodes.FAILURE, (f"unexpected {type(exc).__name__}: {first} (rerun with --debug or {DEBUG_ENV}=1 for "
                               "the traceback)")


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def fail(exc: BaseException) -> "NoReturn":  # type: ignore[name-defined]  # noqa: F821
    """Print the one line for `exc` (and, in debug mode, its traceback) on stderr and exit with its code."""
    code, message = classify(exc)
    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    world = os.environ.get("WORLD_SIZE", "1")
    who = f"rank {os.environ.get('RANK', '?')}: " if world.isdigit() and int(world) > 1 else ""
    sys.stderr.write(f"error: {who}{message}\n")     # one write: ranks failing together do not interleave
    sys.stderr.flush()
    sys.exit(code)


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Every failure inside leaves as one line and its exit code (click's own exceptions pass through)."""
    try:
        yield
    except SystemExit:
        raise
    except BaseException as e:   # noqa: B902 - the point: nothing leaves unclassified
        if _is_click_exception(e):
            raise
        fail(e)


def _is_click_exception(e: BaseException) -> bool:
    mod = type(e).__module__
    return mod.startswith("click.") or mod == "click"


# --------------------------------------------------------------------------------------- processes
def die_with_parent(expected_parent: Optional[int] = None, sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux PR_SET_PDEATHSIG); if the
    parent is already gone (it died before this call), stop now. False where the platform cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    pr_set_pdeathsig = 1
    if prctl(pr_set_pdeathsig, int(sig), 0, 0, 0) != 0:
        return False
    if expected_parent is not None and os.getppid() != expected_parent:
        os.kill(os.getpid(), sig)
    return True


def bind_to_parent() -> None:
    """In a child started with PARENT_ENV set: die with that parent. The variable is consumed, so this
    process's own children (started by someone else's code) do not inherit a parent that is not theirs."""
    value = os.environ.pop(PARENT_ENV, "")
    if value.isdigit():
        die_with_parent(int(value))


def child_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for a child that must die with this process."""
    return {**(env if env is not None else os.environ), PARENT_ENV: str(os.getpid())}


def stop_on_signals(signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> Dict[int, Any]:
    """Turn stop signals into `Stopped` in the main thread, so `finally` blocks and temp-file cleanup run
    (Python's default for SIGTERM ends the process on the spot). Returns the handlers it replaced (none
    outside the main thread, where Python cannot set any)."""
    import threading

    def handler(signum: int, frame: Any) -> None:
        raise Stopped(signum)

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, handler)
    return previous
