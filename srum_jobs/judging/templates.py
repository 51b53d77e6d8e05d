"""Judge instructions: four templates (global layout, regions, whole sample, box verification), rendered
to the instruction contract of judging/protocols.py.

Templates are plain text files with `$name` placeholders (string.Template: `$$` is a literal dollar), so
braces and brackets in the prose need no escaping. The defaults live beside this module; a directory
named by `judge.templates_dir` may override any of them file by file. An override is checked when it is
loaded, not when the first judgment fails: a missing required placeholder, an unknown placeholder, a
stray `$` or an unknown template file name is an error that names the file.

What rendering guarantees whatever the wording (the toy understanding model reads these lines by regex):
  * a line `Prompt: <prompt>` (the prompt collapsed onto one line);
  * for `regions` and `verify`, one line per region `Region <i>: box [x0, y0, x1, y1]` in integer pixels.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Dict, FrozenSet, Mapping, Optional, Sequence, Tuple, Union

KINDS: Tuple[str, ...] = ("global", "regions", "sample", "verify")

# Placeholders a template must use, and every placeholder it may use.
REQUIRED: Dict[str, FrozenSet[str]] = {
    "global": frozenset({"prompt"}),
    "regions": frozenset({"prompt", "regions"}),
    "sample": frozenset({"prompt"}),
    "verify": frozenset({"prompt", "region"}),
}
_COMMON = frozenset({"prompt", "width", "height", "neutral_low", "neutral_high", "severe_low", "severe_high"})
ALLOWED: Dict[str, FrozenSet[str]] = {
    "global": _COMMON,
    "regions": _COMMON | {"regions"},
    "sample": _COMMON,
    "verify": _COMMON | {"region"},
}

# The answer lines each default template must ask for (tests pin them; parse.py reads them).
OUTPUT_LINES: Dict[str, Tuple[str, ...]] = {
    "global": ("Score:", "Reason:"),
    "regions": ("Region ID:", "Object:", "Score:", "Reason:"),
    "sample": ("Score:", "Reason:"),
    "verify": ("Answer:", "Object:"),
}

# Appended on a re-ask after an unparseable answer: the retried instruction differs from the first one,
# so a judgment cache keyed by instruction never hands back the same unparseable text.
FORMAT_REMINDER = ("Your previous reply could not be read. Reply again, using exactly the answer lines "
                   "shown above and nothing else.")

BoxLike = Sequence[float]


class TemplateError(ValueError):
    """A judge prompt template that cannot be used; the message names the file."""


@dataclass(frozen=True)
class Bands:
    """Score bands quoted to the judge (reward.neutral_band, reward.severe_band)."""

    neutral: Tuple[float, float] = (-0.4, 0.4)
    severe: Tuple[float, float] = (-0.9, -0.5)

    @classmethod
    def from_reward(cls, reward: object) -> "Bands":
        return cls(neutral=tuple(getattr(reward, "neutral_band")), severe=tuple(getattr(reward, "severe_band")))

    def values(self) -> Dict[str, str]:
        return {"neutral_low": _fmt(self.neutral[0]), "neutral_high": _fmt(self.neutral[1]),
                "severe_low": _fmt(self.severe[0]), "severe_high": _fmt(self.severe[1])}


def _fmt(x: float) -> str:
    return f"{float(x):.1f}" if float(x) == round(float(x), 1) else f"{float(x):g}"


def one_line(text: str) -> str:
    """A prompt as one line: a newline inside it would break the `Prompt:` line of the contract."""
    return " ".join(str(text).split())


def region_line(index: int, box: BoxLike) -> str:
    """`Region <i>: box [x0, y0, x1, y1]`, integer pixels (rounded)."""
    if len(box) != 4:
        raise ValueError(f"region {index}: a box has 4 coordinates (x0, y0, x1, y1), got {len(box)}")
    coords = []
    for c in box:
        c = float(c)
        if not math.isfinite(c):
            raise ValueError(f"region {index}: box {list(box)} has a non-finite coordinate")
        coords.append(int(round(c)))
    return f"Region {index}: box [{coords[0]}, {coords[1]}, {coords[2]}, {coords[3]}]"


def _identifiers(tpl: string.Template, origin: str) -> set:
    # Template.get_identifiers/is_valid are Python 3.11+; the package supports 3.10, so scan with its pattern.
    used = set()
    for m in tpl.pattern.finditer(tpl.template):
        if m.group("invalid") is not None:
            line = tpl.template.count("\n", 0, m.start("invalid")) + 1
            raise TemplateError(f"judge template {origin}, line {line}: a '$' that is not a placeholder "
                                "(write '$$' for a dollar sign)")
        name = m.group("named") or m.group("braced")
        if name:
            used.add(name)
    return used


def _check(kind: str, text: str, origin: str) -> string.Template:
    tpl = string.Template(text)
    used = _identifiers(tpl, origin)
    missing = sorted(REQUIRED[kind] - used)
    if missing:
        raise TemplateError(f"judge template {origin} ({kind}) is missing required placeholder(s) "
                            + ", ".join("$" + m for m in missing))
    unknown = sorted(used - ALLOWED[kind])
    if unknown:
        raise TemplateError(f"judge template {origin} ({kind}) uses unknown placeholder(s) "
                            + ", ".join("$" + u for u in unknown) + "; allowed: "
                            + ", ".join("$" + a for a in sorted(ALLOWED[kind])))
    return tpl


def _default_text(kind: str) -> str:
    return resources.files("srum_jobs.judging").joinpath("templates", f"{kind}.txt").read_text(encoding="utf-8")


class Templates:
    """The four judge templates, validated; render_* produce instructions."""

    def __init__(self, texts: Mapping[str, str], origins: Optional[Mapping[str, str]] = None,
                 bands: Bands = Bands()):
        origins = dict(origins or {})
        self._tpl: Dict[str, string.Template] = {}
        self.origins: Dict[str, str] = {}
        for kind in KINDS:
            if kind not in texts:
                raise TemplateError(f"no template for judgment kind {kind!r}")
            origin = origins.get(kind, f"<{kind}>")
            self._tpl[kind] = _check(kind, texts[kind], origin)
            self.origins[kind] = origin
        self.bands = bands

    @classmethod
    def load(cls, templates_dir: Union[str, Path, None] = None, *, reward: object = None) -> "Templates":
        """The defaults, with any `<kind>.txt` in `templates_dir` replacing its default."""
        texts = {k: _default_text(k) for k in KINDS}
        origins = {k: f"<default {k}.txt>" for k in KINDS}
        if templates_dir is not None:
            d = Path(str(templates_dir)[len("file://"):] if str(templates_dir).startswith("file://") else templates_dir)
            if not d.is_dir():
                raise TemplateError(f"judge.templates_dir {str(templates_dir)!r} is not a directory")
            for f in sorted(d.glob("*.txt")):
                if f.stem not in KINDS:
                    # a typo ("regoins.txt") would otherwise silently leave the default in force
                    raise TemplateError(f"judge template {f}: unknown template name {f.stem!r}; "
                                        f"expected one of {', '.join(k + '.txt' for k in KINDS)}")
                try:
                    texts[f.stem] = f.read_text(encoding="utf-8")
                except UnicodeDecodeError as e:
                    raise TemplateError(f"judge template {f} is not UTF-8 text (byte {e.start})") from None
                origins[f.stem] = str(f)
        bands = Bands.from_reward(reward) if reward is not None else Bands()
        return cls(texts, origins, bands)

    def text(self, kind: str) -> str:
        return self._tpl[kind].template

    def _render(self, kind: str, prompt: str, width: Optional[int], height: Optional[int], **extra: str) -> str:
        values = {"prompt": one_line(prompt), **self.bands.values(), **extra}
        if width is not None and height is not None:
            values.update(width=str(int(width)), height=str(int(height)))
        try:
            return self._tpl[kind].substitute(values)
        except KeyError as e:
            raise TemplateError(f"judge template {self.origins[kind]} uses ${e.args[0]}, which this caller "
                                "cannot fill (no image size given)") from None

    def render_global(self, prompt: str, width: Optional[int] = None, height: Optional[int] = None) -> str:
        return self._render("global", prompt, width, height)

    def render_sample(self, prompt: str, width: Optional[int] = None, height: Optional[int] = None) -> str:
        return self._render("sample", prompt, width, height)

    def render_regions(self, prompt: str, boxes: Sequence[BoxLike], width: int, height: int) -> str:
        if not boxes:
            raise ValueError("render_regions needs at least one box")
        lines = "\n".join(region_line(i, b) for i, b in enumerate(boxes, start=1))
        return self._render("regions", prompt, width, height, regions=lines)

    def render_verify(self, prompt: str, box: BoxLike, width: int, height: int, index: int = 1) -> str:
        return self._render("verify", prompt, width, height, region=region_line(index, box))


_CACHE: Dict[Tuple[Optional[str], Tuple[float, ...]], Templates] = {}


def load_templates(templates_dir: Optional[str] = None, reward: object = None) -> Templates:
    """Templates for an experiment (judge.templates_dir, reward bands), loaded once per process."""
    bands = Bands.from_reward(reward) if reward is not None else Bands()
    key = (templates_dir, (*bands.neutral, *bands.severe))
    if key not in _CACHE:
        _CACHE[key] = Templates.load(templates_dir, reward=reward)
    return _CACHE[key]
