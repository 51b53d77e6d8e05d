"""The local judge server: the real `tritonserver` binary that the `nvidia-pytriton` wheel ships.

What it does, in order:
1. finds the binary, the python backend and the backend stub built for the running CPython inside the
   installed wheel (`pytriton/tritonserver/...`); nothing in site-packages is modified: the backend and the
   matching stub are copied into a backend directory of the run;
2. generates a model repository from `triton_models/` (the production configs) with local parameters:
   KIND_CPU instances and the chosen backends and their params (`ModelSpec`), or serves a given repository
   exactly as it is;
3. starts the server in its own process group on loopback, on chosen ports or free ones, with the server
   log written to `<run_dir>/tritonserver.log`, and waits for `/v2/health/ready` (every model loaded);
4. stops it by signalling the whole process group (server and backend stubs), escalating to SIGKILL, and
   checks that no process of the group is left.

Model control: the server runs with `--model-control-mode=none`. It loads every model in the repository at
start, and the repository API refuses load/unload requests from clients ("explicit model load / unload is
not allowed"), so no client can change what a shared server serves. To serve other models, generate
another repository and restart.

Failures raise `TritonServerError` subclasses whose message quotes Triton's own error lines and names the
log file.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

JUDGE_MODEL = "srum_judge"
BOXER_MODEL = "srum_boxer"
EVALUATOR_MODEL = "srum_evaluator"

# Serving parameters kept from the production config when localising; every other parameter is
# production-specific (weights path, GPU dtype...) and replaced by the local spec's params.
_KEPT_PARAMETERS = ("backend_max_batch",)


class TritonServerError(RuntimeError):
    """The local Triton server could not be found, configured, started or stopped."""


class TritonNotFound(TritonServerError):
    """The tritonserver binary or its python backend is not installed."""


class TritonStartError(TritonServerError):
    """tritonserver exited or never became ready; the message quotes its error lines."""

    def __init__(self, message: str, log_path: Optional[Path] = None, triton_errors: Sequence[str] = ()):
        super().__init__(message)
        self.log_path = log_path
        self.triton_errors = list(triton_errors)


class TritonPortInUse(TritonStartError):
    """A port chosen for the server is taken by another process."""

    def __init__(self, message: str, port: int, kind: str):
        super().__init__(message)
        self.port, self.kind = port, kind


# ---------------------------------------------------------------------------------------------------
# The installed binary
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    python_backend: Path       # directory with libtriton_python.so and triton_python_backend_utils.py
    stub: Path                 # triton_python_backend_stub built for this CPython
    libs_dir: Path             # the wheel's bundled shared libraries (nvidia_pytriton.libs)

    @classmethod
    def find(cls) -> "TritonInstall":
        """Locate tritonserver inside the installed nvidia-pytriton wheel, for the running Python."""
        import importlib.util

        spec = importlib.util.find_spec("pytriton")
        if spec is None or not spec.submodule_search_locations:
            raise TritonNotFound("the local judge server needs the nvidia-pytriton wheel, which ships tritonserver; "
                                 "it is not installed in this Python environment "
                                 f"({sys.executable}): pip install 'nvidia-pytriton>=0.5'")
        root = Path(list(spec.submodule_search_locations)[0])
        server_dir = root / "tritonserver"
        py = f"{sys.version_info.major}.{sys.version_info.minor}"
        stubs = server_dir / "python_backend_stubs"
        install = cls(binary=server_dir / "bin" / "tritonserver",
                      python_backend=server_dir / "backends" / "python",
                      stub=stubs / py / "triton_python_backend_stub",
                      # wheels built by auditwheel keep bundled libs beside the package; editable installs inside it
                      libs_dir=next((p for p in (root.parent / "nvidia_pytriton.libs", server_dir / "external_libs")
                                     if p.is_dir()), root.parent / "nvidia_pytriton.libs"))
        if not install.binary.is_file():
            raise TritonNotFound(f"nvidia-pytriton at {root} has no tritonserver binary ({install.binary} missing)")
        if not (install.python_backend / "libtriton_python.so").is_file():
            raise TritonNotFound(f"nvidia-pytriton at {root} has no python backend "
                                 f"({install.python_backend}/libtriton_python.so missing)")
        if not install.stub.is_file():
            have = sorted(p.name for p in stubs.iterdir()) if stubs.is_dir() else []
            raise TritonNotFound(f"nvidia-pytriton at {root} ships no python backend stub for Python {py} "
                                 f"(it has: {', '.join(have) or 'none'}); use one of those Python versions")
        if not install.libs_dir.is_dir():
            raise TritonNotFound(f"nvidia-pytriton at {root}: bundled library directory {install.libs_dir} missing")
        return install

    def make_backend_dir(self, dest: Path) -> Path:
        """A backend directory for `--backend-directory`: the python backend plus the stub for this CPython."""
        py_dir = dest / "python"
        py_dir.mkdir(parents=True, exist_ok=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(self.python_backend / name, py_dir / name)
        shutil.copy2(self.stub, py_dir / "triton_python_backend_stub")
        return dest

    def environment(self, base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        env = dict(os.environ if base is None else base)

        def prepend(key: str, value: str) -> None:
            env[key] = value + (os.pathsep + env[key] if env.get(key) else "")

        # The stub links the system's libpython of the same minor version; when this interpreter has its own
        # (pyenv, a venv from a newer patch release), its C extensions (ssl, via transformers) need that one.
        import sysconfig

        libdir = sysconfig.get_config_var("LIBDIR")
        if libdir and Path(libdir, f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0").exists():
            prepend("LD_LIBRARY_PATH", libdir)
        # The copied stub lost its rpath to the bundled libraries (libcudart...): those come first.
        prepend("LD_LIBRARY_PATH", str(self.libs_dir))
        # The stub embeds libpython in isolated mode (PYTHONPATH is ignored) and finds its prefix, hence the
        # venv's site-packages with srum_jobs installed in it, through `python3` on PATH.
        prepend("PATH", str(Path(sys.executable).parent))
        return env


# ---------------------------------------------------------------------------------------------------
# Model repository generation
# ---------------------------------------------------------------------------------------------------
def default_model_source() -> Path:
    """The checked-in production repository `triton_models/` (or `$SRUM_TRITON_MODELS`)."""
    env = os.environ.get("SRUM_TRITON_MODELS")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "triton_models"
    if not path.is_dir():
        raise TritonServerError(f"Triton model repository templates not found at {path}; "
                                "set SRUM_TRITON_MODELS or pass a model repository")
    return path


@dataclass
class ModelSpec:
    """How one model of the source repository is served locally."""

    backend: str
    params: Dict[str, str] = field(default_factory=dict)
    instances: Optional[int] = None                # None = the source config's count (see triton_models/)
    max_batch_size: Optional[int] = None           # None = keep the source config's
    max_queue_delay_us: Optional[int] = None        # None = keep the source config's
    preferred_batch_sizes: Optional[List[int]] = None  # None = keep the source config's; [] = none
    dynamic_batching: bool = True                   # False: no dynamic batcher (each request scheduled alone)


def local_models(judge_backend: str = "toy", judge_params: Optional[Mapping[str, str]] = None,
                 boxer_backend: str = "components", boxer_params: Optional[Mapping[str, str]] = None,
                 evaluator_backend: Optional[str] = None,
                 evaluator_params: Optional[Mapping[str, str]] = None) -> Dict[str, ModelSpec]:
    """The usual local set: judge + boxer, and the evaluator when one is named."""
    models = {JUDGE_MODEL: ModelSpec(judge_backend, dict(judge_params or {})),
              BOXER_MODEL: ModelSpec(boxer_backend, dict(boxer_params or {}))}
    if evaluator_backend:
        models[EVALUATOR_MODEL] = ModelSpec(evaluator_backend, dict(evaluator_params or {}))
    return models


def models_for_judge_config(judge: object) -> Dict[str, ModelSpec]:
    """The local set for an experiment's `judge` section (`config.JudgeConfig`): its `backend` with its
    `backend_params`, its `boxer_backend`, served as `judge_model` and `boxer_model`."""
    models = local_models(judge.backend, judge.backend_params, judge.boxer_backend)  # type: ignore[attr-defined]
    return {JUDGE_MODEL: models[JUDGE_MODEL], BOXER_MODEL: models[BOXER_MODEL]}


def read_model_config(path: Path):
    """Parse a config.pbtxt with Triton's own protobuf schema (a typo is an error here, not at serve time)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except FileNotFoundError:
        raise TritonServerError(f"model config not found: {path}") from None
    except text_format.ParseError as e:
        raise TritonServerError(f"{path}: not a valid Triton model config: {e}") from None


def localize_config(config, spec: ModelSpec):
    """A copy of a production model config for this machine: CPU instances, the spec's backend and params."""
    from tritonclient.grpc import model_config_pb2

    local = model_config_pb2.ModelConfig()
    local.CopyFrom(config)
    source_count = sum(g.count for g in config.instance_group) or 1
    del local.instance_group[:]
    group = local.instance_group.add()
    group.kind = model_config_pb2.ModelInstanceGroup.KIND_CPU
    group.count = spec.instances if spec.instances is not None else source_count
    kept = {k: local.parameters[k].string_value for k in _KEPT_PARAMETERS if k in local.parameters}
    local.parameters.clear()
    for key, value in {**kept, **spec.params, "backend": spec.backend}.items():
        local.parameters[key].string_value = str(value)
    if spec.max_batch_size is not None:
        local.max_batch_size = spec.max_batch_size
    if spec.max_queue_delay_us is not None:
        local.dynamic_batching.max_queue_delay_microseconds = spec.max_queue_delay_us
    if spec.preferred_batch_sizes is not None:
        del local.dynamic_batching.preferred_batch_size[:]
        local.dynamic_batching.preferred_batch_size.extend(spec.preferred_batch_sizes)
    if not spec.dynamic_batching:
        local.ClearField("dynamic_batching")
    return local


def generate_repository(dest: Path, models: Mapping[str, ModelSpec], source: Optional[Path] = None) -> Path:
    """Write a local model repository into `dest` from the production one (`triton_models/`)."""
    from google.protobuf import text_format

    source = Path(source) if source else default_model_source()
    dest = Path(dest)
    if not models:
        raise TritonServerError("no models to serve")
    for name, spec in models.items():
        src = source / name
        if not (src / "config.pbtxt").is_file():
            have = sorted(p.name for p in source.iterdir() if (p / "config.pbtxt").is_file())
            raise TritonServerError(f"model {name!r} is not in the repository {source} (it has: {', '.join(have)})")
        if spec.instances is not None and spec.instances < 1:
            raise TritonServerError(f"model {name}: instances must be >= 1, got {spec.instances}")
        config = localize_config(read_model_config(src / "config.pbtxt"), spec)
        out = dest / name
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        versions = [p for p in src.iterdir() if p.is_dir() and p.name.isdigit()]
        if not versions:
            raise TritonServerError(f"model {name} in {source} has no numbered version directory")
        for v in versions:
            # copytree follows symlinks (srum_evaluator's model.py links to srum_judge's); caches stay behind
            shutil.copytree(v, out / v.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (out / "config.pbtxt").write_text(
            "# generated by srum_jobs.judging.server from " + str(src / "config.pbtxt") + "\n"
            + text_format.MessageToString(config), encoding="utf-8")
    return dest


# ---------------------------------------------------------------------------------------------------
# Process handling
# ---------------------------------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def group_members(pgid: int) -> List[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        # comm (field 2) may contain spaces and parentheses: parse after its last ')'
        rest = stat[stat.rfind(")") + 2:].split()
        state, pgrp = rest[0], int(rest[2])
        if pgrp == pgid and state != "Z":
            members.append(int(entry))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


_ERROR_LINE = re.compile(r"^E\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^\]]+\] ?(.*)$")


# Error lines Triton prints on every CPU-only start; they say nothing about why a start failed.
_NOISE = ("CudaDriverHelper has not been initialized",)


def triton_errors(log_text: str) -> List[str]:
    """Triton's own error lines (glog `E...`), message part only, in order, without duplicates.

    A python model's exception arrives with its Python stack appended after "At:"; the message is what
    the user needs, the stack stays in the log."""
    found: List[str] = []
    for line in log_text.splitlines():
        m = _ERROR_LINE.match(line)
        if not m:
            continue
        msg = m.group(1).strip().strip('"').replace("\\n", "\n")
        msg = msg.split("\n\nAt:", 1)[0].strip()
        if msg and msg not in found and not any(n in msg for n in _NOISE):
            found.append(msg)
    return found


_LIVE_SERVERS: "weakref.WeakSet[LocalTritonServer]" = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for server in list(_LIVE_SERVERS):
        try:
            server.stop()
        except Exception:
            pass


class LocalTritonServer:
    """A tritonserver process on loopback. Use as a context manager, or call `start()` and `stop()`.

    A run directory the server creates itself (no `run_dir` given) is removed when the `with` block ends
    without an error, or by `close()`; `stop()` keeps it (the log stays readable).

    `models`: what to serve, generated from `source` (default `triton_models/`) with local parameters;
    `model_repository`: instead, serve this repository exactly as it is (no generation).
    Ports left at 0 are picked free at start and kept across `restart()`.
    """

    def __init__(self, models: Optional[Mapping[str, ModelSpec]] = None, *,
                 model_repository: Optional[os.PathLike] = None, source: Optional[os.PathLike] = None,
                 run_dir: Optional[os.PathLike] = None, host: str = "127.0.0.1",
                 grpc_port: int = 0, http_port: int = 0, metrics_port: int = 0,
                 startup_timeout: float = 300.0, stop_timeout: float = 20.0, exit_timeout: int = 5,
                 log_verbose: int = 0, env: Optional[Mapping[str, str]] = None,
                 install: Optional[TritonInstall] = None):
        if models is not None and model_repository is not None:
            raise ValueError("give either models (a repository is generated) or model_repository (served as is)")
        self.models = dict(models) if models is not None else (None if model_repository else local_models())
        self.model_repository = Path(model_repository) if model_repository else None
        self.source = Path(source) if source else None
        self.host = host
        self.ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self._auto_ports = {k for k, v in self.ports.items() if not v}
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.exit_timeout = exit_timeout
        self.log_verbose = log_verbose
        self.extra_env = dict(env or {})
        self.install = install
        self._own_run_dir = run_dir is None
        self.run_dir = Path(run_dir) if run_dir else None
        self.proc: Optional[subprocess.Popen] = None
        self.pgid: Optional[int] = None
        self._log_file = None
        self._shm_prefix = f"srum{uuid.uuid4().hex[:10]}_"
        self._prepared = False

    # ---- endpoints
    @property
    def grpc_port(self) -> int:
        return self.ports["grpc"]

    @property
    def http_port(self) -> int:
        return self.ports["http"]

    @property
    def metrics_port(self) -> int:
        return self.ports["metrics"]

    @property
    def grpc_url(self) -> str:
        return f"{self._host_for_url}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self._host_for_url}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._host_for_url}:{self.metrics_port}/metrics"

    @property
    def _host_for_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def log_path(self) -> Path:
        assert self.run_dir is not None, "the server has not been prepared yet"
        return self.run_dir / "tritonserver.log"

    @property
    def repository(self) -> Path:
        if self.model_repository is not None:
            return self.model_repository
        assert self.run_dir is not None
        return self.run_dir / "models"

    def served_models(self) -> List[str]:
        if self.models is not None:
            return sorted(self.models)
        return sorted(p.name for p in self.repository.iterdir() if (p / "config.pbtxt").is_file())

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---- lifecycle
    def prepare(self) -> None:
        """Find the binary, make the run directory, backend directory and model repository (once)."""
        if self._prepared:
            return
        self.install = self.install or TritonInstall.find()
        if self.run_dir is None:
            self.run_dir = Path(tempfile.mkdtemp(prefix="srum-triton-"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.install.make_backend_dir(self.run_dir / "backends")
        if self.model_repository is None:
            generate_repository(self.run_dir / "models", self.models or {}, self.source)
        elif not self.model_repository.is_dir():
            raise TritonServerError(f"model repository {self.model_repository} is not a directory")
        self._prepared = True

    def command(self) -> List[str]:
        assert self.install is not None and self.run_dir is not None
        return [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.run_dir / 'backends'}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--disable-auto-complete-config",
            f"--exit-timeout-secs={self.exit_timeout}",
            f"--log-verbose={self.log_verbose}",
            f"--http-address={self.host}", f"--http-port={self.http_port}",
            f"--grpc-address={self.host}", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}",
            # a CPU machine has no CUDA host memory to pin
            "--pinned-memory-pool-byte-size=0",
            # named shared-memory regions, so a killed server's leftovers in /dev/shm can be found and removed
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
        ]

    def start(self) -> "LocalTritonServer":
        if self.is_running():
            return self
        self.prepare()
        self._check_chosen_ports_free()
        attempts = 3 if self._auto_ports else 1
        for attempt in range(attempts):
            for k in self._auto_ports:
                if attempt > 0 or not self.ports[k]:
                    self.ports[k] = free_port(self.host)
            try:
                self._launch()
                self._wait_ready()
                return self
            except TritonStartError as e:
                self.stop()
                # a free port taken by someone else between our probe and Triton's bind: pick others
                if attempt + 1 < attempts and any("already in use" in m for m in e.triton_errors + [str(e)]):
                    continue
                raise

    def _check_chosen_ports_free(self) -> None:
        """A port the caller chose must be free before tritonserver starts: gRPC servers bind with
        SO_REUSEPORT, so a second server can share a port with the first and the readiness probe would be
        answered by a server this object does not own. The probe binds without SO_REUSEPORT, which fails
        while anyone listens there (checked at listen(): Linux may accept the bind itself)."""
        for kind in ("grpc", "http", "metrics"):
            port = self.ports[kind]
            if kind in self._auto_ports or not port:
                continue
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as s:
                # SO_REUSEADDR: connections of a stopped server lingering in TIME_WAIT do not count
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((self.host, port))
                    s.listen(1)
                except OSError as e:
                    raise TritonPortInUse(
                        f"the {kind} port {self.host}:{port} is already in use ({e.strerror}); another server "
                        f"(perhaps another `srum judge serve`) listens there. Stop it, or choose another "
                        f"--{kind}-port (0 picks a free one)", port=port, kind=kind) from None

    def _launch(self) -> None:
        assert self.install is not None
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"==== srum: starting tritonserver at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                             f"{' '.join(self.command())}\n".encode())
        self._log_file.flush()
        self._log_start = self._log_file.tell()
        env = self.install.environment()
        env.update(self.extra_env)
        try:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=self._log_file,
                                         stderr=subprocess.STDOUT, env=env, cwd=str(self.run_dir),
                                         start_new_session=True, preexec_fn=_die_with_parent_fn())
        except OSError as e:
            raise TritonStartError(f"cannot execute {self.install.binary}: {e}") from None
        self.pgid = self.proc.pid  # start_new_session: the server leads its own group
        _LIVE_SERVERS.add(self)

    def _new_log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _start_error(self, what: str) -> TritonStartError:
        text = self._new_log_text()
        errors = triton_errors(text)
        if errors:
            quoted = "\n".join(f"  {m}" for m in errors[:10])
        else:
            tail = [ln for ln in text.splitlines() if ln.strip()][-15:]
            quoted = "\n".join(f"  {ln}" for ln in tail) or "  (the log is empty)"
        return TritonStartError(f"tritonserver {what}. Triton said:\n{quoted}\nfull log: {self.log_path}",
                                log_path=self.log_path, triton_errors=errors)

    def _wait_ready(self) -> None:
        assert self.proc is not None
        url = f"{self.http_url}/v2/health/ready"
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.05
        while True:
            code = self.proc.poll()
            if code is not None:
                raise self._start_error(f"exited with code {code} before it was ready")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise self._start_error(f"was not ready after {self.startup_timeout:.0f} s "
                                        f"(models: {', '.join(self.served_models())})")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop(self) -> None:
        """Stop the server and every process of its group; idempotent."""
        proc, pgid = self.proc, self.pgid
        left: List[int] = []
        if proc is not None and pgid is not None:
            _signal_group(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                _signal_group(pgid, signal.SIGKILL)
                proc.wait(timeout=10)
            # backend stubs notice their server is gone on their own; do not leave it to chance
            deadline = time.monotonic() + 5.0
            while group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if group_members(pgid):
                _signal_group(pgid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
                while group_members(pgid) and time.monotonic() < deadline:
                    time.sleep(0.05)
            left = group_members(pgid)
            self.proc = None
            _LIVE_SERVERS.discard(self)
            self._remove_shm()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if left:
            raise TritonServerError(f"processes {left} of tritonserver's group {pgid} survived SIGKILL")

    def _remove_shm(self) -> None:
        shm = Path("/dev/shm")
        if shm.is_dir():
            for p in shm.glob(self._shm_prefix + "*"):
                try:
                    p.unlink()
                except OSError:
                    pass

    def restart(self) -> "LocalTritonServer":
        """Stop and start again on the same ports (clients reconnect to the same address)."""
        self.stop()
        auto, self._auto_ports = self._auto_ports, set()
        try:
            return self.start()
        finally:
            self._auto_ports = auto

    def close(self) -> None:
        """Stop, and remove the run directory if this object created it."""
        self.stop()
        if self._own_run_dir and self.run_dir is not None and self.run_dir.exists():
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def __enter__(self) -> "LocalTritonServer":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        # a run directory this object made goes with it, unless something failed: then its log is evidence
        if exc_type is None:
            self.close()
        else:
            self.stop()

    def describe(self) -> str:
        return (f"grpc={self.grpc_url} http={self.http_url} metrics={self.metrics_url} "
                f"models={','.join(self.served_models())} log={self.log_path}")


def _die_with_parent_fn():
    """preexec_fn: SIGTERM the server if the thread that started it dies, so a killed test run or CLI
    leaves no server behind. Only from the main thread: the signal fires when the *thread* exits."""
    if threading.current_thread() is not threading.main_thread() or not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return preexec
