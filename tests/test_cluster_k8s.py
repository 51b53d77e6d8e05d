"""The shared judge server manifests in k8s/ (one Triton deployment for many teams).

No cluster and no kustomize binary here: each manifest is validated against the official Kubernetes schemas
of the pinned version, the kustomization is checked to list exactly these files, and the wiring between
objects (selectors, named ports, probes, NetworkPolicy) is asserted directly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from srum_jobs.cluster.builders import pod_specs
from srum_jobs.cluster.checks import object_problems
from srum_jobs.config import JudgeConfig

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
NAMESPACE = "srum-judge"
SHARED_URL = "dns:///srum-judge-headless.srum-judge.svc.cluster.local:8001"


def kustomization():
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def objects():
    return [d for f in kustomization()["resources"] for d in yaml.safe_load_all((K8S / f).read_text()) if d]


def one(kind, name=None):
    found = [o for o in objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, found)
    return found[0]


def test_kustomization_lists_every_manifest_and_one_namespace():
    k = kustomization()
    assert k["kind"] == "Kustomization" and k["namespace"] == NAMESPACE
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(k["resources"]) == sorted(files)
    for obj in objects():
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACE
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE
    images = {i["name"] for i in k["images"]}
    assert one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"].split(":")[0] in images


def test_every_manifest_is_valid_and_the_pods_are_locked_down():
    assert object_problems(objects()) == []
    ns = one("Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_deployment_gpu_shm_probes_and_model_control():
    dep = one("Deployment")
    (pod,) = pod_specs(dep)
    c = pod["containers"][0]
    assert c["command"] == ["tritonserver"]
    args = c["args"]
    # clients cannot load, unload or replace models on the shared server
    assert "--model-control-mode=none" in args and not any(a.startswith("--load-model") for a in args)
    assert "--model-repository=/models" in args
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "metrics": 8002}
    # issue 15: Triton's gRPC only on loopback; the gateway container (TLS, team keys) serves 8001
    assert "--grpc-address=127.0.0.1" in args and "--grpc-port=9001" in args
    gw = pod["containers"][1]
    assert gw["command"] == ["python3", "-m", "srum_jobs.judging.gateway"]
    assert "--upstream=127.0.0.1:9001" in gw["args"] and "--listen=0.0.0.0:8001" in gw["args"]
    assert any(a.startswith("--tls-cert=") for a in gw["args"]) and any(a.startswith("--keys-file=") for a in gw["args"])
    from srum_jobs.judging.gateway import main as gateway_main
    with pytest.raises(SystemExit):                  # the arguments parse with the real entry point
        gateway_main(["--help"])
    assert c["resources"]["limits"]["nvidia.com/gpu"] == c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert volumes[mounts["/weights"]]["persistentVolumeClaim"]["readOnly"] is True
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        assert c[probe]["httpGet"] == {"path": path, "port": "http"}
    # weights paths point into the mounted volume
    env = {e["name"]: e["value"] for e in c["env"]}
    assert all(env[k].startswith("/weights/") for k in env if k.endswith("_MODEL_PATH"))


def test_services_select_the_judge_pods_by_named_ports():
    dep = one("Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    named = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    headless, regular = one("Service", "srum-judge-headless"), one("Service", "srum-judge")
    assert headless["spec"]["clusterIP"] == "None"
    assert {p["port"] for p in regular["spec"]["ports"]} == {8000, 8001, 8002, 8003}
    assert 8001 in {p["port"] for p in headless["spec"]["ports"]}
    for svc in (headless, regular):
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= named
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1 and dep["spec"]["replicas"] > 1


def test_network_policy_admits_only_labelled_client_namespaces():
    pol = one("NetworkPolicy")
    assert pol["spec"]["policyTypes"] == ["Ingress"]
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= \
        one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    rules = pol["spec"]["ingress"]
    by_port = {}
    for rule in rules:
        assert rule["from"], "an ingress rule without `from` admits everyone"
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector"} and peer["namespaceSelector"]["matchLabels"]
        for port in rule["ports"]:
            by_port[port["port"]] = rule["from"][0]["namespaceSelector"]["matchLabels"]
    assert by_port[8001] == by_port[8000] == {"srum.dev/judge-client": "true"}
    assert by_port[8002] == by_port[8003] == {"srum.dev/judge-metrics": "true"}


def test_the_documented_client_url_is_accepted_by_the_experiment_schema_and_names_the_headless_service():
    assert JudgeConfig(url=SHARED_URL).url == SHARED_URL
    host = SHARED_URL[len("dns:///"):].split(":")[0]
    assert host.split(".")[:2] == ["srum-judge-headless", NAMESPACE]
    assert SHARED_URL in (K8S / "kustomization.yaml").read_text()
    for values in (ROOT / "helm" / "values").glob("*.yaml"):
        url = ((yaml.safe_load(values.read_text())["experiment"].get("judge") or {}).get("url"))
        assert url in (None, SHARED_URL), values
