"""The judge gateway: TLS, a key per team, per-team limits and per-team metrics in front of Triton's gRPC port.

Triton can require one header value per protocol group (`--grpc-restricted-protocol`) but not one key per
team, and it cannot tell teams apart for quotas or metrics. So the shared judge runs this small gRPC front
beside tritonserver (a second container of the same pod, `k8s/deployment.yaml`; `srum judge serve
--keys-file` locally). Triton's own gRPC port is bound to loopback, so the gateway is the only way in.

For every call the gateway
- requires the metadata header `x-srum-key`; its SHA-256 must match one team's `key_sha256` in the keys file
  (constant-time comparison); a missing or unknown key is UNAUTHENTICATED and never reaches Triton;
- admits at most `max_in_flight` requests of that team at once and at most `rate_per_s` per second (token
  bucket, burst = one second); a team over its limits waits up to `queue_timeout_s` for a slot, then gets
  RESOURCE_EXHAUSTED, which the srum client retries with backoff. One team's flood therefore occupies only its
  own slots: other teams' requests go straight through;
- forwards the request bytes unchanged (no deserialisation) with the caller's deadline, and the answer or
  Triton's status back;
- counts requests, refusals, failures, in-flight requests and latency per team for Prometheus
  (`/metrics` on its own HTTP port).

Keys file (JSON; a Kubernetes Secret mounted read-only; only hashes, so the file does not hold the keys):

    {"teams": {"team-a": {"key_sha256": "<sha256 hex of the key>", "max_in_flight": 32, "rate_per_s": 500}}}

`python -m srum_jobs.judging.gateway --help` runs it; `srum judge keygen TEAM` (see serve_cli) makes a key.
Unary calls only (everything srum uses); streaming inference is refused as UNIMPLEMENTED.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .. import exitcodes

log = logging.getLogger(__name__)

KEY_HEADER = "x-srum-key"
MAX_MESSAGE = 2 ** 31 - 1
_STREAMING = ("/inference.GRPCInferenceService/ModelStreamInfer",)


class GatewayConfigError(ValueError):
    """The keys file or the TLS files cannot be used; the message names the file and the field."""


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A random team key (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


@dataclass
class TeamPolicy:
    name: str
    key_sha256: str
    max_in_flight: int = 32
    rate_per_s: float = 0.0            # 0 = no rate limit, only the in-flight limit
    queue_timeout_s: float = 5.0       # how long a request may wait for one of its team's slots


@dataclass
class _TeamState:
    policy: TeamPolicy
    slots: asyncio.Semaphore
    tokens: float = 0.0
    refilled: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    counts: Dict[str, int] = field(default_factory=dict)     # grpc status name -> requests
    refused: Dict[str, int] = field(default_factory=dict)    # reason -> requests
    latency_sum: float = 0.0


def load_keys(path: str | Path) -> Dict[str, TeamPolicy]:
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GatewayConfigError(f"keys file not found: {p}") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise GatewayConfigError(f"keys file {p} is not readable JSON: {e}") from None
    teams = doc.get("teams") if isinstance(doc, dict) else None
    if not isinstance(teams, dict) or not teams:
        raise GatewayConfigError(f"keys file {p}: needs a non-empty mapping 'teams'")
    out: Dict[str, TeamPolicy] = {}
    seen: Dict[str, str] = {}
    for name, entry in teams.items():
        where = f"keys file {p}: teams.{name}"
        if not isinstance(entry, dict):
            raise GatewayConfigError(f"{where} must be a mapping")
        unknown = set(entry) - {"key_sha256", "max_in_flight", "rate_per_s", "queue_timeout_s"}
        if unknown:
            raise GatewayConfigError(f"{where}: unknown field(s) {sorted(unknown)}")
        digest = str(entry.get("key_sha256", "")).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise GatewayConfigError(f"{where}.key_sha256 must be 64 hex digits (the SHA-256 of the team's key)")
        if digest in seen:
            raise GatewayConfigError(f"{where}: the same key as team {seen[digest]}")
        seen[digest] = name
        try:
            policy = TeamPolicy(name, digest, int(entry.get("max_in_flight", 32)), float(entry.get("rate_per_s", 0.0)),
                                float(entry.get("queue_timeout_s", 5.0)))
        except (TypeError, ValueError) as e:
            raise GatewayConfigError(f"{where}: {e}") from None
        if policy.max_in_flight < 1 or policy.rate_per_s < 0 or policy.queue_timeout_s < 0:
            raise GatewayConfigError(f"{where}: max_in_flight >= 1, rate_per_s >= 0 and queue_timeout_s >= 0")
        out[name] = policy
    return out


class _Refused(Exception):
    def __init__(self, code: Any, message: str, reason: str):
        super().__init__(message)
        self.code, self.reason = code, reason


class JudgeGateway:
    """The gRPC front. `await start()` / `await stop()`, or `run_in_thread()` for a synchronous caller."""

    def __init__(self, upstream: str, teams: Dict[str, TeamPolicy], *, listen: str = "127.0.0.1:0",
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None, metrics_port: Optional[int] = 0,
                 metrics_host: str = "127.0.0.1"):
        if not teams:
            raise GatewayConfigError("the gateway needs at least one team")
        if bool(tls_cert) != bool(tls_key):
            raise GatewayConfigError("TLS needs both a certificate (--tls-cert) and its private key (--tls-key)")
        self.upstream, self.listen = upstream, listen
        self.teams = teams
        self.tls_cert, self.tls_key = tls_cert, tls_key
        self.metrics_port, self.metrics_host = metrics_port, metrics_host
        self.port: Optional[int] = None
        self._state: Dict[str, _TeamState] = {}
        self._by_digest = {p.key_sha256: name for name, p in teams.items()}
        self._server: Any = None
        self._channel: Any = None
        self._http: Optional[ThreadingHTTPServer] = None
        self._lock = threading.Lock()
        self.unauthenticated = 0

    # ------------------------------------------------------------------------------------ lifecycle
    async def start(self) -> "JudgeGateway":
        import grpc

        opts = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]
        self._state = {name: _TeamState(p, asyncio.Semaphore(p.max_in_flight), tokens=max(1.0, p.rate_per_s))
                       for name, p in self.teams.items()}
        self._channel = grpc.aio.insecure_channel(self.upstream, options=opts)
        # no SO_REUSEPORT: a port another server listens on is an error here, not a silently shared port
        self._server = grpc.aio.server(options=opts + [("grpc.so_reuseport", 0)])
        self._server.add_generic_rpc_handlers((_Handler(self),))
        if self.tls_cert:
            try:
                creds = grpc.ssl_server_credentials([(Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes())])
            except OSError as e:
                raise GatewayConfigError(f"cannot read the TLS files: {e}") from None
            self.port = self._server.add_secure_port(self.listen, creds)
        else:
            self.port = self._server.add_insecure_port(self.listen)
        if not self.port:
            raise GatewayConfigError(f"cannot listen on {self.listen} (in use?)")
        await self._server.start()
        if self.metrics_port is not None:
            self._start_metrics()
        return self

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
        if self._channel is not None:
            await self._channel.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()

    def run_in_thread(self) -> "GatewayThread":
        return GatewayThread(self).start()

    # ------------------------------------------------------------------------------------ admission
    def _team(self, metadata: Tuple[Tuple[str, Any], ...]) -> str:
        key = next((v for k, v in metadata if k == KEY_HEADER), None)
        if not key:
            raise _Refused("UNAUTHENTICATED", f"this judge needs a team key in the {KEY_HEADER!r} header "
                                              "(judge.key_file or $SRUM_JUDGE_KEY on the client)", "no_key")
        digest = key_digest(key if isinstance(key, str) else key.decode("utf-8", "replace"))
        for known, name in self._by_digest.items():
            if hmac.compare_digest(known, digest):
                return name
        raise _Refused("UNAUTHENTICATED", "unknown team key", "bad_key")

    def _take_token(self, st: _TeamState) -> bool:
        rate = st.policy.rate_per_s
        if rate <= 0:
            return True
        now = time.monotonic()
        st.tokens = min(max(1.0, rate), st.tokens + (now - st.refilled) * rate)
        st.refilled = now
        if st.tokens >= 1.0:
            st.tokens -= 1.0
            return True
        return False

    async def forward(self, method: str, request: bytes, context: Any) -> bytes:
        import grpc

        metadata = tuple(context.invocation_metadata() or ())
        try:
            team = self._team(metadata)
        except _Refused as e:
            with self._lock:
                self.unauthenticated += 1
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        st = self._state[team]
        began = time.monotonic()
        if not self._take_token(st):
            self._count(st, "RESOURCE_EXHAUSTED", refused="rate")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"team {team}: more than {st.policy.rate_per_s:g} requests/s; retry with backoff")
        try:
            await asyncio.wait_for(st.slots.acquire(), timeout=st.policy.queue_timeout_s)
        except asyncio.TimeoutError:
            self._count(st, "RESOURCE_EXHAUSTED", refused="in_flight")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"team {team}: {st.policy.max_in_flight} requests already in flight for "
                                f"{st.policy.queue_timeout_s:g} s; retry with backoff")
        st.in_flight += 1
        try:
            remaining = context.time_remaining()
            upstream_md = tuple((k, v) for k, v in metadata if k != KEY_HEADER and not k.startswith(":")) + \
                (("x-srum-team", team),)
            call = self._channel.unary_unary(method)
            try:
                reply = await call(request, timeout=remaining, metadata=upstream_md)
            except grpc.aio.AioRpcError as e:
                self._count(st, e.code().name, seconds=time.monotonic() - began)
                await context.abort(e.code(), e.details() or "")
            self._count(st, "OK", seconds=time.monotonic() - began)
            return reply
        finally:
            st.in_flight -= 1
            st.slots.release()

    def _count(self, st: _TeamState, code: str, *, refused: Optional[str] = None, seconds: float = 0.0) -> None:
        with self._lock:
            st.counts[code] = st.counts.get(code, 0) + 1
            if refused:
                st.refused[refused] = st.refused.get(refused, 0) + 1
            st.latency_sum += seconds

    # ------------------------------------------------------------------------------------ metrics
    def metrics_text(self) -> str:
        """Prometheus text exposition, one series per team."""
        lines = ["# HELP srum_judge_gateway_requests_total Requests per team and gRPC status.",
                 "# TYPE srum_judge_gateway_requests_total counter"]
        with self._lock:
            for name, st in sorted(self._state.items()):
                for code, n in sorted(st.counts.items()):
                    lines.append(f'srum_judge_gateway_requests_total{{team="{name}",code="{code}"}} {n}')
            lines += ["# HELP srum_judge_gateway_refused_total Requests refused by the team's limits.",
                      "# TYPE srum_judge_gateway_refused_total counter"]
            for name, st in sorted(self._state.items()):
                for reason, n in sorted(st.refused.items()):
                    lines.append(f'srum_judge_gateway_refused_total{{team="{name}",reason="{reason}"}} {n}')
            lines += ["# HELP srum_judge_gateway_in_flight Requests of the team now at Triton.",
                      "# TYPE srum_judge_gateway_in_flight gauge"]
            lines += [f'srum_judge_gateway_in_flight{{team="{name}"}} {st.in_flight}'
                      for name, st in sorted(self._state.items())]
            lines += ["# HELP srum_judge_gateway_request_seconds_sum Time from arrival to answer, summed.",
                      "# TYPE srum_judge_gateway_request_seconds_sum counter"]
            lines += [f'srum_judge_gateway_request_seconds_sum{{team="{name}"}} {st.latency_sum:.6f}'
                      for name, st in sorted(self._state.items())]
            lines += ["# HELP srum_judge_gateway_unauthenticated_total Calls without a known key.",
                      "# TYPE srum_judge_gateway_unauthenticated_total counter",
                      f"srum_judge_gateway_unauthenticated_total {self.unauthenticated}"]
        return "\n".join(lines) + "\n"

    def _start_metrics(self) -> None:
        gateway = self

        class Metrics(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                body = gateway.metrics_text().encode() if self.path == "/metrics" else b""
                self.send_response(200 if body else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # scrapes every 15 s would flood the log
                pass

        self._http = ThreadingHTTPServer((self.metrics_host, self.metrics_port or 0), Metrics)
        self.metrics_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, name="gateway-metrics", daemon=True).start()


class _Handler:
    """grpc GenericRpcHandler: every unary method is forwarded as raw bytes."""

    def __init__(self, gateway: JudgeGateway):
        self.gateway = gateway

    def service(self, details: Any) -> Any:
        import grpc

        method = details.method
        if method in _STREAMING:
            return None   # UNIMPLEMENTED
        gateway = self.gateway

        async def behaviour(request: bytes, context: Any) -> bytes:
            return await gateway.forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(behaviour)   # no (de)serialisers: bytes pass through


class GatewayThread:
    """A gateway on its own event loop in a daemon thread (tests, `srum judge serve --keys-file`)."""

    def __init__(self, gateway: JudgeGateway):
        self.gateway = gateway
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="judge-gateway", daemon=True)

    def start(self) -> "GatewayThread":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.gateway.start(), self.loop).result(timeout=30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description="The srum judge gateway: per-team keys, limits and metrics "
                                             "in front of Triton's gRPC port.")
    ap.add_argument("--upstream", required=True, help="Triton's gRPC address (HOST:PORT, loopback in the pod)")
    ap.add_argument("--listen", default="0.0.0.0:8001")
    ap.add_argument("--keys-file", required=True, help="JSON: teams -> key_sha256, max_in_flight, rate_per_s")
    ap.add_argument("--tls-cert", default=None)
    ap.add_argument("--tls-key", default=None)
    ap.add_argument("--metrics-port", type=int, default=8003)
    ap.add_argument("--metrics-host", default="0.0.0.0")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        gateway = JudgeGateway(args.upstream, load_keys(args.keys_file), listen=args.listen, tls_cert=args.tls_cert,
                               tls_key=args.tls_key, metrics_port=args.metrics_port, metrics_host=args.metrics_host)
    except GatewayConfigError as e:
        print(f"error: {e}")
        return exitcodes.CONFIG_ERROR

    async def run() -> None:
        await gateway.start()
        log.info("judge gateway on %s (%s) -> %s, teams %s, metrics :%s", args.listen,
                 "TLS" if args.tls_cert else "plaintext", args.upstream, sorted(gateway.teams), gateway.metrics_port)
        await gateway._server.wait_for_termination()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
