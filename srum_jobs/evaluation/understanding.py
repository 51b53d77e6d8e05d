"""Understanding regression: did post-training the generator hurt the model's understanding? Yes/no and
multiple-choice VQA (MME-style) through the model's *own* `understand`, base vs trained, same items.

Item sets:
  * the shipped set (toy/vqa_fixture.py): MME-style pairs (one true and one false statement per
    image) in four perception subtasks (count, color, shape, position) and four-option questions;
  * a user's set: `eval.understanding.source`, JSONL lines
      {"id", "image": "<path relative to the file, or absolute, or an s3:// URI>", "question",
       "answer": "yes" | "no" | "<option letter>", "options": ["..", ..] (multiple choice),
       "category": "..", "pair": ".." (optional: MME's image pair, for accuracy+),
       "claims": ["..", ..] (optional: the statement(s) for judge style)}.
Styles: `question` asks the question as a VLM is asked (templates vqa_yes_no / vqa_choice); `judge` poses
each statement in the judge's own instruction format (the `sample` template) and reads a positive score as
"yes" (multiple choice: the option with the highest score; a tie or 0 is unparsed). The toy model's
understanding side speaks only that format, so `auto` uses judge style for the toy adapter. An unreadable
answer is unparsed: excluded from accuracy and counted.

Metrics: accuracy per category and overall; MME's accuracy+ (both questions of an image pair right) over
pairs; base vs trained compared with the paired bootstrap over items.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..judging.parse import parse_choice, parse_sample, parse_yes_no
from ..prompts import PromptError
from .protocol import TemplateSet, spec

FIXTURE = "builtin://vqa-fixture"


@dataclass
class VQAItem:
    id: str
    index: int
    image: Any                      # a PIL image (loaded lazily for user sets: see `image_ref`)
    question: str
    answer: str                     # "yes" | "no" | option letter
    category: str = "vqa"
    options: List[str] = field(default_factory=list)
    claims: List[str] = field(default_factory=list)
    pair: Optional[str] = None

    @property
    def kind(self) -> str:
        return "choice" if self.options else "yes_no"


class VQAError(PromptError):
    """A VQA set that cannot be used; the message names the file, the line and the field."""


def load_items(source: Optional[str], storage: Any = None, limit: Optional[int] = None) -> List[VQAItem]:
    if not source or source == FIXTURE:
        from ..toy.vqa_fixture import build_fixture

        raw = build_fixture()
        items = [VQAItem(index=i, **{k: v for k, v in r.items() if k in VQAItem.__dataclass_fields__})
                 for i, r in enumerate(raw)]
    else:
        items = _read_jsonl(source, storage)
    return items[:limit] if limit else items


def _read_jsonl(source: str, storage: Any) -> List[VQAItem]:
    from PIL import Image

    from ..prompts import json_rows, read_source

    text, _ = read_source(source, storage)
    base = source.rsplit("/", 1)[0] if "/" in source else "."
    items: List[VQAItem] = []
    for line, row in json_rows(text, source, lines=True):
        lineno, where = int(line.split()[-1]), f"{source}: {line}"
        for f in ("image", "question", "answer"):
            if not isinstance(row.get(f), str) or not row[f].strip():
                raise VQAError(f"{where}: field '{f}' must be a non-empty string")
        unknown = set(row) - {"id", "image", "question", "answer", "options", "category", "pair", "claims"}
        if unknown:
            raise VQAError(f"{where}: unknown field(s) {sorted(unknown)}")
        options = row.get("options") or []
        if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
            raise VQAError(f"{where}: field 'options' must be a list of strings")
        answer = row["answer"].strip()
        if options:
            if answer.upper() not in "ABCDEFGH"[:len(options)] or len(answer) != 1:
                raise VQAError(f"{where}: field 'answer' must be an option letter A-{'ABCDEFGH'[len(options) - 1]}")
            answer = answer.upper()
        elif answer.lower() not in ("yes", "no"):
            raise VQAError(f"{where}: field 'answer' must be yes or no (or an option letter with 'options')")
        else:
            answer = answer.lower()
        ref = row["image"]
        if not (ref.startswith(("/", "s3://", "file://"))):
            ref = f"{base}/{ref}"
        try:
            data = _read_bytes(ref, storage)
            img = Image.open(io.BytesIO(data))
            img.load()
        except VQAError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable image is this line's error
            raise VQAError(f"{where}: image {ref} cannot be read ({e})") from None
        items.append(VQAItem(id=str(row.get("id", lineno)), index=len(items), image=img.convert("RGB"),
                             question=row["question"], answer=answer, category=str(row.get("category", "vqa")),
                             options=options, claims=list(row.get("claims") or []), pair=row.get("pair")))
    if not items:
        raise VQAError(f"{source}: no items")
    return items


def _read_bytes(ref: str, storage: Any) -> bytes:
    from pathlib import Path

    if ref.startswith("s3://"):
        from ..storage import open_store

        bucket, _, key = ref[len("s3://"):].partition("/")
        kw = {} if storage is None else dict(endpoint_url=storage.endpoint_url, region=storage.region)
        return open_store(f"s3://{bucket}", **kw).get_bytes(key)
    path = Path(ref.removeprefix("file://"))
    if not path.is_file():
        raise VQAError(f"image {path} not found")
    return path.read_bytes()


def resolve_style(style: str, adapter: str) -> str:
    from ..registry import MODEL_ADAPTERS

    return MODEL_ADAPTERS.trait(adapter, "vqa_style") if style == "auto" else style


class Asker:
    """Renders items for one style and reads the model's answers."""

    def __init__(self, style: str, exp: Any):
        self.style = style
        self.templates = TemplateSet({"vqa_yes_no": spec(["question"]), "vqa_choice": spec(["question", "options"])},
                                     exp.eval.templates_dir)
        if style == "judge":
            from ..judging.templates import load_templates

            self.judge_templates = load_templates(exp.judge.templates_dir, exp.reward)

    def instructions(self, item: VQAItem) -> List[str]:
        if self.style == "judge":
            if not item.claims or (item.options and len(item.claims) != len(item.options)):
                raise VQAError(f"understanding item {item.id!r}: judge style needs 'claims' (one per option); "
                               "set eval.understanding.style: question for this set")
            return [self.judge_templates.render_sample(c) for c in item.claims]
        if item.options:
            opts = "\n".join(f"{'ABCDEFGH'[i]}. {o}" for i, o in enumerate(item.options))
            return [self.templates.render("vqa_choice", question=item.question, options=opts)]
        return [self.templates.render("vqa_yes_no", question=item.question)]

    def read(self, item: VQAItem, texts: Sequence[str]) -> Optional[str]:
        """The model's answer ("yes"/"no"/letter) or None when unparsed."""
        if self.style == "judge":
            scores = [parse_sample(t) for t in texts]
            if any(not s.parsed for s in scores):
                return None
            if item.options:
                vals = [s.score for s in scores]
                best = max(vals)
                return None if vals.count(best) > 1 else "ABCDEFGH"[vals.index(best)]
            return None if scores[0].score == 0 else ("yes" if scores[0].score > 0 else "no")
        if item.options:
            r = parse_choice(texts[0], "ABCDEFGH"[:len(item.options)])
            return r.value if r.parsed else None
        r = parse_yes_no(texts[0])
        return None if not r.parsed else ("yes" if r.value else "no")


def answer_items(model: Any, items: Sequence[VQAItem], asker: Asker, max_new_tokens: int,
                 batch_size: int = 32) -> List[Dict[str, Any]]:
    """Ask the model every item (batched `understand` calls); one result row per item."""
    flat = [(i, ins) for i, it in enumerate(items) for ins in asker.instructions(it)]
    texts: Dict[int, List[str]] = {}
    for start in range(0, len(flat), batch_size):
        chunk = flat[start:start + batch_size]
        replies = model.understand([items[i].image for i, _ in chunk], [ins for _, ins in chunk],
                                   max_new_tokens=max_new_tokens)
        for (i, _), (text, _think) in zip(chunk, replies):
            texts.setdefault(i, []).append(text)
    rows = []
    for i, it in enumerate(items):
        got = asker.read(it, texts[i])
        rows.append({"id": it.id, "index": it.index, "category": it.category, "pair": it.pair, "kind": it.kind,
                     "expected": it.answer, "answer": got, "parsed": got is not None,
                     "values": {} if got is None else {"accuracy": 1.0 if got == it.answer else 0.0},
                     "texts": texts[i], "prompt_id": it.id})
    return rows


def accuracy_plus(rows: Sequence[Dict[str, Any]]) -> Optional[float]:
    """MME's accuracy+: the share of image pairs with both questions answered right (unparsed = wrong)."""
    pairs: Dict[str, List[bool]] = {}
    for r in rows:
        if r.get("pair"):
            pairs.setdefault(r["pair"], []).append(bool(r["parsed"] and r["values"].get("accuracy") == 1.0))
    full = [all(v) for v in pairs.values() if len(v) == 2]
    return sum(full) / len(full) if full else None


def summarise_understanding(rows_by_variant: Dict[str, List[Dict[str, Any]]], exp: Any) -> Dict[str, Any]:
    """Accuracy tables per variant (+ accuracy+), and trained - base with the paired bootstrap over items."""
    from .protocol import size_weighted
    from .stats import paired_bootstrap, prompt_values, summarise_run

    out: Dict[str, Any] = {"runs": {}, "comparison": None}
    for variant, rows in rows_by_variant.items():
        table = summarise_run(rows, ("accuracy",), size_weighted)
        table["accuracy_plus"] = accuracy_plus(rows)
        out["runs"][variant] = table
    if "base" in rows_by_variant and "trained" in rows_by_variant:
        out["comparison"] = paired_bootstrap(prompt_values(rows_by_variant["trained"], "accuracy"),
                                             prompt_values(rows_by_variant["base"], "accuracy"), size_weighted,
                                             resamples=exp.eval.bootstrap_resamples, confidence=exp.eval.confidence,
                                             seed=exp.eval.seed)
    return out
