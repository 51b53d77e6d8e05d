"""A loopback HTTP proxy that injects S3 faults in front of a real S3 endpoint (moto's server in tests).

Why a proxy and not a mock: the storage layer's retry behaviour lives in botocore (standard retry mode) and
s3transfer (multipart uploads); only faults on the wire exercise that code as it runs against a real store.

Faults are rules: each matches requests (by method, path and query) and applies to the next N of them:
  - `throttle`: answer `503 SlowDown` with S3's XML error body, without forwarding the request;
  - `drop`: read part of the request body, then reset the connection (no response at all), as a load
    balancer or a dying storage node does mid-upload.
Every other request is forwarded unchanged and its response relayed. `log` records what happened to each
request, so a test can assert that a fault really fired and that the client really retried.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

Match = Callable[[str, str, dict], bool]     # (method, path, query dict) -> bool

# Headers that describe one hop, not the message: never relayed as they came.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "expect"}

SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message><RequestId>faultproxy</RequestId></Error>")


def any_request(method: str, path: str, query: dict) -> bool:
    return True


def part_upload(method: str, path: str, query: dict) -> bool:
    """An UploadPart request of a multipart upload."""
    return method == "PUT" and "partNumber" in query and "uploadId" in query


def key_endswith(suffix: str, method: Optional[str] = None) -> Match:
    def match(m: str, path: str, query: dict) -> bool:
        return path.endswith(suffix) and (method is None or m == method)
    return match


@dataclass
class Rule:
    action: str                 # "throttle" | "drop"
    remaining: int
    match: Match
    fired: int = 0


@dataclass
class Entry:
    method: str
    path: str
    query: str
    action: str                 # "forward" | "throttle" | "drop"
    status: Optional[int]       # upstream status (forwarded), 503 (throttled), None (dropped)


class FaultProxy:
    """`with FaultProxy("http://127.0.0.1:PORT") as proxy:` then point the S3 client at `proxy.url`."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://HOST:PORT, got {upstream!r}")
        self.upstream: Tuple[str, int] = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._rules: List[Rule] = []
        self.log: List[Entry] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    # -------------------------------------------------------------------------------- lifecycle
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self._server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------ rules
    def throttle(self, n: int, match: Match = any_request) -> Rule:
        """Answer the next `n` matching requests with 503 SlowDown."""
        return self._add(Rule("throttle", n, match))

    def drop(self, n: int, match: Match = part_upload) -> Rule:
        """Cut the connection of the next `n` matching requests halfway through their body."""
        return self._add(Rule("drop", n, match))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _add(self, rule: Rule) -> Rule:
        if rule.remaining < 0:
            raise ValueError("a rule applies to a non-negative number of requests")
        with self._lock:
            self._rules.append(rule)
        return rule

    def _decide(self, method: str, path: str, query: dict) -> str:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.match(method, path, query):
                    rule.remaining -= 1
                    rule.fired += 1
                    return rule.action
        return "forward"

    def _record(self, entry: Entry) -> None:
        with self._lock:
            self.log.append(entry)

    def entries(self, action: Optional[str] = None, match: Match = any_request) -> List[Entry]:
        with self._lock:
            return [e for e in self.log if (action is None or e.action == action)
                    and match(e.method, e.path, parse_qs(e.query, keep_blank_values=True))]


def _make_handler(proxy: FaultProxy) -> type:
    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1: keep-alive like a real endpoint (botocore pools connections) and `Expect: 100-continue`
        # answered by http.server itself, so botocore sends large bodies as it would to S3.
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:   # quiet: the test asserts on `proxy.log`
            pass

        def _handle(self) -> None:
            split = urlsplit(self.path)
            query = parse_qs(split.query, keep_blank_values=True)
            action = proxy._decide(self.command, split.path, query)
            if action == "drop":
                self._read_body(limit_fraction=0.5)
                proxy._record(Entry(self.command, split.path, split.query, "drop", None))
                self._reset()
                return
            body = self._read_body()
            if action == "throttle":
                proxy._record(Entry(self.command, split.path, split.query, "throttle", 503))
                self.send_response(503, "Slow Down")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOWDOWN_BODY)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(SLOWDOWN_BODY)
                return
            status = self._forward(body)
            proxy._record(Entry(self.command, split.path, split.query, "forward", status))

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        def _read_body(self, limit_fraction: Optional[float] = None) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                return self._read_chunked(limit_fraction)
            length = int(self.headers.get("Content-Length") or 0)
            if limit_fraction is not None:
                length = int(length * limit_fraction)
            return self.rfile.read(length) if length else b""

        def _read_chunked(self, limit_fraction: Optional[float]) -> bytes:
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass   # trailers
                    return bytes(out)
                if limit_fraction is not None:
                    return bytes(out + self.rfile.read(max(1, size // 2)))   # stop in the first chunk
                out += self.rfile.read(size)
                self.rfile.readline()

        def _reset(self) -> None:
            # SO_LINGER 0: close sends a TCP RST, so the client sees a reset connection mid-request.
            self.close_connection = True
            try:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
            except OSError:
                pass

        def _forward(self, body: bytes) -> int:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if self.command in ("PUT", "POST") or body:
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
            try:
                conn.request(self.command, self.path, body=body if body else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                has_length = False
                for k, v in resp.getheaders():
                    if k.lower() in _HOP_BY_HOP:
                        continue
                    has_length |= k.lower() == "content-length"
                    self.send_header(k, v)
                if not has_length:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                return resp.status
            finally:
                conn.close()

    return Handler
