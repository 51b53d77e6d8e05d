"""What `srum enqueue / status / logs / cancel` do, over a `Cluster` (no click here).

Idempotent submission: an object that already exists is reported, never duplicated. A Job whose
experiment file differs from the one being submitted (annotation `srum.dev/experiment-sha256`) or that
has failed is replaced only when the caller asks (the orchestrator does, to resume; a plain
`srum enqueue` only reports it).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..stages.spec import STAGE_NAMES, get as stage_spec
from .api import AlreadyExists, Cluster, ClusterError
from .builders import (ANNOTATION_SHA, INDEX_LABEL, LABEL_COMPONENT, LABEL_EXPERIMENT, LABEL_ROUND, LABEL_STAGE,
                       RunRef, job_name)


@dataclass
class JobState:
    """A Job's status in one word plus the counts a person wants to see."""

    name: str
    phase: str  # absent | suspended | pending | running | complete | failed
    active: int = 0
    succeeded: int = 0
    failed: int = 0
    completed_indexes: str = ""
    failed_indexes: str = ""
    reason: str = ""
    message: str = ""
    sha: Optional[str] = None
    created: str = ""

    @property
    def finished(self) -> bool:
        return self.phase in ("complete", "failed")

    @property
    def fail_fast(self) -> bool:
        """Failed by the FailJob rule of the podFailurePolicy: a configuration error, retrying cannot help."""
        return self.phase == "failed" and self.reason == "PodFailurePolicy"


def job_state(name: str, job: Optional[Dict[str, Any]]) -> JobState:
    if job is None:
        return JobState(name, "absent")
    st = job.get("status") or {}
    meta = job.get("metadata") or {}
    state = JobState(name, "pending", active=st.get("active") or 0, succeeded=st.get("succeeded") or 0,
                     failed=st.get("failed") or 0, completed_indexes=st.get("completedIndexes") or "",
                     failed_indexes=st.get("failedIndexes") or "",
                     sha=(meta.get("annotations") or {}).get(ANNOTATION_SHA), created=meta.get("creationTimestamp", ""))
    conds = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in conds:
        state.phase = "complete"
    elif "Failed" in conds:
        state.phase, state.reason, state.message = "failed", conds["Failed"].get("reason", ""), \
            conds["Failed"].get("message", "")
    elif (job.get("spec") or {}).get("suspend"):
        state.phase = "suspended"
    elif state.active:
        state.phase = "running"
    return state


@dataclass
class Submitted:
    kind: str
    name: str
    action: str  # created | exists | replaced
    note: str = ""

    def line(self) -> str:
        return f"{self.kind.lower()} {self.name}: {self.action}{' (' + self.note + ')' if self.note else ''}"


def wait_gone(cluster: Cluster, kind: str, name: str, *, timeout_s: float = 300.0, poll_s: float = 1.0,
              sleep: Callable[[float], None] = time.sleep) -> None:
    deadline = time.monotonic() + timeout_s
    while cluster.get(kind, name) is not None:
        if time.monotonic() > deadline:
            raise ClusterError(f"{kind.lower()} {name} was deleted but is still there after {timeout_s:.0f} s "
                               "(a finalizer may be holding it)")
        sleep(poll_s)


def submit(cluster: Cluster, objects: List[Dict[str, Any]], *, replace_stale: bool = False,
           replace_finished: bool = False, poll_s: float = 1.0,
           sleep: Callable[[float], None] = time.sleep) -> List[Submitted]:
    """Create each object in order; report Jobs that are already there, or replace them when asked:
    `replace_stale` those built from a different experiment file, `replace_finished` those that failed or
    completed (the orchestrator submits a stage only when storage says it is unfinished, so a finished Job
    of that stage has to run again)."""
    out: List[Submitted] = []
    for obj in objects:
        kind, name = obj["kind"], obj["metadata"]["name"]
        try:
            cluster.create(obj)
            out.append(Submitted(kind, name, "created", _created_note(obj)))
            continue
        except AlreadyExists:
            pass
        existing = cluster.get(kind, name)
        if existing is None:  # deleted in between: try once more
            cluster.create(obj)
            out.append(Submitted(kind, name, "created", _created_note(obj)))
            continue
        if kind != "Job":
            out.append(Submitted(kind, name, "exists"))
            continue
        state = job_state(name, existing)
        want = (obj["metadata"].get("annotations") or {}).get(ANNOTATION_SHA)
        stale = state.sha != want
        if (stale and replace_stale) or (state.finished and replace_finished):
            why = "built from a different experiment file" if stale else \
                "it had failed" if state.phase == "failed" else "it had completed, but storage lacks its work"
            cluster.delete(kind, name)
            wait_gone(cluster, kind, name, poll_s=poll_s, sleep=sleep)
            cluster.create(obj)
            out.append(Submitted(kind, name, "replaced", f"{why}; finished shards are skipped"))
            continue
        note = f"{state.phase}, created {state.created}; not duplicated"
        hint = f"`srum cancel --stage {(obj['metadata'].get('labels') or {}).get(LABEL_STAGE, '...')}`"
        if stale:
            note += (f"; it was built from a different experiment file (sha256 {str(state.sha)[:12]} vs "
                     f"{str(want)[:12]}): {hint} first to replace it")
        elif state.phase == "failed":
            note += f"; {hint} first to run it again"
        out.append(Submitted(kind, name, "exists", note))
    return out


def _created_note(obj: Dict[str, Any]) -> str:
    if obj["kind"] != "Job":
        return ""
    spec = obj["spec"]
    parts = [f"{spec['completions']} pod{'s' if spec['completions'] != 1 else ''}"]
    if spec.get("completionMode") == "Indexed" and spec["completions"] > 1:
        parts.append(f"parallelism {spec['parallelism']}")
    if spec.get("suspend"):
        queue = obj["metadata"]["labels"].get("kueue.x-k8s.io/queue-name")
        parts.append(f"suspended until Kueue queue {queue} admits it")
    return ", ".join(parts)


def cancel(cluster: Cluster, ref: RunRef, stage: Optional[str] = None) -> List[str]:
    """Delete the round's driver (first, so it cannot resubmit), then its stage Jobs and Services."""
    deleted: List[str] = []
    if stage is None:
        for job in cluster.list("Job", ref.selector(component="driver")):
            if cluster.delete("Job", job["metadata"]["name"]):
                deleted.append(f"job {job['metadata']['name']} (driver)")
    for kind in ("Job", "Service"):
        for obj in cluster.list(kind, ref.selector(stage)):
            if cluster.delete(kind, obj["metadata"]["name"]):
                deleted.append(f"{kind.lower()} {obj['metadata']['name']}")
    return deleted


@dataclass
class StageStatus:
    stage: str
    job: JobState
    shards: int
    shards_done: Optional[List[int]] = None  # None: storage not readable
    storage_error: str = ""

    @property
    def complete(self) -> bool:
        return self.shards_done is not None and len(set(self.shards_done) & set(range(self.shards))) == self.shards


@dataclass
class RoundStatus:
    experiment: str
    round: int
    namespace: str
    stages: List[StageStatus] = field(default_factory=list)
    drivers: List[JobState] = field(default_factory=list)
    cluster_error: str = ""
    storage_error: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def round_status(ref: RunRef, cluster: Optional[Cluster], layout: Any, *, cluster_error: str = "",
                 storage_error: str = "") -> RoundStatus:
    """Job status from the API server and completion markers from storage; either may be unavailable."""
    from ..storage import StorageError

    rs = RoundStatus(ref.exp.name, ref.round, ref.namespace, cluster_error=cluster_error, storage_error=storage_error)
    jobs: Dict[str, Dict[str, Any]] = {}
    if cluster is not None:
        try:
            for job in cluster.list("Job", f"{LABEL_EXPERIMENT}={ref.exp.name},{LABEL_ROUND}={ref.round}"):
                jobs[job["metadata"]["name"]] = job
        except ClusterError as e:
            rs.cluster_error = str(e)
    for name, job in sorted(jobs.items()):
        if (job["metadata"].get("labels") or {}).get(LABEL_COMPONENT) == "driver":
            rs.drivers.append(job_state(name, job))
    for stage in STAGE_NAMES:
        name = job_name(ref.exp.name, ref.round, stage)
        st = StageStatus(stage, job_state(name, jobs.get(name)), stage_spec(stage).shards(ref.exp))
        if layout is not None and not rs.storage_error:
            try:
                st.shards_done = layout.stage_shards_done(stage)
            except StorageError as e:
                rs.storage_error = str(e)
        rs.stages.append(st)
    return rs


def _ranges(indexes: List[int]) -> str:
    """[0,1,2,5] -> "0-2,5" (the notation Kubernetes uses for completedIndexes)."""
    out, start, prev = [], None, None
    for i in sorted(set(indexes)):
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            out.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = i
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(out)


def format_status(rs: RoundStatus) -> str:
    lines = [f"experiment {rs.experiment}, round {rs.round}, namespace {rs.namespace}"]
    if rs.cluster_error:
        lines.append(f"  (cluster not readable: {rs.cluster_error})")
    if rs.storage_error:
        lines.append(f"  (storage not readable: {rs.storage_error})")
    for d in rs.drivers:
        lines.append(f"driver {d.name}: {d.phase}" + (f" ({d.message})" if d.message else ""))
    rows = [("stage", "job", "pods a/s/f", "shards done", "done indexes")]
    for st in rs.stages:
        j = st.job
        job = j.phase if not rs.cluster_error else "?"
        if j.phase == "failed" and j.reason:
            job += f" ({j.reason})"
        pods = f"{j.active}/{j.succeeded}/{j.failed}" if j.phase != "absent" else "-"
        if st.shards_done is None:
            done, idx = "?", ""
        else:
            n = len(set(st.shards_done) & set(range(st.shards)))
            done, idx = f"{n}/{st.shards}", _ranges(st.shards_done)
        rows.append((st.stage, job, pods, done, idx))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    failed = [st for st in rs.stages if st.job.phase == "failed" and st.job.message]
    for st in failed:
        lines.append(f"{st.stage} failed: {st.job.message}")
    lines.append("(pods a/s/f: active/succeeded/failed from the Job; shards done: completion markers in storage)")
    return "\n".join(lines)


def stage_pods(cluster: Cluster, ref: RunRef, stage: str, index: Optional[int] = None) -> List[Dict[str, Any]]:
    """Pods of a stage (optionally one completion index), oldest first."""
    selector = ref.selector(stage)
    if index is not None:
        selector += f",{INDEX_LABEL}={index}"
    pods = cluster.list("Pod", selector)
    return sorted(pods, key=lambda p: ((p["metadata"].get("labels") or {}).get(INDEX_LABEL, ""),
                                       p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]))


def failed_pod_tails(cluster: Cluster, ref: RunRef, stage: str, *, pods: int = 3, lines: int = 20) -> str:
    """The last lines of the most recent failed pods of a stage (what a person looks at first)."""
    try:
        failed = [p for p in stage_pods(cluster, ref, stage) if (p.get("status") or {}).get("phase") == "Failed"]
        out = []
        for pod in failed[-pods:]:
            name = pod["metadata"]["name"]
            out.append(f"--- last {lines} lines of pod {name} ---\n{cluster.pod_log(name, tail=lines).rstrip()}")
        return "\n".join(out)
    except ClusterError as e:
        return f"(pod logs not available: {e})"
