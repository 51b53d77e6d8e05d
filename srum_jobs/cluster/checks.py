"""Checks over Kubernetes objects (ours, the chart's, k8s/): the official schemas and the pod security rules.

Used by the tests and usable by anyone about to apply srum's manifests. `kubernetes-validate` is a test
dependency, imported only when schema validation is asked for.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List

from .builders import pod_specs

_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")

# One pinned Kubernetes version for every schema check (Indexed Jobs with backoffLimitPerIndex and
# podFailurePolicy are GA there).
KUBERNETES_VERSION = "1.33.0"

# Kinds without an official schema (CRDs); checked structurally instead.
_CRD_REQUIRED = {("kueue.x-k8s.io", "LocalQueue"): ("spec", "clusterQueue")}


def schema_problems(obj: Dict[str, Any], version: str = KUBERNETES_VERSION) -> List[str]:
    """Violations of the official OpenAPI schema (strict: unknown fields are errors). [] when valid."""
    import kubernetes_validate

    group = obj.get("apiVersion", "").split("/")[0] if "/" in obj.get("apiVersion", "") else ""
    if (group, obj.get("kind")) in _CRD_REQUIRED:
        section, key = _CRD_REQUIRED[(group, obj["kind"])]
        if not isinstance(obj.get(section), dict) or not obj[section].get(key):
            return [f"{obj['kind']} {obj.get('metadata', {}).get('name')}: {section}.{key} is required"]
        return []
    try:
        kubernetes_validate.validate(obj, version, strict=True)
        return []
    except kubernetes_validate.ValidationError as e:
        where = "/".join(str(p) for p in e.path)
        return [f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}: {where}: {e.message}"]


def semantic_problems(obj: Dict[str, Any]) -> List[str]:
    """Rules the API server or the kubelet enforce that the OpenAPI schema cannot express."""
    out: List[str] = []
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    what = f"{obj.get('kind')} {name}"
    for key, value in (meta.get("labels") or {}).items():
        if len(str(value)) > 63 or not _LABEL_VALUE.match(str(value)):
            out.append(f"{what}: label {key}={value!r} is not a valid label value")
    if obj.get("kind") in ("Job", "Service") and (len(name) > 63 or not _DNS_LABEL.match(name)):
        out.append(f"{what}: the name must be a DNS label of at most 63 characters")
    if obj.get("kind") == "Job":
        spec = obj.get("spec") or {}
        pod = spec.get("template", {}).get("spec", {})
        if spec.get("podFailurePolicy") and pod.get("restartPolicy") != "Never":
            out.append(f"{what}: podFailurePolicy requires restartPolicy Never")
        indexed = spec.get("completionMode") == "Indexed"
        if ("backoffLimitPerIndex" in spec or "maxFailedIndexes" in spec) and not indexed:
            out.append(f"{what}: backoffLimitPerIndex needs completionMode Indexed")
        rules = (spec.get("podFailurePolicy") or {}).get("rules") or []
        if any(r.get("action") == "FailIndex" for r in rules) and "backoffLimitPerIndex" not in spec:
            out.append(f"{what}: FailIndex needs backoffLimitPerIndex")
        for r in rules:
            if 0 in ((r.get("onExitCodes") or {}).get("values") or []):
                out.append(f"{what}: a podFailurePolicy rule may not match exit code 0")
        if indexed and pod.get("subdomain"):
            # each pod's hostname is <job>-<index>, and the rendezvous resolves it
            last = f"{name}-{max(0, int(spec.get('completions', 1)) - 1)}"
            if len(last) > 63:
                out.append(f"{what}: pod hostname {last!r} exceeds 63 characters")
        if spec.get("parallelism", 1) > 100000 or spec.get("completions", 1) > 100000:
            out.append(f"{what}: more than 100000 completions or parallelism")
    for spec in pod_specs(obj):
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            declared = {e["name"] for e in c.get("env") or []}
            for arg in (c.get("command") or []) + (c.get("args") or []):
                for var in _VAR_REF.findall(arg):
                    if var not in declared:
                        # the kubelet expands $(VAR) only for variables the container declares
                        out.append(f"{what}: container {c.get('name')} uses $({var}) without declaring it")
    return out


# AWS_* variables that name no secret (a region, an endpoint, where the mounted credentials file is)
_AWS_NOT_SECRET = ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_SHARED_CREDENTIALS_FILE")


def pod_security_problems(spec: Dict[str, Any], *, may_use_api: bool = False) -> List[str]:
    """What a pod spec lacks of srum's rules: non-root, read-only root with writable emptyDir scratch,
    no capabilities, no privilege escalation, RuntimeDefault seccomp, no service-account token unless it
    talks to the API server, requests and limits on every container, no host namespaces or host paths."""
    out: List[str] = []
    psc = spec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        out.append("pod securityContext.runAsNonRoot is not true")
    if psc.get("runAsUser", 1) == 0:
        out.append("pod runs as uid 0")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        out.append("pod seccompProfile is not RuntimeDefault")
    token = spec.get("automountServiceAccountToken")
    if not may_use_api and token is not False:
        out.append("automountServiceAccountToken is not false")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            out.append(f"{flag} is set")
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for v in volumes.values():
        if "hostPath" in v:
            out.append(f"volume {v['name']} is a hostPath")
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        name = c.get("name")
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"container {name}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            out.append(f"container {name}: privileged")
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(f"container {name}: readOnlyRootFilesystem is not true")
        if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
            out.append(f"container {name}: capabilities.drop is not [ALL]")
        if (sc.get("capabilities") or {}).get("add"):
            out.append(f"container {name}: adds capabilities")
        if sc.get("runAsUser") == 0 or sc.get("runAsNonRoot") is False:
            out.append(f"container {name}: may run as root")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(res.get(part) or {}):
                out.append(f"container {name}: resources.{part} lacks cpu or memory")
        scratch = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/tmp"]
        if not scratch or "emptyDir" not in volumes.get(scratch[0]["name"], {}):
            out.append(f"container {name}: no emptyDir mounted at /tmp (the root file system is read-only)")
        for e in c.get("env") or []:
            if e.get("name", "").startswith("AWS_") and e.get("name") not in _AWS_NOT_SECRET and "value" in e:
                out.append(f"container {name}: {e['name']} has a literal value instead of a secretKeyRef")
        if c.get("envFrom"):
            for src in c["envFrom"]:
                if "secretRef" not in src and "configMapRef" not in src:
                    out.append(f"container {name}: unexpected envFrom source")
    return out


def object_problems(objs: Iterable[Dict[str, Any]], *, api_pods: Iterable[str] = (),
                    version: str = KUBERNETES_VERSION) -> List[str]:
    """Schema, semantic and pod security problems of many objects. `api_pods`: names of objects whose pods may mount
    a service-account token (the driver)."""
    allowed = set(api_pods)
    out: List[str] = []
    for obj in objs:
        out += schema_problems(obj, version)
        out += semantic_problems(obj)
        for spec in pod_specs(obj):
            name = obj.get("metadata", {}).get("name")
            out += [f"{obj['kind']} {name}: {p}" for p in pod_security_problems(spec, may_use_api=name in allowed)]
    return out
