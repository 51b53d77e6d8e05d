"""`srum toy pretrain` and `srum bench toy`. Only click is imported here; torch loads inside the commands."""

from __future__ import annotations

import click

PRESET_CHOICES = click.Choice(["test", "demo"])


@click.group("toy")
def toy_group() -> None:
    """The built-in toy world: its base model."""


@toy_group.command("pretrain")
@click.option("--preset", type=PRESET_CHOICES, default="demo", show_default=True,
              help="test: seconds, for the test suite; demo: the embedded default's base model.")
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


@click.command("toy")
@click.option("--preset", type=PRESET_CHOICES, default="demo", show_default=True)
@click.option("--ablations", is_flag=True, help="also srum_no_global, srum_no_ref, srum_sparse, srum_signed")
@click.option("--seeds", type=click.IntRange(1, 100), default=3, show_default=True, help="independent rounds per method")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="write the result JSON here")
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True, help="torch CPU threads")
def bench_toy_command(preset: str, ablations: bool, seeds: int, json_path: str | None, threads: int) -> None:
    """Base vs SFT vs SRUM (and the paper's ablations) on the held-out toy prompts, several seeds."""
    import json

    import torch

    from .bench import format_table, run_bench

    torch.set_num_threads(threads)
    details: dict = {}
    result = run_bench(preset, ablations=ablations, seeds=seeds, log=lambda m: click.echo(m, err=True),
                       details=details)
    click.echo(format_table(result))
    click.echo(f"phases (s): {details['phases_s']}, total {details['total_s']} s; records kept for training per "
               f"seed: {details['kept']}; candidates (benchmark accuracy, judge agreement) per seed: "
               f"{[tuple(round(x, 3) for x in c) for c in details['candidates_accuracy_and_agreement']]}")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
        click.echo(f"wrote {json_path}", err=True)
