"""k8s/monitoring/: the judge's scraping, recording rules, alerts, dashboard and autoscaler.

No cluster, no Prometheus here: the HPA is validated against the official Kubernetes schema; the Prometheus
Operator objects are checked for structure; every Triton metric the rules read is checked against what a
real local tritonserver exports, and every recording rule the dashboard and the autoscaler use exists."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml

from srum_jobs.cluster.checks import object_problems

MON = Path(__file__).resolve().parents[1] / "k8s" / "monitoring"


def docs():
    kust = yaml.safe_load((MON / "kustomization.yaml").read_text())
    out = {}
    for f in kust["resources"]:
        (d,) = [d for d in yaml.safe_load_all((MON / f).read_text()) if d]
        out[d["kind"]] = d
    return out


def test_hpa_scales_the_judge_deployment_on_queue_time_and_is_valid():
    d = docs()
    hpa = d["HorizontalPodAutoscaler"]
    assert object_problems([hpa, d["ConfigMap"]]) == []
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "srum-judge"}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] == "srum_judge_queue_seconds_per_request"
    assert hpa["spec"]["minReplicas"] >= 2     # the PodDisruptionBudget allows one down


def test_rules_alerts_and_dashboard_fit_together():
    d = docs()
    rules = [r for g in d["PrometheusRule"]["spec"]["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert {"SrumJudgeQueueTimeHigh", "SrumJudgeFailureRateHigh"} <= set(alerts)
    for a in alerts.values():
        assert a["for"] and a["labels"]["severity"] and a["annotations"]["summary"]
    dash = json.loads(d["ConfigMap"]["data"]["srum-judge.json"])
    used = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"srum_judge:[a-z_:0-9]+", t["expr"])}
    used |= {m for a in alerts.values() for m in re.findall(r"srum_judge:[a-z_:0-9]+", a["expr"])}
    assert used <= recorded, used - recorded
    sm = d["ServiceMonitor"]
    ports = {e["port"] for e in sm["spec"]["endpoints"]}
    svc = yaml.safe_load((MON.parent / "service.yaml").read_text())
    assert ports <= {p["name"] for p in svc["spec"]["ports"]}


@pytest.mark.triton
def test_every_triton_metric_the_rules_read_is_exported_by_the_server(triton_server):
    text = urllib.request.urlopen(triton_server.metrics_url, timeout=10).read().decode()
    exported = {ln.split("{")[0].split(" ")[0] for ln in text.splitlines() if ln and not ln.startswith("#")}
    rules_text = (MON / "prometheusrule.yaml").read_text() + (MON / "hpa.yaml").read_text() + \
        (MON / "dashboard.yaml").read_text()
    wanted = set(re.findall(r"\bnv_[a-z_]+", rules_text))
    assert wanted and wanted <= exported, wanted - exported
    from srum_jobs.judging.gateway import JudgeGateway, TeamPolicy, key_digest

    gateway_metrics = JudgeGateway("127.0.0.1:1", {"a": TeamPolicy("a", key_digest("k"))}).metrics_text()
    for name in set(re.findall(r"\bsrum_judge_gateway_[a-z_]+", rules_text)):
        assert f"# TYPE {name} " in gateway_metrics, name
