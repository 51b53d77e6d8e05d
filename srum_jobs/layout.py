"""The run layout: where every artifact of an experiment round lives in storage, and the readers that more
than one part of the program uses. Every storage key of a run is made here and nowhere else, so stages
never import each other for a key, and a reader (the report, the driver, `srum status`) needs no stage
module (and no torch) to find a stage's output.

Keys are part of the storage format: a run started by an earlier version resumes only if they stay
byte-identical. The README's "Run layout in storage" shows the tree.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from .storage import NotFound, ObjectStore, normalise_key

CHECKPOINT_MANIFEST = "manifest.json"     # a checkpoint is complete when its checksum sidecar exists


@dataclass
class RunLayout:
    """Where one experiment round keeps its artifacts (keys relative to the storage root):

    <experiment>/lease.json                                  who runs the experiment now
    <experiment>/judge-cache/<sha>.json                      judgments, shared by every round
    <experiment>/round-<r>/prompts/prompts.jsonl             the normalised prompt list (+ .sha256)
    <experiment>/round-<r>/prompts/eval_prompts.jsonl        the held-out prompt list (+ .sha256)
    <experiment>/round-<r>/candidates/shard-<i>/<idx>/<k>.png
    <experiment>/round-<r>/judgments/shard-<i>/items/<idx>-<k>.json   one record per candidate, as it finishes
    <experiment>/round-<r>/judgments/shard-<i>/records.jsonl          the shard's records, written at completion
    <experiment>/round-<r>/rewards/shard-<i>/<pid>-<k>.rmap           reward map (+ .sha256)
    <experiment>/round-<r>/rewards/shard-<i>/index.jsonl, summary.json   every record's use; the shard's counts
    <experiment>/round-<r>/train/metrics-<n>.jsonl                    the loss curve up to checkpoint step n
    <experiment>/round-<r>/checkpoints/step-<n>/<part>.pt             complete when manifest.json.sha256 exists
    <experiment>/round-<r>/eval/<benchmark>/prompts.jsonl             the benchmark's prompt list
    <experiment>/round-<r>/eval/<benchmark>/<variant>/<mode>/shard-<i>/items/, images/, results.jsonl
    <experiment>/round-<r>/eval/understanding/<variant>/shard-<i>/results.jsonl
    <experiment>/round-<r>/eval/analyses/<analysis>/<name>.json; eval/summary.json
    <experiment>/round-<r>/report/report.html, report.md
    <experiment>/round-<r>/markers/<stage>/shard-<i>.json             written last: the shard is done
    <experiment>/round-<r>/quarantine/<key>.<time>                    damaged objects, set aside (+ .why)

    `before_commit`, when set, runs before every marker is written (and before a checkpoint manifest): a
    writer whose lease was taken over stops there instead of committing.
    """

    store: ObjectStore
    experiment: str
    round: int = 1
    before_commit: Optional[Callable[[], None]] = None

    def __post_init__(self) -> None:
        normalise_key(self.experiment)
        if self.round < 1:
            raise ValueError(f"round must be >= 1, got {self.round}")

    @property
    def exp_prefix(self) -> str:
        return self.experiment

    @property
    def prefix(self) -> str:
        return f"{self.experiment}/round-{self.round}"

    def key(self, *parts: Any) -> str:
        return normalise_key("/".join([self.prefix, *map(str, parts)]))

    # well-known keys
    @property
    def prompts_key(self) -> str:
        return self.key("prompts", "prompts.jsonl")

    @property
    def eval_prompts_key(self) -> str:
        return self.key("prompts", "eval_prompts.jsonl")

    @property
    def lease_key(self) -> str:
        return normalise_key(f"{self.experiment}/lease.json")

    def cache_key(self, digest: str) -> str:
        return normalise_key(f"{self.experiment}/judge-cache/{digest[:2]}/{digest}.json")

    def shard_prefix(self, area: str, shard: int) -> str:
        return self.key(area, f"shard-{shard:05d}") + "/"

    # generate: candidates (<idx> = the prompt's index in the round's list) and their reward records
    def candidate_image_key(self, shard: int, prompt_index: int, k: int) -> str:
        return self.shard_prefix("candidates", shard) + f"{prompt_index:06d}/{k}.png"

    def candidate_records_prefix(self, shard: int) -> str:
        return self.shard_prefix("judgments", shard) + "items/"

    def candidate_record_key(self, shard: int, prompt_index: int, k: int) -> str:
        return self.candidate_records_prefix(shard) + f"{prompt_index:06d}-{k}.json"

    def records_key(self, shard: int) -> str:
        return self.shard_prefix("judgments", shard) + "records.jsonl"

    # rewards
    def reward_map_key(self, shard: int, prompt_id: str, k: int) -> str:
        return self.shard_prefix("rewards", shard) + f"{prompt_id}-{k}.rmap"

    def rewards_index_key(self, shard: int) -> str:
        return self.shard_prefix("rewards", shard) + "index.jsonl"

    def rewards_summary_key(self, shard: int) -> str:
        return self.shard_prefix("rewards", shard) + "summary.json"

    # train
    def metrics_key(self, step: int) -> str:
        return self.key("train", f"metrics-{step:07d}.jsonl")

    # eval: `run` is an evaluation.run.Run (benchmark, variant, mode)
    def benchmark_prompts_key(self, benchmark: str) -> str:
        return self.key("eval", benchmark, "prompts.jsonl")

    def eval_run_prefix(self, run: Any, shard: int) -> str:
        return self.shard_prefix(f"eval/{run.benchmark}/{run.variant}/{run.mode}", shard)

    def eval_items_prefix(self, run: Any, shard: int) -> str:
        return self.eval_run_prefix(run, shard) + "items/"

    def eval_item_key(self, run: Any, shard: int, item: str) -> str:
        return self.eval_items_prefix(run, shard) + f"{item}.json"

    def eval_image_key(self, run: Any, shard: int, item: str) -> str:
        return self.eval_run_prefix(run, shard) + f"images/{item}.png"

    def eval_results_key(self, run: Any, shard: int) -> str:
        return self.eval_run_prefix(run, shard) + "results.jsonl"

    def understanding_key(self, variant: str, shard: int) -> str:
        return self.shard_prefix(f"eval/understanding/{variant}", shard) + "results.jsonl"

    def analysis_prefix(self, analysis: str) -> str:
        return self.key("eval", "analyses", analysis) + "/"

    def analysis_key(self, analysis: str, name: str) -> str:
        return self.key("eval", "analyses", analysis, f"{name}.json")

    @property
    def eval_summary_key(self) -> str:
        return self.key("eval", "summary.json")

    # report
    def report_key(self, name: str) -> str:
        return self.key("report", name)

    def marker_key(self, stage: str, shard: int = 0) -> str:
        from .stages.spec import STAGES

        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        return self.key("markers", stage, f"shard-{shard:05d}.json")

    @property
    def checkpoints_prefix(self) -> str:
        return self.key("checkpoints") + "/"

    def checkpoint_prefix(self, step: int) -> str:
        return self.key("checkpoints", f"step-{step:07d}") + "/"

    def checkpoint_part_key(self, step: int, part: str) -> str:
        return self.checkpoint_prefix(step) + f"{part}.pt"

    def checkpoint_manifest_key(self, step: int) -> str:
        return self.checkpoint_prefix(step) + CHECKPOINT_MANIFEST

    # completion markers
    def check_commit(self) -> None:
        if self.before_commit is not None:
            self.before_commit()

    def mark_done(self, stage: str, shard: int = 0, **summary: Any) -> None:
        self.check_commit()
        self.store.put_json(self.marker_key(stage, shard), {"stage": stage, "shard": shard, "round": self.round,
                                                             "finished_at": time.time(), **summary})

    def unmark(self, stage: str, shard: int = 0) -> None:
        """Forget that a shard is done (its output was found damaged and is being redone)."""
        self.store.delete(self.marker_key(stage, shard))

    def quarantine(self, key: str, why: str) -> str:
        """Move a damaged object (and its sidecar) aside, never deleting it, with a note saying why;
        returns its new key."""
        rel = key[len(self.prefix) + 1:] if key.startswith(self.prefix + "/") else key
        dst = self.key("quarantine", f"{rel}.{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        self.store.move(key, dst)
        self.store.put_text(dst + ".why", why + "\n")
        return dst

    def shard_done(self, stage: str, shard: int = 0) -> bool:
        return self.store.exists(self.marker_key(stage, shard))

    def marker(self, stage: str, shard: int = 0) -> Optional[dict]:
        try:
            return self.store.get_json(self.marker_key(stage, shard))
        except NotFound:
            return None

    def stage_shards_done(self, stage: str) -> List[int]:
        prefix = self.key("markers", stage) + "/"
        done = []
        for k in self.store.list(prefix):
            name = k.rsplit("/", 1)[-1]
            if name.startswith("shard-") and name.endswith(".json"):
                done.append(int(name[len("shard-"):-len(".json")]))
        return sorted(done)

    def shards_missing(self, stage: str, num_shards: int) -> List[int]:
        """The shards of `stage` whose completion marker is not in storage."""
        return sorted(set(range(num_shards)) - set(self.stage_shards_done(stage)))

    def completed_checkpoints(self) -> List[int]:
        """Steps whose checkpoint manifest is complete (its checksum sidecar exists), ascending."""
        steps = []
        for k in self.store.list(self.checkpoints_prefix):
            parts = k.split("/")
            if parts[-1] == CHECKPOINT_MANIFEST and parts[-2].startswith("step-"):
                if self.store.is_complete(k):
                    steps.append(int(parts[-2][len("step-"):]))
        return sorted(steps)

    # ------------------------------------------------------------------ readers of more than one part
    def rewards_index(self, shard: int, *, verify: bool = True) -> List[Dict[str, Any]]:
        """A rewards shard's index: one entry per reward record (used or not, and why)."""
        text = self.store.get_text(self.rewards_index_key(shard), verify=verify)
        return [json.loads(line) for line in text.splitlines() if line]

    def training_index(self, num_shards: int) -> List[Dict[str, Any]]:
        """Every used record of the round, across shards, in a fixed order (the trainer's data)."""
        out = []
        for s in range(num_shards):
            if not self.shard_done("rewards", s):
                raise RuntimeError(f"train: rewards shard {s} of round {self.round} is not complete")
            for e in self.rewards_index(s):
                if e["used"]:
                    e["shard"] = s
                    out.append(e)
        return out

    def metrics(self) -> List[Dict[str, float]]:
        """The loss curve, in step order, from the per-checkpoint metric files."""
        rows: List[Dict[str, float]] = []
        for key in self.store.list(self.key("train") + "/"):
            if key.rsplit("/", 1)[-1].startswith("metrics-"):
                rows.extend(json.loads(line) for line in self.store.get_text(key).splitlines() if line)
        return sorted(rows, key=lambda r: r["step"])

    def eval_summary(self) -> Dict[str, Any]:
        """The eval stage's summary (written when its last shard finishes); NotFound before."""
        return self.store.get_json(self.eval_summary_key)
