"""Stage 2, rewards: a dense reward map for every judged candidate, beside its record, plus a summary.

Maps are stored in rewards.encode_map's exact, self-checking encoding (piecewise-constant cells, a few KB
even at 1024x1024) with a checksum sidecar; the trainer pools them to the model's latent grid, which only
the model knows. The summary counts what the trainer will not see and why.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List, Optional

import numpy as np

from ..config import Experiment
from ..rewards import encode_map, reward_map_from_record, training_filter
from .candidates import shard_records
from .common import StageContext
from .progress import progress_bar


def run(exp: Experiment, round: int, shard: Optional[int] = None, num_shards: Optional[int] = None, *,
        progress: bool = True) -> Dict[str, Any]:
    """Build maps for one generate shard, or for every generate shard when `shard` is None."""
    ctx = StageContext.create(exp, round)
    n = num_shards or exp.prompts.num_shards
    shards = range(n) if shard is None else [shard]
    missing = [s for s in shards if not ctx.layout.shard_done("generate", s)]
    if missing:
        raise RuntimeError(f"rewards: generate shards {missing} of round {round} are not complete; run generate first")
    totals: Counter = Counter()
    for s in shards:
        if ctx.layout.shard_done("rewards", s):
            ctx.say(f"rewards shard {s}: already complete")
            totals.update({k: v for k, v in (ctx.layout.marker("rewards", s) or {}).items()
                           if isinstance(v, int) and k not in ("shard", "round")})
            continue
        records = shard_records(ctx, s, n)
        index = []
        counts: Counter = Counter()
        with progress_bar(len(records), f"reward maps shard {s}", "map", enabled=progress) as bar:
            for rec in records:
                use, reason = training_filter(rec, exp.reward)
                entry = {"prompt_id": rec.prompt_id, "candidate_index": rec.candidate_index, "used": use,
                         "prompt": rec.prompt, "category": rec.category, "image_key": rec.image_key,
                         "image_sha256": rec.image_sha256,
                         "reason": reason, "global_score": rec.global_judgment.score,
                         "global_parsed": rec.global_judgment.parsed, "regions_parsed": rec.regions_parsed,
                         "think_text": rec.think_text}
                if use:
                    rmap = reward_map_from_record(rec, exp.reward)
                    key = ctx.layout.reward_map_key(s, rec.prompt_id, rec.candidate_index)
                    # idempotent: the same record always gives the same bytes, so a rerun rewrites identically
                    payload = encode_map(rmap)
                    ctx.store.put_bytes(key, payload, checksum=True)
                    entry.update(map_key=key, alpha=float(rmap.alpha), skipped_boxes=int(rmap.skipped_boxes),
                                 mean_reward=float(np.mean(rmap.pixels)))
                    counts["used"] += 1
                    counts["skipped_boxes"] += int(rmap.skipped_boxes)
                else:
                    counts[f"dropped_{reason}"] += 1
                counts["records"] += 1
                counts["global_unparsed"] += int(not rec.global_judgment.parsed)
                counts["regions_unparsed"] += int(not rec.regions_parsed)
                index.append(entry)
                bar.update(1)
        ctx.store.put_jsonl(ctx.layout.rewards_index_key(s), index, checksum=True)
        ctx.store.put_json(ctx.layout.rewards_summary_key(s), _summary(index, counts))
        ctx.layout.mark_done("rewards", s, **counts)
        totals.update(counts)
        ctx.say(f"rewards shard {s}: {dict(counts)}")
    return dict(totals)


def _summary(index: List[dict], counts: Counter) -> Dict[str, Any]:
    scores = [e["global_score"] for e in index if e["global_score"] is not None]
    hist, edges = np.histogram(scores, bins=20, range=(-1.0, 1.0)) if scores else (np.zeros(20), np.linspace(-1, 1, 21))
    n = max(1, counts["records"])
    return {"counts": dict(counts), "global_score_histogram": {"edges": edges.tolist(), "counts": hist.tolist()},
            "share_unparsed": (counts["global_unparsed"]) / n,
            "share_filtered": 1.0 - counts["used"] / n}
