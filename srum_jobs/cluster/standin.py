"""A local stand-in for the Kubernetes API server, for tests and for trying the CLI without a cluster.

It is NOT Kubernetes: it stores objects in memory, speaks the subset of the REST API that the official
client uses for srum's calls (create / get / list by label / delete namespaced Jobs, Services,
ConfigMaps and Pods, and pod logs), and records every request with the RBAC resource and verb it would
need. It runs no controllers: a test drives Job status and creates pods itself (`on_create`,
`set_job_status`, `add_pod`). Errors are shaped like the real server's `Status` objects, so the client
raises the same `ApiException`s (403 forbidden, 403 exceeded quota, 404, 409 already exists).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse

# resource -> kind, for the resources srum uses
_KIND_OF = {"jobs": "Job", "services": "Service", "configmaps": "ConfigMap", "pods": "Pod"}


@dataclass
class Request:
    method: str
    path: str
    query: Dict[str, str]
    group: str          # "" for the core group, "batch" for Jobs
    resource: str       # RBAC resource, e.g. "jobs" or "pods/log"
    verb: str           # RBAC verb: create, get, list, watch, delete, ...
    namespace: str
    name: str
    body: Optional[Dict[str, Any]]
    authorization: bool  # whether an Authorization header came with it (its value is not kept)


@dataclass
class Rule:
    """An injected failure: requests matching (verb, resource) get this status until `times` runs out."""

    verb: str
    resource: str
    status: int
    reason: str
    message: str
    times: Optional[int] = None  # None = always


def _status(code: int, reason: str, message: str, name: str = "", kind: str = "") -> Dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": {"name": name, "kind": kind}, "code": code}


def _matches(labels: Dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(k) != v:
                return False
        elif labels.get(term) is None:
            return False
    return True


@dataclass
class StandInApiServer:
    namespaces: Tuple[str, ...] = ("default",)
    token: Optional[str] = None
    requests: List[Request] = field(default_factory=list)
    rules: List[Rule] = field(default_factory=list)
    on_create: Optional[Callable[["StandInApiServer", Dict[str, Any]], None]] = None

    def __post_init__(self) -> None:
        self.objects: Dict[Tuple[str, str, str, str], Dict[str, Any]] = {}
        self.logs: Dict[Tuple[str, str], str] = {}
        self.lock = threading.RLock()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "StandInApiServer":
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="standin-apiserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "StandInApiServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def kubeconfig(self, namespace: str = "default") -> Dict[str, Any]:
        user: Dict[str, Any] = {"token": self.token} if self.token else {}
        return {"apiVersion": "v1", "kind": "Config", "current-context": "standin",
                "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                "users": [{"name": "standin", "user": user}],
                "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin",
                                                             "namespace": namespace}}]}

    def api_client(self):
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        if self.token:
            cfg.api_key = {"authorization": f"Bearer {self.token}"}
        return client.ApiClient(configuration=cfg)

    # ---- test controls ------------------------------------------------------------------------
    def fail(self, verb: str, resource: str, status: int, reason: str, message: str,
             times: Optional[int] = None) -> None:
        self.rules.append(Rule(verb, resource, status, reason, message, times))

    def get(self, resource: str, namespace: str, name: str) -> Optional[Dict[str, Any]]:
        with self.lock:
            for (g, r, ns, n), obj in self.objects.items():
                if r == resource and ns == namespace and n == name:
                    return obj
        return None

    def all(self, resource: str, namespace: Optional[str] = None) -> List[Dict[str, Any]]:
        with self.lock:
            return [o for (g, r, ns, n), o in self.objects.items()
                    if r == resource and (namespace is None or ns == namespace)]

    def put(self, group: str, resource: str, obj: Dict[str, Any]) -> Dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        meta["resourceVersion"] = str(int(time.time() * 1e6))
        with self.lock:
            self.objects[(group, resource, meta["namespace"], meta["name"])] = obj
        return obj

    def set_job_status(self, namespace: str, name: str, status: Dict[str, Any]) -> None:
        with self.lock:
            job = self.get("jobs", namespace, name)
            if job is None:
                raise KeyError(f"no job {namespace}/{name}")
            job["status"] = status

    def add_pod(self, namespace: str, name: str, labels: Dict[str, str], log: str = "",
                phase: str = "Succeeded", exit_code: Optional[int] = None) -> None:
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
               "spec": {"containers": [{"name": "stage", "image": "standin"}]},
               "status": {"phase": phase}}
        if exit_code is not None:
            pod["status"]["containerStatuses"] = [{
                "name": "stage", "ready": False, "restartCount": 0, "image": "standin", "imageID": "",
                "state": {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed"}}}]
        self.put("", "pods", pod)
        self.logs[(namespace, name)] = log

    def verbs(self) -> set:
        """{(group, resource, verb)} of every request served so far."""
        return {(r.group, r.resource, r.verb) for r in self.requests}

    # ---- request handling ---------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, body: Optional[bytes], authorization: Optional[str]):
        parsed = urlparse(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        parts = [p for p in parsed.path.split("/") if p]
        # /api/v1/namespaces/NS/RES[/NAME[/SUB]]  or  /apis/GROUP/VERSION/namespaces/NS/RES[/NAME[/SUB]]
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif parts and parts[0] == "apis" and len(parts) >= 3:
            group, rest = parts[1], parts[3:]
        else:
            return 404, _status(404, "NotFound", f"the stand-in does not serve {parsed.path}")
        if len(rest) < 3 or rest[0] != "namespaces":
            return 404, _status(404, "NotFound", f"the stand-in does not serve {parsed.path}")
        ns, resource = rest[1], rest[2]
        name = rest[3] if len(rest) > 3 else ""
        sub = rest[4] if len(rest) > 4 else ""
        rbac_resource = f"{resource}/{sub}" if sub else resource
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method)
        if method == "GET":
            verb = "get" if name else ("watch" if query.get("watch") in ("true", "1") else "list")
        elif method == "DELETE":
            verb = "delete" if name else "deletecollection"
        payload = json.loads(body) if body else None
        if method == "POST" and payload:
            name = payload.get("metadata", {}).get("name", "")
        self.requests.append(Request(method, parsed.path, query, group, rbac_resource, verb, ns, name, payload,
                                     authorization is not None))

        if self.token and authorization != f"Bearer {self.token}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        for rule in self.rules:
            if rule.verb == verb and rule.resource == rbac_resource and (rule.times is None or rule.times > 0):
                if rule.times is not None:
                    rule.times -= 1
                return rule.status, _status(rule.status, rule.reason, rule.message, name, _KIND_OF.get(resource, ""))
        if ns not in self.namespaces:
            return 404, _status(404, "NotFound", f'namespaces "{ns}" not found', ns, "namespaces")

        kind = _KIND_OF.get(resource, resource)
        with self.lock:
            if verb == "create":
                if self.get(resource, ns, name) is not None:
                    return 409, _status(409, "AlreadyExists", f'{resource}.{group or "core"} "{name}" already exists',
                                        name, kind)
                payload.setdefault("metadata", {})["namespace"] = ns
                obj = self.put(group, resource, payload)
                if self.on_create is not None:
                    self.on_create(self, obj)
                return 201, obj
            if verb == "get" and sub == "log":
                if (ns, name) not in self.logs:
                    return 404, _status(404, "NotFound", f'pods "{name}" not found', name, "Pod")
                text = self.logs[(ns, name)]
                if "tailLines" in query:
                    text = "".join(text.splitlines(True)[-int(query["tailLines"]):])
                return 200, text
            if verb == "get":
                obj = self.get(resource, ns, name)
                if obj is None:
                    return 404, _status(404, "NotFound", f'{resource}.{group or "core"} "{name}" not found', name, kind)
                return 200, obj
            if verb == "list":
                sel = query.get("labelSelector", "")
                items = [o for o in self.all(resource, ns) if _matches(o["metadata"].get("labels") or {}, sel)]
                return 200, {"kind": f"{kind}List", "apiVersion": f"{group}/v1" if group else "v1",
                             "metadata": {"resourceVersion": "1"}, "items": items}
            if verb == "delete":
                obj = self.get(resource, ns, name)
                if obj is None:
                    return 404, _status(404, "NotFound", f'{resource}.{group or "core"} "{name}" not found', name, kind)
                del self.objects[(group, resource, ns, name)]
                if resource == "jobs":  # background propagation: the job's pods go too
                    for key, pod in list(self.objects.items()):
                        if key[1] == "pods" and key[2] == ns and \
                                (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name") == name:
                            del self.objects[key]
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                             "details": {"name": name, "kind": resource}}
        return 405, _status(405, "MethodNotAllowed", f"the stand-in does not implement {method} {parsed.path}")


def _make_handler(server: StandInApiServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            code, payload = server.handle(self.command, self.path, body, self.headers.get("Authorization"))
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:  # keep test output clean
            pass

    return Handler
