"""Triton python-backend model `srum_judge` (and `srum_evaluator`, whose model.py links to this file):
(image, instruction, generation parameters) -> text, served by the judge backend named by the `backend`
parameter of config.pbtxt (or `<MODEL>_BACKEND` in the environment). Everything else (unpacking,
validation, batching, per-request errors) is srum_jobs.judging.triton_adapter, shared by every model here."""

import triton_python_backend_utils as pb_utils

from srum_jobs.judging.triton_adapter import JudgeModel


class TritonPythonModel(JudgeModel):
    pb = pb_utils
