"""The evaluator: the srum_evaluator Triton model every benchmark is scored by, never the model being
trained.

`check_evaluator` refuses, with an error naming the fields, any setup where evaluation would score with
the trained model: no judge.evaluator_model, the same Triton model as judge.judge_model, or a local
evaluator backend that *is* the model under training (the `toy` judge backend is the toy model's own
understanding side; an `hf`/`bagel` evaluator whose weights are model.checkpoint).
`local_evaluator_models` is what `srum run` adds to its local Triton server.
"""

from __future__ import annotations

from typing import Any, Dict

from ..config import ConfigError

# Judge backends that are the understanding side of a model adapter of the same name.
_SELF_BACKENDS = {"toy": "toy", "bagel": "bagel"}


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
    if _SELF_BACKENDS.get(backend) == exp.model.adapter and not _other_weights(e.evaluator_params, exp):
        raise ConfigError(f"eval.evaluator_backend {backend!r} serves the understanding side of the "
                          f"{exp.model.adapter} model being trained; evaluate with a different model "
                          + ("(toy_rules: the toy world's rule-based evaluator)" if backend == "toy"
                             else "(e.g. hf with a Qwen2.5-VL model_path)"))
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


def local_evaluator_models(exp: Any) -> Dict[str, Any]:
    """{srum_evaluator: ModelSpec} for the local server of `srum run`, from eval.evaluator_backend/params."""
    from ..judging.server import EVALUATOR_MODEL, ModelSpec

    if exp.judge.evaluator_model != EVALUATOR_MODEL:
        return {}
    check_evaluator(exp)
    return {EVALUATOR_MODEL: ModelSpec(exp.eval.evaluator_backend, dict(exp.eval.evaluator_params))}


def evaluator_transport(exp: Any, store: Any = None, cache_key: Any = None) -> Any:
    """A TritonTransport to judge.evaluator_model (no boxer: evaluation needs none)."""
    from ..judging.client import TritonTransport

    check_evaluator(exp)
    kwargs: Dict[str, Any] = {"boxer_model": None}
    if cache_key is not None:
        kwargs["cache_key"] = cache_key
    return TritonTransport.from_config(exp.judge, experiment=exp.name, store=store, evaluation=True, **kwargs)
