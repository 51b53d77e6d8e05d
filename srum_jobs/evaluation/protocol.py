"""What every benchmark module provides, and the pieces they share.

A benchmark (toy.py, compbench.py, geneval.py, wise.py, reasonbench.py) is one small module with:
  * its prompt import (a format registered in prompts.py, so `srum prompts import` keeps the metadata the
    protocol needs in `Prompt.meta`);
  * its evaluator instructions (text templates in evaluation/templates/, overridable file by file with
    `eval.templates_dir`);
  * its answer parsers (built on judging/parse.py's primitives: numbers are read whole, an unreadable
    answer is *unparsed*, never a default score);
  * `score`: the questions one image needs, asked through `ask` (the srum_evaluator Triton model, with
    retries per judge.parse_attempts), turned into the item's metric values, or unparsed;
  * `aggregate`: per-category means -> the rows of its table (derived rows and the overall row as its
    published protocol computes them).

An item whose answers cannot be read is never scored: it is excluded from every mean, counted, and shown
in the summary and the report.

This module imports only the standard library (and judging/templates.py for template checks), so the
benchmarks' parsers stay usable from `srum judge parse` without torch.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

from ..judging.templates import TemplateError, _identifiers, one_line


@dataclass(frozen=True)
class Answer:
    """One evaluator answer after parsing (and re-asking, when it could not be read)."""

    parsed: bool
    value: Any                      # what the parser read (a number, a bool, a dict of scores...)
    text: str                       # the raw answer (the best attempt's)
    attempts: int = 1


# ask(question_key, instruction, parse) -> Answer; `parse(text)` returns an object with `.parsed`.
Ask = Callable[[str, str, Callable[[str], Any]], Awaitable[Answer]]


@dataclass
class ItemScore:
    """The benchmark's verdict on one image: metric values, or unparsed (then `values` is empty)."""

    values: Dict[str, float]
    parsed: bool
    answers: List[Dict[str, Any]] = field(default_factory=list)   # per question: key, text, parsed, value, attempts
    note: Optional[str] = None      # why it is unparsed, or the evaluator's reason

    @classmethod
    def unparsed(cls, answers: List[Dict[str, Any]], note: str) -> "ItemScore":
        return cls(values={}, parsed=False, answers=answers, note=note)


def answer_row(key: str, a: Answer) -> Dict[str, Any]:
    value = a.value
    if hasattr(value, "__dataclass_fields__"):
        value = {k: getattr(value, k) for k in value.__dataclass_fields__}
    return {"question": key, "text": a.text, "parsed": a.parsed, "value": _jsonable(value), "attempts": a.attempts}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


class Benchmark:
    """Base of the benchmark modules; the class attributes describe the table."""

    name: str = ""
    title: str = ""
    metrics: Tuple[str, ...] = ("score",)      # the first is the headline metric
    unit: str = "%"                            # how values are shown: "%" (x100) or "points" (as is)
    category_order: Tuple[str, ...] = ()       # table order; other categories follow alphabetically
    prompt_format: Optional[str] = None        # the prompts.py format that keeps this benchmark's metadata
    needs_meta: Tuple[str, ...] = ()           # Prompt.meta keys every prompt must carry

    def __init__(self, templates_dir: Optional[str] = None):
        self.templates = TemplateSet(self.template_names(), templates_dir)

    # -- instructions
    def template_names(self) -> Dict[str, Tuple[FrozenSet[str], FrozenSet[str]]]:
        """template name -> (required placeholders, allowed placeholders)."""
        return {}

    # -- prompts
    def check_prompts(self, prompts: Sequence[Any], source: str) -> None:
        """Every prompt carries the metadata the protocol needs; the error names the prompt and the key."""
        for p in prompts:
            missing = [k for k in self.needs_meta if k not in (p.meta or {})]
            if missing:
                fmt = f" (import the file with `srum prompts import --format {self.prompt_format}`)" \
                    if self.prompt_format else ""
                raise ValueError(f"{source}: prompt {p.id!r} lacks {', '.join(repr(m) for m in missing)} in its "
                                 f"metadata, which the {self.title} protocol needs{fmt}")

    # -- scoring
    async def score(self, ask: Ask, prompt: Any) -> ItemScore:
        raise NotImplementedError

    # -- aggregation
    def rows(self, categories: Sequence[str]) -> List[str]:
        """The table's rows: categories (in category_order), derived rows, then 'overall'."""
        return ordered(categories, self.category_order) + ["overall"]

    def aggregate(self, means: Mapping[str, Any], counts: Mapping[str, int]) -> Dict[str, Any]:
        """Per-category means (floats, or numpy arrays of bootstrap replicates) -> every table row.
        Default: categories as they are, overall = the mean over items (categories weighted by size)."""
        return size_weighted(means, counts)


def size_weighted(means: Mapping[str, Any], counts: Mapping[str, int]) -> Dict[str, Any]:
    """The categories as they are and an overall row weighting each category by its number of prompts."""
    out = dict(means)
    total = sum(counts[c] for c in means)
    out["overall"] = sum(means[c] * counts[c] for c in means) / total if total else None
    return out


def ordered(categories: Sequence[str], order: Sequence[str]) -> List[str]:
    known = [c for c in order if c in categories]
    return known + sorted(c for c in categories if c not in order)


def mean_of_rows(means: Mapping[str, Any], rows: Sequence[str]) -> Any:
    """The unweighted mean of some rows (a protocol's "average over tasks"); None if any row is missing."""
    present = [means[r] for r in rows if r in means and means[r] is not None]
    if not present or len(present) != len(rows):
        return None
    return sum(present) / len(present)


# ------------------------------------------------------------------------------------------ templates


class TemplateSet:
    """A benchmark's instruction templates: `evaluation/templates/<name>.txt`, any of which a file of the
    same name in `templates_dir` replaces. Checked when loaded: a missing required placeholder, an unknown
    one or a stray `$` is an error naming the file."""

    def __init__(self, specs: Mapping[str, Tuple[FrozenSet[str], FrozenSet[str]]], templates_dir: Optional[str]):
        self._tpl: Dict[str, string.Template] = {}
        self.origins: Dict[str, str] = {}
        override = _dir(templates_dir)
        for name, (required, allowed) in specs.items():
            path = override / f"{name}.txt" if override is not None else None
            if path is not None and path.is_file():
                try:
                    text, origin = path.read_text(encoding="utf-8"), str(path)
                except UnicodeDecodeError as e:
                    raise TemplateError(f"evaluator template {path} is not UTF-8 text (byte {e.start})") from None
            else:
                text = resources.files("srum_jobs.evaluation").joinpath("templates", f"{name}.txt").read_text(
                    encoding="utf-8")
                origin = f"<default {name}.txt>"
            tpl = string.Template(text)
            used = _identifiers(tpl, origin)
            if required - used:
                raise TemplateError(f"evaluator template {origin} is missing required placeholder(s) "
                                    + ", ".join("$" + m for m in sorted(required - used)))
            if used - allowed:
                raise TemplateError(f"evaluator template {origin} uses unknown placeholder(s) "
                                    + ", ".join("$" + u for u in sorted(used - allowed)) + "; allowed: "
                                    + ", ".join("$" + a for a in sorted(allowed)))
            self._tpl[name], self.origins[name] = tpl, origin

    def render(self, name: str, **values: Any) -> str:
        return self._tpl[name].substitute({k: one_line(v) if k == "prompt" else str(v) for k, v in values.items()})


def _dir(templates_dir: Optional[str]) -> Optional[Path]:
    if not templates_dir:
        return None
    d = Path(str(templates_dir).removeprefix("file://"))
    if not d.is_dir():
        raise TemplateError(f"eval.templates_dir {templates_dir!r} is not a directory")
    return d


def spec(required: Sequence[str], optional: Sequence[str] = ()) -> Tuple[FrozenSet[str], FrozenSet[str]]:
    return frozenset(required), frozenset(required) | frozenset(optional)
