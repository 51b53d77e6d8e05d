"""Judge text -> scores, one parser per judgment kind (global, regions, sample, verify).

Real VLMs rarely follow an answer format exactly, so every parser tolerates what they actually write:
a `<think>...</think>` preamble (only the text after the last closing tag counts), markdown emphasis
(`**Score:** 0.8`, `Score: **-0.7**`), `+0.5`, `.9`, integers, a trailing period, the Unicode minus,
a value on the line after its label, brackets/backticks/quotes copied from the format (`Score: [0.7]`),
a JSON object with a `score` key, and for regions every common header spelling (`Region ID: 2`,
`**Region ID: 2**`, `Region 2:`, with or without text after the number), any block separator (blank
lines, `---`, nothing), blocks in any order, and region numbers nobody asked for (ignored).

Two rules never bend:
  * a missing score, `N/A`, `NaN` or any non-finite value is *not parsed*: the result says so and the
    score is None, never a silent 0 (a 0 is a real, neutral judgment and would be trained on);
  * a score outside [-1, 1] is clamped into it and flagged `clamped`, so it can be counted.

Retrying on unparseable output is the caller's business (judging/pipeline.py); parsers never raise on
any input text. This module imports only the standard library: `srum judge parse --jsonl` must stay fast.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

# ------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ScoreParse:
    """A global-layout or sample-level judgment."""

    parsed: bool
    score: Optional[float]          # in [-1, 1] when parsed, else None
    reason: Optional[str] = None
    clamped: bool = False           # the judge wrote a value outside [-1, 1]


@dataclass(frozen=True)
class RegionParse:
    score: float                    # in [-1, 1]
    object: Optional[str] = None
    reason: Optional[str] = None
    clamped: bool = False


@dataclass(frozen=True)
class RegionsParse:
    """Region judgments for the requested regions 1..n; a region without a score maps to None."""

    parsed: bool                    # at least one requested region got a score
    regions: Dict[int, Optional[RegionParse]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return all(r is not None for r in self.regions.values())

    @property
    def scored(self) -> int:
        return sum(r is not None for r in self.regions.values())


@dataclass(frozen=True)
class VerifyParse:
    parsed: bool
    answer: Optional[bool]          # True = the region shows an object the prompt names
    object: Optional[str] = None    # the matched prompt noun


# ------------------------------------------------------------------------------------ normalisation

_THINK_CLOSE = re.compile(r"</\s*think(?:ing)?\s*>", re.I)
_THINK_OPEN = re.compile(r"<\s*think(?:ing)?\s*>", re.I)
# Unicode minus, small/full-width hyphen-minus; full-width plus and colon.
_CHAR_MAP = str.maketrans({"\u2212": "-", "\ufe63": "-", "\uff0d": "-", "\uff0b": "+", "\uff1a": ":", "\r": "\n"})
_EMPHASIS = re.compile(r"\*+|__+|~~")
# Markdown escapes ("\\-0.5", "\\*", "1\\.", "\\_"): the escaped character is what the model meant.
_MD_ESCAPE = re.compile(r"\\([-+.*_#`\[\]()!<>|])")


def answer_text(text: Any) -> str:
    """The part of a judge output that counts: after the last `</think>`, emphasis markers removed.

    An opening `<think>` that is never closed means the answer was cut off while thinking: only what
    came before that tag counts (usually nothing)."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end():]
    else:
        m = _THINK_OPEN.search(text)
        if m:
            text = text[:m.start()]
    text = _MD_ESCAPE.sub(r"\1", text.translate(_CHAR_MAP))
    return _EMPHASIS.sub("", text)


# ------------------------------------------------------------------------------------------ numbers

# A number-like token is read whole or not at all: "0,8" is 0.8 (a decimal comma), never 0; "1,000",
# "0.5.1", "0.5-0.7", "80%", "8th" are malformed and make the answer unparsed, never a prefix of it.
_TOKEN = r"[+-]?(?:\d|[.,]\d)[\d.,]*(?:[eE][+-]?\d+)?"
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"          # a well-formed number (lookaheads)
_PLAIN = re.compile(r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?")
_DECIMAL_COMMA = re.compile(r"([+-]?)(\d+),(\d+)")
# After a label: optional wrappers copied from the format ([, (, `, quotes, <, _) and whitespace, which may
# include newlines (a value on the line after its label), then the number or an explicit "no value".
_VALUE = re.compile(r"[\s\[\(`\"'<_]*(?:(?P<num>" + _TOKEN + r")|(?P<na>n\s*/\s*a\b|nan\b|none\b|null\b))", re.I)
_FRACTION = re.compile(r"[^\S\n]*/[^\S\n]*(" + _TOKEN + r")")
_RANGE = re.compile(r"[^\S\n]*(?:-|\u2013|\u2014|to\b)[^\S\n]*[+-]?\.?\d", re.I)
_SCORE_LABEL = re.compile(r"\bscores?\b[\"']?[^\S\n]*(?:\([^)\n]{0,60}\)[^\S\n]*)?[:=]", re.I)
# A label without a colon is only trusted at the start of a line ("**Score** 0.8" after emphasis removal).
_SCORE_LINE_START = re.compile(r"(?im)^[^\S\n]*(?:[-+>#][^\S\n]*)?scores?[^\S\n]+(?=[\[\(`\"'<_]*" + _NUMBER + r")")
_BARE_END = re.compile(r"[\]\)`\"'>_]*\s*$")
_MAX_JSON_STARTS = 32

# What reading a value found: a number, an explicit "no value" (N/A, NaN...), nothing, or a malformed number.
NUM, NA, ABSENT, MALFORMED = "number", "na", "absent", "malformed"


@dataclass(frozen=True)
class NumberRead:
    status: str                     # NUM | NA | ABSENT | MALFORMED
    value: Optional[float] = None   # finite, when status is NUM
    end: int = 0                    # where the read stopped in the text


def _finite(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None


def _clamp(x: float) -> Tuple[float, bool]:
    if x > 1.0:
        return 1.0, True
    if x < -1.0:
        return -1.0, True
    return x, False


def _token_value(tok: str) -> Optional[float]:
    """A number-like token as a float, or None when it is not one number (the token is read whole)."""
    core = tok[:-1] if tok.endswith((".", ",")) and len(tok) > 1 and tok[-2].isdigit() else tok   # "0.6." ends a sentence
    if _PLAIN.fullmatch(core):
        try:
            return _finite(float(core))
        except (ValueError, OverflowError):
            return None
    m = _DECIMAL_COMMA.fullmatch(core)
    # a decimal comma ("0,8", "-0,5", "72,5"); "1,000" or "12,345" may be a thousands separator: ambiguous
    if m and (len(m.group(3)) != 3 or m.group(2) == "0"):
        return _finite(float(f"{m.group(1)}{m.group(2)}.{m.group(3)}"))
    return None


def read_number(text: str, pos: int = 0) -> NumberRead:
    """The value right after position `pos` (a label's end), read whole.

    A fraction "8/10" is read as 0.8; a percentage, a range ("0.5-0.7", "3 to 4"), a second decimal point,
    an ambiguous comma or a letter glued to the digits ("8th") is MALFORMED, never its leading part."""
    m = _VALUE.match(text, pos)
    if not m:
        return NumberRead(ABSENT, None, pos)
    if m.group("num") is None:
        return NumberRead(NA, None, m.end())
    end = m.end()
    value = _token_value(m.group("num"))
    if value is None:
        return NumberRead(MALFORMED, None, end)
    frac = _FRACTION.match(text, end)
    if frac:
        den = _token_value(frac.group(1))
        if den is None or den <= 0:
            return NumberRead(MALFORMED, None, frac.end())
        return NumberRead(NUM, value / den, frac.end())
    nxt = text[end:end + 1]
    if nxt == "%" or nxt.isalpha() or nxt == "_" or _RANGE.match(text, end):
        return NumberRead(MALFORMED, None, end)
    return NumberRead(NUM, value, end)


def _number_at(text: str, pos: int) -> Optional[float]:
    """The number right after position `pos`, or None (no number, N/A, NaN or a malformed number)."""
    r = read_number(text, pos)
    return r.value if r.status == NUM else None


def labelled_number(text: str, label: "re.Pattern[str]") -> NumberRead:
    """The value of the last `label` that carries one (a model that corrects itself, or echoes the format
    before answering, ends with its real answer). A malformed last value makes the whole read MALFORMED:
    an earlier value the model went on to replace is not its answer."""
    found = NumberRead(ABSENT)
    for m in label.finditer(text):
        r = read_number(text, m.end())
        if r.status in (NUM, MALFORMED):
            found = r
    return found


def _labelled_score(text: str) -> NumberRead:
    found = labelled_number(text, _SCORE_LABEL)
    if found.status == ABSENT:
        found = labelled_number(text, _SCORE_LINE_START)
    return found


def bare_number(body: str) -> NumberRead:
    """The whole answer is one number (wrappers and a closing period allowed)."""
    r = read_number(body, 0)
    if r.status == NUM and not _BARE_END.match(body, r.end):
        return NumberRead(ABSENT)
    return r


def _json_values(text: str) -> Iterator[Any]:
    """Every JSON object or array embedded in the text (code fences and prose around it are fine)."""
    decoder = json.JSONDecoder()
    starts = 0
    i = 0
    while starts < _MAX_JSON_STARTS:
        brace, bracket = text.find("{", i), text.find("[", i)
        cands = [p for p in (brace, bracket) if p >= 0]
        if not cands:
            return
        i = min(cands)
        starts += 1
        try:
            value, end = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):
            i += 1
            continue
        yield value
        i = end


def _key(d: Dict[str, Any], *names: str) -> Any:
    lowered = {str(k).strip().lower().replace(" ", "_"): v for k, v in d.items()}
    for n in names:
        if n in lowered:
            return lowered[n]
    return None


def _json_number(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        try:
            return _finite(float(v))
        except OverflowError:
            return None
    if isinstance(v, str):
        return _number_at(v, 0)
    return None


def _json_text(v: Any, strip: str = "") -> Optional[str]:
    if v is None or isinstance(v, (dict, list)):
        return None
    return _clean_field(str(v), strip or _WRAPPERS)


# ------------------------------------------------------------------------------------------ fields

_FIELD_LABELS = r"(?:score|scores|reason|reasoning|object|identified\s+object|answer|region)"
_REASON_LABEL = re.compile(r"\breason(?:ing)?\b[\"']?[^\S\n]*[:=]", re.I)
_NEXT_FIELD = re.compile(r"(?im)(?:^[^\S\n]*(?:[-+>#][^\S\n]*)?" + _FIELD_LABELS + r"\b[^\n]{0,20}?[:=]|\bregion[^\S\n]*id\b)")
_OBJECT_LABEL = re.compile(r"\b(?:identified\s+)?object(?:\s+name)?\b[\"']?[^\S\n]*[:=]", re.I)
# No leading whitespace class in these two: a search would rescan every run of spaces (quadratic time);
# the separators left before the cut are stripped afterwards instead.
_INLINE_NEXT_LABEL = re.compile(r"\b(?:score|reason|reasoning|answer|confidence)\b[\"']?[^\S\n]*[:=]", re.I)
_INLINE_SCORE = re.compile(r"\bscores?\b[\"']?[^\S\n]*[:=][\s\[\(`\"'<_]*[+-]?\.?\d", re.I)
_NONE_WORDS = {"", "none", "n/a", "na", "null", "nothing", "unknown", "-", "no object", "no"}
_WRAPPERS = " \t\n[]()`\"'<>_.,;:|"
_REASON_STRIP = " \t\n[]`\"'<>|"     # a reason keeps its closing period


def _clean_field(s: str, strip: str = _WRAPPERS) -> Optional[str]:
    s = " ".join(s.split()).strip(strip)
    return None if s.lower() in _NONE_WORDS else s


def _reason(text: str) -> Optional[str]:
    """The text after the last `Reason:` label, up to the next field label."""
    ms = list(_REASON_LABEL.finditer(text))
    if not ms:
        return None
    start = ms[-1].end()
    nxt = _NEXT_FIELD.search(text, start)
    chunk = text[start:nxt.start()] if nxt else text[start:]
    inline = _INLINE_SCORE.search(chunk)
    if inline:  # "Reason: ... Score: 0.5" written on one line
        chunk = chunk[:inline.start()].rstrip(" \t,;|")
    chunk = "\n".join(line for line in chunk.splitlines() if not _SEPARATOR.match(line))
    return _clean_field(chunk, _REASON_STRIP) if chunk.strip() else None


def _object(text: str) -> Optional[str]:
    """`Object: <noun>`: the rest of its line (cut at an inline `Score:`), or the next line if empty."""
    m = _OBJECT_LABEL.search(text)
    if not m:
        return None
    rest = text[m.end():]
    line, _, after = rest.partition("\n")
    if not line.strip():
        for nxt in after.split("\n"):
            if nxt.strip():
                line = "" if _NEXT_FIELD.match(nxt) else nxt
                break
    cut = _INLINE_NEXT_LABEL.search(line)
    if cut:
        line = line[:cut.start()].rstrip(" \t,;|")
    return _clean_field(line)


_SEPARATOR = re.compile(r"^\s*(?:-{3,}|={3,}|_{3,})\s*$")


# ---------------------------------------------------------------------------------- global / sample


def parse_global(text: Any) -> ScoreParse:
    """A global-layout judgment: `Score: <[-1, 1]>` and `Reason: <text>`."""
    try:
        return _parse_score_text(answer_text(text))
    except Exception:  # noqa: BLE001 - the contract is "never raises on any text"; a bug here is not parsed
        return ScoreParse(parsed=False, score=None)


# The sample-level judgment (ablation baseline) answers in the same format as the global one.
parse_sample = parse_global


def _parse_score_text(body: str) -> ScoreParse:
    # A JSON answer is read as JSON first: label matching inside it would keep its quotes and braces.
    for obj in _json_values(body):
        if isinstance(obj, dict):
            v = _json_number(_key(obj, "score", "global_score", "layout_score", "final_score"))
            if v is not None:
                score, clamped = _clamp(v)
                return ScoreParse(parsed=True, score=score, clamped=clamped,
                                  reason=_json_text(_key(obj, "reason", "reasoning", "explanation"), _REASON_STRIP))
    reason = _reason(body)
    read = _labelled_score(body)
    if read.status == ABSENT:
        read = bare_number(body)
    if read.status != NUM or read.value is None:
        return ScoreParse(parsed=False, score=None, reason=reason)
    score, clamped = _clamp(read.value)
    return ScoreParse(parsed=True, score=score, reason=reason, clamped=clamped)


# ------------------------------------------------------------------------------------------ regions

# A header either names the ID explicitly ("Region ID: 2", anywhere) or starts a line as "Region 2"
# followed by a separator (":", "-", "(", ")", "]", ".", ",") or the end of the line, so a reason that
# happens to start a line with "region 2 overlaps ..." does not open a block.
# (Optional separators are written "(?:[:#][^\S\n]*)?", never "[^\S\n]*[:#]?[^\S\n]*": two adjacent
# whitespace stars backtrack quadratically on a long run of spaces.)
_HEADER_ID = re.compile(r"\bregion[^\S\n]*(?:id|no\.?|number|#)[^\S\n]*(?:[:#=.][^\S\n]*)?[\[\(]?(\d{1,6})\b", re.I)
_HEADER_LINE = re.compile(r"(?im)^[^\S\n]*(?:#{1,6}[^\S\n]*|[-+>][^\S\n]*|\[|\d{1,3}[.)][^\S\n]+)?region[^\S\n]*"
                          r"(?:[:#][^\S\n]*)?(\d{1,6})(?=[^\S\n]*(?:$|[:\-\u2013\u2014(\[\]).,]))")


def _headers(body: str) -> List[Tuple[int, int, int]]:
    """(start, end, region number) of every region header, in text order, overlaps removed."""
    found: Dict[int, Tuple[int, int, int]] = {}
    for rx in (_HEADER_ID, _HEADER_LINE):
        for m in rx.finditer(body):
            try:
                rid = int(m.group(1))
            except ValueError:
                continue
            # one header per region-number position: the two patterns can both see "Region ID: 2"
            found.setdefault(m.start(1), (m.start(), m.end(), rid))
    out: List[Tuple[int, int, int]] = []
    for h in sorted(found.values()):
        if out and h[0] < out[-1][1]:
            continue
        out.append(h)
    return out


def _block_result(block: str) -> Optional[RegionParse]:
    read = _labelled_score(block)
    if read.status != NUM or read.value is None:
        return None
    score, clamped = _clamp(read.value)
    return RegionParse(score=score, object=_object(block), reason=_reason(block), clamped=clamped)


def _regions_from_json(body: str, n: int) -> Dict[int, RegionParse]:
    out: Dict[int, RegionParse] = {}
    for value in _json_values(body):
        items: List[Tuple[Any, Any]] = []
        if isinstance(value, dict):
            listed = _key(value, "regions", "region_judgments", "results")
            if isinstance(listed, list):
                value = listed
            else:
                items = [(k, v) for k, v in value.items() if isinstance(v, dict)]
        if isinstance(value, list):
            items = [(_key(v, "region_id", "region", "id", "regionid"), v) for v in value if isinstance(v, dict)]
        for rid_raw, entry in items:
            try:
                rid = int(str(rid_raw).strip().lower().replace("region", "").strip())
            except (ValueError, TypeError):
                continue
            v = _json_number(_key(entry, "score", "region_score"))
            if v is None or not 1 <= rid <= n:
                continue
            score, clamped = _clamp(v)
            out[rid] = RegionParse(score=score, object=_json_text(_key(entry, "object", "identified_object", "name")),
                                   reason=_json_text(_key(entry, "reason", "reasoning"), _REASON_STRIP),
                                   clamped=clamped)
    return out


MAX_REGIONS = 4096   # far above any real request (reward.max_regions <= 64); bounds the result's size


def parse_regions(text: Any, n: int) -> RegionsParse:
    """Region judgments for regions 1..n: blocks of `Region ID: i`, `Object:`, `Score:`, `Reason:`.

    Never raises on any `text`; `n` is the caller's own count and must be at most MAX_REGIONS."""
    try:
        n = int(n)
    except (TypeError, ValueError, OverflowError):
        n = 0
    if n > MAX_REGIONS:
        raise ValueError(f"parse_regions: {n} regions requested; at most {MAX_REGIONS} are supported")
    if n < 1:
        return RegionsParse(parsed=False, regions={})
    try:
        results = _parse_regions_body(answer_text(text), n)
    except Exception:  # noqa: BLE001 - never raise on any text; a bug here reads as "no region parsed"
        results = {}
    regions: Dict[int, Optional[RegionParse]] = {i: results.get(i) for i in range(1, n + 1)}
    return RegionsParse(parsed=any(r is not None for r in regions.values()), regions=regions)


def _parse_regions_body(body: str, n: int) -> Dict[int, RegionParse]:
    results: Dict[int, RegionParse] = {}
    heads = _headers(body)
    for j, (_, end, rid) in enumerate(heads):
        if not 1 <= rid <= n:
            continue  # a region nobody asked for
        stop = heads[j + 1][0] if j + 1 < len(heads) else len(body)
        r = _block_result(body[end:stop])
        # a repeated header (the model echoing the question, then answering) must not erase an answer
        if r is not None:
            results[rid] = r
    if not heads and n == 1:
        r = _block_result(body)
        if r is not None:
            results[1] = r
    if len(results) < n:
        for rid, r in _regions_from_json(body, n).items():
            results.setdefault(rid, r)
    return results


# ------------------------------------------------------------------------------------------- verify

# "Answer: <yes or no>" echoed from the format is not an answer (the lookahead skips "yes or no", "yes/no").
_ANSWER = re.compile(r"\banswer\b[\"']?[^\S\n]*[:=][\s\[\(`\"'<_]*(yes|no|true|false|y|n)\b"
                     r"(?![^\S\n]*(?:or|/)[^\S\n]*(?:yes|no)\b)", re.I)
_LEADING_YES_NO = re.compile(r"^[\s\[\(`\"'<_]*(yes|no)\b", re.I)
_YES = {"yes", "true", "y"}
_YES_NO = _YES | {"no", "false", "n"}


def parse_verify(text: Any) -> VerifyParse:
    """A box verification: `Answer: yes|no` and `Object: <noun from the prompt>`."""
    try:
        body = answer_text(text)
        for obj in _json_values(body):
            if isinstance(obj, dict):
                v = _key(obj, "answer", "verified", "match")
                word = None
                if isinstance(v, bool):
                    word = "yes" if v else "no"
                elif isinstance(v, str) and v.strip().lower() in _YES_NO:
                    word = v.strip().lower()
                if word is not None:
                    return VerifyParse(parsed=True, answer=word in _YES, object=_json_text(_key(obj, "object", "noun")))
        ms = list(_ANSWER.finditer(body))
        word = ms[-1].group(1) if ms else None
        if word is None:
            m = _LEADING_YES_NO.match(body)
            word = m.group(1) if m else None
        if word is None:
            return VerifyParse(parsed=False, answer=None, object=_object(body))
        return VerifyParse(parsed=True, answer=word.lower() in _YES, object=_object(body))
    except Exception:  # noqa: BLE001 - never raise on any text
        return VerifyParse(parsed=False, answer=None)


# ------------------------------------------------------------------------- evaluator answer primitives
# Short answers evaluator protocols ask for (srum_jobs/evaluation/): yes/no, a count, an option letter,
# and labelled numbers. Each is read whole or reported unparsed, never guessed.


@dataclass(frozen=True)
class AnswerParse:
    parsed: bool
    value: Any = None               # bool (yes/no), int (count), str (option letter)


def _json_dicts(body: str) -> Iterator[Dict[str, Any]]:
    return (obj for obj in _json_values(body) if isinstance(obj, dict))


_WORD_YES_NO = re.compile(r"\b(yes|no)\b", re.I)
_HEDGE = re.compile(r"^\W*(?:yes|no)\W+(?:and|or)\W+(?:yes|no)\b", re.I)


def parse_yes_no(text: Any) -> AnswerParse:
    """`Answer: yes|no`, a JSON {"answer": ...}, an answer that starts with yes/no, or one that says only
    one of the two words. Both words without a label ("yes ... no") is ambiguous: not parsed."""
    try:
        body = answer_text(text)
        for obj in _json_dicts(body):
            v = _key(obj, "answer", "verified", "match")
            if isinstance(v, bool):
                return AnswerParse(True, v)
            if isinstance(v, str) and v.strip().lower().strip(".!") in _YES_NO:
                return AnswerParse(True, v.strip().lower().strip(".!") in _YES)
        ms = list(_ANSWER.finditer(body))
        if ms:
            return AnswerParse(True, ms[-1].group(1).lower() in _YES)
        if _HEDGE.match(body):
            return AnswerParse(False, None)      # "yes and no", "yes or no"
        m = _LEADING_YES_NO.match(body)
        if m:
            return AnswerParse(True, m.group(1).lower() in _YES)
        words = {w.lower() for w in _WORD_YES_NO.findall(body)}
        if len(words) == 1:
            return AnswerParse(True, words.pop() == "yes")
    except Exception:  # noqa: BLE001 - never raise on any text
        pass
    return AnswerParse(False, None)


NUMBER_WORDS = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                            "nine", "ten", "eleven", "twelve"))}
NUMBER_WORDS.update(none=0, no=0, a=1, an=1, single=1)
_COUNT_LABEL = re.compile(r"\b(?:answer|count|number|total)\b[\"']?[^\S\n]*[:=]", re.I)
_COUNT_WORD = re.compile(r"\b(" + "|".join(w for w in NUMBER_WORDS if len(w) > 2) + r")\b", re.I)
_ANY_TOKEN = re.compile(_TOKEN)


def _count_value(read: NumberRead) -> Optional[int]:
    if read.status != NUM or read.value is None or read.value < 0 or read.value != int(read.value):
        return None
    return int(read.value)


def parse_count(text: Any) -> AnswerParse:
    """How many: `Answer: 3`, JSON {"count": 3}, a bare "3", or a sentence with exactly one count in it
    ("There are two clocks."). "2.5", "2 or 3", "2-3" are not parsed."""
    try:
        body = answer_text(text)
        for obj in _json_dicts(body):
            v = _key(obj, "count", "answer", "number")
            if isinstance(v, bool):
                continue
            if isinstance(v, int):
                return AnswerParse(v >= 0, v if v >= 0 else None)
            if isinstance(v, str):
                word = v.strip().lower().strip(".")
                if word in NUMBER_WORDS:
                    return AnswerParse(True, NUMBER_WORDS[word])
                c = _count_value(bare_number(v))
                return AnswerParse(c is not None, c)
        read = labelled_number(body, _COUNT_LABEL)
        if read.status in (NUM, MALFORMED):
            c = _count_value(read)
            return AnswerParse(c is not None, c)
        found = set()
        for m in _ANY_TOKEN.finditer(body):
            r = read_number(body, m.start())
            c = _count_value(r)
            if c is None:
                return AnswerParse(False, None)     # "2.5", "80%", "2-3": not one count
            found.add(c)
        found |= {NUMBER_WORDS[w.lower()] for w in _COUNT_WORD.findall(body)}
        if len(found) == 1:
            return AnswerParse(True, found.pop())
    except Exception:  # noqa: BLE001 - never raise on any text
        pass
    return AnswerParse(False, None)


_CHOICE_LABEL = re.compile(r"\b(?:answer|option|choice)\b[\"']?[^\S\n]*(?:is[^\S\n]*)?[:=]?[^\S\n]*[\(\[]?([A-Za-z])\b(?![''])",
                           re.I)
# A standalone capital letter; a capital "A" followed by a lower-case word is the article ("A red circle").
_CHOICE_LETTER = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")
_ARTICLE_A = re.compile(r"A[^\S\n]+(?!or\b|and\b)[a-z]")


def parse_choice(text: Any, letters: Sequence[str]) -> AnswerParse:
    """A multiple-choice answer among `letters` ("A", "B", ...): `Answer: B`, "(B)", "B. red", "B", JSON
    {"answer": "B"}. Two different offered letters without a label: not parsed."""
    offered = {str(x).upper() for x in letters}
    try:
        body = answer_text(text).strip()
        for obj in _json_dicts(body):
            v = _key(obj, "answer", "choice", "option")
            if isinstance(v, str) and v.strip().strip("().").upper() in offered:
                return AnswerParse(True, v.strip().strip("().").upper())
        labelled = [m.group(1).upper() for m in _CHOICE_LABEL.finditer(body) if m.group(1).upper() in offered]
        if labelled:
            return AnswerParse(True, labelled[-1])
        letters_seen = {m.group(1) for m in _CHOICE_LETTER.finditer(body) if m.group(1) in offered
                        and not (m.group(1) == "A" and _ARTICLE_A.match(body, m.start()))}
        if len(letters_seen) == 1:
            return AnswerParse(True, letters_seen.pop())
    except Exception:  # noqa: BLE001 - never raise on any text
        pass
    return AnswerParse(False, None)


# --------------------------------------------------------------------------------------------- JSON


def global_to_json(r: ScoreParse) -> Dict[str, Any]:
    """The `srum judge parse --kind global` output shape."""
    return {"parsed": r.parsed, "score": r.score, "reason": r.reason}


def regions_to_json(r: RegionsParse) -> Dict[str, Any]:
    """The `srum judge parse --kind regions` output shape: a key for every requested region."""
    return {"parsed": r.parsed,
            "regions": {str(i): (None if g is None else {"score": g.score, "object": g.object})
                        for i, g in sorted(r.regions.items())}}
