"""The costs file of `srum plan --costs` (YAML or JSON): read and validated against the assumptions'
sections; every error names the file and section.key."""

from __future__ import annotations

import math
from typing import Any, Dict

from .assumptions import _FRACTIONS, _INTEGERS, _MAY_BE_ZERO, COSTS_FILE_SECTIONS


class PlanError(ValueError):
    """A costs file or plan request that cannot be used; the message names the file and the key."""


def load_costs(path: str) -> Dict[str, Dict[str, Any]]:
    """Read and validate a costs file: {section: {key: number}}; errors name the file and section.key."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise PlanError(f"costs file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise PlanError(f"costs file {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise PlanError(f"cannot read costs file {path}: {e.strerror}") from None
    # JSON: decode errors and ints over 4300 digits are ValueErrors; YAML: YAMLError, plus the ValueErrors of
    # its scalar constructors (an impossible date, `!!int abc`); both: RecursionError on deep nesting
    if path.endswith(".json"):
        kind, parse, errors = "JSON", json.loads, (ValueError, RecursionError)
    else:
        import yaml

        from ..config import yaml_loader   # the experiment file's loader: `2e-4` is a number, a repeated key an error

        kind, errors = "YAML", (yaml.YAMLError, ValueError, RecursionError)
        parse = lambda text: yaml.load(text, Loader=yaml_loader())  # noqa: E731
    try:
        data = parse(text)
    except errors as e:
        raise PlanError(f"costs file {path} is not valid {kind}: {e}") from None
    return validate_costs(data, path)


def validate_costs(data: Any, source: str = "<costs>") -> Dict[str, Dict[str, Any]]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PlanError(f"{source}: the top level must be a mapping of sections "
                        f"({', '.join(COSTS_FILE_SECTIONS)}), got {type(data).__name__}")
    out: Dict[str, Dict[str, Any]] = {}
    for section, body in data.items():
        if section not in COSTS_FILE_SECTIONS:
            raise PlanError(f"{source}: unknown section {section!r}; sections are {', '.join(COSTS_FILE_SECTIONS)}")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise PlanError(f"{source}: {section}: must be a mapping of key: number, got {type(body).__name__}")
        known = COSTS_FILE_SECTIONS[section]
        out[section] = {}
        for key, value in body.items():
            where = f"{source}: {section}.{key}"
            if key not in known:
                raise PlanError(f"{where}: unknown key; {section} takes {', '.join(sorted(known))}")
            if key == "name":
                if not isinstance(value, str) or not value:
                    raise PlanError(f"{where}: must be a non-empty string")
                out[section][key] = value
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise PlanError(f"{where}: must be a number, got {value!r}")
            try:
                number = float(value)
            except OverflowError:
                raise PlanError(f"{where}: {value} is out of range") from None
            if not math.isfinite(number):
                raise PlanError(f"{where}: must be finite, got {value!r}")
            if key in _INTEGERS and not number.is_integer():
                raise PlanError(f"{where}: must be a whole number, got {value!r}")
            value = int(number) if key in _INTEGERS else number
            if value < 0 or (value == 0 and key not in _MAY_BE_ZERO):
                raise PlanError(f"{where}: must be {'>= 0' if key in _MAY_BE_ZERO else '> 0'}, got {value!r}")
            if key in _FRACTIONS and value > 1:
                raise PlanError(f"{where}: is a fraction in (0, 1], got {value!r}")
            if key == "overlap_factor" and value < 1:
                raise PlanError(f"{where}: is at least 1 (overlap cannot beat the slower side), got {value!r}")
            out[section][key] = value
    return out
