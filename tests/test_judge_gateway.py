"""The judge gateway (judging/gateway.py) in front of a real local tritonserver, over real gRPC with TLS:
a missing or wrong team key is refused before Triton, the right key gets judgments, one team's flood does
not starve another team (bounded loopback load), and the per-team metrics count what happened."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import time
import urllib.request

import pytest

from srum_jobs.judging.gateway import GatewayConfigError, JudgeGateway, TeamPolicy, key_digest, load_keys
from srum_jobs.judging.protocols import JudgeParams

KEY_A, KEY_B = "team-a-key-0123456789", "team-b-key-9876543210"


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "srum-judge")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def gateway(triton_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway")
    cert, key = _self_signed(tmp)
    teams = {"team-a": TeamPolicy("team-a", key_digest(KEY_A), max_in_flight=2, queue_timeout_s=30.0),
             "team-b": TeamPolicy("team-b", key_digest(KEY_B), max_in_flight=2)}
    thread = JudgeGateway(triton_server.grpc_url, teams, tls_cert=cert, tls_key=key).run_in_thread()
    thread.url = f"127.0.0.1:{thread.gateway.port}"
    thread.ca = cert
    yield thread
    thread.stop()


def _inputs(n, seed=0):
    from tests.test_triton_server import _toy_inputs

    return _toy_inputs(n)


def _transport(gateway, key, **kw):
    from srum_jobs.judging.client import TritonTransport

    return TritonTransport(gateway.url, boxer_model=None, key=key, tls_ca_file=gateway.ca, connect_timeout_s=5, **kw)


@pytest.mark.triton
def test_missing_or_wrong_key_is_refused_and_the_right_one_is_served(gateway):
    from srum_jobs.judging.client import JudgeEndpointError

    (png, text), = _inputs(1)

    async def go(key):
        async with _transport(gateway, key) as t:
            return await t.judge(png, text, JudgeParams(max_new_tokens=16))

    for key in (None, "not-a-team-key"):
        with pytest.raises(JudgeEndpointError, match="UNAUTHENTICATED"):
            asyncio.run(go(key))
    reply = asyncio.run(go(KEY_A))
    assert reply.text.startswith("Score:")
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{gateway.gateway.metrics_port}/metrics", timeout=10).read().decode()
    assert 'srum_judge_gateway_requests_total{team="team-a",code="OK"}' in metrics
    assert "srum_judge_gateway_unauthenticated_total 2" in metrics


@pytest.mark.triton
def test_plaintext_client_cannot_talk_to_the_tls_gateway(gateway):
    from srum_jobs.judging.client import JudgeEndpointError, TritonTransport

    async def go():
        async with TritonTransport(gateway.url, boxer_model=None, key=KEY_A, connect_timeout_s=2):
            pass

    with pytest.raises(JudgeEndpointError, match="no ready Triton judge server"):
        asyncio.run(go())


@pytest.mark.triton
def test_one_teams_flood_does_not_starve_another(gateway):
    """Team A keeps 48 requests in flight (its limit is 2 at Triton); team B, meanwhile, asks 20 questions one
    at a time. B's answers come at the pace of an idle server plus at most A's two slots, never behind A's queue."""
    flood, lone = _inputs(48), _inputs(20)

    async def go():
        async with _transport(gateway, KEY_A, max_in_flight=48, timeout_s=120) as ta, \
                _transport(gateway, KEY_B) as tb:
            started = time.perf_counter()
            flood_task = asyncio.gather(*[ta.judge(p, s, JudgeParams(max_new_tokens=16)) for p, s in flood * 3])
            await asyncio.sleep(0.2)                          # A's queue is full before B starts
            latencies = []
            for p, s in lone:
                t0 = time.perf_counter()
                await tb.judge(p, s, JudgeParams(max_new_tokens=16))
                latencies.append(time.perf_counter() - t0)
            b_done = time.perf_counter() - started
            replies = await flood_task
            a_done = time.perf_counter() - started
        return latencies, b_done, a_done, replies

    latencies, b_done, a_done, replies = asyncio.run(go())
    assert len(replies) == 144 and all(r.text.startswith("Score:") for r in replies)
    assert b_done < a_done, "team B finished its 20 questions before team A's flood of 144 was through"
    latencies.sort()
    # an idle toy judge answers in a few ms; behind A's 144 queued requests B would wait seconds
    assert latencies[len(latencies) // 2] < 0.5, latencies
    import re

    metrics = gateway.gateway.metrics_text()
    # 20 judgments plus the readiness and metadata calls of the client's start()
    ok_b = int(re.search(r'srum_judge_gateway_requests_total\{team="team-b",code="OK"\} (\d+)', metrics).group(1))
    assert ok_b >= 20


def test_keys_file_is_validated_naming_the_field(tmp_path):
    p = tmp_path / "keys.json"
    p.write_text(json.dumps({"teams": {"a": {"key_sha256": key_digest("x"), "max_in_flight": 4}}}))
    assert load_keys(p)["a"].max_in_flight == 4
    for doc, message in (({"teams": {}}, "non-empty mapping 'teams'"),
                         ({"teams": {"a": {"key_sha256": "abc"}}}, r"teams\.a\.key_sha256 must be 64 hex"),
                         ({"teams": {"a": {"key_sha256": key_digest("x"), "max_infligt": 3}}}, "unknown field"),
                         ({"teams": {"a": {"key_sha256": key_digest("x")}, "b": {"key_sha256": key_digest("x")}}},
                          "the same key as team a")):
        p.write_text(json.dumps(doc))
        with pytest.raises(GatewayConfigError, match=message):
            load_keys(p)
    with pytest.raises(GatewayConfigError, match="keys file not found"):
        load_keys(tmp_path / "nope.json")


def test_client_reads_the_key_from_a_file_or_the_environment_never_the_experiment(tmp_path, monkeypatch):
    from srum_jobs.config import JudgeConfig
    from srum_jobs.judging.client import JudgeEndpointError, team_key

    monkeypatch.setenv("SRUM_JUDGE_KEY", "from-env")
    assert team_key(JudgeConfig()) == "from-env"
    (tmp_path / "key").write_text("from-file\n")
    assert team_key(JudgeConfig(key_file=str(tmp_path / "key"))) == "from-file"
    with pytest.raises(JudgeEndpointError, match="cannot read the team key"):
        team_key(JudgeConfig(key_file=str(tmp_path / "missing")))
    assert "key" not in JudgeConfig.model_fields   # no field can hold the key itself


@pytest.mark.slow
@pytest.mark.triton
def test_serve_command_puts_the_gateway_in_front(tmp_path):
    """`srum judge serve --keys-file` (real subprocess): the printed gRPC address is the gateway's; a key from the
    environment is served, none is refused."""
    import os
    import re
    import signal
    import subprocess
    import sys

    from srum_jobs.judging.client import JudgeEndpointError, TritonTransport
    from tests.test_triton_server import ready_banner

    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"teams": {"qa": {"key_sha256": key_digest(KEY_B), "max_in_flight": 4}}}))
    cmd = [sys.executable, "-m", "srum_jobs.cli", "judge", "serve", "--keys-file", str(keys), "--param",
           "preset=test", "--run-dir", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out = ready_banner(proc)
        url = re.search(r"grpc\s+(\S+) \(gateway: team keys; teams qa\)", out).group(1)
        (png, text), = _inputs(1)

        async def go(key):
            async with TritonTransport(url, boxer_model=None, key=key, connect_timeout_s=5) as t:
                return await t.judge(png, text, JudgeParams(max_new_tokens=16))

        assert asyncio.run(go(KEY_B)).text.startswith("Score:")
        with pytest.raises(JudgeEndpointError, match="UNAUTHENTICATED"):
            asyncio.run(go(None))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
