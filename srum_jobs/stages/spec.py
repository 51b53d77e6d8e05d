"""The stage table: one definition of each stage, read by every part that runs, lists or counts stages:
the CLI (`srum stage`, `srum run --stages`), the local executor, the cluster builders, the driver and
`srum status`.

A stage is a step of one round that reads its inputs from storage and writes its outputs there, with a
completion marker per shard written last. What differs between stages is here and nowhere else: whether
it is sharded (one marker and one Indexed-Job pod per prompt shard), whether it needs the judge server or
a GPU, whether it runs under torchrun, and the module that runs it. Every stage module has the same entry
point, `run(exp, round, shard, num_shards, *, progress)`, for one shard (0 of 1 for an unsharded stage).

Adding a stage: its module (with `run`), and its row in STAGES below.

Only the standard library is imported here: `srum --help` and the cluster commands read this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

Shard = Union[int, str]     # an index, or a placeholder such as "$(JOB_COMPLETION_INDEX)" in a pod command


@dataclass(frozen=True)
class StageSpec:
    name: str
    summary: str                 # one line: `srum stage --help`
    module: str                  # the module whose run(exp, round, shard, num_shards, *, progress) runs one shard
    shardable: bool              # one completion marker per prompt shard; otherwise one marker (shard 0)
    needs_judge: bool            # talks to the judge server (judge.url, or the local server `srum run` starts)
    needs_gpu: bool              # with a real model (the toy world runs on CPU)
    distributed: bool = False    # runs under torchrun: one process per GPU, possibly several nodes

    def uses_judge(self, exp: Any) -> bool:
        """Whether this stage of this experiment talks to the judge server (eval: every benchmark, the toy
        one included, is scored by the server's srum_evaluator model)."""
        return self.needs_judge

    def shards(self, exp: Any) -> int:
        """How many completion markers the stage writes (and how many pods its Job has)."""
        return exp.prompts.num_shards if self.shardable else 1

    def args(self, experiment_path: str, round: int, *, shard: Optional[Shard] = None,
             num_shards: Optional[int] = None, progress: bool = True) -> List[str]:
        """Options of `srum stage NAME` (and of the torchrun module): shard None = every shard."""
        out = ["--experiment", str(experiment_path), "--round", str(round)]
        if shard is not None:
            if not self.shardable:
                raise ValueError(f"stage {self.name} is not sharded")
            out += ["--shard", str(shard)] + (["--num-shards", str(num_shards)] if num_shards is not None else [])
        if not progress:
            out.append("--no-progress")
        return out

    def command(self, experiment_path: str, round: int, **kw: Any) -> List[str]:
        """`srum` arguments that run the stage: ["stage", NAME, ...options]."""
        return ["stage", self.name] + self.args(experiment_path, round, **kw)

    def run(self, exp: Any, round: int, shard: Optional[int] = None, num_shards: Optional[int] = None, *,
            progress: bool = True) -> Any:
        """Run the stage in this process: one shard, or every shard in order (shard None). The stage
        modules import torch, numpy and the model registry: imported now, not when the table is read."""
        n = num_shards or self.shards(exp)
        if shard is not None and not 0 <= shard < n:
            raise ValueError(f"shard {shard} is out of range for {n} shards")
        stage = importlib.import_module(self.module)
        out = [stage.run(exp, round, s, n, progress=progress) for s in ([shard] if shard is not None else range(n))]
        return out[0] if len(out) == 1 else out


STAGES: Dict[str, StageSpec] = {s.name: s for s in (
    StageSpec("generate", "Generate K candidates per prompt of a shard, box and judge them (reward records).",
              "srum_jobs.stages.generate", shardable=True, needs_judge=True, needs_gpu=True),
    StageSpec("rewards", "Build the reward map of every judged candidate of a shard.",
              "srum_jobs.stages.rewards", shardable=True, needs_judge=False, needs_gpu=False),
    StageSpec("train", "Reward-weighted fine-tuning (torchrun for several processes or nodes).",
              "srum_jobs.stages.train", shardable=False, needs_judge=False, needs_gpu=True, distributed=True),
    StageSpec("eval", "Score the base and the trained model on held-out prompts (one shard of them).",
              "srum_jobs.stages.evaluate", shardable=True, needs_judge=True, needs_gpu=True),
    StageSpec("report", "Write the HTML and Markdown report of a round.",
              "srum_jobs.stages.report", shardable=False, needs_judge=False, needs_gpu=False),
)}
STAGE_NAMES: Tuple[str, ...] = tuple(STAGES)


def get(name: str) -> StageSpec:
    try:
        return STAGES[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}") from None


def parse_stage_list(text: str) -> Tuple[str, ...]:
    """'generate,train' -> ('generate', 'train') in pipeline order; ValueError naming unknown ones."""
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STAGES]
    if unknown or not chosen:
        raise ValueError(f"unknown stage(s) {unknown or [text]}; stages are {', '.join(STAGE_NAMES)}")
    return tuple(s for s in STAGE_NAMES if s in chosen)


# The module that runs `srum stage NAME ...` in a child process (the local executor's children, the torchrun
# workers): the CLI, so a child takes the one entry path (loading, checks, exit codes) like a pod does.
CLI_MODULE = "srum_jobs.cli"


def launcher_argv(python: str, nproc: int, stage_command: Sequence[str], *,
                  torchrun_args: Sequence[str] = ()) -> List[str]:
    """The command that runs a distributed stage under torchrun through `stages.launch`: every worker runs
    `stage_command` (StageSpec.command: `stage NAME ...`), and the launcher passes a worker's exit code
    through (plain torchrun turns every failure into 1, hiding a 78 or a 74)."""
    return [python, "-m", "srum_jobs.stages.launch", f"--nproc-per-node={nproc}", *torchrun_args, "--",
            *stage_command]
