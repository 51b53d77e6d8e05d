"""In-grammar judge requests for the serving benchmarks: toy-world prompts, images the toy world draws, and
the judge's own global-layout instruction, so every judgment is a real answer (never the "outside what this
judge understands" reply a prompt outside the grammar gets).

Half of the images show their own prompt, half show another prompt's scene, so the answers (and their
scores) vary as they do in a real round. Every image is distinct: the toy judge caches what it perceived
per image, and a benchmark that repeated images would measure that cache.
"""

from __future__ import annotations

from typing import List, Tuple

import numpy as np


def toy_judge_requests(n: int, seed: int = 0, canvas: int = 32) -> List[Tuple[bytes, str]]:
    """`n` distinct (PNG bytes, instruction) pairs."""
    from srum_jobs.judging.templates import load_templates
    from srum_jobs.toy import world
    from srum_jobs.storage import png_bytes

    tpl = load_templates()
    rng = np.random.default_rng(seed)
    out: List[Tuple[bytes, str]] = []
    seen = set()
    while len(out) < n:
        prompt = world.random_prompt(rng)
        shown = prompt if rng.random() < 0.5 else world.random_prompt(rng)
        png = png_bytes(world.to_pil(world.render(shown.spec, rng, canvas)[0]))
        if png in seen:
            continue
        seen.add(png)
        out.append((png, tpl.render_global(prompt.text, canvas, canvas)))
    return out
