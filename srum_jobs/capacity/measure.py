"""`srum bench costs`: measure the per-item costs `srum plan --costs` needs, on the hardware at hand.

The capacity plan (plan.py) is arithmetic over per-item costs. Its defaults are derived from FLOPs and
published figures; this command replaces them with measurements: it loads the experiment's own model,
judge backend and boxer backend exactly as the stages do (models.base.load_model, judging.backends), runs
a few items of each kind through them, and writes a costs file whose `measured` section plan.py reads
(keys: assumptions.MEASURED_KEYS). Run it on one GPU of the cluster's kind; on a CPU the numbers are CPU-seconds
and say so in the file's header.

What each key times (warm: one untimed call first, so compilation and lazy loading are excluded):
  generate_s_per_image   model.generate over --items prompts (think mode, steps and guidance of the experiment)
  box_s_per_image        the boxer backend on those images
  judge_s_per_call       every judge call one candidate needs (global, regions, verify), through the real
                         judging pipeline on an in-process transport, divided by the number of calls
  train_s_per_sample     train_step (forward, SRUM loss, backward, clip, AdamW) on a batch of those images
  rewards_s_per_record   reward map + encoding of each record
  checkpoint_gb          bytes of the trainable state plus AdamW's two moments (fp32), as saved
  pod_startup_s          loading the model and the backends (image pull not included)
evaluator_s_per_call is not measured here: the evaluator is another model on the judge server; the plan
uses its default unless the costs file is edited.
"""

from __future__ import annotations

import asyncio
import platform
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator

Log = Callable[[str], None]


class _Timed:
    """Wraps a backend: accumulates the seconds spent in `method` and the number of items it served."""

    def __init__(self, inner: Any, method: str):
        self._inner, self._method = inner, method
        self.seconds, self.items = 0.0, 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name != self._method:
            return attr

        def timed(items, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return attr(items, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.items += len(items)
        return timed

    def reset(self) -> None:
        self.seconds, self.items = 0.0, 0


@contextmanager
def _clock(out: Dict[str, float], key: str) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    out[key] = time.perf_counter() - t0


def measure_costs(exp: Any, *, items: int = 8, log: Log = lambda m: None) -> Dict[str, Any]:
    """Measure assumptions.MEASURED_KEYS for the experiment `exp` (a config.Experiment) on this machine.
    Returns {"measured": {key: value}, "about": {...what was measured, where}}."""
    import torch

    from ..judging.backends import load_boxer_backend, load_judge_backend
    from ..judging.inprocess import InProcessTransport
    from ..judging.pipeline import CandidateItem, judge_many
    from ..models.base import load_model, pixels_from_images
    from ..prompts import load_prompts
    from ..rewards import encode_map, reward_map_from_record
    from ..storage import png_bytes
    from ..training.optim import build_optimizer, build_scheduler, train_step

    if items < 2:
        raise ValueError(f"--items must be at least 2 (one warm-up item plus measured ones), got {items}")
    raw: Dict[str, float] = {}
    log(f"loading model {exp.model.adapter!r} and backends {exp.judge.backend!r} / {exp.judge.boxer_backend!r}")
    with _clock(raw, "startup"):
        model = load_model(exp.model.adapter, dict(exp.model.params), exp.model.checkpoint)
        judge = _Timed(load_judge_backend(exp.judge.backend, exp.judge.backend_params), "generate")
        boxer = _Timed(load_boxer_backend(exp.judge.boxer_backend, {}), "propose")   # as the local server does
    prompts = load_prompts(exp.prompts.source, exp.prompts.format, storage=exp.storage, limit=items + 1,
                           categories=exp.prompts.categories)
    if len(prompts) < 2:
        raise ValueError(f"prompts.source {exp.prompts.source} gave {len(prompts)} prompt(s); need at least 2")
    warm, timed = prompts[:1], prompts[1:items + 1]
    gen = exp.generation

    def generate(ps):
        return [g.image for g in model.generate([p.text for p in ps], [gen.seed + p.index for p in ps],
                                                think=gen.think, steps=gen.steps, guidance=gen.guidance,
                                                resolution=gen.resolution)]

    log(f"generating {len(timed)} image(s) ({gen.steps} steps, guidance {gen.guidance}, think {gen.think})")
    warm_images = generate(warm)
    with _clock(raw, "generate"):
        images = generate(timed)

    transport = InProcessTransport(judge, boxer, max_batch=max(1, len(timed)))
    w, h = images[0].size

    def cands(ps, ims):
        return [CandidateItem(png_bytes(im), p, 0, gen.seed + p.index, f"costs/{p.index}.png", w, h)
                for p, im in zip(ps, ims)]

    log("judging (boxes, global, regions, verify) through the judging pipeline")
    asyncio.run(judge_many(transport, cands(warm, warm_images), judge=exp.judge, reward=exp.reward))
    judge.reset()
    boxer.reset()
    records = asyncio.run(judge_many(transport, cands(timed, images), judge=exp.judge, reward=exp.reward))
    calls = max(1, judge.items)

    log(f"reward maps for {len(records)} record(s)")
    with _clock(raw, "rewards"):
        for r in records:
            encode_map(reward_map_from_record(r, exp.reward))

    tcfg = exp.training
    batch = min(tcfg.batch_size, len(images))
    x = pixels_from_images(images[:batch])
    texts = [p.text for p in timed[:batch]]
    opt = build_optimizer(model.trainable_parameters(), tcfg)
    sched = build_scheduler(opt, tcfg)
    grid = torch.ones(batch, h, w)
    g = torch.Generator().manual_seed(0)
    log(f"training: 1 warm-up step and 2 timed steps of batch {batch}")
    train_step(model, opt, sched, x, texts, grid, torch.ones(batch), tcfg, exp.reward.lambda_c, generator=g)
    with _clock(raw, "train"):
        for _ in range(2):
            train_step(model, opt, sched, x, texts, grid, torch.ones(batch), tcfg, exp.reward.lambda_c, generator=g)

    trainable = list(model.trainable_parameters())
    ckpt_bytes = sum(p.numel() * (p.element_size() + 2 * 4) for p in trainable)   # weights + AdamW's fp32 moments
    n = len(timed)
    measured = {
        "generate_s_per_image": raw["generate"] / n,
        "box_s_per_image": boxer.seconds / max(1, boxer.items),
        "judge_s_per_call": judge.seconds / calls,
        "train_s_per_sample": raw["train"] / (2 * batch),
        "rewards_s_per_record": raw["rewards"] / max(1, len(records)),
        "checkpoint_gb": ckpt_bytes / 1e9,
        "pod_startup_s": raw["startup"],
    }
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads)")
    about = {"device": device, "torch": torch.__version__, "model": exp.model.adapter,
             "judge_backend": exp.judge.backend, "boxer_backend": exp.judge.boxer_backend,
             "images": n, "judge_calls": judge.items, "judge_calls_per_image": judge.items / n,
             "train_batch": batch, "date": time.strftime("%Y-%m-%d")}
    return {"measured": {k: float(f"{v:.6g}") for k, v in measured.items()}, "about": about}


def costs_file_text(result: Dict[str, Any], experiment: str) -> str:
    """The costs file: the measured section as YAML, with where it was measured as comments."""
    import yaml

    a = result["about"]
    head = [f"# srum bench costs --experiment {experiment}",
            f"# measured {a['date']} on {a['device']}, torch {a['torch']}",
            f"# model {a['model']}, judge {a['judge_backend']}, boxer {a['boxer_backend']}; {a['images']} images, "
            f"{a['judge_calls']} judge calls ({a['judge_calls_per_image']:.1f} per image), train batch {a['train_batch']}",
            "# Seconds are seconds of this device: on a CPU they are CPU-seconds, not GPU-seconds.",
            "# Use with: srum plan --experiment FILE --gpus N --costs THIS_FILE"]
    return "\n".join(head) + "\n" + yaml.safe_dump({"measured": result["measured"]}, sort_keys=False)
