"""`srum toy pretrain` and `srum bench toy`. Only click is imported here; torch loads inside the commands."""

from __future__ import annotations

import click

# pretrain.PRESETS and bench.ROUNDS by name, spelled out so the CLI imports neither (a test keeps them equal)
PRESET_CHOICES = click.Choice(["test", "demo", "demo-noisy"])


@click.group("toy")
def toy_group() -> None:
    """The built-in toy world: its base model."""


@toy_group.command("pretrain")
@click.option("--preset", type=PRESET_CHOICES, default="demo", show_default=True,
              help="test: seconds, for the test suite; demo: the embedded default's base model; "
                   "demo-noisy: the same recipe on web-like captions (half get one attribute wrong).")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True, help="torch CPU threads")
@click.option("--measure", is_flag=True, help="also measure the premise: base accuracy and judge agreement (eval split)")
@click.option("--ship", is_flag=True, help="developers: copy the result into srum_jobs/assets/toy/<preset>/ "
                                          "(float16, with its measured benchmark); implies --measure")
def pretrain_command(preset: str, threads: int, measure: bool, ship: bool) -> None:
    """Rebuild the preset's base model from its seed into the cache (always rebuilds) and print where it is."""
    import json

    import torch

    from .pretrain import ensure_base, read_meta

    torch.set_num_threads(threads)
    path = ensure_base(preset, rebuild=True)
    meta = read_meta(path)
    out = {"preset": preset, "path": str(path), "hash": meta["hash"], "phases_s": meta["phases_s"],
           "parameters": meta["parameters"], "understanding_on_renders": meta.get("understanding_on_renders")}
    if measure or ship:
        from .bench import measure_base

        out["benchmark"] = measure_base(path, log=lambda m: click.echo(m, err=True))
    if ship:
        from .pretrain import ship as ship_checkpoint

        out["shipped"] = str(ship_checkpoint(preset, path, out["benchmark"]))
    click.echo(json.dumps(out, indent=1))


def _lambdas(ctx, param, value):
    if not value:
        return ()
    try:
        out = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers (e.g. 0,0.25,0.5,1,2)")
    if any(v < 0 for v in out):
        raise click.BadParameter(f"{value!r}: lambda_c values must be >= 0")
    return out


@click.command("toy")
@click.option("--preset", type=PRESET_CHOICES, default="demo", show_default=True)
@click.option("--ablations", is_flag=True, help="also srum_no_global, srum_no_ref, srum_no_anchor, srum_sparse, srum_signed")
@click.option("--lambda-c", "lambda_c", callback=_lambdas, default="", metavar="LIST",
              help="also the default recipe at each lambda_c of LIST (e.g. 0,0.25,0.5,1,2: the paper's Fig. 3 sweep)")
@click.option("--anchor-row", is_flag=True, help="also srum_paper_anchor: the paper's loss with its reference "
                                                 "term on the frozen base model's velocity")
@click.option("--seeds", type=click.IntRange(1, 100), default=3, show_default=True, help="independent rounds per method")
@click.option("--split", type=click.Choice(["eval", "val"]), default="eval", show_default=True,
              help="prompts evaluated: eval (the reported benchmark) or val (choosing settings)")
@click.option("--methods", default=None, metavar="LIST",
              help="run only these methods (comma-separated, e.g. sft,srum; base always runs; --ablations, "
                   "--anchor-row and --lambda-c add their rows to them)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override a setting of the preset's round (toy/bench.py RoundConfig), e.g. --set lr=3e-4")
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False), default=None,
              help="keep each seed's judged candidates here and reuse them when the candidate settings match")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="write the result JSON here")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True, help="torch CPU threads")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="run the seeds in this many processes of one torch thread each")
def bench_toy_command(preset: str, ablations: bool, lambda_c: tuple, anchor_row: bool, seeds: int, split: str,
                      methods: str | None, overrides: tuple, cache_dir: str | None, json_path: str | None,
                      threads: int, workers: int) -> None:
    """Base vs SFT vs SRUM (the paper's loss and the debiased one), the paper's baselines and ablations, on
    held-out toy prompts, in plain and think mode, over several seeds, with paired 95% intervals."""
    import json

    import torch

    from .bench import format_table, round_config, run_bench

    pairs = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        pairs[key.strip()] = value.strip()
    try:
        cfg = round_config(preset, pairs)
        chosen = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
        from .bench import method_configs

        for m in (chosen or ["srum", "srum_debiased"]):
            if m != "base":
                method_configs(m, cfg)         # an unknown method or a bad reward setting fails before any work
    except ValueError as e:
        raise click.BadParameter(str(e)) from None
    torch.set_num_threads(threads)
    details: dict = {}
    result = run_bench(preset, ablations=ablations, seeds=seeds, log=lambda m: click.echo(m, err=True),
                       details=details, eval_split=split, lambda_sweep=lambda_c, extra=anchor_row, round_cfg=cfg,
                       methods=chosen, cache_dir=cache_dir, workers=workers)
    click.echo(format_table(result))
    click.echo(f"phases (s): {details['phases_s']}, total {details['total_s']} s; {details['train_prompts']} training "
               f"prompts; records kept for training per method and seed: {details['kept']}; candidates (benchmark "
               f"accuracy, judge agreement) per seed: "
               f"{[tuple(round(x, 3) for x in c) for c in details['candidates_accuracy_and_agreement']]}")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
        with open(json_path + ".details.json", "w", encoding="utf-8") as fh:
            json.dump(details, fh, indent=1, default=str)
        click.echo(f"wrote {json_path} (and its details: {json_path}.details.json)", err=True)


@click.command("toy-pair")
@click.argument("details_path", metavar="DETAILS", type=click.Path(exists=True, dir_okay=False))
@click.argument("row_a")
@click.argument("row_b")
def bench_toy_pair_command(details_path: str, row_a: str, row_b: str) -> None:
    """ROW_A - ROW_B of a finished `srum bench toy` (its DETAILS file, `<json>.details.json`), paired over
    the same eval prompts: the difference and its 95% bootstrap interval in accuracy points, overall and
    per category. No model runs."""
    import json

    from .bench import pair_from_details

    with open(details_path, encoding="utf-8") as fh:
        try:
            details = json.load(fh)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"{details_path} is not JSON: {e}", param_hint="DETAILS") from None
    try:
        out = pair_from_details(details, row_a, row_b)
    except ValueError as e:
        raise click.BadParameter(f"{details_path}: {e}", param_hint="DETAILS") from None
    click.echo(f"{row_a} - {row_b} over {out['prompts']} eval prompts (accuracy points, paired bootstrap 95% CI)")
    for row, v in out["rows"].items():
        cell = "n/a" if v["diff"] is None else f"{v['diff']:+.1f} [{v['ci'][0]:+.1f}, {v['ci'][1]:+.1f}]"
        click.echo(f"  {row:<12} {cell}")
