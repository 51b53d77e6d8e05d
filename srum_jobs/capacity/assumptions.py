"""The capacity plan's assumptions: the hardware, the model profiles by adapter, the workload and the
overheads every derived cost starts from, and the keys a costs file may set. Every default is either a
datasheet figure or a stated ASSUMPTION (no GPU measurement was possible where they were written)."""

from __future__ import annotations

from typing import Any, Dict

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
