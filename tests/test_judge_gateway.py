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


def _scene_png(size=512) -> bytes:
    """A busy scene the components boxer needs ~50 ms for (a judgment of the toy judge takes ~3 ms, too
    little for any backlog to build up at Triton)."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    img = np.full((size, size, 3), 255, np.uint8)
    for _ in range(12):
        x, y = rng.integers(0, size - 64, 2)
        img[y:y + 60, x:x + 60] = rng.integers(0, 255, 3)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def _flood(url, ca, n_flood=150, n_lone=5):
    """Team A sends 150 box proposals at once (~4 s of boxer work); 0.2 s later team B asks for 5, one at a
    time. Returns B's latencies (s, sorted), when B finished and when A finished (s from the start)."""
    from srum_jobs.judging.client import TritonTransport
    from srum_jobs.judging.protocols import BoxOptions

    png = _scene_png()

    async def go():
        async with TritonTransport(url, key=KEY_A, tls_ca_file=ca, max_in_flight=n_flood, timeout_s=120) as ta, \
                TritonTransport(url, key=KEY_B, tls_ca_file=ca, timeout_s=120) as tb:
            started = time.perf_counter()
            flood_task = asyncio.gather(*[ta.propose_boxes(png, BoxOptions()) for _ in range(n_flood)])
            await asyncio.sleep(0.2)                          # A's backlog is there before B starts
            latencies = []
            for _ in range(n_lone):
                t0 = time.perf_counter()
                await tb.propose_boxes(png, BoxOptions())
                latencies.append(time.perf_counter() - t0)
            b_done = time.perf_counter() - started
            assert len(await flood_task) == n_flood
            return sorted(latencies), b_done, time.perf_counter() - started

    return asyncio.run(go())


@pytest.mark.triton
def test_one_teams_flood_does_not_starve_another(gateway, triton_server):
    """With team A limited to 2 requests at Triton, team B's requests wait behind at most those 2, not behind
    A's backlog: B finishes long before A. The same flood through a gateway without limits (the control)
    puts B behind A's whole backlog."""
    import re

    limited, b_done, a_done = _flood(gateway.url, gateway.ca)
    teams = {"team-a": TeamPolicy("team-a", key_digest(KEY_A), max_in_flight=10_000),
             "team-b": TeamPolicy("team-b", key_digest(KEY_B), max_in_flight=10_000)}
    control = JudgeGateway(triton_server.grpc_url, teams, tls_cert=gateway.ca,
                           tls_key=gateway.ca.replace("tls.crt", "tls.key")).run_in_thread()
    try:
        unlimited, _, _ = _flood(f"127.0.0.1:{control.gateway.port}", gateway.ca)
    finally:
        control.stop()
    print(f"team B, s per request: limited {[round(v, 3) for v in limited]}, no limits "
          f"{[round(v, 3) for v in unlimited]}; with limits B done at {b_done:.1f} s, A at {a_done:.1f} s")
    assert b_done < a_done, (b_done, a_done)
    assert limited[-1] < 1.0, limited
    assert unlimited[-1] > 2 * limited[-1], (limited, unlimited)
    metrics = gateway.gateway.metrics_text()
    # B's requests plus the readiness and metadata calls of the client's start()
    ok_b = int(re.search(r'srum_judge_gateway_requests_total\{team="team-b",code="OK"\} (\d+)', metrics).group(1))
    assert ok_b >= 5


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
