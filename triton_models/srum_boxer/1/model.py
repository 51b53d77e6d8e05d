"""Triton python-backend model `srum_boxer`: image bytes -> region proposals (pixel xyxy boxes), served by
the boxer backend named by the `backend` parameter of config.pbtxt (or `SRUM_BOXER_BACKEND`). Everything
else is srum_jobs.judging.triton_adapter, shared by every model here."""

import triton_python_backend_utils as pb_utils

from srum_jobs.judging.triton_adapter import BoxerModel


class TritonPythonModel(BoxerModel):
    pb = pb_utils
