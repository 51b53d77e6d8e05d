"""The Helm chart `helm/srum`, rendered and linted by Helm's own engine (helm-python-sdk, offline).

No cluster is involved: the rendered objects are validated against the official Kubernetes schemas of one
pinned version and against srum's pod security rules, and the driver's command line is parsed by the
real CLI. `helm install` itself (admission, controllers) did not run.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from srum_jobs.cluster import builders as b
from srum_jobs.cluster.chart_schema import DEFAULT_PATH, render as render_schema
from srum_jobs.cluster.checks import KUBERNETES_VERSION, object_problems
from srum_jobs.config import ClusterConfig, parse_experiment

helm = pytest.importorskip("helm_python")

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "srum"
VALUES_FILES = sorted((ROOT / "helm" / "values").glob("*.yaml"))
NS = "team-a"


def load_values(path):
    return yaml.safe_load(path.read_text()) if path else None


def render(values=None, name="exp-42", namespace=NS):
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values=values, name=name, namespace=namespace, is_install=True)
    docs = [d for path, text in sorted(out.items()) if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    return docs, out


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


CASES = [None] + VALUES_FILES


def _id(p):
    return "defaults" if p is None else p.stem


def test_the_three_values_files_exist():
    assert {p.stem for p in VALUES_FILES} >= {"shared-endpoint", "in-release-triton", "kueue"}


@pytest.mark.parametrize("values_file", CASES, ids=_id)
def test_lint_has_no_errors(values_file):
    report = helm.lint(str(CHART), load_values(values_file), strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    errors = [m for m in report["messages"] if m["severity"] >= 2 and m["error"] != "icon is recommended"]
    assert report["errors"] == [] and errors == [], report


@pytest.mark.parametrize("values_file", CASES, ids=_id)
def test_every_rendered_object_is_valid_and_every_pod_is_locked_down(values_file):
    docs, _ = render(load_values(values_file))
    assert {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job"} <= {d["kind"] for d in docs}
    assert not by_kind(docs, "Secret")
    drivers = [d["metadata"]["name"] for d in by_kind(docs, "Job")]
    assert object_problems(docs, api_pods=drivers) == []
    for d in docs:
        assert d["metadata"].get("namespace") in (None, NS)  # everything lands in the release namespace


@pytest.mark.parametrize("values_file", CASES, ids=_id)
def test_the_experiment_configmap_parses_as_the_values_experiment(values_file):
    values = load_values(values_file) or {"experiment": {"name": "my-experiment"}}
    docs, _ = render(values)
    cm = by_kind(docs, "ConfigMap")[0]
    data = json.loads(cm["data"]["experiment.json"])
    exp = parse_experiment(data, "rendered ConfigMap")
    want = copy.deepcopy(values["experiment"])
    want.setdefault("cluster", {})["namespace"] = NS
    if (values.get("triton") or {}).get("enabled"):
        want.setdefault("judge", {})["url"] = \
            f"dns:///exp-42-triton-headless.{NS}.svc.cluster.local:8001"
    assert data == want
    assert exp.cluster.namespace == NS


def test_floats_survive_helm_and_the_driver_reads_them_back_as_floats():
    """Helm prints 1.0e-15 as 1e-15, which YAML 1.1 reads as a string; the chart therefore writes JSON."""
    values = {"experiment": {"name": "f", "training": {"eps": 1.0e-15, "lr": 2.0e-5, "steps": 1000000}}}
    docs, _ = render(values)
    exp = parse_experiment(json.loads(by_kind(docs, "ConfigMap")[0]["data"]["experiment.json"]))
    assert exp.training.eps == 1e-15 and exp.training.lr == 2e-5 and exp.training.steps == 1000000


def _driver(docs):
    (job,) = [d for d in by_kind(docs, "Job") if d["metadata"]["labels"]["srum.dev/component"] == "driver"]
    return job


@pytest.mark.parametrize("values_file", CASES, ids=_id)
def test_driver_runs_srum_orchestrate_with_options_the_cli_accepts(values_file):

    from srum_jobs.cluster.commands import orchestrate_command

    docs, _ = render(load_values(values_file))
    job = _driver(docs)
    pod = job["spec"]["template"]["spec"]
    cmd = pod["containers"][0]["command"]
    assert cmd[:2] == ["srum", "orchestrate"]
    ctx = orchestrate_command.make_context("orchestrate", cmd[2:])
    assert ctx.params["experiment"] == "/etc/srum/experiment.json"
    assert ctx.params["namespace"] == NS and ctx.params["configmap"] == "exp-42-experiment"
    assert pod["serviceAccountName"] == "exp-42-driver" and pod["automountServiceAccountToken"] is True
    assert job["metadata"]["labels"]["srum.dev/experiment"] == (load_values(values_file) or {
        "experiment": {"name": "my-experiment"}})["experiment"]["name"]
    # the driver is found by `srum cancel` (which deletes it first) through these labels
    assert job["metadata"]["labels"]["srum.dev/round"] == "1"
    fail = [r for r in job["spec"]["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    assert set(fail[0]["onExitCodes"]["values"]) == set(b.FAIL_FAST_EXIT_CODES)
    mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[b.EXPERIMENT_DIR] == "experiment"


def test_driver_image_defaults_to_the_experiment_image_then_the_schema_default():
    docs, _ = render({"experiment": {"name": "x"}})
    assert _driver(docs)["spec"]["template"]["spec"]["containers"][0]["image"] == ClusterConfig().image
    docs, _ = render({"experiment": {"name": "x", "cluster": {"image": "reg.example/jobs:7"}}})
    assert _driver(docs)["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/jobs:7"


def test_driver_name_follows_the_experiment_so_an_upgrade_replaces_it():
    a = _driver(render({"experiment": {"name": "x", "generation": {"steps": 10}}})[0])["metadata"]["name"]
    b_ = _driver(render({"experiment": {"name": "x", "generation": {"steps": 20}}})[0])["metadata"]["name"]
    c = _driver(render({"experiment": {"name": "x", "generation": {"steps": 10}}, "round": 2})[0])["metadata"]["name"]
    same = _driver(render({"experiment": {"name": "x", "generation": {"steps": 10}}})[0])["metadata"]["name"]
    assert len({a, b_, c}) == 3 and a == same


def test_s3_credentials_only_by_reference(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-secret-987")
    values = load_values(ROOT / "helm" / "values" / "shared-endpoint.yaml")
    docs, raw = render(values)
    assert "canary-secret-987" not in "".join(raw.values())
    pod = _driver(docs)["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    # issue 15: a credentials file mounted from the Secret, never keys in the environment
    assert not [k for k in env if k.startswith("AWS_ACCESS") or k.startswith("AWS_SECRET")]
    assert env["AWS_SHARED_CREDENTIALS_FILE"]["value"] == "/var/run/secrets/srum/s3/credentials"
    (vol,) = [v for v in pod["volumes"] if v["name"] == "s3-credentials"]
    assert vol["secret"]["secretName"] == "team-a-s3" and vol["secret"]["items"] == [{"key": "credentials",
                                                                                      "path": "credentials"}]
    assert {"name": "s3-credentials", "mountPath": "/var/run/secrets/srum/s3", "readOnly": True} in \
        pod["containers"][0]["volumeMounts"]
    assert env["AWS_DEFAULT_REGION"]["value"] == "us-east-1"
    # the experiment's S3 endpoint reaches every boto3 client of the pod (issue 15, real-model pods)
    docs, _ = render(load_values(ROOT / "helm" / "values" / "in-release-triton.yaml"))
    env = {e["name"]: e for e in _driver(docs)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.minio.svc.cluster.local:9000"


def test_in_release_triton():
    docs, _ = render(load_values(ROOT / "helm" / "values" / "in-release-triton.yaml"))
    (dep,) = by_kind(docs, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["tritonserver"] and "--model-control-mode=none" in c["args"]
    assert "--model-repository=/models" in c["args"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and dep["spec"]["replicas"] == 2
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        assert c[probe]["httpGet"]["path"] == path
    shm = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}["dshm"]
    assert shm["emptyDir"]["medium"] == "Memory"
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["clusterIP"] == "None" and svc["metadata"]["name"] == "exp-42-triton-headless"
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    (netpol,) = [n for n in by_kind(docs, "NetworkPolicy") if n["metadata"]["name"] == "exp-42-triton"]
    assert netpol["spec"]["ingress"][0]["from"] == [{"podSelector": {}}]
    assert {"port": 8002, "protocol": "TCP"} in netpol["spec"]["ingress"][1]["ports"]   # Prometheus
    assert {"name": "metrics", "port": 8002, "targetPort": "metrics", "protocol": "TCP"} in svc["spec"]["ports"]


def test_kueue_local_queue():
    docs, _ = render(load_values(ROOT / "helm" / "values" / "kueue.yaml"))
    (lq,) = by_kind(docs, "LocalQueue")
    assert lq["apiVersion"] == "kueue.x-k8s.io/v1beta1"
    assert lq["metadata"]["name"] == "team-c-gpu" and lq["spec"] == {"clusterQueue": "gpu-h100"}
    assert not by_kind(render({"experiment": {"name": "x"}})[0], "LocalQueue")


@pytest.mark.parametrize("values,message", [
    ({"experiment": {"name": "x", "storag": {}}}, "additional properties 'storag' not allowed"),
    ({"experiment": {"name": "x", "generation": {"steps": -1}}}, "/experiment/generation/steps"),
    ({"experiment": {"name": "Not A DNS Label"}}, "/experiment/name"),
    ({"experiment": {"name": "x"}, "round": 0}, "/round"),
    ({"experiment": {"name": "x"}, "triton": {"enabled": "yes"}}, "/triton/enabled"),
    ({"experiment": {"name": "x"}, "driver": {"resources": {"requests": {"cpu": "lots"}}}}, "/driver/resources"),
    ({"experiment": {"name": "x", "cluster": {"namespace": "elsewhere"}}}, "the driver may only create Jobs"),
    ({"experiment": {"name": "x", "judge": {"url": "j:8001"}}, "triton": {"enabled": True}}, "remove one of the two"),
    ({"experiment": {"name": "x"}, "kueue": {"createLocalQueue": True}}, "needs experiment.cluster.queue_name"),
    ({"experiment": {"name": "x", "cluster": {"queue_name": "q"}}, "kueue": {"createLocalQueue": True}},
     "needs kueue.clusterQueue"),
])
def test_wrong_values_fail_at_install_with_a_message_naming_them(values, message):
    with pytest.raises(helm.HelmError) as err:
        render(values)
    assert message in str(err.value)


def test_values_schema_is_generated_from_the_experiment_models():
    assert DEFAULT_PATH == CHART / "values.schema.json"
    assert DEFAULT_PATH.read_text() == render_schema(), \
        "helm/srum/values.schema.json is stale: python -m srum_jobs.cluster.chart_schema --write"


def test_chart_defaults_match_the_python_builders():
    """What the chart and the builders both state must agree (pod path, security uid)."""
    docs, _ = render()
    pod = _driver(docs)["spec"]["template"]["spec"]
    assert pod["securityContext"] == b.pod_security_context()
    assert pod["containers"][0]["securityContext"] == b.container_security_context()
    with helm.Chart.load(str(CHART)) as chart:
        assert chart.metadata["appVersion"] == ClusterConfig().image.rsplit(":", 1)[1]


def test_notes_tell_the_user_how_to_follow_progress():
    _, raw = render(load_values(ROOT / "helm" / "values" / "kueue.yaml"))
    notes = raw["srum/templates/NOTES.txt"]
    assert "srum status --experiment" in notes and "--namespace team-a" in notes
    assert "logs -f -l srum.dev/component=driver" in notes and "queue team-c-gpu" in notes
