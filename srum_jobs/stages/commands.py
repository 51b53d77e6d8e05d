"""`srum stage NAME`: the stage entrypoints, exactly what a Kubernetes Job or the local executor runs.
One command per row of the stage table (stages/spec.py); loading, checking and exit codes are the entry
module's."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import click

from .spec import STAGES, StageSpec

STAGE_OPTIONS = [
    click.option("--experiment", "experiment_file", required=True, type=click.Path(dir_okay=False),
                 help="Experiment file (YAML/JSON)."),
    click.option("--round", "round_", type=click.IntRange(min=1), default=1, show_default=True),
    click.option("--no-progress", is_flag=True, help="No progress bar (logs only)."),
]
SHARD_OPTIONS = [
    click.option("--shard", type=click.IntRange(min=0), default=None,
                 help="Shard index; defaults to $JOB_COMPLETION_INDEX on Kubernetes, else every shard in turn."),
    click.option("--num-shards", type=click.IntRange(min=1), default=None,
                 help="Number of shards; defaults to prompts.num_shards."),
]


def _options(opts: List[Callable]) -> Callable:
    def deco(f: Callable) -> Callable:
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


@click.group("stage")
def stage_group() -> None:
    """Run one stage of one round. Every stage is resumable: a finished shard is skipped, a half-done one continued."""


def _command(spec: StageSpec) -> None:
    @stage_group.command(spec.name, help=spec.summary)
    @_options(STAGE_OPTIONS + (SHARD_OPTIONS if spec.shardable else []))
    def cmd(experiment_file: str, round_: int, no_progress: bool, shard: Optional[int] = None,
            num_shards: Optional[int] = None) -> None:
        from ..entry import run_stage

        out: Any = run_stage(spec.name, experiment_file, round_, shard, num_shards, progress=not no_progress)
        if isinstance(out, str):          # the report stage returns where it wrote the report
            click.echo(f"{spec.name}: {out}")


for _spec in STAGES.values():
    _command(_spec)
