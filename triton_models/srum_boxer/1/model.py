"""Triton python-backend model `srum_boxer`: image bytes -> region proposals (pixel xyxy boxes).

Only adapts tensors to the boxer backend named by the `backend` parameter of config.pbtxt (or
`SRUM_BOXER_BACKEND`); validation, grouping by options and per-request failure isolation live in
`srum_jobs.judging.backends`.
"""

import triton_python_backend_utils as pb_utils

from srum_jobs.judging import backends
from srum_jobs.judging.backends import BadRequest, BoxItem
from srum_jobs.judging.backends import BoxerTensors as T
from srum_jobs.judging.protocols import BoxOptions

_DEFAULTS = BoxOptions()


def _single(request, name, default=None):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return backends.single_value(None if tensor is None else tensor.as_numpy(), name, default)


def _error(result):
    if isinstance(result, BadRequest):
        return pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)
    return pb_utils.TritonError(f"boxer backend failed: {type(result).__name__}: {result}",
                                pb_utils.TritonError.INTERNAL)


class TritonPythonModel:
    def initialize(self, args):
        self.model, self.version, settings = backends.triton_model_settings(args)
        self.max_chunk = settings.backend_max_batch
        self.backend = backends.load_boxer_backend(settings.backend, settings.params)
        pb_utils.Logger.log_info(f"{self.model} v{self.version}: boxer backend {settings.backend!r}, "
                                 f"params {sorted(settings.params)}, backend_max_batch {self.max_chunk}")

    def _item(self, request):
        try:
            return BoxItem(
                image=backends.decode_image(_single(request, T.IMAGE), what=f"input {T.IMAGE}"),
                options=backends.check_box_options(
                    int(_single(request, T.POINTS_PER_SIDE, _DEFAULTS.points_per_side)),
                    int(_single(request, T.MAX_REGIONS, _DEFAULTS.max_regions)),
                    float(_single(request, T.MIN_AREA, _DEFAULTS.min_area))))
        except BadRequest as e:
            return e

    def execute(self, requests):
        results = backends.serve_boxer_batch(self.backend, [self._item(r) for r in requests], self.max_chunk)
        who = [backends.attribution(backends.request_parameters(r.parameters())) for r in requests]
        pb_utils.Logger.log_info(backends.batch_log_line(self.model, self.version, who, results))
        responses = []
        for result in results:
            if isinstance(result, BaseException):
                responses.append(pb_utils.InferenceResponse(error=_error(result)))
                continue
            # The leading 1 is this request's batch dimension (max_batch_size > 0).
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(T.BOXES, result.boxes.reshape(1, -1, 4)),
                pb_utils.Tensor(T.AREAS, result.areas.reshape(1, -1)),
                pb_utils.Tensor(T.CONFIDENCE, result.confidence.reshape(1, -1)),
            ]))
        return responses

    def finalize(self):
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()
