"""Shared fixtures. Servers the tests need (moto's S3, tritonserver) are started by the tests themselves,
on loopback ports, once per test run."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

# The Triton fixture lives beside the judge-server tests; importing it here shares one server per run.
if os.path.exists(os.path.join(os.path.dirname(__file__), "triton_fixture.py")):
    from tests.triton_fixture import *  # noqa: F401,F403


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real HTTP S3 endpoint: moto in server mode on a loopback port."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    old = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    # moto accepts any credentials; these are dummies for the test endpoint only.
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh bucket on the moto endpoint; returns its name."""
    import boto3

    name = f"srum-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name
