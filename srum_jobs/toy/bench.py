"""`srum bench toy`: base vs SFT vs SRUM (the paper's loss and this project's debiased one), the paper's
baselines and ablations, on held-out toy prompts, side by side, in plain and think mode.

One round per seed, every method from the same base weights, on the same self-generated candidates:
  1. the base model generates K candidates for each prompt of the `train` split (compositions
     pretraining never saw), in think mode (the paper's section 3.1: the understanding side writes a
     plan, the generator draws from it; the plan is kept with the record);
  2. the project's judging pipeline (judging/pipeline.py, in-process transport over ToyJudgeBackend and
     ComponentsBoxer) judges them into reward records (boxes the verifier rejects are judged too and
     marked, so each method's reward config decides whether they count);
  3. each method fine-tunes the base generator with the one shared SRUM step (training/optim.py
     train_step: the same loss, reward maps and dropout the torchrun train stage uses), on the records its
     reward config's training filter keeps, for the same number of steps; think records are trained
     with their plan or, for `plan_dropout` of them, without it, so both modes learn (METHODS below);
  4. every method is evaluated on the eval prompts with `eval_samples` images per prompt (the same seeds
     for every method within a seed) by the rule-based evaluator; the base and SRUM/SFT also in think
     mode; the judge's global judgments of the base samples against the evaluator give the judge
     agreement; bias diagnostics (diagnostics.py) come with every row.
Each method's interval is a paired bootstrap over eval prompts of (method - base) (stats.py). Reward
maps come from rewards.py, the loss and step from training/; nothing of the method is re-implemented
here. The round's settings (ROUNDS) were chosen on the `val` split, never on eval prompts.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import math
import sys
import time
import typing
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..storage import png_bytes
from . import world

Log = Callable[[str], None]

# The JSON contract's methods, in table order: plain-mode rows, then think-mode rows.
BASE_METHODS: Tuple[str, ...] = ("base", "sft", "sft_filtered", "sample_reward", "srum_paper", "srum_debiased",
                                 "srum")
ABLATIONS: Tuple[str, ...] = ("srum_no_global", "srum_no_ref", "srum_no_anchor", "srum_sparse", "srum_signed")
EXTRA_METHODS: Tuple[str, ...] = ("srum_paper_anchor",)
LAMBDA_SWEEP: Tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
# trained methods also sampled in think mode (rows "<method>_think"); base_think is always there
THINK_METHODS: Tuple[str, ...] = ("sft", "srum")


@dataclass(frozen=True)
class RoundConfig:
    """One self-rewarding round of the bench, and the default SRUM recipe (`srum`)."""

    train_prompts: Optional[int] = None   # None: the whole train split (balanced prefix otherwise)
    candidates: int = 4                   # K samples per prompt
    think: bool = True                    # candidates in think mode
    planner: str = "tidy"                 # how think mode lays out its plans (plan.PLANNERS)
    euler_steps: int = 10
    guidance: float = 2.0
    epochs: float = 1.5                   # passes over the candidates; every method takes the same steps
    batch: int = 32
    lr: float = 1e-4
    adam_eps: float = 1e-15               # the paper's AdamW epsilon (training.eps)
    beta2: float = 0.95                   # the paper's AdamW beta2 (training.betas[1])
    warmup: int = 10
    ema: Optional[float] = None           # EMA decay of the fine-tuned weights (evaluated with EMA when set)
    timestep_shift: Optional[float] = None    # None: the model's own (the toy's 1.0)
    prompt_dropout: Optional[float] = None    # None: the model's pretraining rate
    plan_dropout: float = 0.5
    max_regions: int = 5
    verify_boxes: bool = True
    # the default recipe (`srum`); `srum_paper` is the paper's whatever these say
    weighting: str = "debiased"
    mode: str = "corrective"
    reference: str = "base"
    lambda_c: float = 0.5
    push_away: float = 0.5
    dense_max_t: float = 1.0
    score_unverified: bool = True
    min_global: Optional[float] = None    # reward.min_global_score of the default recipe
    eval_per_category: Optional[int] = None   # None: the whole split
    eval_samples: int = 4
    diagnostics: bool = True
    # self-rewarding rounds: round r > 1 generates and judges new candidates with the weights round r - 1
    # trained (each method from its own), then fine-tunes those weights further; earlier rounds are
    # reported as rows `<method>_round<r>`. The reference/anchor stays the original base.
    rounds: int = 1

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"round setting rounds must be >= 1, got {self.rounds}")

    def steps(self, n_candidates: int) -> int:
        return max(1, int(round(self.epochs * n_candidates / self.batch)))


# The settings `srum bench toy` uses. `demo` was chosen on the validation split (never on eval prompts).
ROUNDS: Dict[str, RoundConfig] = {
    "test": RoundConfig(train_prompts=5, candidates=2, euler_steps=2, epochs=2.0, batch=4, lr=1e-4, warmup=1,
                        eval_per_category=1, eval_samples=1, diagnostics=True),
    "demo": RoundConfig(),
    # the same round, unchanged, on the base pretrained with web-like captions (pretrain.PRESETS)
    "demo-noisy": RoundConfig(),
}


def method_configs(method: str, cfg: RoundConfig):
    """(RewardConfig, TrainingConfig overrides) of a method.

      sft               uniform weights on every candidate (no judge filter): plain flow matching
      gt                not a method: sft's training on ground-truth renders of the same prompts (with
                        the plans they follow), what perfect candidates would give
      sft_filtered      the same on the candidates the judge scored above 0 (rejection sampling)
      sample_reward     the paper's loss with the global score as one weight per image (paper Fig. 4)
      srum_paper        the paper's loss: reference map, global factor, lambda_c reference on the sample
      srum_paper_anchor the paper's loss with the reference term on the frozen base's velocity
      srum_debiased     the debiased weighting (training/loss.py) with the round's other settings
      srum              the round's default recipe (RoundConfig: weighting, mode, reference, ...)
      srum_no_global / srum_no_ref / srum_sparse / srum_signed   the default recipe without the global
                        factor / without the reference term / with the 0-1 whole-image reward / with the
                        signed map (dense praise) instead of its own map
      srum_no_anchor    the default recipe with no frozen base anywhere (reward.anchor self, no reference
                        term): its gradient is the map as per-token loss weights (training/loss.py); with
                        the debiased weighting srum_no_ref only rescales rho, so this is the anchor's ablation
      srum_lambda_<x>   the default recipe with lambda_c = x (the paper's Fig. 3 sweep)
    """
    from ..config import RewardConfig

    common = dict(max_regions=cfg.max_regions)
    paper = dict(common, mode="reference", weighting="paper", reference="sample", lambda_c=0.5)
    recipe = dict(common, mode=cfg.mode, weighting=cfg.weighting, reference=cfg.reference, lambda_c=cfg.lambda_c,
                  push_away=cfg.push_away, dense_max_t=cfg.dense_max_t, score_unverified=cfg.score_unverified,
                  min_global_score=cfg.min_global)
    sft = dict(common, mode="sample", weighting="paper", use_global=False, lambda_c=0.0, drop_zero_global=False)
    train: Dict[str, Any] = {}
    if method == "sft":
        r = sft
    elif method == "gt":
        r = sft                    # a reference row: the same training on ground-truth renders (Bench.ground_truth)
    elif method == "sft_filtered":
        r = dict(sft, min_global_score=0.0)
    elif method == "sample_reward":
        r = dict(paper, mode="sample")
    elif method == "srum_paper":
        r = paper
    elif method == "srum_paper_anchor":
        r = dict(paper, reference="base")
    elif method == "srum_debiased":
        r = dict(recipe, weighting="debiased", mode="corrective" if cfg.weighting != "debiased" else cfg.mode)
    elif method == "srum":
        r = recipe
    elif method == "srum_no_global":
        r = dict(recipe, use_global=False)
    elif method == "srum_no_ref":
        r = recipe
        train["use_reference"] = False
    elif method == "srum_no_anchor":
        r = dict(recipe, anchor="self")        # no base anywhere: not in the target, not in a reference term
        train["use_reference"] = False
    elif method == "srum_sparse":
        r = dict(recipe, mode="sparse")
    elif method == "srum_signed":
        r = dict(recipe, mode="signed")
    elif method.startswith("srum_lambda_"):
        try:
            lam = float(method[len("srum_lambda_"):])
        except ValueError:
            raise ValueError(f"bench method {method!r}: lambda_c {method[len('srum_lambda_'):]!r} is not a number") from None
        r = dict(recipe, lambda_c=lam)
    else:
        raise ValueError(f"unknown bench method {method!r}")
    return RewardConfig(**r), train


def _balanced(prompts: Sequence[Any], n_total: Optional[int] = None, per_category: Optional[int] = None) -> List[Any]:
    """The first prompts of each category, interleaved, so any prefix is balanced."""
    by: Dict[str, List[Any]] = defaultdict(list)
    for p in prompts:
        by[p.category].append(p)
    cats = [c for c in world.CATEGORIES if c in by]
    if per_category is None and n_total is not None:
        per_category = math.ceil(n_total / len(cats))
    out = []
    for i in range(max(len(v) for v in by.values())):
        for c in cats:
            if i < len(by[c]) and (per_category is None or i < per_category):
                out.append(by[c][i])
    return out[:n_total] if n_total is not None else out


def _seed_of(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "little") & 0x7FFFFFFF


def _later(round_index: int) -> Tuple[int, ...]:
    """The extra seed part of a round: none in round 1 (its seeds, and so cached candidates, stay what they
    always were), the round's number in later rounds (new noise)."""
    return () if round_index == 1 else (round_index,)


@dataclass
class Evaluation:
    """One (weights, mode) evaluation: verdicts per (prompt index, sample)."""

    oks: List[bool]
    prompts: List[Any]          # the prompt of each verdict
    diagnostics: Dict[str, float]
    agreement: Optional[List[bool]] = None   # judge agrees with the evaluator, per image (when asked)

    def scores(self) -> Dict[str, Any]:
        per: Dict[str, List[bool]] = defaultdict(list)
        for ok, p in zip(self.oks, self.prompts):
            per[p.category].append(ok)
        return {"overall": float(np.mean(self.oks)),
                "per_category": {c: float(np.mean(per[c])) for c in world.CATEGORIES if c in per}}


class Bench:
    """The shared state of a bench: the base model, a frozen copy of it, its judge, the prompts."""

    def __init__(self, preset: str, round_cfg: RoundConfig, *, eval_split: str = "eval", log: Optional[Log] = None,
                 checkpoint: Optional[str] = None, cache_dir: Optional[Path] = None):
        from ..judging.inprocess import InProcessTransport
        from .components import ComponentsBoxer
        from .judge_backend import ToyJudgeBackend
        from .model import ToyModel, load_toy_model

        self.preset, self.cfg, self.log = preset, round_cfg, log or (lambda m: None)
        self.model = load_toy_model({"preset": preset, "planner": round_cfg.planner}, checkpoint=checkpoint)
        self.base_state = copy.deepcopy(self.model.state_dict())
        frozen = copy.deepcopy(self.model.generator).requires_grad_(False)
        self.reference = ToyModel(frozen, self.model.understanding.perception.net, checkpoint=self.model.checkpoint,
                                  planner=round_cfg.planner)
        self.judge_backend = ToyJudgeBackend({"checkpoint": str(self.model.checkpoint)})
        self.transport = InProcessTransport(self.judge_backend, ComponentsBoxer({}), max_batch=64)
        self.eval_prompts = _balanced(world.toy_prompts(eval_split), per_category=round_cfg.eval_per_category)
        self.train_prompts = _balanced(world.toy_prompts("train"), n_total=round_cfg.train_prompts)
        self.phases: Dict[str, float] = defaultdict(float)
        self.cache_dir = Path(cache_dir) if cache_dir else None

    # ----------------------------------------------------------------------------------- helpers
    def _timed(self, phase: str):
        bench = self

        class _T:
            def __enter__(self):
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                bench.phases[phase] += time.perf_counter() - self.t0
        return _T()

    def judge_config(self):
        from ..config import JudgeConfig

        return JudgeConfig(verify_boxes=self.cfg.verify_boxes, max_in_flight=256)

    def training_config(self, method: str, seed: int, steps: int):
        from ..config import TrainingConfig

        c = self.cfg
        _, overrides = method_configs(method, c)
        return TrainingConfig(**{**dict(lr=c.lr, eps=c.adam_eps, betas=[0.9, c.beta2], warmup_steps=c.warmup,
                                        steps=steps, batch_size=c.batch,
                                        timestep_shift=c.timestep_shift, ema=c.ema, seed=seed,
                                        prompt_dropout=c.prompt_dropout, plan_dropout=c.plan_dropout),
                                 **overrides})

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], think: bool = False) -> List[Any]:
        return self.model.generate(list(prompts), list(seeds), steps=self.cfg.euler_steps, guidance=self.cfg.guidance,
                                   think=think)

    # -------------------------------------------------------------------------------------- eval
    def evaluate(self, seed: int, think: bool = False, judge_agreement: bool = False) -> Evaluation:
        """Benchmark verdicts of the model's current weights on the eval prompts (and diagnostics; and the
        judge's agreement with the evaluator on the same images when asked)."""
        from .diagnostics import image_diagnostics, x0_mass_t1
        from .evaluator import evaluate_image

        items = [(p, s) for p in self.eval_prompts for s in range(self.cfg.eval_samples)]
        seeds = [_seed_of("eval", seed, p.index, s) for p, s in items]
        with self._timed("evaluate"):
            images = [g.image for g in self.generate([p.text for p, _ in items], seeds, think)]
            oks = [bool(evaluate_image(img, p.text)) for img, (p, _) in zip(images, items)]
        diag: Dict[str, float] = {}
        if self.cfg.diagnostics:
            with self._timed("diagnostics"):
                diag = image_diagnostics(images, [p.text for p, _ in items])
                first = [(p, sd) for (p, s), sd in zip(items, seeds) if s == 0]
                diag["x0_mass_t1"] = x0_mass_t1(self.model, [p.text for p, _ in first], [sd for _, sd in first],
                                                guidance=self.cfg.guidance, think=think)
        agree = self.agreement(images, [p.text for p, _ in items], oks) if judge_agreement else None
        return Evaluation(oks, [p for p, _ in items], diag, agree)

    def agreement(self, images: Sequence[Any], prompts: Sequence[str], oks: Sequence[bool]) -> List[bool]:
        """Does the judge's global judgment (through the judging pipeline) say good exactly when the
        evaluator does? Unparsed judgments count as disagreement."""
        from ..judging.pipeline import judge_global

        judge_cfg = self.judge_config()

        async def go():
            return await asyncio.gather(*[judge_global(self.transport, png_bytes(img), p, judge_cfg,
                                                       width=32, height=32)
                                          for img, p in zip(images, prompts)])
        with self._timed("judge"):
            outs = asyncio.run(go())
        return [bool(g.parsed and ((g.score > 0) == ok)) for g, ok in zip(outs, oks)]

    # ---------------------------------------------------------------------------------- the round
    def _cache_path(self, seed: int, weights: Optional[str] = None) -> Optional[Path]:
        if self.cache_dir is None:
            return None
        c = self.cfg
        later = {} if weights is None else {"weights": weights}   # round 1's key is unchanged
        key = json.dumps({"ckpt": str(self.model.checkpoint), **later, "prompts": [p.text for p in self.train_prompts],
                          "k": c.candidates, "think": c.think, "planner": c.planner, "steps": c.euler_steps, "g": c.guidance,
                          "regions": c.max_regions, "verify": c.verify_boxes, "seed": seed}, sort_keys=True)
        return self.cache_dir / f"candidates-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def candidates(self, seed: int, start: Optional[Dict[str, Any]] = None, round_index: int = 1):
        """K candidates per training prompt, judged: (images uint8 (N, 32, 32, 3), records), from the base
        weights or, in a later round, from `start` (a state dict a previous round trained). Judged with
        reward.score_unverified, so every method's own config can leave rejected boxes out
        (rewards.reward_map_from_record) or score them."""
        from ..config import RewardConfig
        from ..judging.pipeline import CandidateItem, judge_many
        from ..records import RewardRecord, dump_records, read_records

        weights = None if start is None else state_digest(start)
        cache = self._cache_path(seed, weights)
        if cache is not None and (cache / "records.jsonl").is_file():
            images = np.load(cache / "images.npy")
            records = list(read_records((cache / "records.jsonl").read_text(), RewardRecord,
                                        source=str(cache / "records.jsonl")))
            return images, records
        self.model.load_state_dict(self.base_state if start is None else start)
        items = [(p, k) for p in self.train_prompts for k in range(self.cfg.candidates)]
        seeds = [_seed_of("cand", seed, *_later(round_index), p.index, k) for p, k in items]
        with self._timed("generate"):
            gens = self.generate([p.text for p, _ in items], seeds, think=self.cfg.think)
        cands = [CandidateItem(png_bytes(g.image), p, k, s, f"bench/{seed}/{p.index}-{k}.png", 32, 32,
                               think_text=g.think_text)
                 for g, (p, k), s in zip(gens, items, seeds)]
        with self._timed("judge"):
            records = asyncio.run(judge_many(self.transport, cands, judge=self.judge_config(),
                                             reward=RewardConfig(max_regions=self.cfg.max_regions,
                                                                 score_unverified=True)))
        images = np.stack([world.to_array(g.image) for g in gens])
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            np.save(cache / "images.npy", images)
            (cache / "records.jsonl").write_text(dump_records(records))
        return images, records

    def ground_truth(self, seed: int):
        """Ground-truth renders in place of the candidates (one per candidate slot), as records with a
        perfect global score and the plan each render follows: the `gt` reference row's data."""
        from ..records import GlobalJudgment, RewardRecord
        from .plan import plan_from_placements

        images, records = [], []
        for p in self.train_prompts:
            for k in range(self.cfg.candidates):
                img, _, placed = world.render(world.parse_prompt(p.text),
                                              np.random.default_rng(_seed_of("gt", seed, p.index, k)))
                images.append(img)
                records.append(RewardRecord(
                    prompt_id=p.id, prompt=p.text, category=p.category, candidate_index=k, seed=0,
                    image_key=f"gt/{seed}/{p.index}-{k}.png", image_sha256="0" * 64, width=32, height=32,
                    global_judgment=GlobalJudgment(score=1.0, parsed=True),
                    think_text=plan_from_placements(placed).text() if self.cfg.think else None))
        return np.stack(images), records

    def finetune(self, method: str, seed: int, images: np.ndarray, records: Sequence[Any],
                 start: Optional[Dict[str, Any]] = None, round_index: int = 1) -> Dict[str, Any]:
        """Fine-tune the base generator (or `start`, the weights of a previous round) with `method` on the
        records its training filter keeps; leaves the result loaded. Every method takes the same number of
        steps (the round's epochs over all candidates); each round starts a fresh optimizer and warm-up."""
        import torch
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        from ..rewards import reward_map_from_record, training_filter
        from ..models.base import pixels_from_images
        from ..training.optim import build_optimizer, build_scheduler, needs_reference_model, train_step

        self.model.load_state_dict(self.base_state if start is None else start)
        rc, _ = method_configs(method, self.cfg)
        keep = [i for i, r in enumerate(records) if training_filter(r, rc)[0]]
        tc = self.training_config(method, seed, self.cfg.steps(len(records)))
        if not keep:   # nothing passes this method's filter: it trains nothing and stays the base
            self.log(f"seed {seed}: {method} keeps none of the {len(records)} records; its weights stay as they were")
            return {"records": 0, "steps": 0, "loss_first": float("nan"), "loss_last": float("nan")}
        recs = [records[i] for i in keep]
        pixels = pixels_from_images(images[keep])
        rmaps = [reward_map_from_record(r, rc) for r in recs]
        maps = torch.from_numpy(np.stack([m.pixels for m in rmaps]))
        alphas = torch.tensor([m.alpha for m in rmaps])
        prompts = [r.prompt for r in recs]
        plans = [r.think_text for r in recs]
        reference = self.reference if needs_reference_model(rc, tc) else None
        opt = build_optimizer(self.model.trainable_parameters(), tc)
        sched = build_scheduler(opt, tc)
        ema = (AveragedModel(self.model.generator, multi_avg_fn=get_ema_multi_avg_fn(tc.ema)) if tc.ema else None)
        # the same noise, timesteps and data order for every method of a seed that keeps the same records
        gen = torch.Generator().manual_seed(_seed_of("train", seed, *_later(round_index)))
        order_rng = np.random.default_rng(_seed_of("order", seed, *_later(round_index)))
        n = len(recs)
        order: List[int] = []
        losses = []
        with self._timed("train"):
            for _ in range(tc.steps):
                while len(order) < tc.batch_size:
                    order += order_rng.permutation(n).tolist()
                idx, order = order[: tc.batch_size], order[tc.batch_size:]
                out = train_step(self.model, opt, sched, pixels[idx], [prompts[i] for i in idx], maps[idx],
                                 alphas[idx], tc, rc.lambda_c, generator=gen, use_global=rc.use_global,
                                 plans=[plans[i] for i in idx], reward=rc, reference_model=reference)
                if ema is not None:
                    ema.update_parameters(self.model.generator)
                losses.append(out["loss"])
        if ema is not None:
            self.model.generator.load_state_dict(ema.module.state_dict())
        return {"records": n, "steps": tc.steps, "loss_first": float(np.mean(losses[:10])),
                "loss_last": float(np.mean(losses[-10:]))}


def state_digest(state: Dict[str, Any]) -> str:
    """A short digest of a state dict's tensors (names, shapes, values): the identity of trained weights."""
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def candidate_agreement(images: Sequence[Any], records: Sequence[Any]) -> Tuple[float, float]:
    """(benchmark accuracy of the candidates, share of candidates whose recorded global judgment is
    positive exactly when the evaluator accepts the image)."""
    from .evaluator import evaluate_image

    oks = [bool(evaluate_image(im, r.prompt)) for im, r in zip(images, records)]
    agree = [bool(r.global_judgment.parsed and ((r.global_judgment.score or 0.0) > 0) == ok)
             for ok, r in zip(oks, records)]
    return float(np.mean(oks)), float(np.mean(agree))


def _config_key(method: str, cfg: RoundConfig) -> str:
    """Methods with equal reward and training settings train the same weights: run them once."""
    rc, train = method_configs(method, cfg)
    return json.dumps({"reward": rc.model_dump(), "train": train, "data": "gt" if method == "gt" else "candidates"},
                      sort_keys=True)


def run_methods(bench: Bench, methods: Sequence[str], seeds: Sequence[int],
                think_methods: Sequence[str] = THINK_METHODS) -> Dict[str, Any]:
    """Every method for every seed. Returns {"evals": {row: [Evaluation per seed]}, "agreement": [...],
    "kept": {method: [records kept per seed]}, "candidates": [(accuracy, judge agreement) per seed],
    "train": {method: [finetune info per seed]}, "aliases": {method: method it shares weights with}}."""
    evals: Dict[str, List[Evaluation]] = defaultdict(list)
    agree: List[bool] = []
    kept: Dict[str, List[int]] = defaultdict(list)
    info: Dict[str, List[Dict[str, Any]]] = defaultdict(list)
    cand_stats: List[Tuple[float, float]] = []
    trained = [m for m in methods if m != "base"]
    aliases: Dict[str, str] = {}
    first_of: Dict[str, str] = {}
    for m in trained:
        key = _config_key(m, bench.cfg)
        if key in first_of:
            aliases[m] = first_of[key]
        else:
            first_of[key] = m
    think_of = set(think_methods) | {aliases[m] for m in think_methods if m in aliases}
    for seed in seeds:
        bench.model.load_state_dict(bench.base_state)
        evals["base"].append(bench.evaluate(seed, judge_agreement=True))
        agree += evals["base"][-1].agreement or []
        evals["base_think"].append(bench.evaluate(seed, think=True))
        bench.log(f"seed {seed}: base {evals['base'][-1].scores()['overall']:.3f}, "
                  f"base_think {evals['base_think'][-1].scores()['overall']:.3f}")
        if not trained:
            continue
        images, records = bench.candidates(seed)
        cand_stats.append(candidate_agreement(images, records))
        bench.log(f"seed {seed}: {len(records)} candidates judged (accuracy {cand_stats[-1][0]:.3f}, judge "
                  f"agreement {cand_stats[-1][1]:.3f})")
        for m in trained:
            if m in aliases:
                continue
            out = bench.finetune(m, seed, *(bench.ground_truth(seed) if m == "gt" else (images, records)))
            # later rounds: the method's own weights make and are judged on new candidates, then train on
            # (`gt` has no candidates of its own: one round)
            for r in range(2, (1 if m == "gt" else bench.cfg.rounds) + 1):
                evals[f"{m}_round{r - 1}"].append(bench.evaluate(seed))
                bench.log(f"seed {seed}: {m} after round {r - 1} {evals[f'{m}_round{r - 1}'][-1].scores()['overall']:.3f}")
                start = copy.deepcopy(bench.model.state_dict())
                r_images, r_records = bench.candidates(seed, start, round_index=r)
                acc, agr = candidate_agreement(r_images, r_records)
                bench.log(f"seed {seed}: {m} round {r}: {len(r_records)} candidates judged (accuracy {acc:.3f}, "
                          f"judge agreement {agr:.3f})")
                out = dict(bench.finetune(m, seed, r_images, r_records, start, round_index=r),
                           previous=out, candidates_accuracy=acc, candidates_judge_agreement=agr)
            info[m].append(out)
            kept[m].append(out["records"])
            evals[m].append(bench.evaluate(seed))
            line = f"seed {seed}: {m} {evals[m][-1].scores()['overall']:.3f}"
            if m in think_of:
                evals[f"{m}_think"].append(bench.evaluate(seed, think=True))
                line += f", think {evals[f'{m}_think'][-1].scores()['overall']:.3f}"
            bench.log(f"{line} ({out['records']} records, {out['steps']} steps, loss {out['loss_first']:.4f} -> "
                      f"{out['loss_last']:.4f})")
    for m, src in aliases.items():
        evals[m] = evals[src]
        kept[m] = kept[src]
        if m in think_methods:
            evals[f"{m}_think"] = evals[f"{src}_think"]
        for r in range(1, bench.cfg.rounds):
            if f"{src}_round{r}" in evals:
                evals[f"{m}_round{r}"] = evals[f"{src}_round{r}"]
    return {"evals": dict(evals), "agreement": agree, "kept": dict(kept), "candidates": cand_stats,
            "train": dict(info), "aliases": aliases}


def prompt_scores(runs: List[Evaluation]) -> Dict[int, Tuple[str, float]]:
    """eval prompt index -> (category, accuracy over every seed's and sample's verdicts on it)"""
    acc: Dict[int, List[bool]] = defaultdict(list)
    cat: Dict[int, str] = {}
    for ev in runs:
        for ok, p in zip(ev.oks, ev.prompts):
            acc[p.index].append(ok)
            cat[p.index] = p.category
    return {i: (cat[i], float(np.mean(v))) for i, v in acc.items()}


def paired_rows(a: Dict[int, Tuple[str, float]], b: Dict[int, Tuple[str, float]], *,
                resamples: int = 10000) -> Dict[str, Dict[str, Any]]:
    """row (category or overall) -> {"diff", "ci": [lo, hi]} of (a - b) in accuracy points: the paired
    bootstrap over the prompts both score (evaluation.stats.paired_bootstrap), categories weighted by size."""
    from ..evaluation.protocol import size_weighted
    from ..evaluation.stats import paired_bootstrap

    rows = paired_bootstrap(a, b, size_weighted, resamples=resamples, seed=len(a))["rows"]
    return {r: {"diff": None if v["diff"] is None else round(100.0 * v["diff"], 2),
                "ci": None if v["ci"] is None else [round(100.0 * v["ci"][0], 2), round(100.0 * v["ci"][1], 2)]}
            for r, v in rows.items()}


def pair_from_details(details: Dict[str, Any], a: str, b: str, *, resamples: int = 10000) -> Dict[str, Any]:
    """Any two rows of a finished bench paired afterwards, from its details file's per-prompt table (the
    same interval `summarise` gives against base and sft)."""
    table = details.get("per_prompt")
    if not table:
        raise ValueError("the details file has no per_prompt table (written by benches from this version on)")
    rows = table["accuracy"]
    for name in (a, b):
        if name not in rows:
            raise ValueError(f"row {name!r} is not in the details file; its rows are {', '.join(rows)}")
    scores = {name: {int(i): (cat, float(v)) for (i, cat), v in zip(table["prompts"], rows[name])} for name in (a, b)}
    return {"a": a, "b": b, "prompts": len(table["prompts"]),
            "rows": paired_rows(scores[a], scores[b], resamples=resamples)}


def per_prompt_table(evals: Dict[str, List[Evaluation]]) -> Dict[str, Any]:
    """Every row's accuracy per eval prompt (over seeds and samples), for the details file: any two rows
    can be paired afterwards (evaluation.stats.paired_bootstrap) without running the bench again."""
    rows = {m: prompt_scores(runs) for m, runs in evals.items() if runs}
    index = sorted(set().union(*rows.values())) if rows else []
    first = next(iter(rows.values()), {})
    return {"prompts": [[i, first[i][0]] for i in index],
            "accuracy": {m: [round(r[i][1], 4) for i in index] for m, r in rows.items()}}


def summarise(evals: Dict[str, List[Evaluation]], *, resamples: int = 10000) -> Dict[str, Any]:
    """Per row: mean over seeds of overall and per-category accuracy, the spread of the seeds' overall,
    the paired bootstrap 95% interval of (row - base) in accuracy points over eval prompts (overall and
    per category, evaluation.stats.paired_bootstrap; think rows also against base_think; trained rows
    also against the SFT row of their mode, `*_ci_vs_sft`) and the mean diagnostics."""
    def intervals(a: Dict[int, Tuple[str, float]], b: Dict[int, Tuple[str, float]]) -> Dict[str, Any]:
        return {r: v["ci"] for r, v in paired_rows(a, b, resamples=resamples).items()}

    base = prompt_scores(evals["base"]) if "base" in evals else None
    base_think = prompt_scores(evals["base_think"]) if "base_think" in evals else None
    # the paper's claim is SRUM > SFT, not only > base: every other trained row is also paired with the
    # SFT row of its mode (sft for plain rows, sft_think for think rows) on the same prompts
    sft = {mode: prompt_scores(evals[name]) for mode, name in (("plain", "sft"), ("think", "sft_think"))
           if evals.get(name)}
    out = {}
    for m, runs in evals.items():
        if not runs:
            continue
        scores = [r.scores() for r in runs]
        overall = [s["overall"] for s in scores]
        cats = [c for c in world.CATEGORIES if c in scores[0]["per_category"]]
        row: Dict[str, Any] = {
            "overall": float(np.mean(overall)),
            "overall_std": float(np.std(overall, ddof=1)) if len(overall) > 1 else 0.0,
            "per_category": {c: float(np.mean([s["per_category"][c] for s in scores])) for c in cats}}
        if base is not None:
            mine = prompt_scores(runs)
            ci = intervals(mine, base)
            row["overall_ci"] = ci.get("overall")
            row["per_category_ci"] = {c: ci.get(c) for c in cats}
            if m.endswith("_think") and base_think is not None and m != "base_think":
                row["overall_ci_vs_base_think"] = intervals(mine, base_think).get("overall")
            vs = sft.get("think" if m.endswith("_think") else "plain")
            if vs is not None and m not in ("base", "base_think", "sft", "sft_think"):
                ci = intervals(mine, vs)
                row["overall_ci_vs_sft"] = ci.get("overall")
                row["per_category_ci_vs_sft"] = {c: ci.get(c) for c in cats}
        if runs[0].diagnostics:
            row["diagnostics"] = {k: float(np.mean([r.diagnostics[k] for r in runs])) for k in runs[0].diagnostics}
        out[m] = row
    return out


def _seed_worker(args) -> Tuple[Dict[str, Any], Dict[str, float]]:
    """One process's share of the seeds (spawned by _run_parallel): (run_methods result, phase times)."""
    preset, cfg, eval_split, methods, seeds, cache_dir = args
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    bench = Bench(preset, cfg, eval_split=eval_split, cache_dir=cache_dir,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    bench.phases["load"] = time.perf_counter() - t0
    return run_methods(bench, methods, seeds), dict(bench.phases)


def _run_parallel(preset: str, cfg: RoundConfig, eval_split: str, methods: Sequence[str], seeds: int, workers: int,
                  cache_dir: Optional[Path], log: Optional[Log]):
    """run_methods over `seeds` seeds in `workers` processes; merged in seed order (phases summed)."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from ..entry import die_with_parent

    groups = [list(range(seeds))[i::workers] for i in range(min(workers, seeds))]
    (log or (lambda m: None))(f"running seeds {groups} in {len(groups)} processes")
    # workers die with the bench: a stopped bench must not leave its seeds running (they hold the CPU)
    with ProcessPoolExecutor(len(groups), mp_context=multiprocessing.get_context("spawn"),
                             initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        outs = list(pool.map(_seed_worker, [(preset, cfg, eval_split, list(methods), g, cache_dir) for g in groups]))
    by_seed: Dict[int, Tuple[int, int]] = {s: (gi, j) for gi, g in enumerate(groups) for j, s in enumerate(g)}
    merged: Dict[str, Any] = {"evals": defaultdict(list), "agreement": [], "kept": defaultdict(list),
                              "candidates": [], "train": defaultdict(list), "aliases": outs[0][0]["aliases"]}
    n_agree = len(outs[0][0]["agreement"]) // max(1, len(groups[0]))
    for s in range(seeds):
        gi, j = by_seed[s]
        res = outs[gi][0]
        for m, runs in res["evals"].items():
            merged["evals"][m].append(runs[j])
        merged["agreement"] += res["agreement"][j * n_agree:(j + 1) * n_agree]
        for m, ks in res["kept"].items():
            merged["kept"][m].append(ks[j])
        for m, infos in res["train"].items():
            merged["train"][m].append(infos[j])
        if res["candidates"]:
            merged["candidates"].append(res["candidates"][j])
    phases: Dict[str, float] = defaultdict(float)
    for _, ph in outs:
        for k, v in ph.items():
            phases[k] += v
    merged = {k: dict(v) if isinstance(v, defaultdict) else v for k, v in merged.items()}
    return merged, phases


def round_config(preset: str, overrides: Optional[Dict[str, str]] = None) -> RoundConfig:
    """A preset's round with fields overridden from text (`--set lr=3e-4`), each parsed as its field's type."""
    if preset not in ROUNDS:
        raise ValueError(f"unknown toy preset {preset!r}; presets are {', '.join(sorted(ROUNDS))}")
    cfg = ROUNDS[preset]
    fields = asdict(cfg)
    hints = typing.get_type_hints(RoundConfig)
    out: Dict[str, Any] = {}
    for key, text in (overrides or {}).items():
        if key not in fields:
            raise ValueError(f"unknown round setting {key!r}; settings are {', '.join(sorted(fields))}")
        hint = hints[key]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        kind = args[0] if optional else hint
        if optional and text.lower() in ("none", "null"):
            out[key] = None
        elif kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(f"round setting {key}={text!r} is not true or false")
            out[key] = text.lower() == "true"
        else:
            try:
                out[key] = kind(text)
            except ValueError:
                raise ValueError(f"round setting {key}={text!r} is not a {kind.__name__}") from None
    return replace(cfg, **out)


def bench_methods(cfg: RoundConfig, methods: Optional[Sequence[str]] = None, *, ablations: bool = False,
                  extra: bool = False, lambda_sweep: Sequence[float] = ()) -> List[str]:
    """The rows a bench runs, base first. `methods` replaces the default list; the ablation, anchor and
    lambda_c rows are added to either (asking for a sweep and getting none would drop a request silently).
    An unknown name fails here, before any work."""
    rows = list(BASE_METHODS) if methods is None else list(methods)
    rows += (list(ABLATIONS) if ablations else []) + (list(EXTRA_METHODS) if extra else [])
    rows += [f"srum_lambda_{lam:g}" for lam in lambda_sweep]
    for m in rows:
        if m != "base":
            method_configs(m, cfg)
    return ["base"] + list(dict.fromkeys(m for m in rows if m != "base"))


def run_bench(preset: str = "demo", *, ablations: bool = False, seeds: int = 3, log: Optional[Log] = None,
              round_cfg: Optional[RoundConfig] = None, eval_split: str = "eval", lambda_sweep: Sequence[float] = (),
              extra: bool = False, methods: Optional[Sequence[str]] = None, details: Optional[Dict[str, Any]] = None,
              cache_dir: Optional[Path] = None, workers: int = 1) -> Dict[str, Any]:
    """The bench result, shaped exactly as `srum bench toy --json` writes it. The rows: `bench_methods`
    (base and base_think always run). `details` (if given) receives the phase times, record counts,
    per-seed results and the round's settings. `cache_dir` keeps each seed's judged candidates,
    so settings that do not change them (training, reward) reuse them. `workers` > 1 runs the seeds in
    that many processes of one torch thread each (on a busy machine two single-threaded processes get
    far more done than one with two threads, whose threads wait for each other); results are identical
    up to float summation order."""
    from .diagnostics import reference_diagnostics

    if preset not in ROUNDS:
        raise ValueError(f"unknown toy preset {preset!r}; presets are {', '.join(sorted(ROUNDS))}")
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    cfg = round_cfg or ROUNDS[preset]
    methods = bench_methods(cfg, methods, ablations=ablations, extra=extra, lambda_sweep=lambda_sweep)
    t0 = time.perf_counter()
    if workers > 1 and seeds > 1:
        res, phases = _run_parallel(preset, cfg, eval_split, methods, seeds, workers, cache_dir, log)
        eval_prompts = _balanced(world.toy_prompts(eval_split), per_category=cfg.eval_per_category)
        n_train = len(_balanced(world.toy_prompts("train"), n_total=cfg.train_prompts))
    else:
        bench = Bench(preset, cfg, eval_split=eval_split, log=log, cache_dir=cache_dir)
        bench.phases["load"] = time.perf_counter() - t0
        res = run_methods(bench, methods, list(range(seeds)))
        phases, eval_prompts, n_train = bench.phases, bench.eval_prompts, len(bench.train_prompts)
    summary = summarise(res["evals"])
    earlier = [f"{m}_round{r}" for m in methods[1:] for r in range(1, cfg.rounds)]
    order = methods[:1] + ["base_think"] + earlier + methods[1:] + [f"{m}_think" for m in THINK_METHODS]
    result = {"preset": preset, "seeds": int(seeds), "split": eval_split,
              "judge_agreement": float(np.mean(res["agreement"])) if res["agreement"] else float("nan"),
              "methods": {m: summary[m] for m in order if m in summary}}
    if cfg.diagnostics:
        result["reference_diagnostics"] = reference_diagnostics([p.text for p in eval_prompts])
    if res["aliases"]:
        result["aliases"] = res["aliases"]
    if details is not None:
        details.update({"phases_s": {k: round(v, 1) for k, v in phases.items()}, "kept": res["kept"],
                        "candidates_accuracy_and_agreement": res["candidates"], "train": res["train"],
                        "round": asdict(cfg), "eval_items": len(eval_prompts) * cfg.eval_samples,
                        "train_prompts": n_train, "workers": workers,
                        "per_seed": {m: [e.scores() for e in runs] for m, runs in res["evals"].items()},
                        "per_prompt": per_prompt_table(res["evals"]),
                        "total_s": round(time.perf_counter() - t0, 1)})
    return result


def measure_base(checkpoint: Any, *, split: str = "eval", seed: int = 0, log: Optional[Log] = None,
                 samples: int = 1) -> Dict[str, Any]:
    """The premise of a base checkpoint: its generator's benchmark accuracy on a split in plain and think
    mode (`samples` images per prompt, the bench's eval seeds) and the judge's agreement with the
    evaluator on the plain images."""
    cfg = replace(ROUNDS["demo"], eval_samples=samples, diagnostics=False)
    bench = Bench("demo", cfg, eval_split=split, log=log, checkpoint=str(checkpoint))
    plain = bench.evaluate(seed, judge_agreement=True)
    think = bench.evaluate(seed, think=True) if bench.model.supports_think else None
    out = {"split": split, "items": len(plain.oks), "accuracy": plain.scores()["overall"],
           "per_category": plain.scores()["per_category"], "judge_agreement": float(np.mean(plain.agreement)),
           "euler_steps": cfg.euler_steps, "guidance": cfg.guidance,
           "seconds": {k: round(v, 1) for k, v in bench.phases.items()}}
    if think is not None:
        out["think"] = think.scores()
    return out


def format_table(result: Dict[str, Any]) -> str:
    cats = list(world.CATEGORIES)
    head = f"{'method':<20}{'overall':>16}{'95% CI vs base (pts)':>24}" + "".join(f"{c:>13}" for c in cats)
    lines = [f"toy bench, preset {result['preset']}, {result['seeds']} seed(s), {result.get('split', 'eval')} split, "
             f"judge agreement {result['judge_agreement']:.3f}", head]
    for m, r in result["methods"].items():
        cell = f"{r['overall']:.3f} +- {r['overall_std']:.3f}"
        ci = r.get("overall_ci")
        ci_cell = "" if m == "base" or ci is None else f"[{ci[0]:+.1f}, {ci[1]:+.1f}]"
        lines.append(f"{m:<20}{cell:>16}{ci_cell:>24}" +
                     "".join(f"{r['per_category'].get(c, float('nan')):>13.3f}" for c in cats))
    if any("diagnostics" in r for r in result["methods"].values()):
        keys = ("object_pixels", "extra_objects", "blobs", "x0_mass_t1")
        lines.append("")
        lines.append(f"{'diagnostics':<20}" + "".join(f"{k:>15}" for k in keys))
        ref = result.get("reference_diagnostics")
        if ref:
            lines.append(f"{'(ground truth)':<20}" + "".join(f"{ref[k]:>15.3f}" for k in keys))
        for m, r in result["methods"].items():
            d = r.get("diagnostics")
            if d:
                lines.append(f"{m:<20}" + "".join(f"{d[k]:>15.3f}" for k in keys))
    vs_sft = {m: r["overall_ci_vs_sft"] for m, r in result["methods"].items() if r.get("overall_ci_vs_sft")}
    if vs_sft:
        lines.append("")
        lines.append("95% CI vs sft of the same mode (pts): " +
                     ", ".join(f"{m} [{lo:+.1f}, {hi:+.1f}]" for m, (lo, hi) in vs_sft.items()))
    if result.get("aliases"):
        lines.append("same weights: " + ", ".join(f"{a} = {b}" for a, b in result["aliases"].items()))
    return "\n".join(lines)
