"""Triton python-backend model `srum_judge` (and `srum_evaluator`, whose model.py links to this file).

Only adapts tensors: unpacks each request of a scheduler batch, hands the batch to the judge backend named
by the `backend` parameter of config.pbtxt (or `<MODEL>_BACKEND` in the environment), and packs one
response per request. Validation, grouping by generation parameters and per-request failure isolation live
in `srum_jobs.judging.backends`, shared with every other way of serving a backend.
"""

import numpy as np
import triton_python_backend_utils as pb_utils

from srum_jobs.judging import backends
from srum_jobs.judging.backends import BadRequest, JudgeItem
from srum_jobs.judging.backends import JudgeTensors as T
from srum_jobs.judging.protocols import JudgeParams

_DEFAULTS = JudgeParams()


def _single(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return backends.single_value(None if tensor is None else tensor.as_numpy(), name, default)


def _error(result):
    if isinstance(result, BadRequest):
        return pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)
    return pb_utils.TritonError(f"judge backend failed: {type(result).__name__}: {result}",
                                pb_utils.TritonError.INTERNAL)


class TritonPythonModel:
    def initialize(self, args):
        self.model, self.version, settings = backends.triton_model_settings(args)
        self.max_chunk = settings.backend_max_batch
        self.backend = backends.load_judge_backend(settings.backend, settings.params)
        pb_utils.Logger.log_info(f"{self.model} v{self.version}: judge backend {settings.backend!r}, "
                                 f"params {sorted(settings.params)}, backend_max_batch {self.max_chunk}")

    def _item(self, request):
        try:
            return JudgeItem(
                image=backends.decode_image(_single(request, T.IMAGE), what=f"input {T.IMAGE}"),
                instruction=backends.decode_text(_single(request, T.INSTRUCTION), what=f"input {T.INSTRUCTION}"),
                params=backends.check_judge_params(
                    int(_single(request, T.MAX_NEW_TOKENS, _DEFAULTS.max_new_tokens)),
                    float(_single(request, T.TEMPERATURE, _DEFAULTS.temperature)),
                    bool(_single(request, T.THINK, _DEFAULTS.think))))
        except BadRequest as e:
            return e

    def execute(self, requests):
        results = backends.serve_judge_batch(self.backend, [self._item(r) for r in requests], self.max_chunk)
        who = [backends.attribution(backends.request_parameters(r.parameters())) for r in requests]
        pb_utils.Logger.log_info(backends.batch_log_line(self.model, self.version, who, results))
        responses = []
        for result in results:
            if isinstance(result, BaseException):
                responses.append(pb_utils.InferenceResponse(error=_error(result)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(T.TEXT, np.array([[result.text.encode("utf-8")]], dtype=np.object_)),
                pb_utils.Tensor(T.THINK_TEXT, np.array([[result.think_text.encode("utf-8")]], dtype=np.object_)),
            ]))
        return responses

    def finalize(self):
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()
