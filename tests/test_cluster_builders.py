"""Stage Jobs built from the experiment file: structure, official schemas, pod security, dry-run CLI.

No cluster runs here. The objects are checked against the official Kubernetes OpenAPI schemas of one
pinned version (kubernetes-validate, strict: unknown fields are errors) and against the rules below; the
Kubernetes semantics the schema cannot express (podFailurePolicy needs restartPolicy Never, ...) are
asserted one by one.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from srum_jobs import exitcodes
from srum_jobs.cli import main
from srum_jobs.cluster import builders as b
from srum_jobs.cluster.checks import KUBERNETES_VERSION, object_problems, pod_security_problems, schema_problems
from srum_jobs.config import ConfigError, parse_experiment

ROOT = Path(__file__).resolve().parents[1]
BAGEL = ROOT / "examples" / "bagel-s3.yaml"

BASE = {
    "name": "demo",
    "storage": {"root": "s3://bucket/srum", "region": "eu-west-1"},
    "prompts": {"source": "s3://bucket/prompts.jsonl", "num_shards": 6},
    "judge": {"url": "dns:///judge-headless.judge.svc.cluster.local:8001"},
    "training": {"nnodes": 3},
    "cluster": {"namespace": "team-a", "s3_secret": "s3-creds", "generate_parallelism": 4,
                "node_selector": {"pool": "gpu"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
}


def make(overrides=None, *, text=None, round=1, source="exp.yaml"):
    data = copy.deepcopy(BASE)
    for section, values in (overrides or {}).items():
        if isinstance(values, dict):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    exp = parse_experiment(data)
    text = text if text is not None else yaml.safe_dump(data)
    return b.RunRef.create(exp, text, round, source=source), text


def jobs_by_stage(objs):
    return {o["metadata"]["labels"][b.LABEL_STAGE]: o for o in objs if o["kind"] == "Job"}


def test_every_object_is_valid_for_the_pinned_kubernetes_and_secure():
    ref, text = make()
    objs = b.all_objects(ref, text)
    assert [o["kind"] for o in objs] == ["ConfigMap", "NetworkPolicy", "Job", "Job", "Service", "Job", "Job", "Job"]
    assert object_problems(objs) == []


def test_the_checks_themselves_catch_a_broken_object():
    """The validator and the security check are what every other test relies on: prove they can fail."""
    ref, _ = make()
    job = b.sharded_stage_job(ref, "generate")
    broken = copy.deepcopy(job)
    broken["spec"]["completionz"] = 3
    assert schema_problems(broken, KUBERNETES_VERSION)
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"n": 1}
    assert schema_problems(broken, KUBERNETES_VERSION)
    broken = copy.deepcopy(job)
    broken["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    broken["spec"]["template"]["spec"]["containers"][0]["env"].pop(0)  # JOB_COMPLETION_INDEX
    broken["metadata"]["labels"]["srum.dev/experiment"] = "x" * 64
    problems = object_problems([broken])
    assert any("restartPolicy Never" in p for p in problems)
    assert any("$(JOB_COMPLETION_INDEX) without declaring it" in p for p in problems)
    assert any("not a valid label value" in p for p in problems)
    pod = copy.deepcopy(job["spec"]["template"]["spec"])
    pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False
    pod["automountServiceAccountToken"] = True
    pod["containers"][0]["env"].append({"name": "AWS_SECRET_ACCESS_KEY", "value": "x"})
    problems = pod_security_problems(pod)
    assert any("readOnlyRootFilesystem" in p for p in problems)
    assert any("automountServiceAccountToken" in p for p in problems)
    assert any("literal value" in p for p in problems)


def _assert_indexed_stage(job, ref, stage, shards):
    spec = job["spec"]
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == shards
    assert spec["parallelism"] == min(ref.exp.cluster.generate_parallelism, shards)
    assert spec["backoffLimitPerIndex"] == ref.exp.cluster.backoff_limit_per_index
    assert spec["ttlSecondsAfterFinished"] == ref.exp.cluster.ttl_seconds_after_finished
    assert c["command"] == ["srum", "stage", stage, "--experiment", "/etc/srum/experiment.yaml", "--round", "1",
                            "--shard", "$(JOB_COMPLETION_INDEX)", "--num-shards", str(shards)]
    # $(VAR) is expanded by the kubelet only for variables the container itself declares
    assert c["env"][0]["name"] == "JOB_COMPLETION_INDEX"
    if stage == "rewards":
        # issue 15: a CPU-only stage gets neither the GPU node selector nor the GPU tolerations
        assert "nodeSelector" not in pod and "tolerations" not in pod
    else:
        assert pod["nodeSelector"] == {"pool": "gpu"}
        assert pod["tolerations"] == ref.exp.cluster.tolerations


def test_generate_rewards_eval_are_indexed_jobs_one_pod_per_shard():
    ref, text = make()
    jobs = jobs_by_stage(b.all_objects(ref, text))
    for stage in ("generate", "rewards", "eval"):
        _assert_indexed_stage(jobs[stage], ref, stage, 6)
    gen = jobs["generate"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert gen["requests"] == gen["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    rew = jobs["rewards"]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in rew["limits"]  # reward maps are CPU work


def test_pod_failure_policy_fails_fast_on_config_errors_and_ignores_disruption():
    ref, text = make()
    for job in (o for o in b.all_objects(ref, text) if o["kind"] == "Job"):
        rules = job["spec"]["podFailurePolicy"]["rules"]
        fail = [r for r in rules if r["action"] == "FailJob"]
        assert len(fail) == 1 and set(fail[0]["onExitCodes"]["values"]) == {exitcodes.CONFIG_ERROR, exitcodes.USAGE}
        assert fail[0]["onExitCodes"]["operator"] == "In"
        # infrastructure / temporary codes are retried (counted), never fail-fast
        assert exitcodes.TEMPORARY not in fail[0]["onExitCodes"]["values"]
        assert exitcodes.FAILURE not in fail[0]["onExitCodes"]["values"]
        ignore = [r for r in rules if r["action"] == "Ignore"]
        assert ignore == [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
        # Kubernetes rejects a podFailurePolicy unless pods never restart in place
        assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_training_is_a_multinode_torchrun_indexed_job_with_a_headless_service():
    ref, text = make({"cluster": {"train": {"cpu": "32", "memory": "400Gi", "gpu": 8}}})
    svc, job = b.stage_objects(ref, "train")
    name = "srum-demo-r1-train"
    assert svc["kind"] == "Service" and svc["metadata"]["name"] == name
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items())
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == name  # pods resolve as <job>-<index>.<service>
    cmd = pod["containers"][0]["command"]
    # torchrun through the launcher (stages/launch.py), which passes a worker's exit code through
    assert cmd == ["python", "-m", "srum_jobs.stages.launch", "--nproc-per-node=8", "--nnodes", "3",
                   "--node-rank", "$(JOB_COMPLETION_INDEX)", "--rdzv-backend", "c10d",
                   "--rdzv-endpoint", f"{name}-0.{name}:29500",
                   "--", "stage", "train", "--experiment", "/etc/srum/experiment.yaml", "--round", "1"]
    assert pod["containers"][0]["ports"] == [{"name": "c10d", "containerPort": 29500, "protocol": "TCP"}]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}} in pod["volumes"]
    # the file is validated first, by an init container: a bad file fails before the rendezvous waits
    init = pod["initContainers"][0]
    assert init["command"] == ["srum", "config", "validate", "/etc/srum/experiment.yaml"]
    assert not any("secretKeyRef" in e.get("valueFrom", {}) for e in init["env"])
    assert spec["backoffLimit"] == ref.exp.cluster.backoff_limit_per_index * 3
    assert "backoffLimitPerIndex" not in spec
    assert object_problems([svc, job]) == []


def test_cpu_training_uses_nproc_per_node_and_gpu_training_one_process_per_gpu():
    ref, _ = make({"training": {"nproc_per_node": 2}, "cluster": {"train": {"cpu": "4", "memory": "8Gi", "gpu": 0}}})
    assert b.distributed_command(ref, "train")[3] == "--nproc-per-node=2"
    ref, _ = make({"training": {"nproc_per_node": 1}, "cluster": {"train": {"gpu": 8}}})
    assert b.distributed_command(ref, "train")[3] == "--nproc-per-node=8"
    ref, _ = make({"training": {"nproc_per_node": 4}, "cluster": {"train": {"gpu": 8}}})
    with pytest.raises(b.ClusterConfigError, match=r"training.nproc_per_node \(4\).*cluster.train.gpu \(8\)"):
        b.distributed_job(ref, "train")


def test_report_is_a_single_pod_job():
    ref, _ = make()
    job = b.single_pod_job(ref, "report")
    assert "completionMode" not in job["spec"] and job["spec"]["completions"] == 1
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "srum", "stage", "report", "--experiment", "/etc/srum/experiment.yaml", "--round", "1"]


def test_kueue_queue_label_and_suspend_only_when_a_queue_is_configured():
    ref, text = make({"cluster": {"queue_name": "team-a-gpu"}})
    for job in (o for o in b.all_objects(ref, text) if o["kind"] == "Job"):
        if job["metadata"]["labels"][b.LABEL_STAGE] in ("rewards", "report"):
            # issue 15: CPU-only stages never take the GPU quota; without cpu_queue_name they are not queued
            assert b.KUEUE_QUEUE_LABEL not in job["metadata"]["labels"] and "suspend" not in job["spec"]
            continue
        assert job["metadata"]["labels"][b.KUEUE_QUEUE_LABEL] == "team-a-gpu"
        assert job["spec"]["suspend"] is True
        # the queue label belongs on the Job (Kueue's admission unit), not on its pods
        assert b.KUEUE_QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"]
    ref, text = make()
    for job in (o for o in b.all_objects(ref, text) if o["kind"] == "Job"):
        assert b.KUEUE_QUEUE_LABEL not in job["metadata"]["labels"] and "suspend" not in job["spec"]


def test_s3_credentials_come_from_the_secret_by_reference_only(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-secret-value-123")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "canary-key-id-456")
    ref, text = make()
    objs = b.all_objects(ref, text)
    dumped = b.dump_yaml(objs)
    assert "canary-secret-value-123" not in dumped and "canary-key-id-456" not in dumped
    pod = b.sharded_stage_job(ref, "generate")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    # issue 15: the Secret's `credentials` file, mounted read-only; no key in the environment
    assert not [k for k in env if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")]
    assert env["AWS_SHARED_CREDENTIALS_FILE"]["value"] == f"{b.S3_CREDENTIALS_DIR}/credentials"
    (vol,) = [v for v in pod["volumes"] if v["name"] == "s3-credentials"]
    assert vol["secret"]["secretName"] == "s3-creds"
    assert {"name": "s3-credentials", "mountPath": b.S3_CREDENTIALS_DIR, "readOnly": True} in \
        pod["containers"][0]["volumeMounts"]
    assert env["AWS_DEFAULT_REGION"] == {"name": "AWS_DEFAULT_REGION", "value": "eu-west-1"}
    # the training pod's init container only reads the experiment file: no credentials file
    init = b.distributed_job(ref, "train")["spec"]["template"]["spec"]["initContainers"][0]
    assert "s3-credentials" not in {m["name"] for m in init["volumeMounts"]}
    assert "AWS_SHARED_CREDENTIALS_FILE" not in {e["name"] for e in init["env"]}
    # without a Secret (cloud identity through the service account) there are no AWS keys at all
    ref, _ = make({"cluster": {"s3_secret": None, "service_account": "srum-irsa"}})
    pod = b.sharded_stage_job(ref, "generate")["spec"]["template"]["spec"]
    assert not [e for e in pod["containers"][0]["env"] if e["name"].startswith("AWS_ACCESS")]
    assert pod["serviceAccountName"] == "srum-irsa" and pod["automountServiceAccountToken"] is False


def test_configmap_holds_the_file_verbatim_content_addressed_and_immutable():
    ref, text = make(text="# my comment\nname: demo\n")
    cm = b.experiment_configmap(ref, "# my comment\nname: demo\n")
    assert cm["data"] == {"experiment.yaml": "# my comment\nname: demo\n"}
    assert cm["immutable"] is True
    assert cm["metadata"]["name"] == f"srum-demo-{b.experiment_sha(text)[:10]}"
    other, _ = make(text="name: demo\n")
    assert other.configmap != ref.configmap  # a changed file never edits a ConfigMap under running pods
    with pytest.raises(ValueError):
        b.experiment_configmap(ref, "name: something-else\n")
    # a JSON experiment keeps its suffix, so the pods parse it as JSON
    jref, jtext = make(text='{"name": "demo"}', source="exp.json")
    job = b.sharded_stage_job(jref, "generate")
    assert "/etc/srum/experiment.json" in job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert b.experiment_configmap(jref, jtext)["data"] == {"experiment.json": jtext}


def test_cluster_refuses_settings_that_only_work_on_one_machine():
    with pytest.raises(ConfigError, match="storage.root.*file://"):
        b.sharded_stage_job(make({"storage": {"root": "file:///data/runs", "region": None}})[0], "generate")
    with pytest.raises(ConfigError, match="judge.url is not set"):
        b.distributed_job(make({"judge": {"url": None}})[0], "train")


def test_names_are_checked_against_kubernetes_limits():
    long = "x" * 40
    ref, _ = make({"name": long})
    assert len(b.job_name(long, 1, "generate")) <= 63
    with pytest.raises(b.ClusterConfigError, match="63"):
        b.job_name(long, 10 ** 12, "generate")
    with pytest.raises(ValueError, match="unknown stage"):
        b.job_name("demo", 1, "judge")


def test_every_pod_command_is_a_real_cli_command():
    """The stage commands in the Jobs must parse with the real `srum` CLI (and the train module exist)."""
    import importlib.util

    ref, text = make()
    for obj in b.all_objects(ref, text):
        for spec in b.pod_specs(obj):
            for c in spec.get("initContainers", []) + spec["containers"]:
                cmd = [a.replace("$(JOB_COMPLETION_INDEX)", "0") for a in c["command"]]
                if cmd[:3] == ["python", "-m", "srum_jobs.stages.launch"]:   # torchrun over `srum stage train`
                    assert importlib.util.find_spec(cmd[2]) is not None
                    cmd = ["srum"] + cmd[cmd.index("--") + 1:]
                assert cmd[0] == "srum"
                _assert_parses(cmd[1:])


def _assert_parses(args):
    """Resolve `args` through the real click tree and parse the leaf's options (nothing runs)."""
    cmd, ctx, rest = main, None, list(args)
    while isinstance(cmd, click.Group):
        ctx = click.Context(cmd, info_name=cmd.name, parent=ctx)
        sub = cmd.get_command(ctx, rest[0])
        assert sub is not None, f"`srum {' '.join(args)}`: no command {rest[0]!r}"
        cmd, rest = sub, rest[1:]
    leaf = cmd.make_context(cmd.name, rest, parent=ctx)  # raises UsageError on unknown or missing options
    assert not leaf.args, f"`srum {' '.join(args)}`: unexpected arguments {leaf.args}"


def test_dry_run_prints_valid_yaml_and_needs_no_cluster(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "does-not-exist"))
    result = CliRunner().invoke(main, ["enqueue", "all", "--dry-run", "--experiment", str(BAGEL)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("# srum enqueue all: 8 objects for experiment bagel-compbench-r1 round 1")
    docs = [d for d in yaml.safe_load_all(result.output) if d]
    assert [d["kind"] for d in docs] == ["ConfigMap", "NetworkPolicy", "Job", "Job", "Service", "Job", "Job", "Job"]
    assert docs[0]["data"]["experiment.yaml"] == BAGEL.read_text()
    assert all(d["metadata"]["namespace"] == "team-vision" for d in docs)
    assert object_problems(docs) == []
    # --namespace overrides the file; `judge` is the rewards stage
    result = CliRunner().invoke(main, ["enqueue", "judge", "--dry-run", "-e", str(BAGEL), "-n", "other", "--round", "2"])
    assert result.exit_code == 0, result.output
    docs = [d for d in yaml.safe_load_all(result.output) if d]
    assert [d["metadata"]["name"] for d in docs][1:] == ["srum-bagel-compbench-r1-stages", "srum-bagel-compbench-r1-r2-rewards"]
    assert {d["metadata"]["namespace"] for d in docs} == {"other"}


def test_enqueue_with_a_bad_experiment_exits_78_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: demo\ngeneration: {steps: -3}\n")
    result = CliRunner().invoke(main, ["enqueue", "generate", "--dry-run", "-e", str(bad)])
    assert result.exit_code == exitcodes.CONFIG_ERROR
    assert "generation.steps" in result.output
    local = tmp_path / "local.yaml"
    local.write_text("name: demo\njudge: {url: 'judge:8001'}\n")
    result = CliRunner().invoke(main, ["enqueue", "train", "--dry-run", "-e", str(local)])
    assert result.exit_code == exitcodes.CONFIG_ERROR and "storage.root" in result.output


def test_every_example_experiment_that_targets_a_cluster_builds_valid_objects():
    for path in sorted((ROOT / "examples").glob("*.y*ml")):
        data = yaml.safe_load(path.read_text())
        if not str(data.get("storage", {}).get("root", "")).startswith("s3://") or not data.get("judge", {}).get("url"):
            continue  # a local experiment: the cluster refuses it by design (tested above)
        exp = parse_experiment(data, str(path))
        text = path.read_text()
        objs = b.all_objects(b.RunRef.create(exp, text, 1, source=str(path)), text)
        assert object_problems(objs) == [], path


def test_json_dump_is_stable_for_the_api_server():
    ref, text = make()
    objs = b.all_objects(ref, text)
    assert json.loads(json.dumps(objs)) == objs
    assert list(yaml.safe_load_all(b.dump_yaml(objs))) == objs


def test_cluster_commands_module_imports_only_click():
    """`srum --help` must stay fast: the command module may not pull in kubernetes, yaml, pydantic or torch."""
    import subprocess
    import sys

    code = ("import sys, srum_jobs.cluster.commands; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'yaml', 'pydantic', 'torch', "
            "'boto3', 'urllib3'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cpu_stages_use_the_cpu_queue_and_selector():
    ref, text = make({"cluster": {"queue_name": "team-a-gpu", "cpu_queue_name": "team-a-cpu",
                                  "cpu_node_selector": {"pool": "cpu"}}})
    queues = {o["metadata"]["labels"][b.LABEL_STAGE]: o["metadata"]["labels"][b.KUEUE_QUEUE_LABEL]
              for o in b.all_objects(ref, text) if o["kind"] == "Job"}
    assert queues == {"generate": "team-a-gpu", "rewards": "team-a-cpu", "train": "team-a-gpu",
                      "eval": "team-a-gpu", "report": "team-a-cpu"}
    assert b.single_pod_job(ref, "report")["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "cpu"}


def test_users_add_env_volumes_and_tolerations_from_the_experiment():
    ref, text = make({"cluster": {"extra_env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
                                  "extra_volumes": [{"name": "weights", "persistentVolumeClaim": {"claimName": "w"}}],
                                  "extra_volume_mounts": [{"name": "weights", "mountPath": "/weights", "readOnly": True}],
                                  "tolerations": [{"key": "team", "operator": "Equal", "value": "a",
                                                   "effect": "NoSchedule"}]},
                      "storage": {"root": "s3://bucket/x", "endpoint_url": "http://minio.minio:9000"}})
    objs = b.all_objects(ref, text)
    assert object_problems(objs) == []
    pod = b.sharded_stage_job(ref, "generate")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"
    # the weight fetch (models/common.py) and storage use the experiment's endpoint, not AWS
    assert env["AWS_ENDPOINT_URL"] == "http://minio.minio:9000"
    assert {"name": "weights", "persistentVolumeClaim": {"claimName": "w"}} in pod["volumes"]
    assert {"name": "weights", "mountPath": "/weights", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert pod["tolerations"] == [{"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"}]


def test_images_are_pulled_always_unless_pinned_by_digest():
    ref, _ = make()
    c = b.sharded_stage_job(ref, "generate")["spec"]["template"]["spec"]["containers"][0]
    assert c["imagePullPolicy"] == "Always"
    digest = "ghcr.io/srum/srum-jobs@sha256:" + "a" * 64
    ref, _ = make({"cluster": {"image": digest}})
    job = b.sharded_stage_job(ref, "generate")
    assert job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert not any(k.startswith("checkov.io/") for k in job["metadata"]["annotations"])


def test_stage_network_policy_allows_dns_s3_and_the_judge_only():
    ref, _ = make({"cluster": {"network_policy": {"s3_namespace": "minio"}}})
    pol = b.stage_network_policy(ref)
    assert pol["spec"]["podSelector"]["matchLabels"] == {b.LABEL_EXPERIMENT: "demo", b.LABEL_COMPONENT: "stage"}
    egress = pol["spec"]["egress"]
    ports = [sorted(p["port"] for p in rule.get("ports", [])) for rule in egress]
    assert ports == [[53, 53], [443], [443], [8001], []]
    assert egress[3]["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "srum-judge"}}}]
    ref, _ = make({"cluster": {"network_policy": {"enabled": False}}})
    assert b.stage_network_policy(ref) is None
