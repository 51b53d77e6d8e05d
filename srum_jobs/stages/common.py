"""What every stage needs: the experiment, its storage and run layout, the round's prompts and model."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from typing import Any, List, Optional

from ..config import Experiment
from ..prompts import load_prompts
from ..records import Prompt, read_records
from ..storage import Lease, ObjectStore, RunLayout, open_store


@dataclass
class StageContext:
    exp: Experiment
    round: int
    store: ObjectStore
    layout: RunLayout

    @classmethod
    def create(cls, exp: Experiment, round: int = 1) -> "StageContext":
        """The stage's storage; started by `srum run`, every marker and checkpoint it commits is preceded by a
        check that the run still holds the experiment's lease."""
        store = open_store(exp.storage)
        lease = Lease.from_env(store)
        return cls(exp, round, store, RunLayout(store, exp.name, round,
                                                before_commit=lease.check if lease is not None else None))

    def say(self, msg: str) -> None:
        print(f"[{self.exp.name} r{self.round}] {msg}", file=sys.stderr, flush=True)


def candidate_seed(base_seed: int, round: int, prompt_index: int, k: int) -> int:
    """A seed that depends only on what the candidate is, so a rerun regenerates the same image."""
    h = hashlib.sha256(f"{base_seed}/{round}/{prompt_index}/{k}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def _materialise(ctx: StageContext, key: str, source: str, limit: Optional[int]) -> List[Prompt]:
    """The prompt list of the round, frozen in storage on first use so every shard and rerun agrees."""
    if ctx.store.is_complete(key):
        return list(read_records(ctx.store.get_text(key, verify=True), Prompt, source=ctx.store.uri_for(key)))
    p = ctx.exp.prompts
    prompts = load_prompts(source, p.format if source == p.source else "auto", storage=ctx.exp.storage,
                           limit=limit, categories=p.categories if source == p.source else None)
    ctx.store.put_jsonl(key, prompts, checksum=True)
    return prompts


def round_prompts(ctx: StageContext) -> List[Prompt]:
    return _materialise(ctx, ctx.layout.prompts_key, ctx.exp.prompts.source, ctx.exp.prompts.limit)


def eval_prompts(ctx: StageContext) -> List[Prompt]:
    src = ctx.exp.prompts.eval_source
    if not src:
        raise ValueError("prompts.eval_source is not set: the eval stage needs held-out prompts")
    return _materialise(ctx, ctx.layout.eval_prompts_key, src, ctx.exp.prompts.eval_limit)


def trained_step(ctx: StageContext, round: int) -> Optional[int]:
    """The final checkpoint step of a round's training, or None if it has not finished."""
    marker = RunLayout(ctx.store, ctx.exp.name, round).marker("train", 0)
    return None if marker is None else int(marker["final_step"])


def load_round_model(ctx: StageContext, *, trained_round: Optional[int] = None,
                     extra_params: Optional[dict] = None) -> Any:
    """The base model with the weights a round starts from: round 1 = base, round r = round r-1's result.
    `trained_round` instead loads that round's final trained weights (eval)."""
    from ..models.base import load_model
    from ..training.checkpoint import load_checkpoint

    model = load_model(ctx.exp.model.adapter, {**ctx.exp.model.params, **(extra_params or {})},
                       ctx.exp.model.checkpoint)
    source_round = trained_round if trained_round is not None else ctx.round - 1
    if source_round >= 1:
        step = trained_step(ctx, source_round)
        if step is None:
            raise RuntimeError(f"round {source_round} has no finished training; run it first")
        layout = RunLayout(ctx.store, ctx.exp.name, source_round)
        state = load_checkpoint(layout, step, parts=["model", "ema_model"])
        model.load_state_dict(state.get("ema_model", state["model"]))  # EMA weights are the result when kept
    return model
