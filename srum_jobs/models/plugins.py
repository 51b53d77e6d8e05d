"""The real-model plugin: registers the Bagel and diffusers adapters, the Hugging Face and Bagel judge
backends and the SAM boxer (see registry.py). Names only: nothing here imports a model's code."""

from __future__ import annotations

from ..registry import BOXER_BACKENDS, JUDGE_BACKENDS, MODEL_ADAPTERS

MODEL_ADAPTERS.register("bagel", "srum_jobs.models.bagel.model:load_bagel_model",
                        hooks={"training_params": "srum_jobs.models.bagel.parallel:training_params"})
MODEL_ADAPTERS.register("diffusers", "srum_jobs.models.diffusers_flow:load_diffusers_model")

JUDGE_BACKENDS.register("hf", "srum_jobs.models.hf_judge:HFJudgeBackend")
JUDGE_BACKENDS.register("bagel", "srum_jobs.models.bagel.judge:BagelJudgeBackend", understanding_of="bagel")

BOXER_BACKENDS.register("sam", "srum_jobs.models.sam_boxer:SamBoxer")
