"""Typed records that cross object storage, one JSON line each.

Every line carries `kind` and `v` (schema version). Reading a line with a wrong or missing field fails
with the source, the line number and the field, so a bad shard is found, not trained on.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Dict, Iterable, Iterator, List, Optional, Type, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

RECORD_VERSION = 1


class RecordError(ValueError):
    """A record that cannot be read; the message names source, line and field."""


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    KIND: ClassVar[str] = ""

    def to_json_line(self) -> str:
        body = {"kind": self.KIND, "v": RECORD_VERSION, **self.model_dump(mode="json")}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class Prompt(_Record):
    KIND: ClassVar[str] = "prompt"
    id: str = Field(..., min_length=1)
    text: str = Field(..., min_length=1, max_length=4000)
    category: str = "uncategorised"
    index: int = Field(..., ge=0, description="position in the normalised prompt list: the sharding key")
    meta: Dict[str, Any] = Field(default_factory=dict,
                                 description="what a benchmark's protocol needs beyond the text (GenEval's "
                                             "include/exclude clauses, WISE's explanation, T2I-ReasonBench's "
                                             "questions)")

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("prompt text is blank")
        return v

    def to_json_line(self) -> str:
        # an empty `meta` is left out, so prompt lists without benchmark metadata keep their exact bytes
        body = {"kind": self.KIND, "v": RECORD_VERSION,
                **self.model_dump(mode="json", exclude=set() if self.meta else {"meta"})}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class Box(_Record):
    """Pixel box, xyxy, as a boxer proposed it; `clamped` copies live in the reward map, not here."""

    KIND: ClassVar[str] = "box"
    x0: float
    y0: float
    x1: float
    y1: float
    area: Optional[float] = None
    confidence: Optional[float] = None

    def as_tuple(self) -> tuple:
        return (self.x0, self.y0, self.x1, self.y1)


class Candidate(_Record):
    """One generated image; the image itself lives in storage at `image_key`."""

    KIND: ClassVar[str] = "candidate"
    prompt_id: str
    candidate_index: int = Field(..., ge=0)
    seed: int
    image_key: str
    image_sha256: str
    width: int = Field(..., gt=0)
    height: int = Field(..., gt=0)
    think_text: Optional[str] = None

    @property
    def candidate_id(self) -> str:
        return f"{self.prompt_id}#{self.candidate_index}"


class RegionJudgment(_Record):
    KIND: ClassVar[str] = "region_judgment"
    region_id: int = Field(..., ge=1)
    box: Box
    object: Optional[str] = None
    score: Optional[float] = Field(None, ge=-1.0, le=1.0)
    parsed: bool
    clamped: bool = False
    # the judge's box verification: None = not asked; False = rejected (kept and scored only when the
    # pipeline ran with reward.score_unverified; the reward map leaves it out unless that is set)
    verified: Optional[bool] = None


class GlobalJudgment(_Record):
    KIND: ClassVar[str] = "global_judgment"
    score: Optional[float] = Field(None, ge=-1.0, le=1.0)
    reason: Optional[str] = None
    parsed: bool
    clamped: bool = False
    attempts: int = Field(1, ge=1)
    raw: str = ""

    @field_validator("score")
    @classmethod
    def _finite(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not math.isfinite(v):
            raise ValueError("score must be finite or null")
        return v


class RewardRecord(_Record):
    """Everything the reward-map builder and the trainer need for one candidate."""

    KIND: ClassVar[str] = "reward"
    prompt_id: str
    prompt: str
    category: str
    candidate_index: int = Field(..., ge=0)
    seed: int
    image_key: str
    image_sha256: str
    width: int = Field(..., gt=0)
    height: int = Field(..., gt=0)
    boxes_proposed: int = Field(0, ge=0)
    regions: List[RegionJudgment] = Field(default_factory=list)
    global_judgment: GlobalJudgment
    regions_parsed: bool = True
    regions_attempts: int = Field(1, ge=1)
    regions_raw: str = ""
    judge_model: str = ""
    judge_version: str = ""
    think_text: Optional[str] = Field(None, description="the model's think text (plan) the image was generated "
                                                         "from, in think mode; training conditions on it")

    @property
    def candidate_id(self) -> str:
        return f"{self.prompt_id}#{self.candidate_index}"


RECORD_TYPES: Dict[str, Type[_Record]] = {
    cls.KIND: cls for cls in (Prompt, Box, Candidate, RegionJudgment, GlobalJudgment, RewardRecord)
}

R = TypeVar("R", bound=_Record)


def parse_record(line: str, expect: Optional[Type[R]] = None, *, source: str = "<string>", lineno: int = 1) -> R:
    """One JSON line -> a typed record; errors name source:line and the field."""
    where = f"{source}:{lineno}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as e:
        raise RecordError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise RecordError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise RecordError(f"{where}: a record must be a JSON object")
    kind = data.pop("kind", None)
    version = data.pop("v", None)
    if kind is None:
        raise RecordError(f"{where}: field 'kind' is missing")
    if not isinstance(kind, str):
        raise RecordError(f"{where}: field 'kind' must be a string")
    if version != RECORD_VERSION:
        raise RecordError(f"{where}: field 'v' is {version!r}; this version reads records of version {RECORD_VERSION}")
    cls = RECORD_TYPES.get(kind)
    if cls is None:
        raise RecordError(f"{where}: field 'kind' is {kind!r}, not one of {sorted(RECORD_TYPES)}")
    if expect is not None and cls is not expect:
        raise RecordError(f"{where}: expected a {expect.KIND!r} record, found {kind!r}")
    try:
        return cls.model_validate(data)  # type: ignore[return-value]
    except ValidationError as err:
        e = err.errors()[0]
        field = ".".join(str(p) for p in e["loc"]) or "(record)"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
        raise RecordError(f"{where}: field '{field}': {msg}{more}") from None


def read_records(text: str, expect: Optional[Type[R]] = None, *, source: str = "<string>") -> Iterator[R]:
    """Parse JSONL text; blank lines are allowed, anything else must be a valid record."""
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield parse_record(line, expect, source=source, lineno=i)


def dump_records(records: Iterable[_Record]) -> str:
    return "".join(r.to_json_line() + "\n" for r in records)


def record_to_dict(record: _Record) -> Dict[str, Any]:
    return json.loads(record.to_json_line())
