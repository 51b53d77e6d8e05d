"""Deterministic pretraining of the toy base model, cached by config hash.

`ensure_base(preset)` returns the directory of the preset's base checkpoint:
  1. the cache, `<cache>/toy/<preset>-<hash>/` where <cache> is $SRUM_CACHE_DIR, else
     $XDG_CACHE_HOME/srum, else ~/.cache/srum, and <hash> covers the preset's whole recipe;
  2. else a checkpoint shipped in the package (`srum_jobs/assets/toy/<preset>/`) whose recorded hash
     equals the current recipe's (so shipped weights are always the ones this code would rebuild);
  3. else it pretrains now, under a file lock (several processes may ask at once: local stages, the
     Triton judge model), writing to a temporary folder that is renamed into place when complete.

Pretraining makes the paper's premise: understanding trained to high accuracy (PerceptionNet on rendered
scenes with corruptions), generation trained only part of the way (FlowUNet on ground-truth renders of the
*pretrain* split's compositions; a self-rewarding round then prompts with the `train` split's, which
pretraining never saw). The generator learns both modes at once: each render comes with the plan it
follows (plan.py, think mode), dropped for a share `p_plan_drop` of the samples (plain mode), as the prompt
is dropped for `p_uncond` (classifier-free guidance; a dropped prompt drops the plan too). Everything is
seeded; the number of steps, not the wall time, bounds it.

A checkpoint directory holds `generator.pt`, `perception.pt` (state dicts) and `meta.json` (preset, hash,
recipe, timings, parameter counts).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from . import world

RECIPE_VERSION = 3

# Everything that decides the weights. Changing any value changes the hash, so the cache never hands out
# weights built by another recipe.
PRESETS: Dict[str, Dict[str, Any]] = {
    "test": {
        "seed": 0,
        "perception": {"width": 12, "steps": 100, "batch": 32, "lr": 3e-3},
        "generator": {"channels": [16, 32, 64], "text_dim": 64, "text_layers": 1, "steps": 40, "batch": 16,
                      "lr": 1e-3, "warmup": 10, "schedule": "constant", "ema": 0.9, "p_uncond": 0.1,
                      "plan_channels": 8, "p_plan_drop": 0.5},
    },
    "demo": {
        "seed": 0,
        "perception": {"width": 24, "steps": 800, "batch": 64, "lr": 2e-3},
        # Pretraining streams renders of the pretrain split's compositions (every category alike); the
        # self-rewarding round's prompts are held-out compositions (the train split).
        "generator": {"channels": [32, 64, 128], "text_dim": 128, "text_layers": 2, "steps": 2100, "batch": 64,
                      "lr": 1e-3, "warmup": 100, "schedule": "cosine", "ema": 0.995, "p_uncond": 0.1,
                      "plan_channels": 8, "p_plan_drop": 0.5},
    },
}

# The demo's recipe on web-like captions: half the generator's pretraining captions get one attribute of
# their image wrong (plans, like dense re-captions, stay true). Understanding is trained as in `demo`, so it
# reads images better than plain generation follows prompts: the gap a self-rewarding round can close.
PRESETS["demo-noisy"] = {**copy.deepcopy(PRESETS["demo"]),
                         "generator": {**PRESETS["demo"]["generator"], "caption_noise": 0.5}}

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "toy"


class PretrainError(RuntimeError):
    pass


def preset_config(preset: str) -> Dict[str, Any]:
    try:
        return copy.deepcopy(PRESETS[preset])
    except KeyError:
        raise PretrainError(f"unknown toy preset {preset!r}; presets are {', '.join(sorted(PRESETS))}") from None


def config_hash(preset: str) -> str:
    # the training compositions are part of the recipe: a change of the prompt split is a new base
    train = sorted(world.prompt_key(c) for cat in world.CATEGORIES for c in world.split_compositions("pretrain", cat))
    body = json.dumps({"recipe": RECIPE_VERSION, "preset": preset, "config": preset_config(preset),
                       "canvas": world.CANVAS, "vocab": _vocab(),
                       "train_contents": hashlib.sha256("\n".join(train).encode()).hexdigest()}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _vocab():
    from .nets import VOCAB

    return list(VOCAB)


def cache_root() -> Path:
    if os.environ.get("SRUM_CACHE_DIR"):
        return Path(os.environ["SRUM_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "srum"


def cache_dir(preset: str) -> Path:
    return cache_root() / "toy" / f"{preset}-{config_hash(preset)}"


def shipped_dir(preset: str) -> Optional[Path]:
    d = ASSETS / preset
    meta = d / "meta.json"
    if not meta.is_file():
        return None
    try:
        recorded = json.loads(meta.read_text())["hash"]
    except (ValueError, KeyError):
        return None
    return d if recorded == config_hash(preset) else None


def is_complete(d: Path) -> bool:
    return all((d / f).is_file() for f in ("generator.pt", "perception.pt", "meta.json"))


# ---------------------------------------------------------------------------------------------- data


def _blur(x, sigma):
    """Gaussian blur of (B, 3, H, W) with a per-image sigma (B,) (0 = untouched)."""
    import torch
    import torch.nn.functional as F

    r = 2
    grid = torch.arange(-r, r + 1, dtype=torch.float32)
    s = sigma.clamp_min(1e-3)[:, None]
    k = torch.exp(-(grid[None] ** 2) / (2 * s ** 2))
    k = k / k.sum(1, keepdim=True)                                    # (B, 5)
    b, c, h, w = x.shape
    xp = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="replicate")
    kx = k.repeat_interleave(c, 0)[:, None, None, :]                  # (B*C, 1, 1, 5)
    ky = k.repeat_interleave(c, 0)[:, None, :, None]
    y = F.conv2d(F.conv2d(xp, kx, groups=b * c), ky, groups=b * c).reshape(b, c, h, w)
    keep = (sigma <= 0)[:, None, None, None]
    return torch.where(keep, x, y)


def _stretch(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    ys = (np.arange(h) * mask.shape[0] / h).astype(int)
    xs = (np.arange(w) * mask.shape[1] / w).astype(int)
    return mask[ys][:, xs]


def perception_scene(rng: np.random.Generator, canvas: int = world.CANVAS) -> Tuple[np.ndarray, np.ndarray]:
    """One training scene for the perception net: (image float32 HxWx3 in 0..255, labels HxW).

    0-4 well-formed objects of any kind (sizes and aspect a little wider than the renderer's, colours
    jittered), sometimes a malformed blob (stretched, bitten or two shapes fused) labelled as an unclear
    object of its colour, and sometimes faint stains (mostly background) labelled background."""
    from .nets import blob_class

    img = np.empty((canvas, canvas, 3), dtype=np.float32)
    img[:] = np.array(world.BACKGROUND, np.float32) + rng.normal(0, 4, 3)
    labels = np.zeros((canvas, canvas), dtype=np.int64)
    taken = np.zeros((canvas, canvas), dtype=bool)

    def put(mask: np.ndarray, color: str, label: int, alpha: float = 1.0) -> bool:
        h, w = mask.shape
        if h >= canvas - 1 or w >= canvas - 1:
            return False
        for _ in range(20):
            y0, x0 = int(rng.integers(0, canvas - h)), int(rng.integers(0, canvas - w))
            region = (slice(max(0, y0 - 1), y0 + h + 1), slice(max(0, x0 - 1), x0 + w + 1))
            if alpha >= 0.99 and taken[region].any():
                continue
            col = np.array(world.COLORS[color], np.float32) + rng.normal(0, 10, 3)
            sub = img[y0:y0 + h, x0:x0 + w]
            sub[mask] = alpha * col + (1 - alpha) * sub[mask]
            if label:
                labels[y0:y0 + h, x0:x0 + w][mask] = label
                taken[y0:y0 + h, x0:x0 + w] |= mask
            return True
        return False

    # faint stains first, so objects drawn later cover them
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.3 else 0):
        size = int(rng.integers(4, 12))
        m = world.shape_mask(world.SHAPES[int(rng.integers(0, 3))], size)
        put(m, world.COLOR_NAMES[int(rng.integers(0, 6))], 0, alpha=float(rng.uniform(0.1, 0.4)))
    for _ in range(int(rng.integers(0, 5))):
        obj = world.ALL_OBJECTS[int(rng.integers(0, len(world.ALL_OBJECTS)))]
        size = int(rng.integers(6, 16))
        aspect = float(rng.uniform(0.85, 1.18))
        m = _stretch(world.shape_mask(obj.shape, size), size, max(3, int(round(size * aspect))))
        put(m, obj.color, world.class_index(obj))
    if rng.random() < 0.35:
        color = world.COLOR_NAMES[int(rng.integers(0, 6))]
        kind = int(rng.integers(0, 3))
        size = int(rng.integers(7, 13))
        base = world.shape_mask(world.SHAPES[int(rng.integers(0, 3))], size)
        if kind == 0:      # stretched far beyond any drawn object's proportions
            long = int(round(size * rng.uniform(1.9, 2.6)))
            m = _stretch(base, size, long) if rng.random() < 0.5 else _stretch(base, long, size)
        elif kind == 1:    # a large bite taken out
            m = base.copy()
            bh, bw = int(rng.integers(size // 2, size)), int(rng.integers(size // 2, size))
            by, bx = (0 if rng.random() < 0.5 else size - bh), (0 if rng.random() < 0.5 else size - bw)
            m[by:by + bh, bx:bx + bw] = False
        else:              # two shapes fused side by side or on top of each other
            other = world.shape_mask(world.SHAPES[int(rng.integers(0, 3))], size)
            off = int(rng.integers(size // 3, 2 * size // 3))
            if rng.random() < 0.5:
                m = np.zeros((size, size + off), bool)
                m[:, :size] |= base
                m[:, off:] |= other
            else:
                m = np.zeros((size + off, size), bool)
                m[:size] |= base
                m[off:] |= other
        if m.sum() >= 6:
            put(m, color, blob_class(color))
    return img, labels


def perception_batch(rng: np.random.Generator, batch: int):
    import torch

    scenes = [perception_scene(rng) for _ in range(batch)]
    x = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2) / 127.5 - 1.0
    y = torch.from_numpy(np.stack([s[1] for s in scenes]))
    sigma = torch.from_numpy(np.where(rng.random(batch) < 0.6, rng.uniform(0.3, 1.0, batch), 0.0)).float()
    x = _blur(x, sigma)
    x = x + torch.from_numpy(rng.normal(0, 1, x.shape)).float() * torch.from_numpy(
        rng.uniform(0, 0.12, (batch, 1, 1, 1))).float()
    return x.clamp(-1.0, 1.0), y


def generator_batch(rng: np.random.Generator, batch: int, split: Optional[str] = "pretrain",
                    category_weights: Optional[Dict[str, float]] = None, caption_noise: float = 0.0):
    """Ground-truth renders of random prompts whose compositions belong to `split`: (images, prompts,
    think texts: the plan each render follows). `category_weights` (category -> share) draws the prompt
    categories in those proportions (uniform without). With `caption_noise` p, a share p of the images
    show a scene the caption gets wrong in one respect (world.miscaption); the plan always describes the
    image itself (a dense re-caption), so only plain-mode conditioning is noisy."""
    import torch

    from .plan import plan_from_placements

    probs = None
    if category_weights is not None:
        unknown = sorted(set(category_weights) - set(world.CATEGORIES))
        if unknown:
            raise PretrainError(f"category_weights: unknown categories {unknown}; categories are {world.CATEGORIES}")
        w = np.array([float(category_weights.get(c, 0.0)) for c in world.CATEGORIES])
        if (w < 0).any() or w.sum() <= 0:
            raise PretrainError(f"category_weights {category_weights} must be >= 0 and not all 0")
        probs = w / w.sum()
    imgs, prompts, plans = [], [], []
    for _ in range(batch):
        category = None if probs is None else world.CATEGORIES[int(rng.choice(len(probs), p=probs))]
        p = world.random_prompt(rng, category=category, split=split)
        spec = world.miscaption(p.spec, rng) if caption_noise and rng.random() < caption_noise else p.spec
        img, _, placed = world.render(spec, rng)
        imgs.append(img)
        prompts.append(p.text)
        plans.append(plan_from_placements(placed).text())
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x, prompts, plans


# ------------------------------------------------------------------------------------------- training

Log = Callable[[str], None]


def _default_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_perception(cfg: Dict[str, Any]):
    from .nets import PerceptionNet

    return PerceptionNet(width=int(cfg["width"]))


def build_generator(cfg: Dict[str, Any]):
    from .nets import FlowUNet

    return FlowUNet(channels=tuple(cfg["channels"]), text_dim=int(cfg["text_dim"]),
                    text_layers=int(cfg["text_layers"]), plan_channels=int(cfg.get("plan_channels", 0)))


def train_perception(cfg: Dict[str, Any], seed: int, log: Log = _default_log):
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    net = build_perception(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=1e-4)
    steps = int(cfg["steps"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=steps, pct_start=0.1)
    t0 = time.perf_counter()
    for step in range(steps):
        x, y = perception_batch(rng, int(cfg["batch"]))
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"  perception step {step + 1}/{steps}  loss {loss.item():.4f}  {time.perf_counter() - t0:.0f}s")
    return net.eval()


def generator_step_inputs(cfg: Dict[str, Any], rng: np.random.Generator, gen, split: str = "pretrain"):
    """One pretraining step's inputs (x0, prompts, layout, t, eps): ground-truth renders of `split`'s
    compositions, the prompt dropped for a share p_uncond (CFG: the null prompt, and no plan), the plan kept
    for the rest but a share p_plan_drop (plain mode); flow times and noise from the torch generator `gen`."""
    import torch

    from ..training.loss import sample_timesteps
    from .plan import layouts

    think = bool(cfg.get("plan_channels", 0))
    x0, prompts, plans = generator_batch(rng, int(cfg["batch"]), split, category_weights=cfg.get("category_weights"),
                                        caption_noise=float(cfg.get("caption_noise", 0.0)))
    drop = rng.random(len(prompts)) < cfg["p_uncond"]
    keep_plan = think & ~drop & (rng.random(len(prompts)) >= float(cfg.get("p_plan_drop", 1.0)))
    prompts = ["" if d else p for p, d in zip(prompts, drop)]
    layout = layouts([p if k else None for p, k in zip(plans, keep_plan)]) if think else None
    t = sample_timesteps(x0.shape[0], 1.0, gen)
    eps = torch.randn(x0.shape, generator=gen)
    return x0, prompts, layout, t, eps


def flow_matching_step(net, opt, x0, prompts, layout, t, eps, memory_format=None):
    """One optimiser step of rectified flow (velocity eps - x0 at x_t = (1-t) x0 + t eps, clip 1.0); returns
    the loss. x_t is laid out in `memory_format` (default channels-last: oneDNN's convolutions, forward and
    backward 2/3 of a step, run faster on CPU in NHWC, benchmarks/bench_pretrain_step.py); the arithmetic is
    the same in any format, only the summation order differs."""
    import torch

    tt = t[:, None, None, None]
    xt = ((1 - tt) * x0 + tt * eps).contiguous(memory_format=memory_format or torch.channels_last)
    v = net(xt, t, net.encode_text(prompts, x0.device), layout)
    loss = (v - (eps - x0)).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    return loss


def generator_optimizer(net, lr: float):
    """The generator's pretraining optimiser (also what benchmarks/toy_clean_continuation.py continues with)."""
    import torch

    return torch.optim.AdamW(net.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)


def train_generator(cfg: Dict[str, Any], seed: int, log: Log = _default_log):
    """Rectified flow on ground-truth renders of the training compositions; returns the EMA network."""
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 2])
    gen = torch.Generator().manual_seed(seed)
    net = build_generator(cfg).to(memory_format=torch.channels_last)       # see flow_matching_step
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(float(cfg["ema"])))
    opt = generator_optimizer(net, float(cfg["lr"]))
    steps, warm = int(cfg["steps"]), int(cfg["warmup"])
    schedule = cfg.get("schedule", "constant")
    if schedule not in ("constant", "cosine"):
        raise PretrainError(f"generator schedule {schedule!r} is not constant or cosine")

    def factor(s: int) -> float:
        # linear warm-up; then constant, or a cosine decay to 5% of the peak at the last step
        f = min(1.0, (s + 1) / max(1, warm))
        if schedule == "cosine":
            f *= 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, s / steps)))
        return f

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    t0 = time.perf_counter()
    for step in range(steps):
        x0, prompts, layout, t, eps = generator_step_inputs(cfg, rng, gen)
        loss = flow_matching_step(net, opt, x0, prompts, layout, t, eps)
        sched.step()
        ema.update_parameters(net)
        if (step + 1) % max(1, steps // 20) == 0:
            log(f"  generator step {step + 1}/{steps}  loss {loss.item():.4f}  {time.perf_counter() - t0:.0f}s")
    return ema.module.eval()


def perception_check(net, n: int = 200, seed: int = 12345) -> Dict[str, float]:
    """How well the trained understanding side reads fresh ground-truth renders of validation prompts:
    the share of global judgments that are positive for the image's own prompt and negative for another
    validation prompt (through the judge's full text path: instruction in, parsed score out)."""
    from ..judging.parse import parse_global
    from ..judging.templates import load_templates
    from .judge import ToyUnderstanding

    und = ToyUnderstanding(net)
    tpl = load_templates()
    rng = np.random.default_rng(seed)
    prompts = list(world.prompt_set("val"))
    order = rng.permutation(len(prompts))[:n]
    picked = [prompts[i] for i in order]
    others = picked[1:] + picked[:1]
    images = [world.render(p.spec, rng)[0] for p in picked]
    own = und.answer(images, [tpl.render_global(p.text) for p in picked])
    other = und.answer(images, [tpl.render_global(q.text) for q in others])
    pos = [bool((parse_global(r.text).score or 0) > 0) for r in own]
    neg = [bool((parse_global(r.text).score or 0) < 0) or p.spec == q.spec
           for r, p, q in zip(other, picked, others)]
    return {"own_prompt_positive": float(np.mean(pos)), "other_prompt_negative": float(np.mean(neg)), "images": n}


def pretrain(preset: str, out_dir: Path, log: Log = _default_log) -> Dict[str, Any]:
    """Build the preset's base model into `out_dir` (created); returns its meta."""
    import torch

    from .nets import count_parameters

    cfg = preset_config(preset)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed = int(cfg["seed"])
    log(f"toy pretraining, preset {preset} (hash {config_hash(preset)}), seed {seed}, torch threads "
        f"{torch.get_num_threads()}")
    t0 = time.perf_counter()
    perception = train_perception(cfg["perception"], seed, log)
    t1 = time.perf_counter()
    generator = train_generator(cfg["generator"], seed, log)
    t2 = time.perf_counter()
    check = perception_check(perception)
    log(f"  understanding on fresh renders: {check}")
    torch.save(perception.state_dict(), out_dir / "perception.pt")
    torch.save(generator.state_dict(), out_dir / "generator.pt")
    meta = {"preset": preset, "hash": config_hash(preset), "recipe_version": RECIPE_VERSION, "config": cfg,
            "phases_s": {"perception": round(t1 - t0, 1), "generator": round(t2 - t1, 1)},
            "parameters": {"generator": count_parameters(generator), "perception": count_parameters(perception)},
            "understanding_on_renders": check,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"toy pretraining done in {t2 - t0:.0f}s: {out_dir}")
    return meta


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_base(preset: str, *, log: Log = _default_log, rebuild: bool = False) -> Path:
    """The directory of the preset's base checkpoint (cache, shipped asset, or pretrained now)."""
    import torch

    target = cache_dir(preset)
    if not rebuild:
        if is_complete(target):
            return target
        shipped = shipped_dir(preset)
        if shipped is not None and is_complete(shipped):
            return shipped
    with _file_lock(target.parent / f".{target.name}.lock"):
        if is_complete(target) and not rebuild:      # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        threads = torch.get_num_threads()
        torch.set_num_threads(min(2, threads))
        try:
            pretrain(preset, tmp, log)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            torch.set_num_threads(threads)
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


def ship(preset: str, src: Path, benchmark: Dict[str, Any], dest_root: Optional[Path] = None) -> Path:
    """Copy a built base checkpoint into the package (`srum_jobs/assets/toy/<preset>/`), weights in float16
    to stay small, with its measured benchmark in meta.json (the test compares a rebuild against it)."""
    import torch

    meta = read_meta(src)
    if meta["hash"] != config_hash(preset):
        raise PretrainError(f"{src} was built by another recipe ({meta['hash']}) than preset {preset} "
                            f"({config_hash(preset)}); rebuild it first")
    dest = Path(dest_root or ASSETS) / preset
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("generator.pt", "perception.pt"):
        state = torch.load(Path(src) / name, map_location="cpu", weights_only=True)
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, dest / name)
    meta = {**meta, "benchmark": benchmark, "weights_dtype": "float16"}
    (dest / "meta.json").write_text(json.dumps(meta, indent=1))
    return dest


def read_meta(d: Path) -> Dict[str, Any]:
    try:
        return json.loads((Path(d) / "meta.json").read_text())
    except FileNotFoundError:
        raise PretrainError(f"{d} is not a toy checkpoint directory (no meta.json)") from None


def _load(d: Path, part: str, build: Callable[[Dict[str, Any]], Any]):
    import torch

    net = build(read_meta(d)["config"][part])
    state = torch.load(Path(d) / f"{part}.pt", map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.items()})      # shipped weights are float16
    return net.eval()


def load_perception(d: Path):
    return _load(d, "perception", build_perception)


def load_generator(d: Path):
    return _load(d, "generator", build_generator)
