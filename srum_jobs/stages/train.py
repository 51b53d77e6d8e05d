"""Stage 3, train: reward-weighted flow matching under torchrun.

    python -m srum_jobs.stages.launch --nproc-per-node P [--nnodes N ...] -- stage train --experiment FILE --round R

(torchrun over `srum stage train`, passing a worker's exit code through; see stages/launch.py.)

CPU: gloo, gradients averaged across processes by hooks. GPU: NCCL (FSDP for large adapters is the
adapter's business through `model.trainable_parameters()`). Rank 0 owns storage writes. Data order is a
seeded permutation per epoch, so "data position" is one integer: the number of samples consumed. A
restart resumes from the last *complete* checkpoint (model, optimiser, scheduler, EMA, data position,
RNG) and the loss curve continues where it stopped.
"""

from __future__ import annotations

import io
import json
import os
import time
from typing import Any, Dict, List

import numpy as np
import torch

from ..config import Experiment
from ..models.base import pixels_from_images
from ..rewards import decode_map
from .common import StageContext, load_round_model
from .progress import progress_bar, seconds


# ------------------------------------------------------------------------------------------------ dist
def _dist_setup() -> tuple:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return rank, world


def _average_gradients_with_hooks(params: List[torch.nn.Parameter], world: int) -> None:
    """All-reduce each gradient as soon as it is accumulated (the shared train_step then clips and steps
    on averaged gradients, exactly as a single process with the global batch would)."""
    def hook(p: torch.Tensor) -> None:
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(world)

    for p in params:
        p.register_post_accumulate_grad_hook(hook)


def _broadcast_params(params: List[torch.nn.Parameter]) -> None:
    for p in params:
        torch.distributed.broadcast(p.data, src=0)


# ------------------------------------------------------------------------------------------------ data
def _order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(n: int, seed: int, position: int, global_batch: int) -> List[int]:
    """The next `global_batch` sample indices from data position `position` (epochs roll over)."""
    out = []
    while len(out) < global_batch:
        epoch, offset = divmod(position, n)
        order = _order(n, seed, epoch)
        take = min(global_batch - len(out), n - offset)
        out.extend(order[offset:offset + take].tolist())
        position += take
    return out


def _load_batch(ctx: StageContext, entries: List[dict]):
    from PIL import Image

    from ..storage import ChecksumMismatch, sha256_hex

    images, maps, alphas = [], [], []   # images: PIL, made a tensor by pixels_from_images
    for e in entries:
        data = ctx.store.get_bytes(e["image_key"])
        if sha256_hex(data) != e["image_sha256"]:  # the image its judgment was made on, or nothing
            raise ChecksumMismatch(f"{ctx.store.uri_for(e['image_key'])} does not match its reward record's sha256")
        images.append(Image.open(io.BytesIO(data)).convert("RGB"))
        rmap = decode_map(ctx.store.get_bytes(e["map_key"], verify=True))
        maps.append(torch.from_numpy(np.asarray(rmap.pixels, dtype=np.float32)))
        alphas.append(float(rmap.alpha))
    plans = [e.get("think_text") for e in entries]   # the plan each image was generated from (think mode)
    return (pixels_from_images(images), [e["prompt"] for e in entries], torch.stack(maps), torch.tensor(alphas),
            plans if any(plans) else None)


# ------------------------------------------------------------------------------------------------ state
class _EMA:
    def __init__(self, params: List[torch.nn.Parameter], decay: float):
        self.decay = decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self, params: List[torch.nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params):
            s.lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, params: List[torch.nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s)


def _parallel_params(exp: Experiment) -> Dict[str, str]:
    """Training-only adapter parameters from the training section (adapters that shard themselves)."""
    from ..registry import MODEL_ADAPTERS

    training_params = MODEL_ADAPTERS.hook(exp.model.adapter, "training_params")
    return training_params(exp.training) if training_params is not None else {}


def run(exp: Experiment, round: int, shard: int = 0, num_shards: int = 1, *, progress: bool = True) -> Dict[str, Any]:
    """Train the round (the stage is not sharded: every torchrun worker runs this with shard 0 of 1)."""
    from ..training.checkpoint import load_checkpoint, load_newest_good, prune_checkpoints, save_checkpoint, save_part
    from ..training.optim import build_optimizer, build_scheduler, needs_reference_model, train_step

    rank, world = _dist_setup()
    ctx = StageContext.create(exp, round)
    tc = exp.training
    if ctx.layout.shard_done("train", 0):
        if rank == 0:
            ctx.say("train: already complete")
        return ctx.layout.marker("train", 0) or {}
    torch.manual_seed(tc.seed + rank)
    index = ctx.layout.training_index(exp.prompts.num_shards)
    if not index:
        raise RuntimeError(f"train: round {round} has no usable reward records (all filtered); see the rewards summary")
    model = load_round_model(ctx, extra_params=_parallel_params(exp))
    # an adapter that shards itself (FSDP) reduces its own gradients; the hooks below are for plain replicas
    self_parallel = bool(getattr(model, "handles_data_parallel", False))
    params = [p for p in model.trainable_parameters() if p.requires_grad]
    reference_model = None
    if needs_reference_model(exp.reward, tc):
        # the frozen base of the round (the weights it starts from) for the debiased target / base anchor
        reference_model = load_round_model(ctx, extra_params=_parallel_params(exp))
        for p in reference_model.trainable_parameters():
            p.requires_grad_(False)
    optimizer = build_optimizer(params, tc)
    scheduler = build_scheduler(optimizer, tc)
    if tc.ema and self_parallel:
        raise ValueError("training.ema is not supported with an adapter that shards itself (training.fsdp)")
    ema = _EMA(params, tc.ema) if tc.ema else None
    generator = torch.Generator().manual_seed(tc.seed * 1000 + rank)
    start, position = 0, 0
    opt_part = f"optimizer-rank{rank}" if self_parallel else "optimizer"
    resume_parts = ["model", opt_part, "scheduler", "trainer", "ema"]
    # rank 0 picks the newest checkpoint that loads (moving damaged ones aside); the others follow it
    resumed, state = load_newest_good(ctx.layout, resume_parts, ctx.say) if rank == 0 else (None, {})
    if world > 1:
        chosen = [resumed]
        torch.distributed.broadcast_object_list(chosen, src=0)
        resumed = chosen[0]
        if rank != 0 and resumed is not None:
            state = load_checkpoint(ctx.layout, resumed, parts=resume_parts)
    if resumed is not None:
        if state["manifest"].get("world_size", world) != world and self_parallel:
            raise RuntimeError(f"train: checkpoint step {resumed} was written by {state['manifest']['world_size']} "
                               f"sharded processes; resume it with the same number, not {world}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state[opt_part])
        scheduler.load_state_dict(state["scheduler"])
        trainer = state["trainer"]
        start, position = trainer["step"], trainer["position"]
        generator.set_state(trainer["generators"][rank] if rank < len(trainer["generators"]) else generator.get_state())
        torch.set_rng_state(trainer["torch_rng"])
        if ema is not None and "ema" in state:
            ema.shadow = state["ema"]
        if rank == 0:
            ctx.say(f"train: resuming from checkpoint step {resumed} (data position {position})")
    if world > 1 and not self_parallel:
        _broadcast_params(params)
        _average_gradients_with_hooks(params, world)
    global_batch = tc.batch_size * world
    metrics: List[Dict[str, float]] = []
    t0 = time.perf_counter()
    with progress_bar(tc.steps, f"train r{round}", "step", initial=start, enabled=progress and rank == 0) as bar:
        for step in range(start, tc.steps):
            idx = batch_indices(len(index), tc.seed, position, global_batch)[rank::world]
            images, prompts, maps, alphas, plans = _load_batch(ctx, [index[i] for i in idx])
            out = train_step(model, optimizer, scheduler, images, prompts, maps, alphas, tc,
                             lambda_c=exp.reward.lambda_c, use_global=exp.reward.use_global, generator=generator,
                             plans=plans, reward=exp.reward, reference_model=reference_model)
            if ema is not None:
                ema.update(params)
            position += global_batch
            metrics.append({"step": step + 1, **{k: float(v) for k, v in out.items()}})
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.4f}", lr=f"{out['lr']:.2e}")
            last = step + 1 == tc.steps
            if (step + 1) % tc.save_every == 0 or last:
                gens = [generator.get_state()]
                if world > 1:  # every rank's generator state, so each resumes its own stream
                    gathered: List[Any] = [None] * world
                    torch.distributed.all_gather_object(gathered, generator.get_state())
                    gens = gathered
                # under FSDP state_dict() is a collective (every rank calls it, rank 0 gets the tensors), and
                # each rank's optimizer state is its own shard: every rank uploads its part, rank 0 lists them
                model_state = model.state_dict() if (rank == 0 or self_parallel) else None
                uploaded: Dict[str, str] = {}
                if self_parallel:
                    name = f"optimizer-rank{rank}"
                    digests: List[Any] = [None] * world
                    torch.distributed.all_gather_object(
                        digests, (name, save_part(ctx.layout, step + 1, name, optimizer.state_dict())))
                    uploaded = dict(digests)
                if rank == 0:
                    parts = {"model": model_state, "optimizer": None if self_parallel else optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(),
                             "trainer": {"step": step + 1, "position": position, "generators": gens,
                                         "torch_rng": torch.get_rng_state()}}
                    if ema is not None:
                        parts["ema"] = ema.shadow
                        if last:  # the round's result: the model with EMA weights
                            raw = [p.detach().clone() for p in params]
                            ema.copy_to(params)
                            parts["ema_model"] = {k: v.clone() for k, v in model.state_dict().items()}
                            with torch.no_grad():
                                for p, r in zip(params, raw):
                                    p.copy_(r)
                    # the loss curve of this interval travels with the checkpoint: a resume never duplicates it
                    ctx.store.put_jsonl(ctx.layout.metrics_key(step + 1), metrics)
                    parts = {k: v for k, v in parts.items() if v is not None}
                    save_checkpoint(ctx.layout, step + 1, parts, meta={"world_size": world}, uploaded=uploaded)
                    pruned = prune_checkpoints(ctx.layout, tc.keep_checkpoints)
                    if pruned:
                        ctx.say(f"train: removed checkpoint step(s) {pruned} (training.keep_checkpoints="
                                f"{tc.keep_checkpoints})")
                metrics = []
                if world > 1:
                    torch.distributed.barrier()
    summary = {"final_step": tc.steps, "ema": bool(ema), "steps": tc.steps, "world_size": world, "records": len(index),
               "wall_s": seconds(time.perf_counter() - t0)}
    if rank == 0:
        ctx.layout.mark_done("train", 0, **summary)
        ctx.say(f"train: done {json.dumps(summary)}")
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary
