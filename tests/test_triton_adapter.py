"""The shared Triton model code (judging/triton_adapter.py) against a stand-in for the server's
`triton_python_backend_utils`, without a server: one response per request, a bad request fails alone with
INVALID_ARG naming its input, outputs have the batch dimension. The real server runs the same classes in
test_triton_server.py."""

from __future__ import annotations

import io
import json
import types

import numpy as np
from PIL import Image

from srum_jobs.judging.triton_adapter import BoxerModel, JudgeModel


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _Error:
    INVALID_ARG, INTERNAL = "INVALID_ARG", "INTERNAL"

    def __init__(self, message, code):
        self.message, self.code = message, code


class _Response:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors, error


class _Request:
    def __init__(self, tensors, params=None):
        self.tensors = {t.name: t for t in tensors}
        self.params = json.dumps(params or {})

    def parameters(self):
        return self.params


def _pb(log):
    return types.SimpleNamespace(
        get_input_tensor_by_name=lambda req, name: req.tensors.get(name), Tensor=_Tensor, TritonError=_Error,
        InferenceResponse=_Response, Logger=types.SimpleNamespace(log_info=log.append))


def _args(tmp_path, name, backend, params=None):
    cfg = {"parameters": {"backend": {"string_value": backend},
                          **{k: {"string_value": v} for k, v in (params or {}).items()}}}
    return {"model_config": json.dumps(cfg), "model_name": name, "model_version": "1",
            "model_repository": str(tmp_path)}


def _png(color=(255, 0, 0)) -> bytes:
    im = Image.new("RGB", (32, 32), "white")
    im.paste(color, (4, 4, 14, 14))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _bytes(value: bytes) -> np.ndarray:
    return np.array([[value]], dtype=np.object_)


def test_boxer_model_serves_a_batch_with_one_bad_request(tmp_path):
    log: list = []

    class Model(BoxerModel):
        pb = _pb(log)

    m = Model()
    m.initialize(_args(tmp_path, "srum_boxer", "components"))
    good = _Request([_Tensor("IMAGE", _bytes(_png()))], {"team": "vision"})
    corrupt = _Request([_Tensor("IMAGE", _bytes(b"not a png"))])
    missing = _Request([])
    out = m.execute([good, corrupt, missing])
    assert len(out) == 3
    boxes = {t.name: t.array for t in out[0].output_tensors}
    assert out[0].error is None and boxes["BOXES"].shape[0] == 1 and boxes["BOXES"].shape[2] == 4
    assert boxes["BOXES"].shape[1] == boxes["AREAS"].shape[1] >= 1
    assert out[1].error.code == "INVALID_ARG" and "IMAGE" in out[1].error.message
    assert out[2].error.code == "INVALID_ARG" and "missing" in out[2].error.message
    assert any("components" in line for line in log) and any("vision" in line for line in log)
    m.finalize()


def test_judge_model_answers_in_text_and_names_bad_inputs(tmp_path):
    log: list = []

    class Model(JudgeModel):
        pb = _pb(log)

    m = Model()
    m.initialize(_args(tmp_path, "srum_judge", "toy", {"preset": "test"}))
    instruction = "Rate the layout.\nPrompt: a red square\n"
    good = _Request([_Tensor("IMAGE", _bytes(_png())), _Tensor("INSTRUCTION", _bytes(instruction.encode()))])
    no_text = _Request([_Tensor("IMAGE", _bytes(_png()))])
    out = m.execute([good, no_text])
    text = {t.name: t.array for t in out[0].output_tensors}["TEXT"][0][0].decode()
    assert out[0].error is None and "Score:" in text
    assert out[1].error.code == "INVALID_ARG" and "INSTRUCTION" in out[1].error.message


def test_malformed_instruction_is_the_requests_fault_not_the_servers(tmp_path):
    """A toy-judge instruction without its `Prompt:` line is INVALID_ARG (never retried), not INTERNAL; the
    well-formed request of the same batch is served."""
    class Model(JudgeModel):
        pb = _pb([])

    m = Model()
    m.initialize(_args(tmp_path, "srum_judge", "toy", {"preset": "test"}))
    good = _Request([_Tensor("IMAGE", _bytes(_png())), _Tensor("INSTRUCTION", _bytes(b"Prompt: a red square\n"))])
    malformed = _Request([_Tensor("IMAGE", _bytes(_png())), _Tensor("INSTRUCTION", _bytes(b"hello there"))])
    out = m.execute([good, malformed])
    assert out[0].error is None
    assert out[1].error.code == "INVALID_ARG", out[1].error.message
    assert "no 'Prompt: <text>' line" in out[1].error.message


def test_pixel_cap_is_a_model_parameter_and_refuses_from_the_header(tmp_path):
    import time

    class Model(BoxerModel):
        pb = _pb([])

    m = Model()
    m.initialize(_args(tmp_path, "srum_boxer", "components", {"max_image_pixels": "1000"}))
    small = _Request([_Tensor("IMAGE", _bytes(_png()))])            # 32 x 32 = 1024 pixels
    buf = io.BytesIO()
    Image.new("1", (8192, 8192)).save(buf, "PNG")                    # what issue 17 sent: 10 s of boxer CPU
    big = buf.getvalue()
    out = m.execute([small])
    assert out[0].error.code == "INVALID_ARG" and "32x32, more than the 1000 pixels" in out[0].error.message
    m.initialize(_args(tmp_path, "srum_boxer", "components"))       # the default cap: 4096 x 4096
    t0 = time.perf_counter()
    out = m.execute([_Request([_Tensor("IMAGE", _bytes(big))]), small])
    assert time.perf_counter() - t0 < 1.0
    assert out[0].error.code == "INVALID_ARG" and "8192x8192" in out[0].error.message
    assert out[1].error is None
