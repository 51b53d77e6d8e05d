"""One real local tritonserver per test run, shared by every test that asks for `triton_server`.

It serves the checked-in `triton_models/` repository, localised (KIND_CPU) with the toy world's backends:
the toy judge (test preset), the connected-components boxer and, as srum_evaluator, the toy world's
rule-based evaluator. Tests that restart or stop it leave it
running again on the same ports.
"""

from __future__ import annotations

import pytest

__all__ = ["triton_server"]

# The toy world's judge at its small test preset, and the components boxer with its defaults.
TOY_JUDGE_PARAMS = {"preset": "test"}
TOY_BOXER_PARAMS: dict = {}


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory):
    """A started `LocalTritonServer`: `.grpc_url`, `.http_url`, `.metrics_url`, `.log_path`, `.restart()`."""
    from srum_jobs.judging.server import LocalTritonServer, local_models

    server = LocalTritonServer(local_models("toy", TOY_JUDGE_PARAMS, "components", TOY_BOXER_PARAMS,
                                            evaluator_backend="toy_rules"),
                               run_dir=tmp_path_factory.mktemp("triton"))
    with server:
        yield server
