"""`TritonTransport`: the judging pipeline's way to the shared judge server, over async gRPC.

- at most `max_in_flight` requests on the wire at once, each with its own deadline (`timeout_s`), which is
  also sent to the server as the request's queue timeout so it never computes for a client that gave up;
- UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and CANCELLED are retried with jittered exponential
  backoff (a restarting server, a full queue, a server cancelling what it held when it shut down); INVALID_ARGUMENT and every other status fail at once: retrying a
  corrupt image or an empty instruction cannot help;
- `start()` checks that the endpoint is a ready Triton server serving the models, and says plainly what is
  wrong otherwise (nothing listening, an HTTP port given for the gRPC one, a missing model);
- a host name is resolved to all its addresses and the client keeps one channel per address, sending
  requests round-robin: one gRPC connection to a Kubernetes ClusterIP Service stays pinned to a single
  replica, so the shared judge is reached through a headless Service and balanced here. Addresses are
  re-resolved periodically (replicas come and go) and one that fails is skipped for a short cool-down;
- the `experiment` and `team` request parameters attribute every request in the server log;
- with a store, judgments and box proposals are cached in object storage under a key made of the model
  name, its resolved version, the image's and the instruction's SHA-256 and the generation parameters, so
  rerunning a stage never pays twice for the same judgment.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import random
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .backends import BoxerTensors, JudgeTensors
from .protocols import BoxOptions, BoxProposal, JudgeParams, JudgeReply

log = logging.getLogger(__name__)

# CANCELLED too: a server shutting down (a rolling restart) cancels the requests it holds. A cancellation
# of our own surfaces as asyncio.CancelledError instead, so retrying this status is always the server's case.
RETRYABLE = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "CANCELLED"})
CACHE_VERSION = 1


class JudgeClientError(RuntimeError):
    """Base of the client's errors."""


class JudgeEndpointError(JudgeClientError):
    """The endpoint is wrong or not a ready Triton server with the models (raised by `start()`)."""


class JudgeUnavailable(JudgeClientError):
    """Retryable failures outlasted the retries; the message names the endpoint and the last error."""


class JudgeRequestError(JudgeClientError):
    """The server refused or failed this request (not retried): bad input, or a backend error."""

    def __init__(self, message: str, status: str = ""):
        super().__init__(message)
        self.status = status


KEY_HEADER = "x-srum-key"     # the judge gateway's header (judging/gateway.py)


def team_key(cfg: Any) -> Optional[str]:
    """The team's judge key: from `judge.key_file` (a mounted Secret) or the variable `judge.key_env`; never
    from the experiment file itself. None when neither is set (a server without the gateway)."""
    from pathlib import Path

    if cfg.key_file:
        try:
            key = Path(cfg.key_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise JudgeEndpointError(f"judge.key_file {cfg.key_file}: cannot read the team key ({e.strerror})") from None
        if not key:
            raise JudgeEndpointError(f"judge.key_file {cfg.key_file} is empty")
        return key
    import os

    return os.environ.get(cfg.key_env) or None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_cache_key(digest: str) -> str:
    """Cache key when no run layout is given; `RunLayout.cache_key` puts it under the experiment."""
    return f"judge-cache/{digest[:2]}/{digest}.json"


def cache_digest(kind: str, model: str, version: str, image_sha256: str, request: Dict[str, Any]) -> str:
    """The identity of one judgment: same model, version, image bytes and request -> same digest."""
    body = json.dumps({"v": CACHE_VERSION, "kind": kind, "model": model, "version": version,
                       "image_sha256": image_sha256, "request": request}, sort_keys=True, separators=(",", ":"))
    return sha256_hex(body.encode("utf-8"))


def parse_url(url: str) -> Tuple[str, int]:
    """`host:port`, `dns:///host:port` or `[v6]:port` -> (host, port)."""
    m = re.match(r"^(?:dns:///?)?(\[[^\]]+\]|[^:/\[\]]+):(\d+)$", url.strip())
    if not m:
        raise JudgeEndpointError(f"judge url {url!r} is not HOST:PORT (optionally dns:///HOST:PORT)")
    host, port = m.group(1).strip("[]"), int(m.group(2))
    if not 0 < port < 65536:
        raise JudgeEndpointError(f"judge url {url!r}: port {port} is out of range")
    return host, port


def _status_name(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    raw = status() if callable(status) else ""
    return str(raw or "").rsplit(".", 1)[-1]


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    return (msg() if callable(msg) else None) or str(exc)


@dataclass
class TransportStats:
    requests: int = 0              # judge() + propose_boxes() calls
    cache_hits: int = 0
    cache_misses: int = 0
    sent: int = 0                  # gRPC attempts, retries included
    retries: int = 0
    failed: int = 0
    per_address: Dict[str, int] = field(default_factory=dict)


@dataclass
class _Channel:
    address: str
    client: Any
    down_until: float = 0.0


class TritonTransport:
    """JudgeTransport over Triton gRPC. Use `async with TritonTransport(...) as t:` (or start()/close())."""

    def __init__(self, url: str, *, judge_model: str = "srum_judge", judge_version: str = "",
                 boxer_model: Optional[str] = "srum_boxer", boxer_version: str = "",
                 timeout_s: float = 60.0, max_in_flight: int = 16, retries: int = 4,
                 backoff_s: float = 0.25, max_backoff_s: float = 8.0,
                 experiment: Optional[str] = None, team: Optional[str] = None,
                 cache_store: Any = None, cache_key: Callable[[str], str] = default_cache_key,
                 resolve_every_s: float = 30.0, cooldown_s: float = 1.0, connect_timeout_s: float = 10.0,
                 resolver: Optional[Callable[[str, int], Sequence[str]]] = None,
                 key: Optional[str] = None, tls: bool = False, tls_ca_file: Optional[str] = None):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.url = url
        self.host, self.port = parse_url(url)
        self.judge_model, self.judge_version = judge_model, judge_version
        self.boxer_model, self.boxer_version = boxer_model, boxer_version
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.parameters = {k: v for k, v in (("experiment", experiment), ("team", team)) if v}
        self.cache_store = cache_store
        self.cache_key = cache_key
        self.resolve_every_s = resolve_every_s
        self.cooldown_s = cooldown_s
        self.connect_timeout_s = connect_timeout_s
        self._resolver = resolver
        # the team key travels as a header on every call (the judge gateway checks it); never logged
        self._headers = {KEY_HEADER: key} if key else None
        self.tls = tls or bool(tls_ca_file)
        self.tls_ca_file = tls_ca_file
        self.stats = TransportStats()
        self._channels: Dict[str, _Channel] = {}
        self._retired: List[_Channel] = []
        self._order: List[str] = []
        self._next = 0
        self._resolved_at = 0.0
        self._sem: Optional[asyncio.Semaphore] = None
        self._versions: Dict[str, str] = {}
        self._started = False

    @classmethod
    def from_config(cls, cfg: Any, *, url: Optional[str] = None, experiment: Optional[str] = None,
                    store: Any = None, cache_key: Optional[Callable[[str], str]] = None,
                    evaluation: bool = False, **overrides: Any) -> "TritonTransport":
        """From a `config.JudgeConfig`; `url` overrides `cfg.url` (e.g. a local server's); `evaluation` uses
        `cfg.evaluator_model` as the judge. The cache is used when `cfg.cache` and a store is given."""
        endpoint = url or cfg.url
        if not endpoint:
            raise JudgeEndpointError("judge.url is not set and no local server URL was given")
        judge_model, judge_version = cfg.judge_model, cfg.judge_version
        if evaluation and cfg.evaluator_model:
            judge_model, judge_version = cfg.evaluator_model, ""
        kwargs: Dict[str, Any] = dict(
            judge_model=judge_model, judge_version=judge_version,
            boxer_model=cfg.boxer_model, boxer_version=cfg.boxer_version, timeout_s=cfg.timeout_s,
            max_in_flight=cfg.max_in_flight, retries=cfg.retries, experiment=experiment, team=cfg.team,
            cache_store=store if cfg.cache else None)
        if cache_key is not None:
            kwargs["cache_key"] = cache_key
        kwargs.update(key=team_key(cfg), tls=cfg.tls, tls_ca_file=cfg.tls_ca_file)
        kwargs.update(overrides)
        return cls(endpoint, **kwargs)

    # ------------------------------------------------------------------------------------------------
    # Addresses and channels
    # ------------------------------------------------------------------------------------------------
    async def _resolve(self) -> List[str]:
        if self._resolver is not None:
            return list(self._resolver(self.host, self.port))
        try:
            ipaddress.ip_address(self.host)
            return [self._addr(self.host, self.port)]
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise JudgeEndpointError(f"cannot resolve the judge host {self.host!r} (from {self.url!r}): {e}") from None
        seen: List[str] = []
        for family, _, _, _, sockaddr in infos:
            addr = self._addr(sockaddr[0], sockaddr[1])
            if addr not in seen:
                seen.append(addr)
        return seen

    @staticmethod
    def _addr(ip: str, port: int) -> str:
        return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

    def _new_client(self, address: str) -> Any:
        import tritonclient.grpc.aio as grpcclient

        max_msg = 2 ** 31 - 1
        tls_args = []
        if self.tls:
            # replicas are dialled by IP (headless Service): the certificate is checked against the host name
            tls_args = [("grpc.ssl_target_name_override", self.host)]
        return grpcclient.InferenceServerClient(address, ssl=self.tls, root_certificates=self.tls_ca_file,
                                                channel_args=tls_args + [
            ("grpc.max_send_message_length", max_msg),
            ("grpc.max_receive_message_length", max_msg),
            ("grpc.keepalive_time_ms", 30000),
            ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # a restarted server is found again within a second, not after gRPC's default backoff of minutes
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            # each channel talks to exactly one address; balancing is done across channels
            ("grpc.enable_retries", 0),
        ])

    async def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._resolved_at < self.resolve_every_s:
            return
        self._resolved_at = now
        try:
            addresses = await self._resolve()
        except JudgeEndpointError:
            if self._channels and not force:
                return  # a DNS hiccup mid-run: keep the addresses we have
            raise
        if not addresses:
            raise JudgeEndpointError(f"the judge host {self.host!r} resolved to no address")
        for addr in addresses:
            if addr not in self._channels:
                self._channels[addr] = _Channel(addr, self._new_client(addr))
        for addr in [a for a in self._channels if a not in addresses]:
            # requests may still be running on it: retire it now, close it with the transport
            self._retired.append(self._channels.pop(addr))
        self._order = addresses

    def _pick(self) -> _Channel:
        now = time.monotonic()
        n = len(self._order)
        for i in range(n):
            ch = self._channels[self._order[(self._next + i) % n]]
            if ch.down_until <= now:
                self._next = (self._next + i + 1) % n
                return ch
        # every address cooling down: take the one that recovers first
        ch = min((self._channels[a] for a in self._order), key=lambda c: c.down_until)
        self._next = (self._order.index(ch.address) + 1) % n
        return ch

    def addresses(self) -> List[str]:
        return list(self._order)

    # ------------------------------------------------------------------------------------------------
    # Lifecycle and readiness
    # ------------------------------------------------------------------------------------------------
    async def start(self) -> "TritonTransport":
        if self._started:
            return self
        self._sem = asyncio.Semaphore(self.max_in_flight)
        await self._refresh(force=True)
        try:
            await self._check_ready()
        except BaseException:
            await self.close()
            raise
        self._started = True
        return self

    async def _check_ready(self) -> None:
        """At least one address must be a ready server. A server still starting gets `connect_timeout_s`
        to come up; an endpoint that stays wrong fails with what each address answered."""
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            ready: List[_Channel] = []
            problems: Dict[str, Any] = {}
            for addr in self._order:
                ch = self._channels[addr]
                left = max(0.2, deadline - time.monotonic())
                try:
                    if await ch.client.is_server_ready(headers=self._headers, client_timeout=left):
                        ready.append(ch)
                        ch.down_until = 0.0
                    else:
                        problems[addr] = "the server answers but is not ready (models still loading?)"
                except InferenceServerException as e:
                    problems[addr] = e
                    ch.down_until = time.monotonic() + self.cooldown_s
            if ready or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        if not ready:
            lines = []
            for addr, why in problems.items():
                if isinstance(why, BaseException):
                    why = ("this port answers HTTP/1.x, not gRPC: it looks like Triton's HTTP port, not its gRPC port"
                           if await _speaks_http1(addr, 2.0) else self._explain(why))
                lines.append(f"{addr}: {why}")
            raise JudgeEndpointError(
                f"no ready Triton judge server at {self.url} (waited {self.connect_timeout_s:g} s):\n  "
                + "\n  ".join(lines) +
                "\njudge.url must be HOST:PORT of Triton's gRPC endpoint (8001 by default; 8000 is its HTTP "
                "port, 8002 its metrics port)")
        client = ready[0].client
        wanted = [(self.judge_model, self.judge_version)]
        if self.boxer_model:
            wanted.append((self.boxer_model, self.boxer_version))
        for name, version in wanted:
            self._versions[name] = await self._ready_version(client, ready[0].address, name, version)

    @staticmethod
    def _explain(e: BaseException) -> str:
        msg = _message(e)
        if _status_name(e) == "UNAVAILABLE":
            return f"nothing answers gRPC there: {msg}"
        if _status_name(e) == "DEADLINE_EXCEEDED":
            return f"no answer within the connect timeout: {msg}"
        return f"{_status_name(e) or 'error'}: {msg}"

    async def _ready_version(self, client: Any, address: str, name: str, version: str) -> str:
        """The version requests will use: the pinned one, or the newest ready one (for the cache key)."""
        from tritonclient.utils import InferenceServerException

        try:
            if await client.is_model_ready(name, version, headers=self._headers, client_timeout=self.connect_timeout_s):
                meta = await client.get_model_metadata(name, version, headers=self._headers,
                                                       client_timeout=self.connect_timeout_s)
                versions = [v for v in meta.versions if v.isdigit()]
                if version:
                    return version
                if versions:
                    return str(max(int(v) for v in versions))
                raise JudgeEndpointError(f"model {name!r} at {address} reports no version")
        except InferenceServerException:
            pass
        try:
            index = await client.get_model_repository_index(headers=self._headers,
                                                            client_timeout=self.connect_timeout_s)
            served = ", ".join(f"{m.name} v{m.version or '?'} ({m.state or 'not loaded'}"
                               f"{': ' + m.reason if m.reason else ''})" for m in index.models) or "nothing"
        except InferenceServerException as e:
            served = f"(cannot list its models: {_message(e)})"
        raise JudgeEndpointError(f"the Triton server at {address} has no ready model {name!r} "
                                 f"version {version or 'latest'}; it serves: {served}")

    async def close(self) -> None:
        channels = list(self._channels.values()) + self._retired
        self._channels, self._order, self._retired = {}, [], []
        for ch in channels:
            try:
                await ch.client.close()
            except Exception:  # closing a broken channel must not hide the error that got us here
                pass
        self._started = False

    async def __aenter__(self) -> "TritonTransport":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def identity(self) -> Dict[str, str]:
        ident = {"judge_model": self.judge_model,
                 "judge_version": self._versions.get(self.judge_model, self.judge_version)}
        if self.boxer_model:
            ident.update(boxer_model=self.boxer_model,
                         boxer_version=self._versions.get(self.boxer_model, self.boxer_version))
        return ident

    # ------------------------------------------------------------------------------------------------
    # Requests
    # ------------------------------------------------------------------------------------------------
    async def _infer(self, model: str, inputs: List[Any], outputs: List[str]) -> Any:
        """One request with retries; returns the InferResult."""
        from tritonclient.grpc import InferRequestedOutput
        from tritonclient.utils import InferenceServerException

        if not self._started:
            raise JudgeClientError("TritonTransport.start() was not called (use `async with`)")
        assert self._sem is not None
        version = self._versions.get(model, "")
        requested = [InferRequestedOutput(o) for o in outputs]
        last: Optional[BaseException] = None
        began = time.monotonic()
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
                await asyncio.sleep(delay)
            await self._refresh()
            ch = self._pick()
            async with self._sem:
                self.stats.sent += 1
                self.stats.per_address[ch.address] = self.stats.per_address.get(ch.address, 0) + 1
                try:
                    return await ch.client.infer(
                        model, inputs, model_version=version, outputs=requested, parameters=self.parameters or None,
                        headers=self._headers, client_timeout=self.timeout_s, timeout=int(self.timeout_s * 1e6))
                except InferenceServerException as e:
                    status = _status_name(e)
                    if status not in RETRYABLE:
                        self.stats.failed += 1
                        raise JudgeRequestError(f"{model} v{version or 'latest'} at {ch.address} refused the "
                                                f"request ({status or 'error'}): {_message(e)}", status) from None
                    last = e
                    if status == "UNAVAILABLE":
                        ch.down_until = time.monotonic() + self.cooldown_s
                    log.info("judge request to %s failed (%s), attempt %d/%d", ch.address, status, attempt + 1,
                             self.retries + 1)
        self.stats.failed += 1
        raise JudgeUnavailable(f"{model} at {self.url} ({', '.join(self._order)}) still failing after "
                               f"{self.retries + 1} attempts over {time.monotonic() - began:.1f} s; last error: "
                               f"{_status_name(last)}: {_message(last)}")

    # ---- cache
    async def _cache_get(self, digest: str, required: Sequence[str] = ()) -> Optional[Dict[str, Any]]:
        if self.cache_store is None:
            return None
        key = self.cache_key(digest)
        try:
            entry = await asyncio.to_thread(self.cache_store.get_json, key)
        except Exception as e:  # NotFound is the normal miss; a broken entry is a miss too, and is rewritten
            if type(e).__name__ != "NotFound":
                log.warning("judge cache entry %s unreadable (%s); judging again", key, e)
            return None
        if not isinstance(entry, dict) or entry.get("digest") != digest:
            log.warning("judge cache entry %s does not match its key; judging again", key)
            return None
        if any(field not in entry for field in required):  # an entry from an older or foreign writer
            log.warning("judge cache entry %s lacks %s; judging again", key, [f for f in required if f not in entry])
            return None
        return entry

    async def _cache_put(self, digest: str, entry: Dict[str, Any]) -> None:
        if self.cache_store is None:
            return
        key = self.cache_key(digest)
        try:
            await asyncio.to_thread(self.cache_store.put_json, key, {"digest": digest, **entry})
        except Exception as e:  # the cache saves money; failing to write it must not fail the judgment
            log.warning("could not write judge cache entry %s: %s", key, e)

    # ---- the JudgeTransport protocol
    async def judge(self, image_png: bytes, instruction: str, params: JudgeParams) -> JudgeReply:
        from tritonclient.grpc import InferInput

        self.stats.requests += 1
        request = {"instruction_sha256": sha256_hex(instruction.encode("utf-8")), **asdict(params)}
        digest = cache_digest("judge", self.judge_model, self._versions.get(self.judge_model, self.judge_version),
                              sha256_hex(image_png), request)
        hit = await self._cache_get(digest, ("text",))
        if hit is not None and isinstance(hit["text"], str):
            self.stats.cache_hits += 1
            return JudgeReply(text=hit["text"], think_text=hit.get("think_text", ""))
        if self.cache_store is not None:
            self.stats.cache_misses += 1

        def tensor(name: str, array: np.ndarray, dtype: str) -> Any:
            t = InferInput(name, list(array.shape), dtype)
            t.set_data_from_numpy(array)
            return t

        T = JudgeTensors
        inputs = [
            tensor(T.IMAGE, np.array([[image_png]], dtype=np.object_), "BYTES"),
            tensor(T.INSTRUCTION, np.array([[instruction.encode("utf-8")]], dtype=np.object_), "BYTES"),
            tensor(T.MAX_NEW_TOKENS, np.array([[params.max_new_tokens]], dtype=np.int32), "INT32"),
            tensor(T.TEMPERATURE, np.array([[params.temperature]], dtype=np.float32), "FP32"),
            tensor(T.THINK, np.array([[params.think]], dtype=np.bool_), "BOOL"),
        ]
        result = await self._infer(self.judge_model, inputs, [T.TEXT, T.THINK_TEXT])
        reply = JudgeReply(text=_text(result.as_numpy(T.TEXT)), think_text=_text(result.as_numpy(T.THINK_TEXT)))
        await self._cache_put(digest, {"kind": "judge", "model": self.judge_model,
                                       "version": self._versions.get(self.judge_model, ""), "request": request,
                                       "text": reply.text, "think_text": reply.think_text})
        return reply

    async def propose_boxes(self, image_png: bytes, options: BoxOptions) -> BoxProposal:
        from tritonclient.grpc import InferInput

        if not self.boxer_model:
            raise JudgeClientError("this transport was made without a boxer model")
        self.stats.requests += 1
        request = asdict(options)
        digest = cache_digest("boxes", self.boxer_model, self._versions.get(self.boxer_model, self.boxer_version),
                              sha256_hex(image_png), request)
        hit = await self._cache_get(digest, ("boxes", "areas", "confidence"))
        if hit is not None:
            self.stats.cache_hits += 1
            return _proposal(hit["boxes"], hit["areas"], hit["confidence"])
        if self.cache_store is not None:
            self.stats.cache_misses += 1
        T = BoxerTensors
        specs = [(T.IMAGE, np.array([[image_png]], dtype=np.object_), "BYTES"),
                 (T.POINTS_PER_SIDE, np.array([[options.points_per_side]], dtype=np.int32), "INT32"),
                 (T.MAX_REGIONS, np.array([[options.max_regions]], dtype=np.int32), "INT32"),
                 (T.MIN_AREA, np.array([[options.min_area]], dtype=np.float32), "FP32")]
        inputs = []
        for name, array, dtype in specs:
            t = InferInput(name, list(array.shape), dtype)
            t.set_data_from_numpy(array)
            inputs.append(t)
        result = await self._infer(self.boxer_model, inputs, [T.BOXES, T.AREAS, T.CONFIDENCE])
        proposal = _proposal(result.as_numpy(T.BOXES), result.as_numpy(T.AREAS), result.as_numpy(T.CONFIDENCE))
        await self._cache_put(digest, {"kind": "boxes", "model": self.boxer_model,
                                       "version": self._versions.get(self.boxer_model, ""), "request": request,
                                       "boxes": proposal.boxes.tolist(), "areas": proposal.areas.tolist(),
                                       "confidence": proposal.confidence.tolist()})
        return proposal

    async def statistics(self, model: Optional[str] = None) -> Dict[str, Any]:
        """Triton's inference statistics (from the first address), as a dict."""
        ch = self._channels[self._order[0]]
        return await ch.client.get_inference_statistics(model or "", as_json=True, headers=self._headers,
                                                        client_timeout=self.connect_timeout_s)


async def _speaks_http1(address: str, timeout: float) -> bool:
    """Does `address` answer a plain HTTP/1.0 request? (Diagnoses an HTTP port given as the gRPC one.)"""
    host, port = parse_url(address)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    try:
        writer.write(b"GET /v2/health/live HTTP/1.0\r\nHost: " + host.encode() + b"\r\n\r\n")
        await writer.drain()
        head = await asyncio.wait_for(reader.read(8), timeout)
        return head.startswith(b"HTTP/1.")
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        writer.close()


def _text(array: Optional[np.ndarray]) -> str:
    if array is None:
        return ""
    value = array.reshape(-1)[0]
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else str(value)


def _proposal(boxes: Any, areas: Any, confidence: Any) -> BoxProposal:
    return BoxProposal(boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                       areas=np.asarray(areas, dtype=np.float32).reshape(-1),
                       confidence=np.asarray(confidence, dtype=np.float32).reshape(-1))
