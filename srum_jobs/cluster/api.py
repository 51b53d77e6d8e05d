"""Talking to the Kubernetes API server with the official `kubernetes` client, errors in plain words.

Objects travel as plain dicts both ways (`_preload_content=False`), the same dicts the builders make and
`--dry-run` prints. Every API error becomes a `ClusterError` whose message says what was refused and why
(forbidden, quota exceeded, namespace missing, invalid object, API server unreachable).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

from .. import exitcodes

REQUEST_TIMEOUT_S = 30

# kind -> (API class, method suffix, resource as RBAC names it)
_KINDS = {
    "Job": ("BatchV1Api", "namespaced_job", "jobs"),
    "Service": ("CoreV1Api", "namespaced_service", "services"),
    "ConfigMap": ("CoreV1Api", "namespaced_config_map", "configmaps"),
    "NetworkPolicy": ("NetworkingV1Api", "namespaced_network_policy", "networkpolicies"),
    "Pod": ("CoreV1Api", "namespaced_pod", "pods"),
}


class ClusterError(RuntimeError):
    """A cluster operation failed; the message is meant for a person.

    `exit_code` tells a driver pod's podFailurePolicy whether trying again can help: TEMPORARY for an
    unreachable server or an exhausted quota, CONFIG_ERROR for what only a person can fix (RBAC,
    a missing namespace, an invalid object).
    """

    def __init__(self, message: str, exit_code: int = exitcodes.TEMPORARY):
        super().__init__(message)
        self.exit_code = exit_code


class AlreadyExists(ClusterError):
    pass


class NotFound(ClusterError):
    pass


_FIX = exitcodes.CONFIG_ERROR


def _status_message(body: Any) -> str:
    try:
        return str(json.loads(body).get("message") or "")
    except (TypeError, ValueError, AttributeError):
        return str(body or "")


def explain(e: Exception, verb: str, kind: str, name: str, namespace: str, host: str = "") -> ClusterError:
    """Translate an API or transport error into a sentence."""
    from kubernetes.client.exceptions import ApiException

    what = f"{kind.lower()} {name}" if name else f"{_KINDS.get(kind, (None, None, kind))[2]}"
    if isinstance(e, ApiException):
        msg = _status_message(e.body)
        if e.status == 401:
            return ClusterError(f"cannot {verb} {what}: not authenticated to the cluster "
                                "(the kubeconfig credentials are missing or expired)", _FIX)
        if e.status == 403 and "exceeded quota" in msg:
            detail = msg.split("exceeded quota:", 1)[1].strip()
            return ClusterError(f"cannot {verb} {what} in namespace {namespace}: the namespace's resource quota is "
                                f"exceeded ({detail}); wait for other work to finish, lower the requests, "
                                "or ask for more quota")
        if e.status == 403:
            return ClusterError(f"cannot {verb} {what} in namespace {namespace}: forbidden. The API server said: "
                                f"{msg or e.reason}. Ask a cluster admin for a Role allowing it", _FIX)
        if e.status == 404 and verb == "create":
            return ClusterError(f"cannot create {what}: namespace {namespace} does not exist "
                                f"(create it, or pass --namespace); the API server said: {msg or e.reason}", _FIX)
        if e.status == 404:
            return NotFound(f"{what} not found in namespace {namespace}", _FIX)
        if e.status == 409:
            return AlreadyExists(f"{what} already exists in namespace {namespace}", _FIX)
        if e.status == 422:
            return ClusterError(f"the API server rejected {what} as invalid: {msg}", _FIX)
        return ClusterError(f"cannot {verb} {what} in namespace {namespace}: HTTP {e.status} {e.reason}: {msg}")
    # urllib3 transport errors (refused connection, DNS, TLS)
    reason = getattr(e, "reason", None) or e
    return ClusterError(f"cannot reach the Kubernetes API server{' at ' + host if host else ''} to {verb} {what}: "
                        f"{reason}")


def load_api_client(kubeconfig: Optional[str] = None, context: Optional[str] = None):
    """An ApiClient from a kubeconfig (KUBECONFIG or ~/.kube/config) or, inside a pod, the in-cluster account."""
    from kubernetes import client, config

    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    # Inside a pod without an explicit kubeconfig: the pod's service account.
    in_cluster = not (kubeconfig or os.environ.get("KUBECONFIG")) and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    source = "the in-cluster service account" if in_cluster else path
    try:
        if in_cluster:
            config.load_incluster_config(client_configuration=cfg)
        else:
            if not any(os.path.exists(p) for p in path.split(os.pathsep)):
                raise ClusterError(f"no Kubernetes configuration: {path} does not exist; set KUBECONFIG, "
                                   "or run inside a cluster", _FIX)
            config.load_kube_config(config_file=path, context=context, client_configuration=cfg)
    except config.ConfigException as e:
        raise ClusterError(f"cannot load the Kubernetes configuration from {source}: {e}", _FIX) from None
    return client.ApiClient(configuration=cfg)


@dataclass
class Cluster:
    """The few API calls srum makes, in one namespace."""

    api_client: Any
    namespace: str

    @classmethod
    def connect(cls, namespace: str, kubeconfig: Optional[str] = None, context: Optional[str] = None) -> "Cluster":
        return cls(load_api_client(kubeconfig, context), namespace)

    @property
    def host(self) -> str:
        return getattr(self.api_client.configuration, "host", "")

    def _call(self, verb: str, kind: str, name: str, *, method: Optional[str] = None, **kwargs: Any) -> Any:
        import kubernetes.client as kc
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        api_cls, suffix, _ = _KINDS[kind]
        fn = getattr(getattr(kc, api_cls)(self.api_client), method or f"{verb}_{suffix}")
        if name and verb != "create":
            kwargs["name"] = name
        kwargs.setdefault("_request_timeout", REQUEST_TIMEOUT_S)
        try:
            return fn(namespace=self.namespace, _preload_content=False, **kwargs)
        except (ApiException, HTTPError) as e:
            raise explain(e, "get" if verb == "read" else verb, kind, name, self.namespace, self.host) from None

    @staticmethod
    def _json(resp: Any) -> Dict[str, Any]:
        return json.loads(resp.data or b"{}")

    def create(self, obj: Dict[str, Any]) -> Dict[str, Any]:
        """Create an object; AlreadyExists if an object of that kind and name is there."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        return self._json(self._call("create", kind, name, body=obj))

    def get(self, kind: str, name: str) -> Optional[Dict[str, Any]]:
        try:
            return self._json(self._call("read", kind, name))
        except NotFound:
            return None

    def list(self, kind: str, selector: str) -> List[Dict[str, Any]]:
        return list(self._json(self._call("list", kind, "", label_selector=selector)).get("items") or [])

    def delete(self, kind: str, name: str) -> bool:
        """Delete; pods of a Job go with it (background propagation). False when it was already gone."""
        try:
            self._call("delete", kind, name, propagation_policy="Background")
            return True
        except NotFound:
            return False

    def pod_log(self, pod: str, *, tail: Optional[int] = None, container: Optional[str] = None) -> str:
        kwargs: Dict[str, Any] = {}
        if tail is not None:
            kwargs["tail_lines"] = tail
        if container:
            kwargs["container"] = container
        resp = self._call("read", "Pod", pod, method="read_namespaced_pod_log", **kwargs)
        return resp.data.decode("utf-8", errors="replace")

    def follow_pod_log(self, pod: str, *, container: Optional[str] = None) -> Iterator[str]:
        kwargs: Dict[str, Any] = {"follow": True, "_request_timeout": None}  # a followed log is idle for long
        if container:
            kwargs["container"] = container
        resp = self._call("read", "Pod", pod, method="read_namespaced_pod_log", **kwargs)
        for chunk in resp.stream(4096):
            yield chunk.decode("utf-8", errors="replace")
