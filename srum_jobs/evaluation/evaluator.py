"""The evaluator: the srum_evaluator Triton model every benchmark is scored by, never the model being
trained.

`check_evaluator` refuses, with an error naming the fields, any setup where evaluation would score with
the trained model: no judge.evaluator_model, the same Triton model as judge.judge_model, or a local
evaluator backend that *is* the model under training (the `toy` judge backend is the toy model's own
understanding side; an `hf`/`bagel` evaluator whose weights are model.checkpoint).
What `srum run` serves as srum_evaluator is local/judge_server.py's `models_for_experiment`.
"""

from __future__ import annotations

from typing import Any, Dict

from ..config import ConfigError
from ..registry import JUDGE_BACKENDS


def check_evaluator(exp: Any) -> None:
    j, e = exp.judge, exp.eval
    if not j.evaluator_model:
        raise ConfigError("judge.evaluator_model is not set: the eval stage scores with a separate Triton model "
                          "(srum_evaluator), never the model being trained")
    if j.evaluator_model == j.judge_model:
        raise ConfigError(f"judge.evaluator_model is {j.evaluator_model!r}, the same Triton model as "
                          "judge.judge_model (the model being trained judges its own candidates there); "
                          "evaluation needs a different model, e.g. srum_evaluator")
    # eval.evaluator_backend describes what the local server serves as srum_evaluator (`srum run`, `srum
    # judge serve`); a shared server's operator owns what it serves there, and the model names differ
    backend = e.evaluator_backend
    # a judge backend that is the understanding side of the adapter being trained (registry trait)
    if (JUDGE_BACKENDS.trait(backend, "understanding_of") == exp.model.adapter
            and not _other_weights(e.evaluator_params, exp)):
        raise ConfigError(f"eval.evaluator_backend {backend!r} serves the understanding side of the "
                          f"{exp.model.adapter} model being trained; evaluate with a different model "
                          f"({JUDGE_BACKENDS.trait(backend, 'evaluator_hint')})")
    path = e.evaluator_params.get("model_path") or e.evaluator_params.get("checkpoint")
    if path and exp.model.checkpoint and _same(path, exp.model.checkpoint):
        raise ConfigError(f"eval.evaluator_params.model_path {path!r} is model.checkpoint, the model being "
                          "trained; evaluate with a different model")


def _same(a: str, b: str) -> bool:
    norm = lambda s: str(s).removeprefix("file://").rstrip("/")  # noqa: E731
    return norm(a) == norm(b)


def _other_weights(params: Dict[str, str], exp: Any) -> bool:
    """A self backend pointed at weights that are not the trained model's (e.g. a frozen, larger Bagel)."""
    path = params.get("model_path") or params.get("checkpoint")
    return bool(path) and not (exp.model.checkpoint and _same(path, exp.model.checkpoint))


def evaluator_transport(exp: Any, store: Any = None, cache_key: Any = None) -> Any:
    """A TritonTransport to judge.evaluator_model (no boxer: evaluation needs none)."""
    from ..judging.client import TritonTransport

    check_evaluator(exp)
    kwargs: Dict[str, Any] = {"boxer_model": None}
    if cache_key is not None:
        kwargs["cache_key"] = cache_key
    return TritonTransport.from_config(exp.judge, experiment=exp.name, store=store, evaluation=True, **kwargs)
