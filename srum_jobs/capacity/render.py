"""The capacity plan as text: what `srum plan` prints."""

from __future__ import annotations

from typing import Any, Dict, List

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
