"""The driver: generate -> rewards -> train -> eval -> report on the cluster, one stage at a time.

Resumable by construction: what is done is read from storage (the completion markers the stages write),
never from the driver's memory. Run it again after any interruption (driver pod evicted, laptop closed,
a stage failed and was fixed) and it skips stages complete in storage, waits for a stage Job still
running, and replaces a stage Job that failed, finished without leaving its work in storage, or was
built from another version of the experiment file; the new pods skip the shards already done.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

from .. import exitcodes
from ..stages.spec import STAGE_NAMES, get as stage_spec
from .api import Cluster, ClusterError
from .builders import RunRef, experiment_configmap, job_name, stage_objects
from .ops import JobState, failed_pod_tails, job_state, submit


class StageFailed(RuntimeError):
    def __init__(self, message: str, exit_code: int = exitcodes.FAILURE):
        super().__init__(message)
        self.exit_code = exit_code


def wait_for_job(cluster: Cluster, name: str, *, poll_s: float, timeout_s: Optional[float],
                 echo: Callable[[str], None], sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> JobState:
    """Poll a Job until it completes or fails; report each change of state once."""
    start, last = clock(), None
    while True:
        state = job_state(name, cluster.get("Job", name))
        summary = (state.phase, state.active, state.succeeded, state.failed)
        if summary != last:
            extra = " (waiting for Kueue to admit it)" if state.phase == "suspended" else ""
            echo(f"  {name}: {state.phase}, pods active/succeeded/failed {state.active}/{state.succeeded}/"
                 f"{state.failed}{extra}")
            last = summary
        if state.phase == "absent":
            raise StageFailed(f"job {name} disappeared while being waited on (deleted by `srum cancel` or by "
                              "someone else); run again to resume")
        if state.finished:
            return state
        if timeout_s is not None and clock() - start > timeout_s:
            raise ClusterError(f"job {name} did not finish within {timeout_s:.0f} s; it keeps running, and a "
                               "rerun resumes waiting for it")
        sleep(poll_s)


def orchestrate(cluster: Cluster, ref: RunRef, text: str, store: Any, *, stages: Sequence[str] = STAGE_NAMES,
                create_configmap: bool = True, poll_s: float = 15.0, timeout_s: Optional[float] = None,
                echo: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep) -> None:
    """Run `stages` in order on the cluster; raises StageFailed / ClusterError / StorageError."""
    from ..storage import RunLayout

    for s in stages:
        stage_spec(s)          # ValueError naming the stages
    layout = RunLayout(store, ref.exp.name, ref.round)
    if create_configmap:
        for r in submit(cluster, [experiment_configmap(ref, text)]):
            echo(r.line())
    for stage in [s for s in STAGE_NAMES if s in stages]:
        shards = stage_spec(stage).shards(ref.exp)
        missing = sorted(set(range(shards)) - set(layout.stage_shards_done(stage)))
        if not missing:
            echo(f"{stage}: already complete in storage ({shards} shard{'s' if shards != 1 else ''}), skipped")
            continue
        echo(f"{stage}: {shards - len(missing)}/{shards} shards done in storage, submitting")
        for r in submit(cluster, stage_objects(ref, stage), replace_stale=True, replace_finished=True,
                        poll_s=min(poll_s, 1.0), sleep=sleep):
            echo(f"  {r.line()}")
        name = job_name(ref.exp.name, ref.round, stage)
        state = wait_for_job(cluster, name, poll_s=poll_s, timeout_s=timeout_s, echo=echo, sleep=sleep)
        if state.phase == "failed":
            tails = failed_pod_tails(cluster, ref, stage)
            if state.fail_fast:
                raise StageFailed(f"{stage} failed on a configuration error, not retried: {state.message}\n{tails}",
                                  exitcodes.CONFIG_ERROR)
            raise StageFailed(f"{stage} failed after its retries ({state.reason}: {state.message}); failed indexes "
                              f"{state.failed_indexes or '-'}\n{tails}")
        missing = sorted(set(range(shards)) - set(layout.stage_shards_done(stage)))
        if missing:
            raise StageFailed(f"{stage}: job {name} completed but storage has no completion marker for shard(s) "
                              f"{missing}; the stage exited 0 without finishing its work")
        echo(f"{stage}: complete")
    echo(f"round {ref.round} of {ref.exp.name}: done")
