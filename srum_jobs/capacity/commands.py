"""`srum plan`. Only click (and the standard library already loaded with it) is imported at module level:
the plan's modules, YAML, pydantic and the prompt loader load when the command runs."""

from __future__ import annotations

from typing import Optional

import click

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

    from ..entry import load
    from .costs_file import load_costs
    from .plan import make_plan
    from .render import render

    exp = load(experiment).exp
    costs = load_costs(costs_file) if costs_file else {}      # a PlanError exits 78, through the entry path
    plan = make_plan(exp, gpus, costs, judge_replicas=judge_replicas, prompts=n_prompts, eval_prompts=n_eval,
                     experiment_path=experiment)
    click.echo(json.dumps(plan, indent=2) if as_json else render(plan))
