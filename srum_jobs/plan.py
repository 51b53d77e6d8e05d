"""`srum plan`: a capacity plan for a real SRUM round: wall time and GPU-hours per stage, how they scale
with generation shards, judge replicas and training nodes, and where the bottleneck moves.

Everything here is an ESTIMATE from arithmetic, not a measurement. Per-item costs are derived from the
model's size and token counts at a stated hardware utilisation (the derivation of every number is printed
next to it), unless the user measured them on their own hardware and passes them in a costs file
(`--costs FILE`, YAML or JSON; see COSTS_FILE_SECTIONS). Measured numbers always win.

The model of a round (stages run one after another, each may use every GPU of the budget):
  generate  K candidates per prompt on `g` generation GPUs (one Indexed-Job shard each), overlapped with
            boxing and judging on `j` judge replicas (Triton, one GPU each): wall = startup +
            overlap * max(generation work / g, judge work / j). Without --judge-replicas the judge runs in
            the budget and the plan splits it (g + j = N) to balance the two; with it, the judge is a shared
            deployment outside the budget and every budget GPU generates.
  rewards   CPU pods: reward maps, object-store bound.
  train     fixed global batch (training.batch_size x nproc_per_node x nnodes, as the experiment says)
            split over the nodes the budget allows (strong scaling, at most one sample per GPU): compute /
            GPUs + cross-node gradient sync per step + synchronous checkpoint uploads + startup.
  eval      base and trained model generate for the eval prompts; an evaluator model scores each image.
  report    CPU, a minute.

Only click (and the standard library already loaded with it) is imported at module level: `srum --help`
must stay fast; YAML, pydantic and the prompt loader are imported inside the functions that need them.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import click

# ----------------------------------------------------------------------------------------- defaults
# Hardware: one NVIDIA H100 SXM 80 GB per GPU. Peak dense BF16 989 TFLOP/s and HBM3 3.35 TB/s are NVIDIA's
# datasheet figures; the utilisations are ASSUMPTIONS typical of well-batched bf16 PyTorch code, not
# measurements of this project's code (none was possible here: no GPU).
HARDWARE: Dict[str, Any] = {
    "name": "H100-SXM-80GB",
    "bf16_tflops": 989.0,           # datasheet, dense (no sparsity)
    "hbm_tb_per_s": 3.35,           # datasheet
    "mfu_generate": 0.35,           # assumption: batched diffusion-transformer forward passes
    "mfu_prefill": 0.40,            # assumption: judge prompt prefill (one long forward)
    "mfu_train": 0.30,              # assumption: FSDP, bf16 autocast, activation checkpointing
    "decode_efficiency": 0.5,       # assumption: share of HBM bandwidth reached by autoregressive decoding
    "internode_gb_per_s": 50.0,     # assumption: one 400 Gb/s NIC per GPU (InfiniBand NDR / RoCE)
    "storage_gb_per_s": 1.0,        # assumption: one S3/MinIO multipart stream, per writer or reader
}

# Model profiles by `model.adapter`. BAGEL-7B-MoT: a Qwen2.5-7B-sized decoder (28 layers, hidden 3584)
# with two experts of ~7B each (understanding, generation): 14B parameters, ~7B active per token. Latent
# tokens: VAE downsampling 8 and 2x2 patches, so one token per 16x16 pixels (1024^2 -> 64 x 64 = 4,096; the
# `max_latent_size` model parameter caps the side). The paper's recipe trains the generation expert only.
MODEL_PROFILES: Dict[str, Dict[str, Any]] = {
    "bagel": {
        "total_params_b": 14.0,
        "active_params_b": 7.0,
        "trainable_params_b": 7.0,
        "layers": 28,
        "hidden": 3584,
        "pixels_per_token": 16,
        "weights_gb": 29.0,             # 14B bf16 plus the ViT and VAE, read at every pod start
        "judge_active_params_b": 7.0,   # self-judging: the same model's understanding expert
        "judge_weights_gb": 15.0,       # bytes read per decoding step: understanding expert + ViT, bf16
        "judge_image_tokens": 1024,     # assumption: ViT tokens of the judged image after resizing
        "judge_prompt_tokens": 350,     # assumption: rendered template + prompt + box list
    },
}

# Workload assumptions (all overridable in the costs file, section `workload`).
WORKLOAD: Dict[str, Any] = {
    "prompts": 6234,                # T2I-CompBench training prompts as the SRUM recipe uses them
    "eval_prompts": 2400,           # assumption; set prompts.eval_limit or --eval-prompts for yours
    "regions_per_image": None,      # None = reward.max_regions (the boxer always fills them: an upper bound)
    "judge_tokens_global": 80,      # assumption: "Score: s / Reason: one sentence"
    "judge_tokens_per_region": 50,  # assumption: one region block
    "judge_tokens_verify": 12,      # assumption: "Answer: yes / Object: noun"
    "think_tokens": 300,            # assumption: reasoning tokens per call (judge) or per image (generation)
    "judge_decode_batch": 8,        # assumption: requests decoded together (Triton dynamic batching)
    "evaluator_calls_per_image": 1,
    "sam_postprocess_s": 0.4,       # assumption: mask NMS / box extraction per image, mostly CPU-bound
}

OVERHEADS: Dict[str, Any] = {
    "container_start_s": 60.0,      # assumption: image already on the node, scheduling + Python start
    "overlap_factor": 1.1,          # generation/judging overlap: the pipeline issue's target is < 1.15
    "rewards_s_per_record": 0.05,   # assumption: ~3 object-store round trips of ~15 ms per record
    "report_s": 60.0,
}

# Per-item costs a user can measure and give in the costs file's `measured` section (seconds).
MEASURED_KEYS = {
    "generate_s_per_image": "GPU-seconds to generate one candidate (think text included)",
    "box_s_per_image": "GPU-seconds of the boxer per image",
    "judge_s_per_call": "GPU-seconds per judge call, averaged over global / regions / verify calls",
    "evaluator_s_per_call": "GPU-seconds per evaluator call in the eval stage",
    "train_s_per_sample": "GPU-seconds of forward + backward per training sample",
    "rewards_s_per_record": "CPU-seconds per reward record (map + storage)",
    "checkpoint_gb": "size of one training checkpoint",
    "pod_startup_s": "seconds from pod creation to the first item (pull, weights load)",
}

COSTS_FILE_SECTIONS = {"hardware": HARDWARE, "model": MODEL_PROFILES["bagel"], "workload": WORKLOAD,
                       "overheads": OVERHEADS, "measured": MEASURED_KEYS}

# Keys that may be zero (the rest must be > 0); fractions must also be <= 1.
_MAY_BE_ZERO = {"container_start_s", "pod_startup_s", "think_tokens", "sam_postprocess_s", "report_s",
                "judge_tokens_verify", "judge_tokens_per_region", "regions_per_image", "evaluator_calls_per_image",
                "rewards_s_per_record", "box_s_per_image"}
_FRACTIONS = {"mfu_generate", "mfu_prefill", "mfu_train", "decode_efficiency"}
_INTEGERS = {"prompts", "eval_prompts", "layers", "pixels_per_token", "judge_decode_batch"}


class PlanError(ValueError):
    """A costs file or plan request that cannot be used; the message names the file and the key."""


# --------------------------------------------------------------------------------------- costs file


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

        kind, parse, errors = "YAML", yaml.safe_load, (yaml.YAMLError, ValueError, RecursionError)
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


# ------------------------------------------------------------------------------------ derivations


class Cost(NamedTuple):
    value: float
    how: str                        # how the number was obtained: "measured" or the derivation


def _fmt_num(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1e4 else f"{x:.2e}"


def derive_costs(exp: Any, costs: Dict[str, Dict[str, Any]]) -> Tuple[Dict[str, Cost], Dict[str, Any]]:
    """Per-item costs (seconds, GB) with their derivation, and the merged assumptions used."""
    adapter = exp.model.adapter
    measured = costs.get("measured", {})
    hw = {**HARDWARE, **costs.get("hardware", {})}
    wl = {**WORKLOAD, **costs.get("workload", {})}
    ov = {**OVERHEADS, **costs.get("overheads", {})}
    base_profile = MODEL_PROFILES.get(adapter)
    if base_profile is None:
        # every derived number (checkpoint size, startup, token counts) needs the model's shape
        missing = [k for k in MODEL_PROFILES["bagel"] if k not in costs.get("model", {})]
        if missing:
            raise PlanError(f"no built-in cost profile for model.adapter {adapter!r} (built in: "
                            f"{', '.join(MODEL_PROFILES)}); give a costs file whose `model` section sets "
                            f"{', '.join(missing)}")
    prof = {**(base_profile or {}), **costs.get("model", {})}

    peak = hw["bf16_tflops"] * 1e12
    g = exp.generation
    side = max(1, g.resolution // int(prof["pixels_per_token"]))
    cap = exp.model.params.get("max_latent_size") if isinstance(exp.model.params, dict) else None
    if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0:
        side = min(side, cap)
    tokens = side * side
    P = prof["active_params_b"] * 1e9
    passes = 2 if g.guidance > 1.0 else 1   # classifier-free guidance: conditional + unconditional pass
    attn = 4.0 * prof["layers"] * tokens ** 2 * prof["hidden"]
    flops_pass = 2.0 * P * tokens + attn
    decode_step_gen = prof["weights_gb"] * 1e9 / 2 / (hw["hbm_tb_per_s"] * 1e12 * hw["decode_efficiency"])
    out: Dict[str, Cost] = {}

    def put(key: str, value: float, how: str) -> None:
        out[key] = Cost(measured[key], "measured (costs file)") if key in measured else Cost(value, how)

    gen = g.steps * passes * flops_pass / (peak * hw["mfu_generate"])
    how = (f"{g.steps} steps x {passes} pass(es) x (2 x {_fmt_num(P)} params x {tokens:,} latent tokens + attention "
           f"4 x {prof['layers']} layers x tokens^2 x {prof['hidden']}) / ({hw['bf16_tflops']:g} TFLOP/s x "
           f"{hw['mfu_generate']:g} MFU)")
    if g.think:
        gen += wl["think_tokens"] * decode_step_gen / g.batch_size
        how += (f" + {wl['think_tokens']} think tokens x {decode_step_gen * 1e3:.1f} ms per decode step "
                f"/ batch {g.batch_size}")
    put("generate_s_per_image", gen, how)

    # Boxer: SAM ViT-H automatic masks. Encoder ~2 x 0.63e9 params x 4,096 tokens; the decoder runs once per
    # point of a 32 x 32 grid (~4e6 params against 4,096 image tokens each); plus mask post-processing.
    sam_flops = 2 * 0.632e9 * 4096 + 1024 * 2 * 4.0e6 * 4096
    put("box_s_per_image", sam_flops / (peak * hw["mfu_prefill"]) + wl["sam_postprocess_s"],
        f"SAM ViT-H: ~{_fmt_num(sam_flops)} FLOPs (encoder + 1,024 point prompts) / ({hw['bf16_tflops']:g} TFLOP/s x "
        f"{hw['mfu_prefill']:g}) + {wl['sam_postprocess_s']:g} s mask post-processing (assumed)")

    Pj = prof["judge_active_params_b"] * 1e9
    ctx = prof["judge_image_tokens"] + prof["judge_prompt_tokens"]
    prefill = 2.0 * Pj * ctx / (peak * hw["mfu_prefill"])
    decode_token = prof["judge_weights_gb"] * 1e9 / (hw["hbm_tb_per_s"] * 1e12 * hw["decode_efficiency"])
    decode_token /= wl["judge_decode_batch"]
    regions = exp.reward.max_regions if wl["regions_per_image"] is None else wl["regions_per_image"]
    calls = 1 + (1 if regions > 0 else 0) + (regions if exp.judge.verify_boxes else 0)
    out_tokens = (wl["judge_tokens_global"] + wl["judge_tokens_per_region"] * regions
                  + (wl["judge_tokens_verify"] * regions if exp.judge.verify_boxes else 0)
                  + (wl["think_tokens"] * calls if exp.judge.think else 0))
    judge_per_call = (calls * prefill + out_tokens * decode_token) / calls
    put("judge_s_per_call", judge_per_call,
        f"prefill 2 x {_fmt_num(Pj)} params x {ctx:,} tokens / ({hw['bf16_tflops']:g} TFLOP/s x {hw['mfu_prefill']:g}) "
        f"= {prefill:.3f} s, plus {out_tokens / calls:.0f} output tokens per call (average over {calls} calls"
        f"{', think on' if exp.judge.think else ''}) x {prof['judge_weights_gb']:g} GB read per step / "
        f"({hw['hbm_tb_per_s']:g} TB/s x {hw['decode_efficiency']:g}) / {wl['judge_decode_batch']} requests per step")
    eval_tokens = wl["judge_tokens_global"]
    put("evaluator_s_per_call", prefill + eval_tokens * decode_token,
        f"one {eval_tokens}-token answer with the judge's prefill and decode rates (evaluator assumed the same size)")

    train_tokens = tokens
    act = 8.0 if exp.training.activation_checkpointing else 6.0
    put("train_s_per_sample", act * P * train_tokens / (peak * hw["mfu_train"]),
        f"{act:g} x {_fmt_num(P)} active params x {train_tokens:,} latent tokens "
        f"({'6 fwd+bwd + 2 recompute' if act == 8 else '6 fwd+bwd'})"
        f" / ({hw['bf16_tflops']:g} TFLOP/s x {hw['mfu_train']:g})")
    put("rewards_s_per_record", ov["rewards_s_per_record"], "assumed: ~3 object-store round trips per record")
    ckpt = prof["total_params_b"] * 2 + prof["trainable_params_b"] * 8 + \
        (prof["trainable_params_b"] * 4 if exp.training.ema else 0)
    put("checkpoint_gb", ckpt, f"{prof['total_params_b']:g}B weights x 2 bytes (bf16) + "
        f"{prof['trainable_params_b']:g}B "
        f"trainable x 8 bytes (Adam moments, fp32){' + EMA fp32' if exp.training.ema else ''}")
    put("pod_startup_s", ov["container_start_s"] + prof["weights_gb"] / hw["storage_gb_per_s"],
        f"{ov['container_start_s']:g} s container start + {prof['weights_gb']:g} GB weights at "
        f"{hw['storage_gb_per_s']:g} GB/s")
    assumptions = {"hardware": hw, "model": prof, "workload": {**wl, "regions_per_image": regions},
                   "overheads": ov, "judge_calls_per_image": calls, "judge_output_tokens_per_image": out_tokens,
                   "latent_tokens": tokens}
    return out, assumptions


# -------------------------------------------------------------------------------------------- model


def count_prompts(source: Optional[str], limit: Optional[int], fmt: str = "auto") -> Optional[int]:
    """Prompts in a local prompt file (after `limit`), or None when it cannot be counted without a network
    call or a model import (s3://, toy://, a missing file)."""
    if not source or source.startswith(("s3://", "toy://")):
        return limit
    from .prompts import PromptError, load_prompts

    try:
        return len(load_prompts(source, fmt, limit=limit))
    except PromptError:
        return limit


def split_gpus(n: int, gen_work: float, judge_work: float) -> Tuple[int, int]:
    """(generation GPUs, judge GPUs) with g + j = n that minimise max(gen_work / g, judge_work / j)."""
    if n < 2:
        return 1, 1         # one GPU holds both (time-shared); see generate_stage
    best = min(range(1, n), key=lambda j: (max(gen_work / (n - j), judge_work / j), j))
    return n - best, best


def generate_stage(gen_work: float, judge_work: float, g: int, j: int, startup: float, overlap: float,
                   shared_gpu: bool = False) -> Dict[str, Any]:
    """Wall time of an overlapped generate+judge stage on g generation GPUs and j judge replicas."""
    if shared_gpu:   # one GPU does both, one after the other
        wall = startup + gen_work + judge_work
        return {"wall_s": wall, "gen_s": gen_work, "judge_s": judge_work, "bottleneck": "one GPU for both",
                "judge_busy": judge_work / max(gen_work + judge_work, 1e-9)}
    t_gen, t_judge = gen_work / g, judge_work / j
    body = overlap * max(t_gen, t_judge)
    return {"wall_s": startup + body, "gen_s": t_gen, "judge_s": t_judge,
            "bottleneck": "generation" if t_gen >= t_judge else "judge",
            "judge_busy": t_judge / max(t_gen, t_judge), "gen_busy": t_gen / max(t_gen, t_judge)}


def train_stage(exp: Any, c: Dict[str, Cost], hw: Dict[str, Any], prof: Dict[str, Any], gpus: int,
                nodes: Optional[int] = None) -> Dict[str, Any]:
    """Strong scaling of a fixed global batch over `nodes` nodes of nproc_per_node GPUs (fewer GPUs than
    one node: one smaller node)."""
    t = exp.training
    gpn = t.nproc_per_node
    global_batch = t.batch_size * t.nproc_per_node * t.nnodes
    max_nodes = max(1, global_batch // gpn)          # at least one sample per GPU
    if nodes is None:
        nodes = max(1, min(gpus // gpn, max_nodes)) if gpus >= gpn else 1
    used = min(gpus, gpn) if gpus < gpn else nodes * gpn
    per_gpu = global_batch / used
    if per_gpu < 1:
        per_gpu = 1.0                                   # a GPU cannot take less than one sample
    compute = per_gpu * c["train_s_per_sample"].value
    # hybrid sharding: each GPU all-reduces its shard of the trainable gradients (bf16) across nodes
    shard_bytes = prof["trainable_params_b"] * 1e9 * 2 / min(used, gpn)
    sync = 0.0 if nodes <= 1 else 2 * shard_bytes * (nodes - 1) / nodes / (hw["internode_gb_per_s"] * 1e9)
    n_ckpt = math.ceil(t.steps / t.save_every)
    ckpt_s = n_ckpt * c["checkpoint_gb"].value / hw["storage_gb_per_s"]
    startup = c["pod_startup_s"].value
    parts = {"compute": t.steps * compute, "cross-node gradient sync": t.steps * sync,
             "checkpoint upload": ckpt_s, "startup": startup}
    wall = sum(parts.values())
    return {"wall_s": wall, "gpus": used, "nodes": nodes, "gpus_per_node": min(used, gpn), "global_batch": global_batch,
            "samples_per_gpu": per_gpu, "step_s": compute + sync, "checkpoints": n_ckpt, "parts_s": parts,
            "bottleneck": max(parts, key=parts.get), "max_useful_nodes": max_nodes,
            "memory_note": (f"{gpus} GPUs is less than one node of {gpn} (training.nproc_per_node): FSDP memory per "
                            f"GPU grows {gpn / gpus:.1f}x; check it fits" if gpus < gpn else None)}


def make_plan(exp: Any, gpus: int, costs: Optional[Dict[str, Dict[str, Any]]] = None, *,
              judge_replicas: Optional[int] = None, prompts: Optional[int] = None,
              eval_prompts: Optional[int] = None, experiment_path: str = "") -> Dict[str, Any]:
    """The whole plan as JSON-able data (what `--json` prints)."""
    if gpus < 1:
        raise PlanError(f"--gpus must be >= 1, got {gpus}")
    if judge_replicas is not None and judge_replicas < 1:
        raise PlanError(f"--judge-replicas must be >= 1, got {judge_replicas}")
    costs = costs or {}
    c, a = derive_costs(exp, costs)
    hw, prof, wl, ov = a["hardware"], a["model"], a["workload"], a["overheads"]

    wl_given = costs.get("workload", {})
    n_prompts, prompts_from = _first([(prompts, "--prompts"), (wl_given.get("prompts"), "costs file"),
                                      (count_prompts(exp.prompts.source, exp.prompts.limit, exp.prompts.format),
                                       f"counted in {exp.prompts.source}" if exp.prompts.limit is None
                                       else "prompts.limit"),
                                      (WORKLOAD["prompts"], "assumed: T2I-CompBench training set")])
    n_eval, eval_from = _first([(eval_prompts, "--eval-prompts"), (wl_given.get("eval_prompts"), "costs file"),
                                (count_prompts(exp.prompts.eval_source, exp.prompts.eval_limit, "auto"),
                                 f"counted in {exp.prompts.eval_source}" if exp.prompts.eval_limit is None
                                 else "prompts.eval_limit"),
                                (WORKLOAD["eval_prompts"], "assumed")])
    K = exp.generation.candidates_per_prompt
    images = n_prompts * K
    judge_per_image = c["box_s_per_image"].value + a["judge_calls_per_image"] * c["judge_s_per_call"].value
    gen_work = images * c["generate_s_per_image"].value
    judge_work = images * judge_per_image
    startup = c["pod_startup_s"].value
    overlap = ov["overlap_factor"]

    def gen_alloc(work_g: float, work_j: float) -> Tuple[int, int, bool]:
        if judge_replicas is not None:
            return min(gpus, n_prompts), judge_replicas, False
        if gpus == 1:
            return 1, 1, True
        g_, j_ = split_gpus(gpus, work_g, work_j)
        return min(g_, n_prompts), j_, False

    g, j, shared = gen_alloc(gen_work, judge_work)
    gen = generate_stage(gen_work, judge_work, g, j, startup, overlap, shared)
    gen_gpus = 1 if shared else g + j
    stages: List[Dict[str, Any]] = []
    stages.append({"stage": "generate", "gpus": gen_gpus, "gen_gpus": g, "judge_gpus": 0 if shared else j,
                   "judge_shared": judge_replicas is not None, "wall_s": gen["wall_s"],
                   "gpu_hours": gen_gpus * gen["wall_s"] / 3600, "bottleneck": gen["bottleneck"],
                   "detail": gen})

    workers = exp.prompts.num_shards
    rw = 30.0 + images * c["rewards_s_per_record"].value / workers
    stages.append({"stage": "rewards", "gpus": 0, "cpu_pods": workers, "wall_s": rw, "gpu_hours": 0.0,
                   "bottleneck": "object-store round trips"})

    tr = train_stage(exp, c, hw, prof, gpus)
    stages.append({"stage": "train", "gpus": tr["gpus"], "wall_s": tr["wall_s"],
                   "gpu_hours": tr["gpus"] * tr["wall_s"] / 3600, "bottleneck": tr["bottleneck"], "detail": tr})

    eval_images = n_eval * exp.eval.samples_per_prompt * 2
    e_gen = eval_images * c["generate_s_per_image"].value
    e_judge = eval_images * wl["evaluator_calls_per_image"] * c["evaluator_s_per_call"].value
    eg, ej, eshared = gen_alloc(e_gen, e_judge)
    ev = generate_stage(e_gen, e_judge, eg, ej, startup, overlap, eshared)
    e_gpus = 1 if eshared else eg + ej
    stages.append({"stage": "eval", "gpus": e_gpus, "gen_gpus": eg, "judge_gpus": 0 if eshared else ej,
                   "judge_shared": judge_replicas is not None, "wall_s": ev["wall_s"],
                   "gpu_hours": e_gpus * ev["wall_s"] / 3600,
                   "bottleneck": "generation" if ev["bottleneck"] == "generation" else "evaluator", "detail": ev})
    stages.append({"stage": "report", "gpus": 0, "wall_s": ov["report_s"], "gpu_hours": 0.0, "bottleneck": "-"})
    if judge_replicas is not None:   # the shared deployment's GPUs are busy for us too: count them
        for s in stages:
            if s["stage"] in ("generate", "eval"):
                s["gpu_hours"] += judge_replicas * s["wall_s"] / 3600
    total_wall = sum(s["wall_s"] for s in stages)
    slowest = max(stages, key=lambda s: s["wall_s"])

    # scaling sweeps: one dimension at a time, the others held where the plan put them
    def powers(limit: int) -> List[int]:
        out, x = [], 1
        while x <= limit:
            out.append(x)
            x *= 2
        if out[-1] != limit:
            out.append(limit)
        return out

    j_hold = judge_replicas or (1 if shared else j)
    g_hold = 1 if shared else g
    top = max(gpus, 2)
    scale_gen = [{"gen_shards": s, **_short(generate_stage(gen_work, judge_work, s, j_hold, startup, overlap))}
                 for s in powers(min(top, n_prompts))]
    scale_judge = [{"judge_replicas": r, **_short(generate_stage(gen_work, judge_work, g_hold, r, startup, overlap))}
                   for r in powers(top)]
    gpn = exp.training.nproc_per_node
    scale_train = []
    for nodes in powers(max(1, top // gpn) * 2):
        # past one sample per GPU the extra nodes would idle: the run keeps the useful ones
        useful = min(nodes, train_stage(exp, c, hw, prof, gpn, 1)["max_useful_nodes"])
        t = train_stage(exp, c, hw, prof, useful * gpn, useful)
        scale_train.append({"nodes": nodes, "gpus": nodes * gpn, "wall_s": t["wall_s"], "step_s": t["step_s"],
                            "samples_per_gpu": t["samples_per_gpu"], "bottleneck": t["bottleneck"],
                            "saturated": nodes > useful})
    return {
        "estimate": True,
        "experiment": exp.name, "experiment_file": experiment_path, "gpus": gpus,
        "hardware": hw["name"], "adapter": exp.model.adapter,
        "workload": {"prompts": n_prompts, "prompts_from": prompts_from, "candidates_per_prompt": K,
                     "images": images, "judge_calls_per_image": a["judge_calls_per_image"],
                     "regions_per_image": wl["regions_per_image"], "verify_boxes": exp.judge.verify_boxes,
                     "judge_think": exp.judge.think, "train_steps": exp.training.steps,
                     "global_batch": tr["global_batch"], "train_samples": exp.training.steps * tr["global_batch"],
                     "eval_prompts": n_eval, "eval_prompts_from": eval_from, "eval_images": eval_images,
                     "latent_tokens": a["latent_tokens"]},
        "costs": {k: {"value": v.value, "how": v.how} for k, v in c.items()},
        "stages": stages,
        "total": {"wall_s": total_wall, "gpu_hours": sum(s["gpu_hours"] for s in stages),
                  "slowest_stage": slowest["stage"]},
        "scaling": {"generate_by_gen_shards": {"judge_replicas": j_hold, "rows": scale_gen},
                    "generate_by_judge_replicas": {"gen_shards": g_hold, "rows": scale_judge},
                    "train_by_nodes": {"gpus_per_node": gpn, "rows": scale_train}},
        # shards run in waves of g pods: a multiple of g keeps every wave full
        "recommended": {"prompts.num_shards": g * math.ceil(exp.prompts.num_shards / g),
                        "cluster.generate_parallelism": g, "judge_replicas": j if judge_replicas is None else
                        judge_replicas, "training.nnodes": tr["nodes"]},
    }


def _first(options: List[Tuple[Any, str]]) -> Tuple[Any, str]:
    for value, why in options:
        if value is not None:
            return value, why
    raise AssertionError("the last option is a default")


def _short(stage: Dict[str, Any]) -> Dict[str, Any]:
    return {"wall_s": stage["wall_s"], "bottleneck": stage["bottleneck"]}


# ------------------------------------------------------------------------------------------- render


def human_time(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def render(plan: Dict[str, Any]) -> str:
    w = plan["workload"]
    lines = [
        f"srum plan: {plan['experiment']} on {plan['gpus']} GPU(s), {plan['hardware']} profile",
        "ESTIMATE from FLOP and bandwidth arithmetic, not a measurement. Measure the per-item costs on your",
        "hardware and pass them with --costs FILE (section `measured`); they replace the derived ones.",
        "",
        f"workload: {w['prompts']:,} prompts ({w['prompts_from']}) x {w['candidates_per_prompt']} candidates = "
        f"{w['images']:,} images",
        f"          judge calls per image: 1 global + {1 if w['regions_per_image'] else 0} regions"
        + (f" + {w['regions_per_image']:g} verify" if w["verify_boxes"] else "")
        + f" = {w['judge_calls_per_image']:g}{' (think on)' if w['judge_think'] else ''}",
        f"          train: {w['train_steps']} steps x global batch {w['global_batch']} = {w['train_samples']:,} samples"
        f" at {w['latent_tokens']:,} latent tokens each",
        f"          eval: {w['eval_prompts']:,} prompts ({w['eval_prompts_from']}) x base + trained = "
        f"{w['eval_images']:,} images",
        "",
        f"{'stage':<10}{'GPUs':<26}{'wall':>10}{'GPU-h':>10}  bottleneck",
    ]
    for s in plan["stages"]:
        if s["stage"] in ("generate", "eval"):
            judge_word = "judge" if s["stage"] == "generate" else "evaluator"
            if s["judge_gpus"] == 0:
                gpus = "1 (shared by both)"
            elif s["judge_shared"]:
                gpus = f"{s['gen_gpus']} gen + {s['judge_gpus']} {judge_word}*"
            else:
                gpus = f"{s['gen_gpus']} gen + {s['judge_gpus']} {judge_word}"
            d = s["detail"]
            note = s["bottleneck"]
            if "judge_busy" in d and s["judge_gpus"]:
                note += f" ({judge_word} {100 * d['judge_busy']:.0f}% busy)"
        elif s["stage"] == "train":
            d = s["detail"]
            gpus = f"{d['gpus']} ({d['nodes']} node{'s' if d['nodes'] > 1 else ''} x {d['gpus_per_node']})"
            note = s["bottleneck"]
        elif s["stage"] == "rewards":
            gpus, note = f"CPU ({s['cpu_pods']} pods)", s["bottleneck"]
        else:
            gpus, note = "CPU", s["bottleneck"]
        lines.append(f"{s['stage']:<10}{gpus:<26}{human_time(s['wall_s']):>10}{s['gpu_hours']:>10.1f}  {note}")
    t = plan["total"]
    lines.append(f"{'total':<10}{'':<26}{human_time(t['wall_s']):>10}{t['gpu_hours']:>10.1f}  "
                 f"slowest stage: {t['slowest_stage']}")
    if any(s.get("judge_shared") for s in plan["stages"]):
        lines.append("* shared judge deployment outside the GPU budget; its GPU-hours are included")
    note = plan["stages"][2]["detail"].get("memory_note")
    if note:
        lines.append(f"note: {note}")

    sc = plan["scaling"]
    lines += ["", f"scaling, generate stage, by generation shards (judge replicas held at "
                  f"{sc['generate_by_gen_shards']['judge_replicas']}):"]
    lines += _row_table("gen shards", sc["generate_by_gen_shards"]["rows"], "gen_shards")
    lines += ["", f"scaling, generate stage, by judge replicas (generation shards held at "
                  f"{sc['generate_by_judge_replicas']['gen_shards']}):"]
    lines += _row_table("judge reps", sc["generate_by_judge_replicas"]["rows"], "judge_replicas")
    lines += ["", f"scaling, train stage, by nodes of {sc['train_by_nodes']['gpus_per_node']} GPUs (global batch "
                  f"{w['global_batch']} held; beyond one sample per GPU more nodes do not help):"]
    rows = [{**r, "bottleneck": ("saturated" if r["saturated"] else r["bottleneck"])}
            for r in sc["train_by_nodes"]["rows"]]
    lines += _row_table("nodes", rows, "nodes")

    lines += ["", "per-item costs used:"]
    units = {"checkpoint_gb": "GB"}
    for k, v in plan["costs"].items():
        lines.append(f"  {k:<22}{v['value']:>10.3g} {units.get(k, 's'):<3} {v['how']}")
    rec = plan["recommended"]
    lines += ["", "to run it this way: " + ", ".join(f"{k}={v}" for k, v in rec.items())]
    return "\n".join(lines)


def _bottleneck_word(b: str) -> str:
    return {"generation": "gen", "judge": "judge", "compute": "compute", "checkpoint upload": "ckpt",
            "cross-node gradient sync": "sync", "startup": "start", "saturated": "satur."}.get(b, b[:6])


def _row_table(label: str, rows: List[Dict[str, Any]], key: str) -> List[str]:
    head = f"  {label:<12}" + "".join(f"{r[key]:>8}" for r in rows)
    wall = f"  {'wall':<12}" + "".join(f"{human_time(r['wall_s']):>8}" for r in rows)
    neck = f"  {'bottleneck':<12}" + "".join(f"{_bottleneck_word(r['bottleneck']):>8}" for r in rows)
    return [head, wall, neck]


# ---------------------------------------------------------------------------------------------- CLI


@click.command("plan")
@click.option("--experiment", "-e", "experiment", required=True, type=click.Path(dir_okay=False),
              help="Experiment file (YAML or JSON).")
@click.option("--gpus", type=click.IntRange(min=1), required=True, help="GPU budget of the run.")
@click.option("--costs", "costs_file", type=click.Path(dir_okay=False), default=None,
              help="YAML/JSON per-item costs measured on your hardware (sections: hardware, model, workload, "
                   "overheads, measured).")
@click.option("--judge-replicas", type=click.IntRange(min=1), default=None,
              help="A shared judge deployment with this many GPU replicas, outside the budget "
                   "(default: the judge runs inside the budget, sized by the plan).")
@click.option("--prompts", "n_prompts", type=click.IntRange(min=1), default=None,
              help="Training prompts (default: prompts.limit, else counted in a local prompt file, else 6,234).")
@click.option("--eval-prompts", "n_eval", type=click.IntRange(min=1), default=None, help="Evaluation prompts.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan_command(experiment: str, gpus: int, costs_file: Optional[str], judge_replicas: Optional[int],
                 n_prompts: Optional[int], n_eval: Optional[int], as_json: bool) -> None:
    """Estimate wall time and GPU-hours of each stage of a real SRUM round, and how they scale.

    An estimate from model size, token counts and stated hardware utilisation (every derivation is
    printed); pass --costs with numbers measured on your hardware for a plan you can trust.
    """
    import json

    from .entry import load

    exp = load(experiment).exp
    costs = load_costs(costs_file) if costs_file else {}      # a PlanError exits 78, through the entry path
    plan = make_plan(exp, gpus, costs, judge_replicas=judge_replicas, prompts=n_prompts, eval_prompts=n_eval,
                     experiment_path=experiment)
    click.echo(json.dumps(plan, indent=2) if as_json else render(plan))
