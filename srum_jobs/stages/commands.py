"""`srum stage NAME`: the stage entrypoints, exactly what a Kubernetes Job or the local executor runs."""

from __future__ import annotations

import sys
from typing import Optional

import click

STAGE_OPTIONS = [
    click.option("--experiment", "experiment_file", required=True, type=click.Path(dir_okay=False),
                 help="Experiment file (YAML/JSON)."),
    click.option("--round", "round_", type=click.IntRange(min=1), default=1, show_default=True),
    click.option("--no-progress", is_flag=True, help="No progress bar (logs only)."),
]
SHARD_OPTIONS = [
    click.option("--shard", type=click.IntRange(min=0), default=None,
                 help="Shard index; defaults to $JOB_COMPLETION_INDEX on Kubernetes, else 0."),
    click.option("--num-shards", type=click.IntRange(min=1), default=None,
                 help="Number of shards; defaults to prompts.num_shards."),
]


def _options(opts):
    def deco(f):
        for o in reversed(opts):
            f = o(f)
        return f
    return deco


def _shard(shard: Optional[int], num_shards: Optional[int], default_n: int) -> tuple:
    import os

    n = num_shards or default_n
    if shard is None:
        shard = int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    if shard >= n:
        raise click.BadParameter(f"shard {shard} is out of range for {n} shards", param_hint="--shard")
    return shard, n


def _guard(fn, *args, **kwargs):
    """Map failures to the exit codes the Job's podFailurePolicy understands."""
    from .. import exitcodes
    from ..config import ConfigError
    from ..prompts import PromptError
    from ..judging.client import JudgeClientError, JudgeRequestError
    from ..storage import StorageError

    try:
        return fn(*args, **kwargs)
    except (ConfigError, PromptError) as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(exitcodes.CONFIG_ERROR)
    except StorageError as e:
        click.echo(f"error: storage: {e}", err=True)
        sys.exit(exitcodes.TEMPORARY)
    except (ConnectionError, JudgeClientError) as e:
        if isinstance(e, JudgeRequestError):  # the server refused a request: retrying the pod cannot help
            click.echo(f"error: judge request: {e}", err=True)
            sys.exit(exitcodes.FAILURE)
        click.echo(f"error: judge server: {e}", err=True)
        sys.exit(exitcodes.TEMPORARY)


@click.group("stage")
def stage_group() -> None:
    """Run one stage of one round. Every stage is resumable: a finished shard is skipped, a half-done one continued."""


@stage_group.command("generate")
@_options(STAGE_OPTIONS + SHARD_OPTIONS)
def generate_cmd(experiment_file, round_, no_progress, shard, num_shards):
    """Generate K candidates per prompt of a shard, box and judge them (reward records)."""
    from ..cli import load_experiment_or_exit
    from . import generate

    exp = load_experiment_or_exit(experiment_file)
    shard, n = _shard(shard, num_shards, exp.prompts.num_shards)
    _guard(generate.run, exp, round_, shard, n, progress=not no_progress)


@stage_group.command("rewards")
@_options(STAGE_OPTIONS + SHARD_OPTIONS)
def rewards_cmd(experiment_file, round_, no_progress, shard, num_shards):
    """Build reward maps for one shard (or all shards when --shard is not given)."""
    from ..cli import load_experiment_or_exit
    from . import rewards

    exp = load_experiment_or_exit(experiment_file)
    _guard(rewards.run, exp, round_, shard, num_shards, progress=not no_progress)


@stage_group.command("train")
@_options(STAGE_OPTIONS)
def train_cmd(experiment_file, round_, no_progress):
    """Reward-weighted fine-tuning (one process; use torchrun -m srum_jobs.stages.train for several)."""
    from ..cli import load_experiment_or_exit
    from . import train

    exp = load_experiment_or_exit(experiment_file)
    _guard(train.run, exp, round_, progress=not no_progress)


@stage_group.command("eval")
@_options(STAGE_OPTIONS + SHARD_OPTIONS)
def eval_cmd(experiment_file, round_, no_progress, shard, num_shards):
    """Score the base and the trained model on held-out prompts (one shard of them)."""
    from ..cli import load_experiment_or_exit
    from . import evaluate

    exp = load_experiment_or_exit(experiment_file)
    shard, n = _shard(shard, num_shards, 1)
    _guard(evaluate.run, exp, round_, shard, n, progress=not no_progress)


@stage_group.command("report")
@_options(STAGE_OPTIONS)
def report_cmd(experiment_file, round_, no_progress):
    """Write the HTML and Markdown report of a round."""
    from ..cli import load_experiment_or_exit
    from . import report

    exp = load_experiment_or_exit(experiment_file)
    path = _guard(report.run, exp, round_)
    click.echo(f"report: {path}")
