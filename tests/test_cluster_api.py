"""`srum enqueue / status / logs / cancel / orchestrate` against a local stand-in for the API server.

No real cluster ran for these tests. `srum_jobs.cluster.standin` serves the subset of the Kubernetes REST
API the official client uses for srum's calls, on 127.0.0.1, records every request, and runs no
controllers: `Controller` below plays the Job controller and the stage pods (it writes the completion
markers a real stage would write, then sets the Job's status). What is real: the `kubernetes` client,
kubeconfig loading, HTTP, the error translation, the idempotency and resume logic, and (for the CLI
tests) S3 storage through moto's HTTP server.
"""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Dict, Optional

import pytest
import yaml
from click.testing import CliRunner

from srum_jobs import exitcodes
from srum_jobs.cli import main
from srum_jobs.cluster import builders as b
from srum_jobs.cluster.api import Cluster, ClusterError
from srum_jobs.cluster.ops import job_state, submit
from srum_jobs.cluster.orchestrate import StageFailed, orchestrate, wait_for_job
from srum_jobs.cluster.standin import StandInApiServer
from srum_jobs.config import parse_experiment
from srum_jobs.stages.spec import STAGE_NAMES
from srum_jobs.layout import RunLayout
from srum_jobs.storage import LocalStore, open_store

ROOT = Path(__file__).resolve().parents[1]
NS = "team-a"
EXP = {
    "name": "demo",
    "storage": {"root": "s3://bucket/srum"},
    "prompts": {"source": "s3://bucket/prompts.jsonl", "num_shards": 3},
    "judge": {"url": "judge.srum-judge.svc:8001"},
    "training": {"nnodes": 2},
    "cluster": {"namespace": NS, "s3_secret": "s3-creds", "generate_parallelism": 2},
}


class Controller:
    """Stands in for the Job controller and the stage pods: when a stage Job is created it writes the
    stage's completion markers (as the real stage would), adds pods with logs, and sets the Job's status.
    `script[stage]` picks the outcome: complete | failed | config-error | complete-without-markers | running."""

    def __init__(self, layout: RunLayout, script: Optional[Dict[str, str]] = None):
        self.layout = layout
        self.script = dict(script or {})
        self.created = []

    def __call__(self, server: StandInApiServer, obj: dict) -> None:
        if obj.get("kind") != "Job" or obj["metadata"]["labels"].get(b.LABEL_COMPONENT) != "stage":
            return
        name, ns = obj["metadata"]["name"], obj["metadata"]["namespace"]
        stage = obj["metadata"]["labels"][b.LABEL_STAGE]
        self.created.append(stage)
        n = obj["spec"]["completions"]
        outcome = self.script.get(stage, "complete")
        labels = dict(obj["spec"]["template"]["metadata"]["labels"], **{"batch.kubernetes.io/job-name": name})
        if outcome == "running":
            obj["status"] = {"active": n}
            return
        if outcome in ("complete", "complete-without-markers"):
            for i in range(n):
                if outcome == "complete" and (stage != "train" or i == 0):
                    self.layout.mark_done(stage, 0 if stage in ("train", "report") else i)
                server.add_pod(ns, f"{name}-{i}-abcde", {**labels, b.INDEX_LABEL: str(i)},
                               log=f"{stage} shard {i}: done\n")
            obj["status"] = {"succeeded": n, "completedIndexes": f"0-{n - 1}" if n > 1 else "0",
                             "conditions": [{"type": "Complete", "status": "True"}]}
            return
        code = exitcodes.CONFIG_ERROR if outcome == "config-error" else exitcodes.TEMPORARY
        server.add_pod(ns, f"{name}-0-zzzzz", {**labels, b.INDEX_LABEL: "0"}, phase="Failed", exit_code=code,
                       log="loading shard 0\nerror: judge server: UNAVAILABLE after 4 retries\n")
        reason, message = ("PodFailurePolicy", f"Container stage for pod {ns}/{name}-0-zzzzz failed with exit code "
                           f"{code} matching FailJob rule at index 0") if outcome == "config-error" else \
            ("FailedIndexes", "Job has failed indexes")
        obj["status"] = {"failed": 4, "failedIndexes": "0",
                         "conditions": [{"type": "Failed", "status": "True", "reason": reason, "message": message}]}


def make_ref(overrides=None, round=1):
    data = copy.deepcopy(EXP)
    for k, v in (overrides or {}).items():
        data[k] = {**data.get(k, {}), **v} if isinstance(v, dict) else v
    text = yaml.safe_dump(data)
    return b.RunRef.create(parse_experiment(data), text, round, configmap="rel-experiment"), text


@pytest.fixture
def server():
    with StandInApiServer(namespaces=(NS,), token="standin-token") as s:
        yield s


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def run_driver(server, ref, text, store, **kw):
    lines = []
    orchestrate(Cluster(server.api_client(), NS), ref, text, store, create_configmap=False, poll_s=0.01,
                echo=lines.append, sleep=lambda s: None, **kw)
    return lines


# ------------------------------------------------------------------------------------------- orchestrate
def test_orchestrate_runs_every_stage_in_order_waiting_for_each(server, store):
    ref, text = make_ref()
    layout = RunLayout(store, "demo", 1)
    ctrl = Controller(layout)
    server.on_create = ctrl
    lines = run_driver(server, ref, text, store)
    assert ctrl.created == list(STAGE_NAMES)
    posts = [(r.resource, r.name) for r in server.requests if r.verb == "create"]
    assert posts == [("jobs", "srum-demo-r1-generate"), ("jobs", "srum-demo-r1-rewards"),
                     ("services", "srum-demo-r1-train"), ("jobs", "srum-demo-r1-train"),
                     ("jobs", "srum-demo-r1-eval"), ("jobs", "srum-demo-r1-report")]
    # each stage was submitted only after the previous one's completion was read back
    kinds = [(r.verb, r.name) for r in server.requests]
    assert kinds.index(("get", "srum-demo-r1-generate")) < kinds.index(("create", "srum-demo-r1-rewards"))
    assert lines[-1] == "round 1 of demo: done"
    assert all(r.authorization for r in server.requests)
    # the Helm driver passes --configmap: the stage pods mount the release's ConfigMap
    job = server.get("jobs", NS, "srum-demo-r1-generate")
    assert job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == "rel-experiment"


def test_orchestrate_resumes_from_storage_and_never_resubmits_finished_stages(server, store):
    ref, text = make_ref()
    layout = RunLayout(store, "demo", 1)
    for s in range(3):
        layout.mark_done("generate", s)
    layout.mark_done("rewards", 0)  # rewards half done: its Job runs again and skips shard 0 itself
    server.on_create = ctrl = Controller(layout)
    lines = run_driver(server, ref, text, store)
    assert ctrl.created == ["rewards", "train", "eval", "report"]
    assert "generate: already complete in storage (3 shards), skipped" in lines
    assert "rewards: 1/3 shards done in storage, submitting" in lines
    # a second run finds everything done and submits nothing
    server.requests.clear()
    lines = run_driver(server, ref, text, store)
    assert not [r for r in server.requests if r.verb == "create"]
    assert sum("already complete" in line for line in lines) == 5


def test_orchestrate_waits_for_a_job_already_running_instead_of_duplicating_it(server, store):
    ref, text = make_ref()
    layout = RunLayout(store, "demo", 1)
    cluster = Cluster(server.api_client(), NS)
    server.on_create = Controller(layout, {"generate": "running"})
    submit(cluster, b.stage_objects(ref, "generate"))
    server.on_create = Controller(layout)
    calls = {"n": 0}

    def sleep(_):  # the "pods" finish while the driver waits
        calls["n"] += 1
        if calls["n"] == 3:
            for s in range(3):
                layout.mark_done("generate", s)
            server.set_job_status(NS, "srum-demo-r1-generate", {"succeeded": 3, "conditions": [
                {"type": "Complete", "status": "True"}]})

    lines = []
    orchestrate(cluster, ref, text, store, stages=("generate",), create_configmap=False, poll_s=0.01,
                echo=lines.append, sleep=sleep)
    assert [r.verb for r in server.requests if r.name == "srum-demo-r1-generate"].count("create") == 2
    assert any("job srum-demo-r1-generate: exists (running" in line for line in lines)
    assert len(server.all("jobs", NS)) == 1


def test_a_failed_stage_stops_the_driver_with_the_pod_log_and_a_rerun_replaces_it(server, store):
    ref, text = make_ref()
    layout = RunLayout(store, "demo", 1)
    server.on_create = Controller(layout, {"rewards": "failed"})
    with pytest.raises(StageFailed) as err:
        run_driver(server, ref, text, store)
    assert err.value.exit_code == exitcodes.FAILURE
    msg = str(err.value)
    assert "rewards failed after its retries" in msg and "failed indexes 0" in msg
    assert "error: judge server: UNAVAILABLE after 4 retries" in msg  # the failed pod's last lines
    assert server.get("jobs", NS, "srum-demo-r1-train") is None  # later stages never started
    # after the fix, the rerun deletes the failed Job and submits it again; its pods skip finished shards
    server.on_create = ctrl = Controller(layout)
    lines = run_driver(server, ref, text, store)
    assert ctrl.created == ["rewards", "train", "eval", "report"]
    assert any("job srum-demo-r1-rewards: replaced (it had failed" in line for line in lines)
    deletes = [r.name for r in server.requests if r.verb == "delete"]
    assert deletes == ["srum-demo-r1-rewards"]


def test_a_configuration_error_in_a_stage_exits_78_so_the_driver_is_not_retried(server, store):
    ref, text = make_ref()
    server.on_create = Controller(RunLayout(store, "demo", 1), {"generate": "config-error"})
    with pytest.raises(StageFailed) as err:
        run_driver(server, ref, text, store)
    assert err.value.exit_code == exitcodes.CONFIG_ERROR
    assert "configuration error, not retried" in str(err.value) and "exit code 78" in str(err.value)


def test_a_job_that_completed_without_its_markers_is_an_error(server, store):
    ref, text = make_ref()
    server.on_create = Controller(RunLayout(store, "demo", 1), {"generate": "complete-without-markers"})
    with pytest.raises(StageFailed, match=r"no completion marker for shard\(s\) \[0, 1, 2\]"):
        run_driver(server, ref, text, store)


def test_a_job_built_from_another_experiment_file_is_replaced_by_the_driver_but_only_reported_by_enqueue(
        server, store):
    old_ref, old_text = make_ref({"generation": {"steps": 10}})
    ref, text = make_ref({"generation": {"steps": 30}})
    layout = RunLayout(store, "demo", 1)
    cluster = Cluster(server.api_client(), NS)
    server.on_create = Controller(layout, {"generate": "running"})
    submit(cluster, b.stage_objects(old_ref, "generate"))
    result = submit(cluster, b.stage_objects(ref, "generate"))
    assert result[0].action == "exists" and "different experiment file" in result[0].note
    assert "`srum cancel --stage generate` first to replace it" in result[0].note
    assert job_state("x", server.get("jobs", NS, "srum-demo-r1-generate")).sha == old_ref.sha
    server.on_create = Controller(layout)
    lines = run_driver(server, ref, text, store, stages=("generate",))
    assert any("replaced (built from a different experiment file" in line for line in lines)
    assert job_state("x", server.get("jobs", NS, "srum-demo-r1-generate")).sha == ref.sha


class _Sequence:
    """A Cluster whose Job goes through given states, one per poll."""

    def __init__(self, states):
        self.states = list(states)

    def get(self, kind, name):
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]


def test_wait_reports_each_state_once_including_kueue_suspension():
    job = lambda spec, status: {"metadata": {"name": "j"}, "spec": spec, "status": status}  # noqa: E731
    seq = _Sequence([job({"suspend": True}, {}), job({"suspend": True}, {}), job({}, {"active": 2}),
                     job({}, {"active": 2}), job({}, {"succeeded": 2, "conditions": [{"type": "Complete",
                                                                                       "status": "True"}]})])
    lines = []
    state = wait_for_job(seq, "j", poll_s=0, timeout_s=None, echo=lines.append, sleep=lambda s: None)
    assert state.phase == "complete"
    assert [line.split(":")[1].split(",")[0].strip() for line in lines] == ["suspended", "running", "complete"]
    assert "waiting for Kueue to admit it" in lines[0]
    with pytest.raises(StageFailed, match="disappeared"):
        wait_for_job(_Sequence([None]), "j", poll_s=0, timeout_s=None, echo=lines.append, sleep=lambda s: None)
    clock = iter(range(0, 1000, 10))
    with pytest.raises(ClusterError, match="did not finish within 25 s"):
        wait_for_job(_Sequence([job({}, {"active": 1})]), "j", poll_s=0, timeout_s=25, echo=lines.append,
                     sleep=lambda s: None, clock=lambda: next(clock))


# --------------------------------------------------------------------------------------------- the CLI
def write_kubeconfig(tmp_path, server, namespace=NS):
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(server.kubeconfig(namespace)))
    return path


@pytest.fixture
def cli_env(tmp_path, server, s3_endpoint, s3_bucket, monkeypatch):
    """An experiment on moto's S3 and a kubeconfig pointing at the stand-in."""
    data = copy.deepcopy(EXP)
    data["storage"] = {"root": f"s3://{s3_bucket}/runs", "endpoint_url": s3_endpoint}
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path, server)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    exp = parse_experiment(data)
    return exp_file, RunLayout(open_store(exp.storage), exp.name, 1)


def srum(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_enqueue_is_idempotent(server, cli_env):
    exp_file, _ = cli_env
    first = srum("enqueue", "generate", "-e", exp_file)
    assert first.exit_code == 0, first.output
    assert "job srum-demo-r1-generate: created (3 pods, parallelism 2)" in first.output
    assert "configmap srum-demo-" in first.output
    second = srum("enqueue", "generate", "-e", exp_file)
    assert second.exit_code == 0, second.output
    assert "job srum-demo-r1-generate: exists (pending" in second.output and "not duplicated" in second.output
    assert len(server.all("jobs", NS)) == 1 and len(server.all("configmaps", NS)) == 1
    creates = [r for r in server.requests if r.verb == "create" and r.resource == "jobs"]
    assert len(creates) == 2  # the second create was answered 409 and reported, nothing deleted
    assert not [r for r in server.requests if r.verb == "delete"]
    # the bearer token from the kubeconfig was sent and is never printed
    assert all(r.authorization for r in server.requests)
    assert "standin-token" not in first.output + second.output


@pytest.mark.parametrize("status,reason,message,code,expect", [
    (403, "Forbidden", 'jobs.batch is forbidden: User "alice" cannot create resource "jobs" in API group "batch" '
                       'in the namespace "team-a"', exitcodes.CONFIG_ERROR,
     ["forbidden", 'User "alice" cannot create resource "jobs"', "Ask a cluster admin"]),
    (403, "Forbidden", 'jobs.batch "srum-demo-r1-generate" is forbidden: exceeded quota: gpu, requested: '
                       'requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=8, limited: requests.nvidia.com/gpu=8',
     exitcodes.TEMPORARY, ["resource quota is exceeded", "limited: requests.nvidia.com/gpu=8"]),
    (422, "Invalid", 'Job.batch "srum-demo-r1-generate" is invalid: spec.completions: Invalid value',
     exitcodes.CONFIG_ERROR, ["rejected job srum-demo-r1-generate as invalid", "spec.completions"]),
])
def test_api_errors_are_explained_in_plain_words(server, cli_env, status, reason, message, code, expect):
    exp_file, _ = cli_env
    server.fail("create", "jobs", status, reason, message)
    result = srum("enqueue", "generate", "-e", exp_file)
    assert result.exit_code == code, result.output
    for text in expect:
        assert text in result.output
    assert "Traceback" not in result.output


def test_missing_namespace_unreachable_server_and_no_kubeconfig(server, cli_env, tmp_path, monkeypatch):
    exp_file, _ = cli_env
    result = srum("enqueue", "generate", "-e", exp_file, "-n", "nowhere")
    assert result.exit_code == exitcodes.CONFIG_ERROR
    assert "namespace nowhere does not exist" in result.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = server.kubeconfig()
    cfg["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    (tmp_path / "dead").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "dead"))
    result = srum("enqueue", "generate", "-e", exp_file)
    assert result.exit_code == exitcodes.TEMPORARY
    assert "cannot reach the Kubernetes API server" in result.output and "Traceback" not in result.output
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    result = srum("enqueue", "generate", "-e", exp_file)
    assert result.exit_code == exitcodes.CONFIG_ERROR and "no Kubernetes configuration" in result.output


def test_status_combines_job_status_and_storage_markers(server, cli_env):
    exp_file, layout = cli_env
    for s in (0, 2):
        layout.mark_done("generate", s)
    srum("enqueue", "generate", "-e", exp_file)
    server.set_job_status(NS, "srum-demo-r1-generate", {"active": 1, "succeeded": 2, "completedIndexes": "0,2"})
    result = srum("status", "-e", exp_file)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines()[2:8] if line.strip()}
    assert rows["generate"][1:4] == ["running", "1/2/0", "2/3"] and rows["generate"][4] == "0,2"
    assert rows["rewards"][1:4] == ["absent", "-", "0/3"]
    assert rows["train"][3] == "0/1"
    as_json = srum("status", "-e", exp_file, "--json")
    import json

    data = json.loads(as_json.output)
    assert data["stages"][0]["shards_done"] == [0, 2] and data["stages"][0]["job"]["phase"] == "running"


def test_status_still_reports_storage_when_the_cluster_is_unreachable(server, cli_env, monkeypatch, tmp_path):
    exp_file, layout = cli_env
    layout.mark_done("generate", 1)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    result = srum("status", "-e", exp_file)
    assert result.exit_code == 0, result.output
    assert "cluster not readable: no Kubernetes configuration" in result.output
    assert "1/3" in result.output


def test_cancel_deletes_the_driver_first_then_the_stage_jobs(server, cli_env, store):
    exp_file, _ = cli_env
    ref, _ = make_ref()
    cluster = Cluster(server.api_client(), NS)
    driver = {"apiVersion": "batch/v1", "kind": "Job",
              "metadata": {"name": "rel-driver-1234abcd", "namespace": NS, "labels": ref.labels(component="driver")},
              "spec": {"template": {"spec": {"containers": [{"name": "d", "image": "x"}], "restartPolicy": "Never"}}}}
    cluster.create(driver)
    submit(cluster, b.stage_objects(ref, "generate") + b.stage_objects(ref, "train"))
    other_round, _ = make_ref(round=2)
    submit(cluster, b.stage_objects(other_round, "generate"))
    result = srum("cancel", "-e", exp_file)
    assert result.exit_code == 0, result.output
    deleted = [(r.resource, r.name) for r in server.requests if r.verb == "delete"]
    assert deleted[0] == ("jobs", "rel-driver-1234abcd")  # so it cannot resubmit what is being deleted
    assert set(deleted[1:]) == {("jobs", "srum-demo-r1-generate"), ("jobs", "srum-demo-r1-train"),
                                ("services", "srum-demo-r1-train")}
    assert [j["metadata"]["name"] for j in server.all("jobs", NS)] == ["srum-demo-r2-generate"]
    again = srum("cancel", "-e", exp_file)
    assert "nothing to cancel" in again.output
    # --stage removes one stage only and leaves the driver alone
    cluster.create(driver)
    submit(cluster, b.stage_objects(ref, "generate") + b.stage_objects(ref, "eval"))
    srum("cancel", "-e", exp_file, "--stage", "eval")
    names = {j["metadata"]["name"] for j in server.all("jobs", NS)}
    assert names == {"rel-driver-1234abcd", "srum-demo-r1-generate", "srum-demo-r2-generate"}


def test_logs_of_a_stage_or_one_index(server, cli_env):
    exp_file, _ = cli_env
    ref, _ = make_ref()
    for i in range(3):
        server.add_pod(NS, f"srum-demo-r1-generate-{i}-x", {**ref.labels("generate"), b.INDEX_LABEL: str(i)},
                       log="".join(f"shard {i} line {k}\n" for k in range(5)))
    server.add_pod(NS, "srum-demo-r2-generate-1-x", {**make_ref(round=2)[0].labels("generate"), b.INDEX_LABEL: "1"},
                   log="other round\n")
    one = srum("logs", "generate", "-e", exp_file, "--index", "1", "--tail", "2")
    assert one.exit_code == 0, one.output
    assert one.output == "==> pod srum-demo-r1-generate-1-x (Succeeded) <==\nshard 1 line 3\nshard 1 line 4\n"
    every = srum("logs", "generate", "-e", exp_file)
    assert every.output.count("==> pod") == 3 and "other round" not in every.output
    none = srum("logs", "train", "-e", exp_file)
    assert none.exit_code == 1 and "no pods of stage train" in none.output


def test_orchestrate_command_end_to_end_on_s3(server, cli_env):
    exp_file, layout = cli_env
    server.on_create = ctrl = Controller(layout)
    result = srum("orchestrate", "-e", exp_file, "--poll-seconds", "0.01", "--configmap", "rel-experiment")
    assert result.exit_code == 0, result.output
    assert ctrl.created == list(STAGE_NAMES)
    assert not [r for r in server.requests if r.resource == "configmaps"]  # --configmap: uses the release's
    assert "round 1 of demo: done" in result.output
    # enqueue all is the same loop from a workstation; everything is done, so it submits nothing
    server.requests.clear()
    result = srum("enqueue", "all", "-e", exp_file, "--poll-seconds", "0.01")
    assert result.exit_code == 0, result.output
    assert [r.resource for r in server.requests if r.verb == "create"] == ["configmaps"]


def test_orchestrate_command_exit_codes_follow_the_failure(server, cli_env):
    exp_file, layout = cli_env
    server.on_create = Controller(layout, {"generate": "config-error"})
    result = srum("orchestrate", "-e", exp_file, "--poll-seconds", "0.01", "--configmap", "c")
    assert result.exit_code == exitcodes.CONFIG_ERROR, result.output
    server.on_create = Controller(layout, {"generate": "failed"})
    result = srum("orchestrate", "-e", exp_file, "--poll-seconds", "0.01", "--configmap", "c")
    assert result.exit_code == exitcodes.FAILURE, result.output
    bad = srum("orchestrate", "-e", exp_file, "--stages", "generate,judge")
    assert bad.exit_code == exitcodes.USAGE and "unknown stage" in bad.output


# ------------------------------------------------------------------------------------------------ RBAC
def _rendered_role_rules():
    import helm_python as helm

    with helm.Chart.load(str(ROOT / "helm" / "srum")) as chart:
        out = chart.render(values={"experiment": {"name": "demo"}}, name="rel", namespace=NS, is_install=True)
    role = next(d for d in yaml.safe_load_all(out["srum/templates/role.yaml"]) if d and d["kind"] == "Role")
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
            for v in rule["verbs"]}


def test_driver_role_grants_exactly_the_requests_the_driver_makes(server, store):
    """Every path of the driver (fresh, resume with existing objects, a failure with pod logs, a rerun
    replacing the failed Job) against the recording stand-in; the chart's Role must allow all of those
    requests and nothing else."""
    ref, text = make_ref()
    layout = RunLayout(store, "demo", 1)
    server.on_create = Controller(layout, {"eval": "failed"})
    with pytest.raises(StageFailed):
        run_driver(server, ref, text, store)
    for key in list(store.list("demo/round-1/markers/")):  # storage lost: every Job exists, none done
        store.delete(key)
    server.on_create = Controller(layout)
    run_driver(server, ref, text, store)
    used = server.verbs()
    assert ("batch", "jobs", "delete") in used and ("", "pods/log", "get") in used  # all paths were taken
    assert used == _rendered_role_rules()


def test_status_still_reports_jobs_when_storage_is_unreachable(server, tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    data = copy.deepcopy(EXP)
    data["storage"] = {"root": "s3://bucket/runs", "endpoint_url": f"http://127.0.0.1:{dead}", "max_attempts": 1}
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path, server)))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    assert srum("enqueue", "eval", "-e", exp_file).exit_code == 0
    result = srum("status", "-e", exp_file)
    assert result.exit_code == 0, result.output
    assert "storage not readable" in result.output
    eval_row = next(line for line in result.output.splitlines() if line.startswith("eval"))
    assert eval_row.split()[1:4] == ["pending", "0/0/0", "?"]
