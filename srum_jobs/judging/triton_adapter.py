"""What every srum Triton python-backend model does, written once: `triton_models/*/1/model.py` only say
which kind of backend they serve and how their tensors map to it.

A model unpacks each request of a scheduler batch into an item (or the BadRequest that names the bad
input), hands the batch to the shared batch logic in judging/backends.py (grouping, chunking, per-request
failure isolation), logs one attribution line per batch, and packs one response per request. The Triton
module `triton_python_backend_utils` exists only inside the server's stub process, so it is passed in by
the model file (`pb` class attribute) rather than imported here; tests pass a stand-in.
"""

from __future__ import annotations

from typing import Any, List

import numpy as np

from . import backends
from .backends import BadRequest, BoxerTensors, BoxItem, JudgeItem, JudgeTensors
from .protocols import BoxOptions, JudgeParams


class ServedModel:
    """Base of TritonPythonModel: subclasses set `kind` and `pb` and define load, item, serve, outputs."""

    kind = ""            # "judge" or "boxer": names the backend in logs and errors
    pb: Any = None       # the triton_python_backend_utils module

    # ----------------------------------------------------------------------------------- hooks
    def load(self, name: str, params: Any) -> Any:
        raise NotImplementedError

    def item(self, request: Any) -> Any:
        raise NotImplementedError

    def serve(self, items: List[Any]) -> List[Any]:
        raise NotImplementedError

    def outputs(self, result: Any) -> List[Any]:
        raise NotImplementedError

    # --------------------------------------------------------------------------- Triton interface
    def single(self, request: Any, name: str, default: Any = None) -> Any:
        tensor = self.pb.get_input_tensor_by_name(request, name)
        return backends.single_value(None if tensor is None else tensor.as_numpy(), name, default)

    def error(self, result: BaseException) -> Any:
        if isinstance(result, BadRequest):
            return self.pb.TritonError(str(result), self.pb.TritonError.INVALID_ARG)
        return self.pb.TritonError(f"{self.kind} backend failed: {type(result).__name__}: {result}",
                                   self.pb.TritonError.INTERNAL)

    def initialize(self, args):
        self.model, self.version, settings = backends.triton_model_settings(args)
        self.max_chunk = settings.backend_max_batch
        self.max_image_pixels = settings.max_image_pixels
        self.backend = self.load(settings.backend, settings.params)
        self.pb.Logger.log_info(f"{self.model} v{self.version}: {self.kind} backend {settings.backend!r}, "
                                f"params {sorted(settings.params)}, backend_max_batch {self.max_chunk}, "
                                f"max_image_pixels {self.max_image_pixels}")

    def _safe_item(self, request: Any) -> Any:
        try:
            return self.item(request)
        except BadRequest as e:
            return e

    def execute(self, requests):
        results = self.serve([self._safe_item(r) for r in requests])
        who = [backends.attribution(backends.request_parameters(r.parameters())) for r in requests]
        self.pb.Logger.log_info(backends.batch_log_line(self.model, self.version, who, results))
        return [self.pb.InferenceResponse(error=self.error(r)) if isinstance(r, BaseException)
                else self.pb.InferenceResponse(output_tensors=self.outputs(r)) for r in results]

    def finalize(self):
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()


def _text(value: str) -> np.ndarray:
    return np.array([[value.encode("utf-8")]], dtype=np.object_)


class JudgeModel(ServedModel):
    """srum_judge and srum_evaluator: (image, instruction, generation parameters) -> text (+ think text)."""

    kind = "judge"
    _defaults = JudgeParams()

    def load(self, name, params):
        return backends.load_judge_backend(name, params)

    def item(self, request):
        T, d = JudgeTensors, self._defaults
        return JudgeItem(
            image=backends.decode_image(self.single(request, T.IMAGE), what=f"input {T.IMAGE}",
                                        max_pixels=self.max_image_pixels),
            instruction=backends.decode_text(self.single(request, T.INSTRUCTION), what=f"input {T.INSTRUCTION}"),
            params=backends.check_judge_params(int(self.single(request, T.MAX_NEW_TOKENS, d.max_new_tokens)),
                                               float(self.single(request, T.TEMPERATURE, d.temperature)),
                                               bool(self.single(request, T.THINK, d.think))))

    def serve(self, items):
        return backends.serve_judge_batch(self.backend, items, self.max_chunk)

    def outputs(self, result):
        return [self.pb.Tensor(JudgeTensors.TEXT, _text(result.text)),
                self.pb.Tensor(JudgeTensors.THINK_TEXT, _text(result.think_text))]


class BoxerModel(ServedModel):
    """srum_boxer: image -> region proposals (pixel xyxy boxes, areas, confidences)."""

    kind = "boxer"
    _defaults = BoxOptions()

    def load(self, name, params):
        return backends.load_boxer_backend(name, params)

    def item(self, request):
        T, d = BoxerTensors, self._defaults
        return BoxItem(
            image=backends.decode_image(self.single(request, T.IMAGE), what=f"input {T.IMAGE}",
                                        max_pixels=self.max_image_pixels),
            options=backends.check_box_options(int(self.single(request, T.POINTS_PER_SIDE, d.points_per_side)),
                                               int(self.single(request, T.MAX_REGIONS, d.max_regions)),
                                               float(self.single(request, T.MIN_AREA, d.min_area))))

    def serve(self, items):
        return backends.serve_boxer_batch(self.backend, items, self.max_chunk)

    def outputs(self, result):
        # the leading 1 is this request's batch dimension (max_batch_size > 0)
        return [self.pb.Tensor(BoxerTensors.BOXES, result.boxes.reshape(1, -1, 4)),
                self.pb.Tensor(BoxerTensors.AREAS, result.areas.reshape(1, -1)),
                self.pb.Tensor(BoxerTensors.CONFIDENCE, result.confidence.reshape(1, -1))]
