"""What the real-model adapters share: typed parameters, device and dtype choice, think-text splitting,
weights from a local directory or object storage, and a tiny locally trained tokenizer.

Backends receive their parameters as strings (Triton's config.pbtxt, `judge.backend_params`, environment
overrides); model adapters receive them from the experiment file. `Params` reads both and names the
parameter in every error. Nothing here downloads from a model hub: weights come from a path or a
`file://` / `s3://` URI of the project's own storage.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple


from ..config import ConfigError


class ParamError(ConfigError):
    """A parameter of a model or backend that cannot be used; the message names it.

    A configuration error (the experiment's model/judge parameters, or weights that are not where they say):
    retrying cannot help, so stages exit with the config-error code the Jobs' podFailurePolicy fails fast on."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Params:
    """Typed reads from a parameter mapping whose values may be strings. `what` prefixes every error.

    Unknown keys are reported by `check_unused()`, so a typo (`max_batchsize`) fails loudly instead of
    silently keeping a default."""

    def __init__(self, params: Optional[Mapping[str, Any]], what: str):
        if params is not None and not isinstance(params, Mapping):
            raise ParamError(f"{what}: params must be a mapping, got {type(params).__name__}")
        self.raw: Dict[str, Any] = dict(params or {})
        self.what = what
        self._read: set = set()

    def _get(self, key: str) -> Any:
        self._read.add(key)
        value = self.raw.get(key)
        return None if (value is None or (isinstance(value, str) and value.strip() == "")) else value

    def has(self, key: str) -> bool:
        return self._get(key) is not None

    def str(self, key: str, default: Optional[str] = None, *, required: bool = False) -> Optional[str]:
        v = self._get(key)
        if v is None:
            if required:
                raise ParamError(f"{self.what}: parameter {key!r} is required")
            return default
        return str(v)

    def choice(self, key: str, choices: Sequence[str], default: Optional[str] = None) -> Optional[str]:
        v = self.str(key, default)
        if v is not None and v not in choices:
            raise ParamError(f"{self.what}: parameter {key}={v!r} is not one of {list(choices)}")
        return v

    def int(self, key: str, default: Optional[int] = None, *, min: Optional[int] = None,
            max: Optional[int] = None) -> Optional[int]:
        v = self._get(key)
        if v is None:
            return default
        try:
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            out = int(str(v).strip()) if not isinstance(v, (int, float)) else int(v)
        except ValueError:
            raise ParamError(f"{self.what}: parameter {key}={v!r} is not an integer") from None
        self._bounds(key, out, min, max)
        return out

    def float(self, key: str, default: Optional[float] = None, *, min: Optional[float] = None,
              max: Optional[float] = None) -> Optional[float]:
        v = self._get(key)
        if v is None:
            return default
        try:
            if isinstance(v, bool):
                raise ValueError
            out = float(v)
        except ValueError:
            raise ParamError(f"{self.what}: parameter {key}={v!r} is not a number") from None
        if out != out or out in (float("inf"), float("-inf")):
            raise ParamError(f"{self.what}: parameter {key}={v!r} is not a finite number")
        self._bounds(key, out, min, max)
        return out

    def bool(self, key: str, default: bool = False) -> bool:
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool):
            return v
        s = str(v).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise ParamError(f"{self.what}: parameter {key}={v!r} is not a boolean (true/false)")

    def int_list(self, key: str, default: Optional[List[int]] = None) -> Optional[List[int]]:
        """`"2,5,8"`, `[2, 5, 8]` or `"[2, 5, 8]"`."""
        v = self._get(key)
        if v is None:
            return default
        items = v if isinstance(v, (list, tuple)) else [s for s in re.split(r"[\s,\[\]]+", str(v)) if s]
        try:
            return [int(x) for x in items]
        except (TypeError, ValueError):
            raise ParamError(f"{self.what}: parameter {key}={v!r} is not a list of integers") from None

    def _bounds(self, key: str, v: Any, lo: Any, hi: Any) -> None:
        if lo is not None and v < lo:
            raise ParamError(f"{self.what}: parameter {key}={v} must be >= {lo}")
        if hi is not None and v > hi:
            raise ParamError(f"{self.what}: parameter {key}={v} must be <= {hi}")

    def check_unused(self, allowed_extra: Iterable[str] = ()) -> None:
        unknown = sorted(set(self.raw) - self._read - set(allowed_extra))
        if unknown:
            raise ParamError(f"{self.what}: unknown parameter(s) {unknown}; known: {sorted(self._read)}")


# ------------------------------------------------------------------------------------ device / dtype
def resolve_device(name: Optional[str], what: str) -> "Any":
    """'auto' (cuda when present), 'cpu', 'cuda', 'cuda:N'. Asking for a GPU that is not there is an error."""
    import torch

    name = (name or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ParamError(f"{what}: device {name!r} is not a torch device (cpu, cuda, cuda:N, auto)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ParamError(f"{what}: device {name!r} asked for, but this machine has no CUDA GPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ParamError(f"{what}: device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist")
    elif dev.type != "cpu":
        raise ParamError(f"{what}: device type {dev.type!r} is not supported (cpu or cuda)")
    return dev


_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def resolve_dtype(name: Optional[str], device: Any, what: str) -> "Any":
    """'auto' = bfloat16 on a GPU, float32 on the CPU (CPU half-precision matmuls are slow and lossy)."""
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return getattr(torch, _DTYPES[name])
    except KeyError:
        raise ParamError(f"{what}: dtype {name!r} is not one of auto, {', '.join(sorted(set(_DTYPES)))}") from None


# ------------------------------------------------------------------------------------------- think
_THINK_TAG = re.compile(r"<\s*/?\s*think(?:ing)?\s*>", re.I)
_THINK_OPEN = re.compile(r"<\s*think(?:ing)?\s*>", re.I)
_THINK_CLOSE = re.compile(r"<\s*/\s*think(?:ing)?\s*>", re.I)


def split_think(text: str) -> Tuple[str, str]:
    """(answer, think text) of a model output.

    The answer is what follows the last `</think>`; everything before it, tags removed, is think text
    (this also covers chat templates that open the block inside the prompt, so only `</think>` appears).
    An opening tag that never closes means the output was cut off while thinking: the answer is what
    came before it (usually nothing), never the half-finished thought.
    """
    text = text or ""
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        last = closes[-1]
        return text[last.end():].strip(), _THINK_TAG.sub("", text[:last.start()]).strip()
    m = _THINK_OPEN.search(text)
    if m:
        return text[:m.start()].strip(), text[m.end():].strip()
    return text.strip(), ""


# ------------------------------------------------------------------------------------------ weights
def _cache_root() -> Path:
    return Path(os.environ.get("SRUM_WEIGHTS_CACHE", Path.home() / ".cache" / "srum" / "weights"))


_COMPLETE = ".srum-complete.json"


def local_weights(location: str, what: str, *, cache_dir: Optional[str] = None,
                  endpoint_url: Optional[str] = None) -> Path:
    """A local directory (or file) holding the weights at `location`.

    `location` is a local path, `file://PATH`, or `s3://bucket/prefix`: credentials from the standard chain
    (in pods: the mounted credentials file), the endpoint from `endpoint_url` or else `AWS_ENDPOINT_URL`,
    which the Jobs set from the experiment's `storage.endpoint_url` (MinIO...). A remote prefix is copied once into the cache
    (`SRUM_WEIGHTS_CACHE`, default ~/.cache/srum/weights), verifying every object that has a checksum
    sidecar; a marker written last makes an interrupted copy start over instead of being used. A model
    hub name is refused: weights never come from a hub at run time.
    """
    if not location or not str(location).strip():
        raise ParamError(f"{what}: no weights location given (a local directory or a file:// / s3:// URI)")
    location = str(location).strip()
    if location.startswith("file://"):
        local = Path(location[len("file://"):])
    elif location.startswith("s3://"):
        return _fetch_prefix(location, what, Path(cache_dir) if cache_dir else _cache_root(),
                             endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None)
    elif "://" in location:
        raise ParamError(f"{what}: weights location {location!r} has an unsupported scheme (local path, file://, s3://)")
    else:
        local = Path(location).expanduser()
    if not local.exists():
        hint = (" (it looks like a model-hub name; download the weights once into storage or a local directory "
                "and point at that)") if re.fullmatch(r"[\w.-]+/[\w.-]+", location) else ""
        raise ParamError(f"{what}: weights location {location!r} does not exist{hint}")
    return local


def _fetch_prefix(uri: str, what: str, cache_root: Path, endpoint_url: Optional[str] = None) -> Path:
    from ..storage import CHECKSUM_SUFFIX, open_store

    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    dest = cache_root / digest
    marker = dest / _COMPLETE
    if marker.is_file():
        return dest
    store = open_store(uri.rstrip("/"), endpoint_url=endpoint_url)
    keys = store.list("")
    if not keys:
        raise ParamError(f"{what}: no weights under {uri} (endpoint {endpoint_url or 'AWS'}): nothing to load")
    # Copy into a private folder, then rename it into place: processes sharing the cache (ranks of one
    # node) never see, or delete, each other's half-finished copy.
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{digest}.partial-", dir=cache_root))
    try:
        for key in keys:
            store.get_file(key, tmp / key, verify=store.exists(key + CHECKSUM_SUFFIX))
        (tmp / _COMPLETE).write_text(json.dumps({"uri": uri, "files": len(keys)}))
        try:
            os.rename(tmp, dest)
        except OSError:
            if not marker.is_file():  # not another process's finished copy: something else is in the way
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def load_safetensors_dir(path: Path, what: str, *, names: Sequence[str] = ()) -> Dict[str, Any]:
    """All tensors of a safetensors checkpoint: sharded (`*.safetensors.index.json`, every shard it names
    must exist) or single files. `names` are single-file names to try in order (e.g. `ema.safetensors`)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file():
        return load_file(str(path))
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        index = json.loads(indexes[0].read_text())
        shards = sorted(set(index.get("weight_map", {}).values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if not shards or missing:
            raise ParamError(f"{what}: {indexes[0]} names shards that are not there: {missing or '(none listed)'}")
        out: Dict[str, Any] = {}
        for s in shards:
            out.update(load_file(str(path / s)))
        return out
    for name in names:
        if (path / name).is_file():
            return load_file(str(path / name))
    files = sorted(path.glob("*.safetensors"))
    if len(files) == 1:
        return load_file(str(files[0]))
    raise ParamError(f"{what}: {path} has no safetensors weights (looked for an index, {list(names)}, or one *.safetensors)")


# --------------------------------------------------------------------------------- tiny tokenizers
_CORPUS = ("a photo of the red cube left of a blue ball, two green cats on a wooden table under the sky; "
           "the image shows three objects in a room with light and shadow, colour, shape, texture, count")


def train_tiny_tokenizer(special_tokens: Sequence[str], vocab_size: int = 384, corpus: Optional[Iterable[str]] = None):
    """A byte-level BPE `tokenizers.Tokenizer` trained in milliseconds on a small built-in corpus.

    For randomly initialised test models only (no download): any text encodes (byte fallback), and
    `special_tokens` get the first ids in the given order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus) if corpus is not None else [_CORPUS] * 4, trainer)
    return tok
