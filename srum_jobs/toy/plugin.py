"""The toy world's plugin: registers its model adapter, its judge and rule-based evaluator backends, its
connected-components boxer, its `toy://` prompt sets and its benchmark (see registry.py), with the hooks
below. Standard library only, like every plugin; the hooks import the toy world when called.
"""

from __future__ import annotations

from typing import Any, List, Mapping

from ..registry import BENCHMARKS, BOXER_BACKENDS, JUDGE_BACKENDS, MODEL_ADAPTERS, PROMPT_SOURCES

MODEL_ADAPTERS.register("toy", "srum_jobs.toy.model:load_toy_model",
                        hooks={"prepare": "srum_jobs.toy.plugin:prepare_base",
                               "check": "srum_jobs.toy.plugin:check_model"},
                        vqa_style="judge", judge_agreement=True)
JUDGE_BACKENDS.register("toy", "srum_jobs.toy.judge_backend:ToyJudgeBackend",
                        hooks={"check": "srum_jobs.toy.plugin:check_judge"},
                        understanding_of="toy", evaluator_hint="toy_rules: the toy world's rule-based evaluator",
                        request_errors=("srum_jobs.toy.judge:InstructionError",))
# the toy world's rule-based benchmark, for srum_evaluator: a different model than the one trained
JUDGE_BACKENDS.register("toy_rules", "srum_jobs.toy.rules_evaluator:ToyRulesEvaluator")
BOXER_BACKENDS.register("components", "srum_jobs.toy.components:ComponentsBoxer")
PROMPT_SOURCES.register("toy", "srum_jobs.toy.world:toy_prompts")
# the toy world's benchmark (its rules, scored by toy_rules through srum_evaluator)
BENCHMARKS.register("toy", "srum_jobs.evaluation.toy:ToyBenchmark")


def prepare_base(model: Any) -> None:
    """Build (or find cached) the base weights of the model's preset once, before the stages start, so
    the stage processes do not each pretrain them."""
    from .pretrain import ensure_base

    ensure_base(model.params.get("preset", "demo"))


def _preset_problems(preset: Any) -> List[str]:
    from .pretrain import PRESETS

    return [] if str(preset) in PRESETS else [f"preset: {preset!r} is not one of {', '.join(sorted(PRESETS))}"]


def check_model(model: Any) -> List[str]:
    """Problems of model.params (relative to it); a checkpoint brings its own configuration."""
    return [] if model.checkpoint else _preset_problems(model.params.get("preset", "demo"))


def check_judge(params: Mapping[str, Any]) -> List[str]:
    """Problems of judge.backend_params (relative to it) for a toy judge the local server loads."""
    return [] if params.get("checkpoint") else _preset_problems(params.get("preset") or "demo")
