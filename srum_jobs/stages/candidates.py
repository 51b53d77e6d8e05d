"""The candidates of a generate shard as storage holds them: the shard's (prompt, k) items, each
candidate's own record, the shard's consolidated records.jsonl, and the repair of a damaged records.jsonl
from the candidates' records. The generate stage writes them; the rewards stage reads them.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from ..prompts import shard_prompts
from ..records import Prompt, RecordError, RewardRecord, parse_record, read_records
from ..storage import DamagedData, NotFound
from .common import StageContext, round_prompts

Item = Tuple[Prompt, int]


def shard_items(ctx: StageContext, shard: int, num_shards: int) -> Tuple[List[Prompt], List[Item]]:
    """The prompts of a shard and its (prompt, k) candidates, in order."""
    prompts = shard_prompts(round_prompts(ctx), shard, num_shards)
    return prompts, [(p, k) for p in prompts for k in range(ctx.exp.generation.candidates_per_prompt)]


def read_items(ctx: StageContext, shard: int, items: List[Item]) -> Tuple[List[RewardRecord], Dict[str, str]]:
    """The candidates' records in order, and {key: what is wrong} for each one missing or damaged."""
    records: List[RewardRecord] = []
    bad: Dict[str, str] = {}
    for p, k in items:
        key = ctx.layout.candidate_record_key(shard, p.index, k)
        try:
            rec = parse_record(ctx.store.get_text(key), RewardRecord, source=ctx.store.uri_for(key))
            if (rec.prompt_id, rec.candidate_index) != (p.id, k):
                raise RecordError(f"{ctx.store.uri_for(key)}: holds candidate {rec.prompt_id}#{rec.candidate_index}, "
                                  f"not {p.id}#{k}")
            records.append(rec)
        except NotFound:
            bad[key] = "missing"
        except (RecordError, DamagedData) as e:
            bad[key] = str(e)
    return records, bad


def records_damage(ctx: StageContext, shard: int) -> Optional[str]:
    """What is wrong with a finished shard's records.jsonl, or None when it is whole."""
    key = ctx.layout.records_key(shard)
    try:
        text = ctx.store.get_text(key, verify=True)
        n = sum(1 for _ in read_records(text, RewardRecord, source=ctx.store.uri_for(key)))
    except NotFound:
        return "missing"
    except (RecordError, DamagedData) as e:
        return str(e)
    expected = (ctx.layout.marker("generate", shard) or {}).get("records")
    if expected is not None and n != expected:
        return f"it holds {n} records; the shard's marker says {expected}"
    return None


def quarantine_records(ctx: StageContext, shard: int, why: str) -> str:
    key = ctx.layout.records_key(shard)
    where = ctx.layout.quarantine(key, why) if ctx.store.exists(key) else "(nothing to move)"
    ctx.layout.unmark("generate", shard)
    return where


def rebuild_records(ctx: StageContext, shard: int, num_shards: int, why: str) -> List[RewardRecord]:
    """Repair a damaged records.jsonl from the candidates' own records (no model, no judge). If some of those
    are damaged too, they are quarantined and the shard's marker removed: the generate stage redoes just
    them (`srum run` does that on its next run)."""
    where = quarantine_records(ctx, shard, why)
    _, items = shard_items(ctx, shard, num_shards)
    records, bad = read_items(ctx, shard, items)
    if bad:
        for key, what in bad.items():
            if what != "missing":
                ctx.layout.quarantine(key, what)
        raise RecordError(f"generate shard {shard}: records.jsonl was damaged ({why}; moved to {where}) and "
                          f"{len(bad)} candidate record(s) cannot rebuild it (e.g. {next(iter(bad.values()))}); "
                          "they were moved aside: run generate for this shard again (`srum run` does it by itself)")
    ctx.store.put_jsonl(ctx.layout.records_key(shard), records, checksum=True)
    ctx.layout.mark_done("generate", shard, records=len(records), rebuilt_from_items=True)
    ctx.say(f"generate shard {shard}: records.jsonl was damaged ({why}); moved to {where}; rebuilt it from "
            f"{len(records)} candidate records")
    return records


def shard_records(ctx: StageContext, shard: int, num_shards: int) -> List[RewardRecord]:
    """A generate shard's records; a damaged records.jsonl is set aside and rebuilt from the candidates'
    own records (see rebuild_records)."""
    key = ctx.layout.records_key(shard)
    try:
        return list(read_records(ctx.store.get_text(key, verify=True), RewardRecord, source=ctx.store.uri_for(key)))
    except (RecordError, DamagedData, NotFound) as e:
        return rebuild_records(ctx, shard, num_shards, str(e))
