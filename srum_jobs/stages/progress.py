"""Progress bars with counts and rates for long stage work (tqdm on stderr; off in quiet mode)."""

from __future__ import annotations

import contextlib
import sys


@contextlib.contextmanager
def progress_bar(total: int, desc: str, unit: str = "it", initial: int = 0, enabled: bool = True):
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=not enabled,
               dynamic_ncols=True, mininterval=0.5, smoothing=0.1)
    try:
        yield bar
    finally:
        bar.close()


def seconds(x: float) -> float:
    """Seconds to milliseconds precision (stage functions take a `round` argument, which shadows round())."""
    return int(x * 1000) / 1000.0
