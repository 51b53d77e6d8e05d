"""`srum bench`: side-by-side measurements. `toy` compares base, SFT and SRUM in the toy world
(toy/bench.py) and `toy-pair` pairs any two rows of a finished one; `costs` measures the per-item costs
of a real experiment for `srum plan` (capacity/measure.py).
Only click is imported here; the commands import torch when they run."""

from __future__ import annotations

import click

from .toy.commands import bench_toy_command, bench_toy_pair_command


@click.group("bench")
def bench_group() -> None:
    """Side-by-side measurements."""


bench_group.add_command(bench_toy_command, "toy")
bench_group.add_command(bench_toy_pair_command, "toy-pair")


@bench_group.command("costs")
@click.option("--experiment", "experiment", type=click.Path(exists=True, dir_okay=False), required=True,
              help="the experiment file whose model, judge and boxer backends are measured")
@click.option("--items", type=click.IntRange(2, 10000), default=8, show_default=True,
              help="images generated, judged and trained on (plus one untimed warm-up)")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="write the costs file here (for srum plan --costs); refuses to overwrite")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="torch CPU threads (default: torch's)")
def costs_command(experiment: str, items: int, out_path: str | None, threads: int | None) -> None:
    """Measure per-item costs (generation, boxes, judge calls, training, rewards, checkpoint size, startup)
    on this machine and write them as the `measured` section of a costs file."""
    import os

    from .capacity.measure import costs_file_text, measure_costs
    from .entry import load

    if out_path and os.path.exists(out_path):
        raise click.UsageError(f"--out {out_path} exists; remove it or choose another path")
    if threads:
        import torch

        torch.set_num_threads(threads)
    exp = load(experiment).exp
    result = measure_costs(exp, items=items, log=lambda m: click.echo(m, err=True))
    text = costs_file_text(result, experiment)
    if out_path:
        with open(out_path, "x", encoding="utf-8") as fh:
            fh.write(text)
        click.echo(f"wrote {out_path}", err=True)
    click.echo(text, nl=False)
