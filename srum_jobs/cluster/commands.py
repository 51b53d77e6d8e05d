"""Cluster commands: `srum enqueue`, `status`, `logs`, `cancel`, `orchestrate`.

Only click is imported here; the kubernetes client and the builders load inside the commands, so
`srum --help` stays fast.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import click

from ..stages.spec import STAGE_NAMES, parse_stage_list

# `srum enqueue NAME` -> stages. `judge` names the step after the judge server has answered: turning the
# shard's judgments into reward maps (the `rewards` stage); boxing and judging themselves run inside
# `generate`, overlapped with image generation.
ENQUEUE_TARGETS = {**{name: (name,) for name in STAGE_NAMES}, "judge": ("rewards",)}


def _common(fn: Callable) -> Callable:
    fn = click.option("--namespace", "-n", default=None, help="Kubernetes namespace (default: cluster.namespace).")(fn)
    fn = click.option("--round", "round_", type=click.IntRange(min=1), default=1, show_default=True,
                      help="Self-rewarding round.")(fn)
    fn = click.option("--experiment", "-e", "experiment", required=True, type=click.Path(dir_okay=False),
                      help="Experiment file (YAML or JSON).")(fn)
    return fn


def _load(path: str, round_: int, namespace: Optional[str], configmap: Optional[str] = None,
          stages: Sequence[str] = ()):
    """(Experiment, RunRef, text) through the one entry path; with `stages`, also checked for them (as far
    as a machine that is not the cluster can: names and settings). Failures leave through the root group's
    one classification of errors (a bad file: 78)."""
    from ..entry import check, load
    from .builders import RunRef

    loaded = load(path)
    if stages:
        for warning in check(loaded.exp, stages, where="cluster", source=path):
            click.echo(f"warning: {warning}", err=True)
    return loaded.exp, RunRef.create(loaded.exp, loaded.text, round_, namespace, configmap, source=path), loaded.text


def _print_yaml(objects: Sequence[dict], header: str) -> None:
    from .builders import dump_yaml

    click.echo(f"# {header}")
    click.echo(dump_yaml(list(objects)), nl=False)


@click.group("enqueue")
def enqueue_command() -> None:
    """Submit stage Jobs of an experiment round to Kubernetes.

    Idempotent: a Job of the same experiment and round that already exists is reported, not
    duplicated. --dry-run prints the YAML that would be submitted and needs no cluster.
    """


def _enqueue_stages(target: str) -> Callable:
    stages = ENQUEUE_TARGETS[target]

    @enqueue_command.command(target, help=f"Submit the {'/'.join(stages)} stage Job"
                             + (" (reward maps from the judgments)." if target == "judge" else "."))
    @_common
    @click.option("--dry-run", is_flag=True, help="Print the YAML instead of submitting it.")
    def cmd(experiment: str, round_: int, namespace: Optional[str], dry_run: bool) -> None:
        from .builders import all_objects, check_cluster_ready

        exp, ref, text = _load(experiment, round_, namespace, stages=stages)
        check_cluster_ready(exp)
        objects = all_objects(ref, text, stages)
        if dry_run:
            _print_yaml(objects, f"srum enqueue {target}: {len(objects)} objects for experiment {exp.name} round "
                                 f"{round_} in namespace {ref.namespace} (dry run: nothing was submitted)")
            return
        from .api import Cluster
        from .ops import submit

        cluster = Cluster.connect(ref.namespace)
        for r in submit(cluster, objects):
            click.echo(r.line())
        click.echo(f"follow with: srum status --experiment {experiment} --round {round_} --namespace {ref.namespace}")

    return cmd


for _target in ENQUEUE_TARGETS:
    _enqueue_stages(_target)


@enqueue_command.command("all")
@_common
@click.option("--dry-run", is_flag=True, help="Print the YAML of every stage instead of submitting.")
@click.option("--poll-seconds", type=click.FloatRange(min=0.01), default=15.0, show_default=True,
              help="Seconds between two looks at a running Job.")
@click.option("--stage-timeout", type=click.FloatRange(min=1), default=None, help="Seconds to wait for one stage.")
def enqueue_all_command(experiment: str, round_: int, namespace: Optional[str], dry_run: bool,
                        poll_seconds: float, stage_timeout: Optional[float]) -> None:
    """Run every stage in order from here: submit one, wait for it, submit the next.

    Resumable: stages complete in storage are skipped, and Ctrl-C only stops the waiting (the Jobs keep
    running; run it again to continue). To drive the round from inside the cluster instead, install the
    Helm chart (helm/srum), whose driver Job runs `srum orchestrate`.
    """
    from .builders import all_objects, check_cluster_ready

    exp, ref, text = _load(experiment, round_, namespace, stages=STAGE_NAMES)
    check_cluster_ready(exp)
    if dry_run:
        objects = all_objects(ref, text, STAGE_NAMES)
        _print_yaml(objects, f"srum enqueue all: {len(objects)} objects for experiment {exp.name} round {round_} "
                             f"in namespace {ref.namespace}, submitted stage by stage in this order, each after the "
                             "previous one completes (dry run: nothing was submitted)")
        return
    _drive(ref, text, exp, create_configmap=True, poll_s=poll_seconds, timeout_s=stage_timeout)


def _drive(ref: Any, text: str, exp: Any, *, create_configmap: bool, poll_s: float, timeout_s: Optional[float],
           stages: Sequence[str] = STAGE_NAMES) -> None:
    from ..entry import open_checked_store
    from .api import Cluster
    from .orchestrate import orchestrate

    cluster = Cluster.connect(ref.namespace)
    orchestrate(cluster, ref, text, open_checked_store(exp), stages=stages, create_configmap=create_configmap,
                poll_s=poll_s, timeout_s=timeout_s, echo=click.echo)


@click.command("orchestrate")
@_common
@click.option("--configmap", default=None,
              help="Existing ConfigMap holding this experiment file (the Helm release's); none is created.")
@click.option("--stages", default=",".join(STAGE_NAMES), show_default=True, help="Comma-separated stages to run.")
@click.option("--poll-seconds", type=click.FloatRange(min=0.01), default=15.0, show_default=True,
              help="Seconds between two looks at a running Job.")
@click.option("--stage-timeout", type=click.FloatRange(min=1), default=None, help="Seconds to wait for one stage.")
def orchestrate_command(experiment: str, round_: int, namespace: Optional[str], configmap: Optional[str],
                        stages: str, poll_seconds: float, stage_timeout: Optional[float]) -> None:
    """In-cluster driver: generate -> rewards -> train -> eval -> report, each stage a Job, resumable.

    Exit codes: 78 when a stage failed on a configuration error (never worth retrying), 75 when the API
    server or storage was unreachable, 1 when a stage failed after its retries.
    """
    from .builders import check_cluster_ready

    try:
        chosen = parse_stage_list(stages)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--stages") from None
    exp, ref, text = _load(experiment, round_, namespace, configmap, stages=chosen)
    check_cluster_ready(exp)
    _drive(ref, text, exp, create_configmap=configmap is None, poll_s=poll_seconds, timeout_s=stage_timeout,
           stages=chosen)


@click.command("status")
@_common
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(experiment: str, round_: int, namespace: Optional[str], as_json: bool) -> None:
    """Per-stage and per-shard progress: Job status from the cluster, completion markers from storage.

    Works with either one unreachable (it says which).
    """
    import json

    from ..storage import RunLayout, StorageError, open_store
    from .api import Cluster, ClusterError
    from .ops import format_status, round_status

    exp, ref, _ = _load(experiment, round_, namespace)
    cluster, cluster_error, layout, storage_error = None, "", None, ""
    try:
        cluster = Cluster.connect(ref.namespace)
    except ClusterError as e:
        cluster_error = str(e)
    try:
        layout = RunLayout(open_store(exp.storage), exp.name, round_)
    except StorageError as e:
        storage_error = str(e)
    rs = round_status(ref, cluster, layout, cluster_error=cluster_error, storage_error=storage_error)
    click.echo(json.dumps(rs.to_dict(), indent=1) if as_json else format_status(rs))


@click.command("logs")
@click.argument("stage", type=click.Choice(STAGE_NAMES + ("judge",)))
@_common
@click.option("--index", "-i", type=click.IntRange(min=0), default=None, help="Completion index (shard / node).")
@click.option("--tail", type=click.IntRange(min=1), default=None, help="Only the last N lines of each pod.")
@click.option("--follow", "-f", is_flag=True, help="Stream the log (one pod: give --index).")
def logs_command(stage: str, experiment: str, round_: int, namespace: Optional[str], index: Optional[int],
                 tail: Optional[int], follow: bool) -> None:
    """Logs of a stage's pods (all of them, or those of one completion index), oldest first."""
    from .api import Cluster
    from .ops import stage_pods

    stage = ENQUEUE_TARGETS.get(stage, (stage,))[0]
    _, ref, _ = _load(experiment, round_, namespace)
    cluster = Cluster.connect(ref.namespace)
    pods = stage_pods(cluster, ref, stage, index)
    if not pods:
        where = f" index {index}" if index is not None else ""
        raise click.ClickException(f"no pods of stage {stage}{where} for experiment {ref.exp.name} round {round_} in "
                                   f"namespace {ref.namespace} (not submitted yet, or removed after "
                                   "ttlSecondsAfterFinished)")
    if follow:
        if len(pods) > 1 and index is None:
            raise click.UsageError("--follow streams one pod: add --index")
        for chunk in cluster.follow_pod_log(pods[-1]["metadata"]["name"]):
            click.echo(chunk, nl=False)
        return
    for pod in pods:
        name = pod["metadata"]["name"]
        phase = (pod.get("status") or {}).get("phase", "?")
        click.echo(f"==> pod {name} ({phase}) <==")
        click.echo(cluster.pod_log(name, tail=tail).rstrip("\n"))


@click.command("cancel")
@_common
@click.option("--stage", type=click.Choice(STAGE_NAMES), default=None,
              help="Only this stage's Jobs (default: the driver and every stage of the round).")
def cancel_command(experiment: str, round_: int, namespace: Optional[str], stage: Optional[str]) -> None:
    """Delete an experiment round's Jobs (and their pods). Work finished in storage stays; enqueue resumes."""
    from .api import Cluster
    from .ops import cancel

    _, ref, _ = _load(experiment, round_, namespace)
    deleted = cancel(Cluster.connect(ref.namespace), ref, stage)
    for line in deleted:
        click.echo(f"deleted {line}")
    if not deleted:
        click.echo(f"nothing to cancel for experiment {ref.exp.name} round {round_} in namespace {ref.namespace}")
