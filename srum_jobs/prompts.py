"""Prompt lists: read the three accepted formats, normalise them to `records.Prompt`, shard them.

Formats:
- `compbench`: a JSON list of {"Question", "Category", "Question_id"} (T2I-CompBench, as SRUM ships it);
- `jsonl`: one {"prompt", "category", "id"} object per line ("category" and "id" optional);
- `text`: one prompt per line (blank lines and lines starting with '#' are skipped, ids are line numbers).
- `toy://train|val|eval`: the built-in toy world's deterministic prompt sets.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from pydantic import ValidationError

from .records import Prompt


class PromptError(ValueError):
    """A prompt file that cannot be used; names the file, the line or entry, and the field."""


MAX_PROMPT_CHARS = 4000
MAX_ID_CHARS = 128


def id_problem(pid: str) -> Optional[str]:
    """Why `pid` cannot be a prompt id, or None. Ids name storage objects (`<id>-<k>.rmap`), so one that
    could step out of its folder or hide (`../x`, `a/b`, `.x`, control characters) is refused when the
    file is read, not after the shard has been generated."""
    if len(pid) > MAX_ID_CHARS:
        return f"is {len(pid)} characters; the limit is {MAX_ID_CHARS}"
    if "/" in pid or "\\" in pid:
        return "contains a '/' or '\\' (ids name storage objects)"
    if pid.startswith("."):
        return "starts with '.' (ids name storage objects)"
    if not pid.isprintable():
        return "contains a control character"
    return None


def detect_format(name: str, text: str) -> str:
    stripped = text.lstrip()
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".json") or stripped.startswith("["):
        return "compbench"
    if stripped.startswith("{"):
        return "jsonl"
    return "text"


def _make(source: str, where: str, index: int, pid: Any, text: Any, category: Any, meta: Any = None) -> Prompt:
    if not isinstance(text, str):
        raise PromptError(f"{source}: {where}: field 'prompt' must be a string, got {type(text).__name__}")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(f"{source}: {where}: prompt is {len(text)} characters; the limit is {MAX_PROMPT_CHARS}")
    if not isinstance(category, str) or not category:
        raise PromptError(f"{source}: {where}: field 'category' must be a non-empty string")
    if isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise PromptError(f"{source}: {where}: field 'id' must be a string or an integer")
    problem = id_problem(str(pid))
    if problem:
        raise PromptError(f"{source}: {where}: field 'id' {str(pid)[:40]!r} {problem}")
    if meta is not None and not isinstance(meta, dict):
        raise PromptError(f"{source}: {where}: field 'meta' must be an object")
    try:
        return Prompt(id=str(pid), text=text.strip(), category=category, index=index, meta=meta or {})
    except ValidationError as err:
        e = err.errors()[0]
        field = {"text": "prompt"}.get(str(e["loc"][0]), str(e["loc"][0])) if e["loc"] else "record"
        raise PromptError(f"{source}: {where}: field '{field}': {e['msg']}") from None


def parse_prompts(text: str, fmt: str = "auto", source: str = "<prompts>") -> List[Prompt]:
    """Parse prompt-file text; every rejection names the source and the line or entry."""
    if fmt == "auto":
        fmt = sniff_benchmark_format(source, text) or detect_format(source, text)
    prompts: List[Prompt] = []
    if fmt in BENCHMARK_FORMATS:
        prompts = _benchmark_prompts(fmt, source, text=text)
    elif fmt == "compbench":
        for where, row in json_rows(text, source, lines=False, what="T2I-CompBench file"):
            for field in ("Question", "Category", "Question_id"):
                if field not in row:
                    raise PromptError(f"{source}: {where}: field '{field}' is missing")
            prompts.append(_make(source, where, len(prompts), row["Question_id"], row["Question"], row["Category"]))
    elif fmt == "jsonl":
        for where, row in json_rows(text, source, lines=True):
            lineno = int(where.split()[-1])
            if "prompt" not in row:
                raise PromptError(f"{source}: {where}: field 'prompt' is missing")
            unknown = set(row) - {"prompt", "category", "id", "meta"}
            if unknown:
                hint = benchmark_hint(row)
                raise PromptError(f"{source}: {where}: unknown field(s) {sorted(unknown)}" + hint)
            prompts.append(_make(source, where, len(prompts), row.get("id", lineno), row["prompt"],
                                 row.get("category", "uncategorised"), row.get("meta")))
    elif fmt == "text":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            prompts.append(_make(source, f"line {lineno}", len(prompts), lineno, line, "uncategorised"))
    else:
        raise PromptError(f"{source}: unknown prompt format {fmt!r} ({', '.join(FORMATS)})")
    seen: Dict[str, int] = {}
    for p in prompts:
        if p.id in seen:
            raise PromptError(f"{source}: prompt id {p.id!r} appears twice (entries {seen[p.id]} and {p.index})")
        seen[p.id] = p.index
    if not prompts:
        raise PromptError(f"{source}: no prompts found")
    return prompts


def read_source(uri: str, storage: Any = None) -> Tuple[str, str]:
    """(text, name) of a prompt file given as a path, file:// URI or s3://bucket/key."""
    if uri.startswith("s3://"):
        from .storage import open_store

        bucket_and_key = uri[len("s3://"):]
        bucket, _, key = bucket_and_key.partition("/")
        if not key:
            raise PromptError(f"{uri}: an s3:// prompt source needs a key: s3://bucket/path/prompts.json")
        store = open_store(f"s3://{bucket}", **({} if storage is None else dict(
            endpoint_url=storage.endpoint_url, region=storage.region, max_attempts=storage.max_attempts)))
        return store.get_text(key), key
    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptError(f"prompt file not found: {path}") from None
    except IsADirectoryError:
        raise PromptError(f"prompt source {path} is a folder, not a file") from None
    try:
        return data.decode("utf-8"), path.name
    except UnicodeDecodeError as e:
        raise PromptError(f"{path}: not UTF-8 text (byte {e.start})") from None


def load_prompts(uri: str, fmt: str = "auto", *, storage: Any = None, limit: Optional[int] = None,
                 categories: Optional[Sequence[str]] = None) -> List[Prompt]:
    """Load, filter and re-index a prompt list (indices are positions in the final list: the sharding key)."""
    if uri.startswith("toy://"):
        from .models.toy.world import toy_prompts

        try:
            prompts = toy_prompts(uri[len("toy://"):])
        except ValueError as e:
            raise PromptError(f"{uri}: {e}") from None
    elif (uri_format := fmt if fmt in URI_FORMATS else sniff_uri_format(uri) if fmt == "auto" else None):
        prompts = _benchmark_prompts(uri_format, uri, uri=uri, storage=storage)
    else:
        text, name = read_source(uri, storage)
        prompts = parse_prompts(text, fmt, source=uri if uri.startswith("s3://") else name)
    if categories:
        unknown = set(categories) - {p.category for p in prompts}
        if unknown:
            raise PromptError(f"{uri}: categories {sorted(unknown)} do not occur in the file")
        prompts = [p for p in prompts if p.category in set(categories)]
    if limit is not None:
        prompts = prompts[:limit]
    return [p.model_copy(update={"index": i}) for i, p in enumerate(prompts)]


def shard_of(index: int, num_shards: int) -> int:
    return index % num_shards


def shard_prompts(prompts: Sequence[Prompt], shard: int, num_shards: int) -> List[Prompt]:
    """Shard i of N: the prompts whose index % N == i. Round-robin keeps categories balanced across
    shards, and depends only on the index, so every run and every machine agrees."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
    return [p for p in prompts if shard_of(p.index, num_shards) == shard]


def duplicate_texts(prompts: Sequence[Prompt]) -> Dict[str, int]:
    """Texts that occur more than once -> how many extra times, in order of first occurrence. Repeats are
    kept (T2I-CompBench's training list repeats 675 of its 6,234 texts under other ids) but counted, so
    nobody mistakes them for distinct prompts."""
    counts = Counter(p.text for p in prompts)
    return {t: n - 1 for t, n in counts.items() if n > 1}


def category_counts(prompts: Sequence[Prompt]) -> Dict[str, int]:
    return dict(sorted(Counter(p.category for p in prompts).items()))


# ------------------------------------------------------------------------------------ benchmark formats
# Published benchmark files keep the metadata their evaluation protocol needs (Prompt.meta). Each format
# is parsed by its benchmark module (srum_jobs/evaluation/<name>.py): `parse_prompts(text, source)` for a
# single file, `load(uri, storage)` for a format spread over several files.

BENCHMARK_FORMATS: Dict[str, str] = {
    "geneval": "srum_jobs.evaluation.geneval:parse_prompts",      # evaluation_metadata.jsonl
    "wise": "srum_jobs.evaluation.wise:parse_prompts",            # WISE's JSON lists (legacy and verified)
    "reasonbench": "srum_jobs.evaluation.reasonbench:load",       # prompts/*.json joined with evaluation_qs/
}
URI_FORMATS = ("reasonbench",)
FORMATS: Tuple[str, ...] = ("auto", "compbench", "jsonl", "text", *BENCHMARK_FORMATS)


def sniff_benchmark_format(name: str, text: str) -> Optional[str]:
    """A published benchmark file recognised by its content: GenEval metadata lines, WISE lists."""
    head = text.lstrip()[:4000]
    if head.startswith("{"):
        first = head.split("\n", 1)[0]
        try:
            row = json.loads(first)
        except ValueError:
            return None
        return "geneval" if isinstance(row, dict) and {"tag", "include"} <= set(row) else None
    if head.startswith("["):
        m = re.match(r"\[\s*(\{.*?\})\s*[,\]]", head, re.S)
        if m:
            try:
                row = json.loads(m.group(1))
            except ValueError:
                return None
            if isinstance(row, dict) and {"Prompt", "Explanation", "prompt_id"} <= set(row):
                return "wise"
    return None


def sniff_uri_format(uri: str) -> Optional[str]:
    """A T2I-ReasonBench folder (prompts/ beside evaluation_qs/) or one of its prompt files."""
    from .evaluation.reasonbench import dimension_of

    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    if not uri.startswith("s3://") and path.is_dir() and (path / "prompts").is_dir() and (path / "evaluation_qs").is_dir():
        return "reasonbench"
    if dimension_of(uri) is not None and "/prompts/" in uri.replace("\\", "/"):
        return "reasonbench"
    return None


def benchmark_hint(row: Dict[str, Any]) -> str:
    """For a JSONL line with a benchmark's own fields: which format reads it."""
    if {"tag", "include"} <= set(row):
        return " (this is GenEval metadata: import it with --format geneval)"
    return ""


def _benchmark_prompts(fmt: str, source: str, *, text: Optional[str] = None, uri: Optional[str] = None,
                       storage: Any = None) -> List[Prompt]:
    import importlib

    module, func = BENCHMARK_FORMATS[fmt].split(":")
    try:
        fn = getattr(importlib.import_module(module), func)
        prompts = fn(uri, storage) if fmt in URI_FORMATS else fn(text, source)
    except PromptError:
        raise
    except ValidationError as err:
        e = err.errors()[0]
        raise PromptError(f"{source}: a prompt fails validation: field '{'.'.join(map(str, e['loc']))}': "
                          f"{e['msg']}") from None
    except ValueError as e:
        raise PromptError(str(e)) from None
    seen: Dict[str, int] = {}
    for p in prompts:
        if p.id in seen:
            raise PromptError(f"{source}: prompt id {p.id!r} appears twice (entries {seen[p.id]} and {p.index})")
        seen[p.id] = p.index
    return prompts


def json_rows(text: str, source: str, *, lines: bool, what: str = "file") -> Iterator[Tuple[str, Dict[str, Any]]]:
    """("line N" | "entry i", row) for every JSON object of a JSONL text (`lines`, blank lines skipped) or of
    a JSON list; a row that is not valid JSON or not an object is a PromptError naming the source and the
    line or entry."""
    if lines:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                row = _loads(line, f"{source}: line {lineno}: not valid JSON ({{}})", whole_file=False)
                if not isinstance(row, dict):
                    raise PromptError(f"{source}: line {lineno}: must be a JSON object")
                yield f"line {lineno}", row
        return
    data = _loads(text, f"{source}: not valid JSON ({{}})", whole_file=True)
    if not isinstance(data, list):
        raise PromptError(f"{source}: a {what} is a JSON list, got {type(data).__name__}")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise PromptError(f"{source}: entry {i}: must be an object")
        yield f"entry {i}", row


def _loads(text: str, message: str, *, whole_file: bool) -> Any:
    """json.loads, or a PromptError `message` (with "{}" for the reason; a whole file's names line and column)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptError(message.format(f"line {e.lineno}, column {e.colno}: {e.msg}" if whole_file else e.msg)) from None
    except (ValueError, RecursionError) as e:
        raise PromptError(message.format(f"line 1: {e}" if whole_file else e)) from None
