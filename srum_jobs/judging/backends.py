"""Judge and boxer backends: one registry per protocol, and the batch logic every server-side model shares.

A backend is chosen by a config string (`judge.backend`, `judge.boxer_backend`, or the `backend` parameter
of a Triton model's `config.pbtxt`) and imported only when asked for, so a missing optional dependency of
one backend (transformers, segment-anything, Bagel's code) never breaks another.

The second half is what a Triton python-backend model does with one scheduler batch once its tensors are
unpacked: validate and decode every request on its own, group the valid ones by generation parameters,
call the backend in chunks, and, if a chunk fails, re-run its requests one at a time so that one bad
request gets its own error and never fails the rest of the batch. It is pure Python (no Triton import),
so the Triton models stay thin adapters and the logic is tested without a server.
"""

from __future__ import annotations

import importlib
import io
import os
import string
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, Union

from .. import registry
from .protocols import BoxerBackend, BoxOptions, BoxProposal, JudgeBackend, JudgeParams, JudgeReply

# The registries (name -> "module:Class") live in the torch-free registry module, filled by the plugins
# (models/plugins.py, toy/plugin.py); every class takes `(params: dict)` with string values. A name
# that is itself "module:Class" selects a class outside the registry (an operator's own backend).
_REGISTRIES = {"judge": (registry.JUDGE_BACKENDS, JudgeBackend), "boxer": (registry.BOXER_BACKENDS, BoxerBackend)}

# What to install when a backend's module imports something that is not there.
_EXTRA_HINT = "install the project's optional model dependencies: pip install 'srum-jobs[models]'"

# Largest image decoded per request (pixels) unless a model sets `max_image_pixels`: the size is read from the
# header and a larger image is refused before any pixel is decoded, so a decompression bomb or an 8192x8192
# image costs microseconds and a bad-request error, not seconds of boxer CPU or an out-of-memory kill.
# 4096 x 4096 is four times the largest resolution the method generates (1024 x 1024).
MAX_IMAGE_PIXELS = 4096 * 4096


class BackendError(RuntimeError):
    """A backend cannot be chosen or loaded; the message names the backend and why."""


class BadRequest(ValueError):
    """One request that cannot be served (corrupt image, empty instruction...). The message names the input."""


# ---------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------
def backend_class(kind: str, name: str) -> type:
    """The class registered as `name` for `kind` ('judge' or 'boxer'), imported now."""
    try:
        registry, _ = _REGISTRIES[kind]
    except KeyError:
        raise BackendError(f"unknown backend kind {kind!r}; kinds are {sorted(_REGISTRIES)}") from None
    if ":" in name:
        # "package.module:Class": a backend outside this package (the operator's own), same protocol
        target = name
    else:
        try:
            target = registry[name]
        except KeyError:
            raise BackendError(f"unknown {kind} backend {name!r}; available: {', '.join(sorted(registry))} "
                               "(or 'package.module:Class')") from None
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        # The backend's own module missing is an installation problem of this package; anything else
        # missing is an optional dependency of that backend.
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise BackendError(f"{kind} backend {name!r}: its module {module_name} is not part of this "
                               f"installation ({e})") from e
        raise BackendError(f"{kind} backend {name!r} needs the Python package {e.name!r}, which is not "
                           f"installed; {_EXTRA_HINT}") from e
    except ImportError as e:
        raise BackendError(f"{kind} backend {name!r} cannot be imported ({module_name}): {e}") from e
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise BackendError(f"{kind} backend {name!r}: {module_name} has no class {class_name}") from None


def _load(kind: str, name: str, params: Mapping[str, Any]) -> Any:
    cls = backend_class(kind, name)
    backend = cls(dict(params))
    _, protocol = _REGISTRIES[kind]
    if not isinstance(backend, protocol):
        raise BackendError(f"{kind} backend {name!r} ({cls.__module__}.{cls.__name__}) does not implement "
                           f"{protocol.__name__}")
    return backend


def load_judge_backend(name: str, params: Optional[Mapping[str, Any]] = None) -> JudgeBackend:
    return _load("judge", name, params or {})


def load_boxer_backend(name: str, params: Optional[Mapping[str, Any]] = None) -> BoxerBackend:
    return _load("boxer", name, params or {})


def request_error_types(backend: Any) -> Tuple[type, ...]:
    """The exception types that mean "this request is malformed" for `backend`: its `request_errors` class
    attribute, and the `request_errors` its registry entry names (a bad-request error, Triton INVALID_ARG,
    never retried, instead of a backend failure, INTERNAL)."""
    cls = type(backend)
    found = list(getattr(backend, "request_errors", ()) or ())
    target = f"{cls.__module__}:{cls.__qualname__}"
    judges = registry.JUDGE_BACKENDS
    for name in [n for n, t in judges.items() if t == target]:
        found += [registry.import_target(t) for t in judges.trait(name, "request_errors")]
    return tuple(found)


# Tensor names on the wire: the Triton models' config.pbtxt and the gRPC client both use these.
class JudgeTensors:
    IMAGE = "IMAGE"                    # BYTES [1]: encoded PNG/JPEG
    INSTRUCTION = "INSTRUCTION"        # BYTES [1]: UTF-8 text
    MAX_NEW_TOKENS = "MAX_NEW_TOKENS"  # INT32 [1], optional
    TEMPERATURE = "TEMPERATURE"        # FP32 [1], optional
    THINK = "THINK"                    # BOOL [1], optional
    TEXT = "TEXT"                      # BYTES [1]: the answer, think text removed
    THINK_TEXT = "THINK_TEXT"          # BYTES [1]


class BoxerTensors:
    IMAGE = "IMAGE"
    POINTS_PER_SIDE = "POINTS_PER_SIDE"  # INT32 [1], optional
    MAX_REGIONS = "MAX_REGIONS"          # INT32 [1], optional
    MIN_AREA = "MIN_AREA"                # FP32 [1], optional: fraction of the image area
    BOXES = "BOXES"                      # FP32 [N, 4]: pixel xyxy, largest first
    AREAS = "AREAS"                      # FP32 [N]
    CONFIDENCE = "CONFIDENCE"            # FP32 [N]


# ---------------------------------------------------------------------------------------------------
# Model settings: config.pbtxt parameters + environment overrides -> backend name and params
# ---------------------------------------------------------------------------------------------------
# Parameters the serving side consumes itself; everything else goes to the backend's constructor.
SERVING_KEYS = ("backend", "backend_max_batch", "max_image_pixels")


@dataclass(frozen=True)
class ModelSettings:
    backend: str
    params: Dict[str, str]
    backend_max_batch: int
    max_image_pixels: int = MAX_IMAGE_PIXELS


def env_prefix(model_name: str) -> str:
    """`srum_judge` -> `SRUM_JUDGE_`: `SRUM_JUDGE_MODEL_PATH` overrides parameter `model_path` of srum_judge."""
    return "".join(c if c.isalnum() else "_" for c in model_name).upper() + "_"


def model_settings(model_name: str, parameters: Mapping[str, str], *, version: str = "",
                   version_dir: str = "", environ: Optional[Mapping[str, str]] = None) -> ModelSettings:
    """Resolve one Triton model's settings.

    `parameters` are the string parameters of its config.pbtxt. An environment variable
    `<MODEL>_<KEY>` (e.g. `SRUM_JUDGE_DEVICE=cpu`) overrides a parameter of the same key, so one checked-in
    repository serves on a GPU node and on a laptop. Values may name `{version}` and `{version_dir}` (the
    model's version directory), so each served version can carry its own weights. Empty values are
    dropped: the backend's own default applies (config.pbtxt cannot express "unset").
    """
    environ = os.environ if environ is None else environ
    prefix = env_prefix(model_name)
    merged: Dict[str, str] = {str(k): str(v) for k, v in parameters.items()}
    for key, value in environ.items():
        if key.startswith(prefix) and len(key) > len(prefix):
            merged[key[len(prefix):].lower()] = value
    resolved: Dict[str, str] = {}
    for key, value in merged.items():
        try:
            resolved[key] = string.Formatter().vformat(value, (), _Placeholders(version=version,
                                                                                version_dir=version_dir))
        except (ValueError, KeyError) as e:
            raise BackendError(f"model {model_name}: parameter {key}={value!r} has a bad placeholder ({e}); "
                               "only {version} and {version_dir} are known") from None
    backend = resolved.pop("backend", "")
    if not backend:
        raise BackendError(f"model {model_name}: no backend chosen; set parameter 'backend' in its config.pbtxt "
                           f"or {prefix}BACKEND")
    raw_max = resolved.pop("backend_max_batch", "") or "0"
    try:
        max_batch = int(raw_max)
        if max_batch < 0:
            raise ValueError
    except ValueError:
        raise BackendError(f"model {model_name}: backend_max_batch must be a non-negative integer "
                           f"(0 = no limit), got {raw_max!r}") from None
    raw_pixels = resolved.pop("max_image_pixels", "") or str(MAX_IMAGE_PIXELS)
    try:
        max_pixels = int(raw_pixels)
        if max_pixels < 1:
            raise ValueError
    except ValueError:
        raise BackendError(f"model {model_name}: max_image_pixels must be a positive integer, got {raw_pixels!r}") from None
    params = {k: v for k, v in resolved.items() if v != ""}
    return ModelSettings(backend=backend, params=params, backend_max_batch=max_batch, max_image_pixels=max_pixels)


def triton_model_settings(args: Mapping[str, str]) -> Tuple[str, str, ModelSettings]:
    """(model name, version, settings) from the `args` Triton passes to a python model's `initialize`."""
    import json

    config = json.loads(args["model_config"])
    name, version = args["model_name"], args["model_version"]
    parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    settings = model_settings(name, parameters, version=version,
                              version_dir=os.path.join(args["model_repository"], version))
    return name, version, settings


class _Placeholders(dict):
    def __missing__(self, key: str) -> str:
        raise KeyError(f"unknown placeholder {{{key}}}")


# ---------------------------------------------------------------------------------------------------
# Request validation and the batch logic
# ---------------------------------------------------------------------------------------------------
def decode_image(data: Any, what: str = "image", max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
    """Encoded image bytes (PNG, JPEG...) -> an RGB PIL image, or BadRequest naming `what`.

    An image of more than `max_pixels` pixels is refused from its header, before decoding."""
    from PIL import Image

    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise BadRequest(f"{what} is empty; send the encoded PNG/JPEG bytes")
    try:
        img = Image.open(io.BytesIO(bytes(data)))
        if img.width * img.height > max_pixels:
            raise BadRequest(f"{what} is {img.width}x{img.height}, more than the {max_pixels} pixels this server "
                             "accepts per image (model parameter max_image_pixels)")
        img.load()
    except BadRequest:
        raise
    except Exception as e:  # PIL raises many types for broken files (OSError, SyntaxError, ValueError...)
        raise BadRequest(f"{what} is not a readable image ({len(data)} bytes): {e}") from None
    return img.convert("RGB") if img.mode != "RGB" else img


def decode_text(data: Any, what: str = "instruction") -> str:
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadRequest(f"{what} is not UTF-8 text (byte {e.start})") from None
    if not text.strip():
        raise BadRequest(f"{what} is empty")
    return text


def check_judge_params(max_new_tokens: int, temperature: float, think: bool) -> JudgeParams:
    if max_new_tokens < 1:
        raise BadRequest(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not temperature >= 0:  # also rejects NaN
        raise BadRequest(f"temperature must be >= 0, got {temperature}")
    return JudgeParams(max_new_tokens=int(max_new_tokens), temperature=float(temperature), think=bool(think))


def check_box_options(points_per_side: int, max_regions: int, min_area: float) -> BoxOptions:
    if points_per_side < 1:
        raise BadRequest(f"points_per_side must be >= 1, got {points_per_side}")
    if max_regions < 0:
        raise BadRequest(f"max_regions must be >= 0, got {max_regions}")
    if not 0.0 <= min_area <= 1.0:
        raise BadRequest(f"min_area is a fraction of the image area in [0, 1], got {min_area}")
    return BoxOptions(points_per_side=int(points_per_side), max_regions=int(max_regions), min_area=float(min_area))


def single_value(values: Any, name: str, default: Any = None) -> Any:
    """The one element of an input tensor's array (None = the optional input was not sent).

    Requests carry one item each: Triton's dynamic batcher forms the batches, not the client."""
    if values is None:
        if default is None:
            raise BadRequest(f"input {name} is missing")
        return default
    import numpy as np

    flat = np.asarray(values).reshape(-1)
    if flat.size != 1:
        raise BadRequest(f"input {name} has {flat.size} elements; send one item per request "
                         "(the server batches requests itself)")
    return flat[0]


def request_parameters(raw: Any) -> Dict[str, Any]:
    """A request's parameters (JSON text from the python backend) as a dict; malformed -> empty."""
    import json

    try:
        data = json.loads(raw or "{}")
    except (TypeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class JudgeItem:
    image: Any                 # decoded RGB image
    instruction: str
    params: JudgeParams


@dataclass
class BoxItem:
    image: Any
    options: BoxOptions


Item = TypeVar("Item")
Result = Union[Any, BaseException]


def _classify(error: Exception, request_errors: Tuple[type, ...]) -> Exception:
    """A request that failed alone: its own fault (BadRequest) or the backend's (the error as it is)."""
    if request_errors and isinstance(error, request_errors):
        return BadRequest(f"the backend refused this request: {error}")
    return error


def _run_grouped(items: Sequence[Union[Item, BaseException]], key: Callable[[Item], Any],
                 call: Callable[[List[Item]], List[Any]], check: Callable[[Any], Any],
                 max_chunk: int, request_errors: Tuple[type, ...] = ()) -> List[Result]:
    """Call the backend on valid items grouped by `key`, in chunks; isolate failures to their request.

    A request that fails alone with one of `request_errors` gets a BadRequest (its own fault), any other
    failure stays the backend's."""
    results: List[Result] = list(items)
    groups: Dict[Any, List[int]] = {}
    for i, item in enumerate(items):
        if not isinstance(item, BaseException):
            groups.setdefault(key(item), []).append(i)
    for idxs in groups.values():
        step = max_chunk if max_chunk > 0 else len(idxs)
        for start in range(0, len(idxs), step):
            chunk = idxs[start:start + step]
            try:
                outs = call([items[i] for i in chunk])
                if not isinstance(outs, list) or len(outs) != len(chunk):
                    raise BackendError(f"backend returned {len(outs) if isinstance(outs, list) else type(outs).__name__}"
                                       f" results for {len(chunk)} requests")
                for i, out in zip(chunk, outs):
                    results[i] = check(out)
            except Exception as e:
                if len(chunk) == 1:
                    results[chunk[0]] = _classify(e, request_errors)
                    continue
                # One request may have broken the whole call: retry each alone so only it fails.
                for i in chunk:
                    try:
                        outs = call([items[i]])
                        if not isinstance(outs, list) or len(outs) != 1:
                            raise BackendError("backend returned a wrong number of results for 1 request")
                        results[i] = check(outs[0])
                    except Exception as e1:
                        results[i] = _classify(e1, request_errors)
    return results


def _check_reply(out: Any) -> JudgeReply:
    if not isinstance(out, JudgeReply):
        raise BackendError(f"judge backend returned {type(out).__name__}, not JudgeReply")
    return out


def _check_proposal(out: Any) -> BoxProposal:
    import numpy as np

    if not isinstance(out, BoxProposal):
        raise BackendError(f"boxer backend returned {type(out).__name__}, not BoxProposal")
    boxes = np.asarray(out.boxes, dtype=np.float32).reshape(-1, 4)
    areas = np.asarray(out.areas, dtype=np.float32).reshape(-1)
    conf = np.asarray(out.confidence, dtype=np.float32).reshape(-1)
    if not (len(boxes) == len(areas) == len(conf)):
        raise BackendError(f"boxer backend returned {len(boxes)} boxes, {len(areas)} areas, {len(conf)} confidences")
    return BoxProposal(boxes=boxes, areas=areas, confidence=conf)


def serve_judge_batch(backend: JudgeBackend, items: Sequence[Union[JudgeItem, BaseException]],
                      max_chunk: int = 0) -> List[Union[JudgeReply, BaseException]]:
    """One result per item, in order: a JudgeReply, or the exception for that request alone.

    Items that are already exceptions (failed validation) pass through untouched."""
    return _run_grouped(items, key=lambda it: it.params,
                        call=lambda chunk: backend.generate([it.image for it in chunk],
                                                            [it.instruction for it in chunk], chunk[0].params),
                        check=_check_reply, max_chunk=max_chunk, request_errors=request_error_types(backend))


def serve_boxer_batch(backend: BoxerBackend, items: Sequence[Union[BoxItem, BaseException]],
                      max_chunk: int = 0) -> List[Union[BoxProposal, BaseException]]:
    return _run_grouped(items, key=lambda it: it.options,
                        call=lambda chunk: backend.propose([it.image for it in chunk], chunk[0].options),
                        check=_check_proposal, max_chunk=max_chunk, request_errors=request_error_types(backend))


# ---------------------------------------------------------------------------------------------------
# Attribution: the `experiment` / `team` request parameters, summarised per batch for the server log
# ---------------------------------------------------------------------------------------------------
ATTRIBUTION_KEYS = ("experiment", "team")


def _clean(value: Any) -> str:
    # Values come from any client: keep log lines single-line, short and free of control characters.
    text = "".join(c if c.isprintable() and c not in " =" else "_" for c in str(value))
    return text[:64] or "-"


def attribution(parameters: Mapping[str, Any]) -> Tuple[str, str]:
    return tuple(_clean(parameters.get(k, "-")) for k in ATTRIBUTION_KEYS)  # type: ignore[return-value]


def batch_log_line(model: str, version: str, attributions: Sequence[Tuple[str, str]],
                   results: Sequence[Any]) -> str:
    """`srum_judge v1 batch=8 ok=7 errors=1 [experiment=e1 team=vision n=5] [experiment=e2 team=- n=3]`."""
    errors = sum(isinstance(r, BaseException) for r in results)
    counts: Dict[Tuple[str, str], int] = {}
    for a in attributions:
        counts[a] = counts.get(a, 0) + 1
    who = " ".join(f"[experiment={e} team={t} n={n}]" for (e, t), n in sorted(counts.items()))
    return f"{model} v{version} batch={len(results)} ok={len(results) - errors} errors={errors} {who}".rstrip()
