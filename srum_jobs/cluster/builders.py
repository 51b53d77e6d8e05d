"""Kubernetes objects for one experiment round, built from the experiment file (the one source of truth).

Plain dicts, not client models: they print as the YAML `--dry-run` shows, validate against the official
OpenAPI schemas, and go to the API server unchanged. Nothing here talks to a cluster or imports the
`kubernetes` package, so `srum enqueue --dry-run` needs neither.

Each stage of the stage table (stages/spec.py) becomes Jobs by its kind (names are derived from the
experiment and round, so a rerun finds its own Jobs):

    sharded      Indexed Job, completions = prompts.num_shards, shard = JOB_COMPLETION_INDEX
                 (generate, rewards, eval)
    distributed  Indexed Job, completions = parallelism = training.nnodes, + headless Service; the torchrun
                 launcher (stages/launch.py) on every node (train)
    otherwise    one pod (report)

Resources come from `cluster.<stage>` (a stage without a section runs on CPU).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import yaml

from .. import exitcodes
from ..config import ConfigError, Experiment, ResourcesConfig
from ..stages.spec import STAGE_NAMES, get as stage_spec, launcher_argv

# Where the experiment ConfigMap is mounted in every pod (the Helm chart's driver uses the same folder).
# The file keeps its format's suffix: the chart renders JSON, because Helm writes floats such as 1e-15,
# which YAML 1.1 (PyYAML) would read back as strings.
EXPERIMENT_DIR = "/etc/srum"
SCRATCH_DIR = "/scratch"
RDZV_PORT = 29500
GPU_RESOURCE = "nvidia.com/gpu"
# The `srum` user of docker/jobs.Dockerfile: a UID above 10000 never matches a user of the node's own.
RUN_AS_USER = 10001

LABEL_EXPERIMENT = "srum.dev/experiment"
LABEL_ROUND = "srum.dev/round"
LABEL_STAGE = "srum.dev/stage"
LABEL_COMPONENT = "srum.dev/component"  # "stage" for stage Jobs, "driver" for `srum orchestrate`
ANNOTATION_SHA = "srum.dev/experiment-sha256"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

# Exit codes after which retrying cannot help: the whole Job fails at once instead of burning GPU hours.
FAIL_FAST_EXIT_CODES = (exitcodes.USAGE, exitcodes.CONFIG_ERROR)

# S3 credentials: the key `credentials` of the existing Secret named by cluster.s3_secret, an AWS shared
# credentials file, mounted read-only as a file (never as environment variables, which leak into child
# processes, crash dumps and `kubectl describe`); botocore reads it through AWS_SHARED_CREDENTIALS_FILE.
S3_SECRET_KEY = "credentials"
S3_CREDENTIALS_DIR = "/var/run/secrets/srum/s3"
CHECKOV_SKIP = "checkov.io/skip{}"

_MAX_NAME = 63


class ClusterConfigError(ConfigError):
    """The experiment cannot run on a cluster as written; the message names the field."""


def experiment_sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_name(name: str, what: str) -> str:
    if len(name) > _MAX_NAME:
        raise ClusterConfigError(f"{what} {name!r} is {len(name)} characters; Kubernetes allows {_MAX_NAME} "
                                 "(shorten the experiment name or use a smaller round number)")
    return name


def job_name(experiment: str, round: int, stage: str) -> str:
    stage_spec(stage)      # ValueError naming the stages
    # Indexed pods get the hostname <job>-<index>; the training rendezvous resolves <job>-0.<service>,
    # so the Job name must leave room for the index suffix.
    return _check_name(f"srum-{experiment}-r{round}-{stage}", "job name")


def configmap_name(experiment: str, sha: str) -> str:
    """Content-addressed: a changed experiment file gets a new ConfigMap, never edits one under running pods."""
    return _check_name(f"srum-{experiment}-{sha[:10]}", "configmap name")


def experiment_key(source: str) -> str:
    """The ConfigMap key (and file name in the pod) of an experiment file read from `source`."""
    return "experiment.json" if source.lower().endswith(".json") else "experiment.yaml"


@dataclass(frozen=True)
class RunRef:
    """Everything that names one experiment round on the cluster."""

    exp: Experiment
    round: int
    namespace: str
    configmap: str
    sha: str
    key: str = "experiment.yaml"

    @classmethod
    def create(cls, exp: Experiment, text: str, round: int = 1, namespace: Optional[str] = None,
               configmap: Optional[str] = None, source: str = "experiment.yaml") -> "RunRef":
        if round < 1:
            raise ClusterConfigError(f"round must be >= 1, got {round}")
        sha = experiment_sha(text)
        return cls(exp, round, namespace or exp.cluster.namespace, configmap or configmap_name(exp.name, sha), sha,
                   experiment_key(source))

    @property
    def experiment_path(self) -> str:
        return f"{EXPERIMENT_DIR}/{self.key}"

    def labels(self, stage: Optional[str] = None, component: str = "stage") -> Dict[str, str]:
        out = {"app.kubernetes.io/name": "srum", "app.kubernetes.io/managed-by": "srum",
               LABEL_EXPERIMENT: self.exp.name, LABEL_ROUND: str(self.round), LABEL_COMPONENT: component}
        if stage:
            out[LABEL_STAGE] = stage
        return out

    def selector(self, stage: Optional[str] = None, component: Optional[str] = "stage") -> str:
        parts = [f"{LABEL_EXPERIMENT}={self.exp.name}", f"{LABEL_ROUND}={self.round}"]
        if component:
            parts.append(f"{LABEL_COMPONENT}={component}")
        if stage:
            parts.append(f"{LABEL_STAGE}={stage}")
        return ",".join(parts)


def check_cluster_ready(exp: Experiment) -> None:
    """Refuse settings that only work on one machine, before any pod is started."""
    if exp.storage.root.startswith("file://"):
        raise ClusterConfigError(
            f"storage.root is {exp.storage.root!r}: on a cluster every pod has its own file system, so stages "
            "could not see each other's output; use s3://bucket/prefix")
    if exp.judge.url is None:
        raise ClusterConfigError(
            "judge.url is not set: on a cluster the judge is a shared Triton endpoint (k8s/ deploys one, or the "
            "Helm chart's triton.enabled); set judge.url to its gRPC address")
    train = exp.cluster.train
    if train.gpu > 0 and exp.training.nproc_per_node not in (1, train.gpu):
        raise ClusterConfigError(
            f"training.nproc_per_node ({exp.training.nproc_per_node}) must equal cluster.train.gpu ({train.gpu}): "
            "one training process per GPU (leave it at 1 to follow cluster.train.gpu)")


def _resources_config(exp: Experiment, stage: str) -> ResourcesConfig:
    # The schema has sections for the GPU stages (generate, train, eval) only; a `cluster.rewards` /
    # `cluster.report` section, when the schema grows one, is picked up here without further change.
    return getattr(exp.cluster, stage, None) or ResourcesConfig(gpu=0)


def _resources(res: ResourcesConfig) -> Dict[str, Any]:
    amounts: Dict[str, str] = {"cpu": res.cpu, "memory": res.memory}
    if res.gpu:
        amounts[GPU_RESOURCE] = str(res.gpu)
    # requests == limits: a Guaranteed pod is the last to be evicted under memory pressure.
    return {"requests": dict(amounts), "limits": dict(amounts)}


def pod_security_context() -> Dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS_USER, "runAsGroup": RUN_AS_USER, "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> Dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}


def image_pull_policy(image: str, policy: Optional[str]) -> str:
    """The configured policy, else IfNotPresent for an image pinned by digest and Always for a tag (a tag can
    be pushed again; Always makes every pod run what the tag names now)."""
    return policy or ("IfNotPresent" if "@sha256:" in image else "Always")


def checkov_skips(image: str) -> Dict[str, str]:
    """checkov suppressions, in place with their reason (tests/test_lint_manifests.py runs checkov)."""
    if "@sha256:" in image:
        return {}
    return {CHECKOV_SKIP.format(1): "CKV_K8S_43=the image is a pinned release tag pulled Always; "
                                    "set cluster.image to name@sha256:DIGEST to pin the bytes"}


def _is_gpu(res: ResourcesConfig) -> bool:
    return res.gpu > 0


def _env(ref: RunRef, indexed: bool) -> List[Dict[str, Any]]:
    env: List[Dict[str, Any]] = []
    if indexed:
        # Declared explicitly (the Job controller would add it too) so `$(JOB_COMPLETION_INDEX)` in the
        # command line is expanded by the kubelet: only variables the container spec defines are.
        env.append({"name": "JOB_COMPLETION_INDEX",
                    "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}}})
    env += [
        {"name": "HOME", "value": SCRATCH_DIR},  # the root file system is read-only
        {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH_DIR}/.cache"},
        {"name": "MPLCONFIGDIR", "value": f"{SCRATCH_DIR}/.matplotlib"},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if ref.exp.storage.region:
        env.append({"name": "AWS_DEFAULT_REGION", "value": ref.exp.storage.region})
    if ref.exp.storage.endpoint_url:
        # every boto3 client of the pod (storage, the weight fetch of models/common.py) uses the experiment's
        # S3 endpoint (MinIO...), not AWS
        env.append({"name": "AWS_ENDPOINT_URL", "value": ref.exp.storage.endpoint_url})
    if ref.exp.cluster.s3_secret:
        env.append({"name": "AWS_SHARED_CREDENTIALS_FILE", "value": f"{S3_CREDENTIALS_DIR}/{S3_SECRET_KEY}"})
    env += [{"name": e.name, "value": e.value} for e in ref.exp.cluster.extra_env]
    return env


def _volumes(ref: RunRef, res: ResourcesConfig, shm: bool) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    # Size limits on every emptyDir: past them the kubelet evicts this pod, not whatever else shares the node.
    volumes: List[Dict[str, Any]] = [
        {"name": "experiment", "configMap": {"name": ref.configmap, "items": [{"key": ref.key, "path": ref.key}]}},
        {"name": "scratch", "emptyDir": {"sizeLimit": res.scratch}},
    ]
    mounts: List[Dict[str, Any]] = [
        {"name": "experiment", "mountPath": EXPERIMENT_DIR, "readOnly": True},
        {"name": "scratch", "mountPath": SCRATCH_DIR},
        {"name": "scratch", "mountPath": "/tmp", "subPath": "tmp"},
    ]
    if shm:
        # NCCL and DataLoader workers need more shared memory than the runtime's 64 MiB default;
        # memory-backed, so it counts against (and is bounded by) the container's memory limit.
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    cl = ref.exp.cluster
    if cl.s3_secret:
        volumes.append({"name": "s3-credentials", "secret": {"secretName": cl.s3_secret, "defaultMode": 0o440,
                                                             "items": [{"key": S3_SECRET_KEY, "path": S3_SECRET_KEY}]}})
        mounts.append({"name": "s3-credentials", "mountPath": S3_CREDENTIALS_DIR, "readOnly": True})
    volumes += [copy.deepcopy(v) for v in cl.extra_volumes]
    mounts += [copy.deepcopy(m) for m in cl.extra_volume_mounts]
    return volumes, mounts


def _pod_failure_policy() -> Dict[str, Any]:
    return {"rules": [
        # A bad experiment file fails the same way on every retry: stop the whole Job at once.
        {"action": "FailJob", "onExitCodes": {"operator": "In", "values": list(FAIL_FAST_EXIT_CODES)}},
        # Preemption, eviction, node drain: not the pod's fault, not counted against the retry budget.
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        # Everything else (TEMPORARY=75, a crash, OOM, a lost node) counts and is retried up to the limit.
    ]}


def _pod_spec(ref: RunRef, stage: str, container: Dict[str, Any], res: ResourcesConfig, *, indexed: bool,
              init: Optional[Dict[str, Any]] = None, subdomain: Optional[str] = None) -> Dict[str, Any]:
    cl = ref.exp.cluster
    volumes, mounts = _volumes(ref, res, shm=res.gpu > 0 or stage_spec(stage).distributed)
    env = _env(ref, indexed)

    def make(c: Dict[str, Any], r: ResourcesConfig, *, with_secrets: bool = True) -> Dict[str, Any]:
        out = {"name": c["name"], "image": cl.image, "imagePullPolicy": image_pull_policy(cl.image, cl.image_pull_policy),
               "command": c["command"]}
        if "ports" in c:
            out["ports"] = c["ports"]
        own_env = [dict(e) for e in env if with_secrets or e["name"] != "AWS_SHARED_CREDENTIALS_FILE"]
        own_mounts = [m for m in mounts if with_secrets or m["name"] != "s3-credentials"]
        out.update({"env": copy.deepcopy(own_env), "resources": _resources(r), "volumeMounts": copy.deepcopy(own_mounts),
                    "securityContext": container_security_context()})
        return out

    main = make(container, res)
    spec: Dict[str, Any] = {
        "restartPolicy": "Never",  # the Job controller retries; podFailurePolicy requires Never
        "automountServiceAccountToken": False,  # stage pods never call the Kubernetes API
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "containers": [main],
        "volumes": volumes,
    }
    if init is not None:
        # the init container only reads the experiment file: no storage credentials
        spec["initContainers"] = [make(init, ResourcesConfig(cpu="500m", memory="512Mi", gpu=0, scratch=res.scratch),
                                       with_secrets=False)]
    if cl.service_account:
        # A cloud identity (IRSA / workload identity) attaches to the service account; its token is
        # projected by the identity webhook, independent of automountServiceAccountToken.
        spec["serviceAccountName"] = cl.service_account
    # GPU node selector and tolerations only for pods that ask for a GPU: a CPU-only stage never waits for,
    # or occupies, a GPU node
    selector, tolerations = ((cl.node_selector, cl.tolerations) if _is_gpu(res)
                             else (cl.cpu_node_selector, cl.cpu_tolerations))
    if selector:
        spec["nodeSelector"] = dict(selector)
    if tolerations:
        spec["tolerations"] = [dict(t) for t in tolerations]
    if subdomain:
        spec["subdomain"] = subdomain
    return spec


def _job(ref: RunRef, stage: str, pod_spec: Dict[str, Any], *, completions: int, parallelism: int,
         indexed: bool, backoff: Dict[str, int], gpu: bool) -> Dict[str, Any]:
    cl = ref.exp.cluster
    name = job_name(ref.exp.name, ref.round, stage)
    labels = ref.labels(stage)
    job_labels = dict(labels)
    spec: Dict[str, Any] = {}
    if indexed:
        spec["completionMode"] = "Indexed"
    spec.update({"completions": completions, "parallelism": min(parallelism, completions), **backoff,
                 "podFailurePolicy": _pod_failure_policy(),
                 "ttlSecondsAfterFinished": cl.ttl_seconds_after_finished})
    queue = cl.queue_name if gpu else cl.cpu_queue_name
    if queue:
        # Kueue admits the Job against the team's quota by unsuspending it; CPU stages use their own queue
        # (or none), never the GPU quota.
        job_labels[KUEUE_QUEUE_LABEL] = queue
        spec["suspend"] = True
    spec["template"] = {"metadata": {"labels": labels, "annotations": {ANNOTATION_SHA: ref.sha}}, "spec": pod_spec}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": ref.namespace, "labels": job_labels,
                         "annotations": {ANNOTATION_SHA: ref.sha, **checkov_skips(cl.image)}},
            "spec": spec}


def _stage_command(ref: RunRef, stage: str) -> List[str]:
    spec = stage_spec(stage)
    shard = {"shard": "$(JOB_COMPLETION_INDEX)", "num_shards": spec.shards(ref.exp)} if spec.shardable else {}
    return ["srum"] + spec.command(ref.experiment_path, ref.round, **shard)


def sharded_stage_job(ref: RunRef, stage: str) -> Dict[str, Any]:
    """A sharded stage (generate, rewards, eval): one pod per prompt shard."""
    spec = stage_spec(stage)
    if not spec.shardable:
        raise ValueError(f"{stage!r} is not a sharded stage")
    check_cluster_ready(ref.exp)
    res = _resources_config(ref.exp, stage)
    pod = _pod_spec(ref, stage, {"name": "stage", "command": _stage_command(ref, stage)}, res, indexed=True)
    return _job(ref, stage, pod, completions=spec.shards(ref.exp), parallelism=ref.exp.cluster.generate_parallelism,
                indexed=True, backoff={"backoffLimitPerIndex": ref.exp.cluster.backoff_limit_per_index},
                gpu=_is_gpu(res))


def single_pod_job(ref: RunRef, stage: str) -> Dict[str, Any]:
    """An unsharded, undistributed stage (report): one pod."""
    check_cluster_ready(ref.exp)
    res = _resources_config(ref.exp, stage)
    pod = _pod_spec(ref, stage, {"name": "stage", "command": _stage_command(ref, stage)}, res, indexed=False)
    return _job(ref, stage, pod, completions=1, parallelism=1, indexed=False,
                backoff={"backoffLimit": ref.exp.cluster.backoff_limit_per_index}, gpu=_is_gpu(res))


def rendezvous_service_name(ref: RunRef, stage: str) -> str:
    return job_name(ref.exp.name, ref.round, stage)


def rendezvous_service(ref: RunRef, stage: str) -> Dict[str, Any]:
    """Headless Service: gives every pod of a distributed stage the stable DNS name <job>-<index>.<service>."""
    name = rendezvous_service_name(ref, stage)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ref.namespace, "labels": ref.labels(stage),
                         "annotations": {ANNOTATION_SHA: ref.sha}},
            "spec": {"clusterIP": "None",
                     # rendezvous happens before any readiness: publish addresses of pods not yet ready
                     "publishNotReadyAddresses": True,
                     "selector": {LABEL_EXPERIMENT: ref.exp.name, LABEL_ROUND: str(ref.round), LABEL_STAGE: stage},
                     "ports": [{"name": "c10d", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}]}}


def distributed_command(ref: RunRef, stage: str) -> List[str]:
    """The torchrun launcher on one node of a distributed stage (the training section sets its size); it
    passes a worker's exit code through, so a configuration error (78) fails the Job at once."""
    tr, res = ref.exp.training, _resources_config(ref.exp, stage)
    nproc = res.gpu if res.gpu > 0 else tr.nproc_per_node
    name = job_name(ref.exp.name, ref.round, stage)
    return launcher_argv("python", nproc, stage_spec(stage).command(ref.experiment_path, ref.round), torchrun_args=[
        "--nnodes", str(tr.nnodes), "--node-rank", "$(JOB_COMPLETION_INDEX)", "--rdzv-backend", "c10d",
        "--rdzv-endpoint", f"{name}-0.{rendezvous_service_name(ref, stage)}:{RDZV_PORT}"])


def distributed_job(ref: RunRef, stage: str) -> Dict[str, Any]:
    """Multi-node torchrun: an Indexed Job with completions = parallelism = nnodes."""
    check_cluster_ready(ref.exp)
    nnodes = ref.exp.training.nnodes
    res = _resources_config(ref.exp, stage)
    container = {"name": stage, "command": distributed_command(ref, stage),
                 "ports": [{"name": "c10d", "containerPort": RDZV_PORT, "protocol": "TCP"}]}
    # The experiment file is validated in an init container first: a bad file fails at once on every node,
    # before the rendezvous waits for nodes that may not be scheduled yet.
    init = {"name": "validate", "command": ["srum", "config", "validate", ref.experiment_path]}
    pod = _pod_spec(ref, stage, container, res, indexed=True, init=init, subdomain=rendezvous_service_name(ref, stage))
    # One worker's failure tears down the whole rendezvous, so every node restarts together: a Job-wide
    # budget of `backoff_limit_per_index` incidents of nnodes failed pods each, not a per-index budget
    # that would leave healthy indexes waiting for a peer that will never come back.
    return _job(ref, stage, pod, completions=nnodes, parallelism=nnodes, indexed=True,
                backoff={"backoffLimit": ref.exp.cluster.backoff_limit_per_index * nnodes}, gpu=_is_gpu(res))


def stage_objects(ref: RunRef, stage: str) -> List[Dict[str, Any]]:
    """The objects one stage submits, in creation order."""
    spec = stage_spec(stage)
    if spec.shardable:
        return [sharded_stage_job(ref, stage)]
    if spec.distributed:
        return [rendezvous_service(ref, stage), distributed_job(ref, stage)]
    return [single_pod_job(ref, stage)]


def experiment_configmap(ref: RunRef, text: str) -> Dict[str, Any]:
    """The experiment file, as the pods will read it. Immutable: content-addressed by its name."""
    if experiment_sha(text) != ref.sha:
        raise ValueError("the experiment text does not match the RunRef it was loaded for")
    labels = ref.labels(component="experiment")
    labels.pop(LABEL_ROUND)  # one ConfigMap serves every round of the same file
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": ref.configmap, "namespace": ref.namespace, "labels": labels,
                         "annotations": {ANNOTATION_SHA: ref.sha}},
            "immutable": True,
            "data": {ref.key: text}}


def network_policy_name(experiment: str) -> str:
    return _check_name(f"srum-{experiment}-stages", "network policy name")


def stage_network_policy(ref: RunRef) -> Optional[Dict[str, Any]]:
    """Egress of the experiment's stage pods (every round): DNS, S3 and the judge, nothing else; ingress only
    for the rendezvous between the pods of the experiment's own distributed stage (training). None when
    disabled."""
    np_cfg = ref.exp.cluster.network_policy
    if not np_cfg.enabled:
        return None

    def ports(nums: List[int]) -> List[Dict[str, Any]]:
        return [{"port": n, "protocol": "TCP"} for n in nums]

    def namespace(name: str) -> Dict[str, Any]:
        return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}

    egress: List[Dict[str, Any]] = [
        # DNS: the cluster resolver, wherever it runs
        {"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
         "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        {"to": [{"ipBlock": {"cidr": c}} for c in np_cfg.s3_cidrs], "ports": ports(np_cfg.s3_ports)},
    ]
    if np_cfg.s3_namespace:
        egress.append({"to": [namespace(np_cfg.s3_namespace)], "ports": ports(np_cfg.s3_ports)})
    if np_cfg.judge_namespace:
        egress.append({"to": [namespace(np_cfg.judge_namespace)], "ports": ports(np_cfg.judge_ports)})
    # the in-release judge (Helm chart, triton.enabled) and the training rendezvous stay in this namespace
    egress.append({"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "srum"}}}]})
    labels = ref.labels(component="stage")
    labels.pop(LABEL_ROUND)
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": network_policy_name(ref.exp.name), "namespace": ref.namespace, "labels": labels},
            "spec": {"podSelector": {"matchLabels": {LABEL_EXPERIMENT: ref.exp.name, LABEL_COMPONENT: "stage"}},
                     "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {LABEL_EXPERIMENT: ref.exp.name,
                                                                             LABEL_STAGE: stage}}}
                                           for stage in STAGE_NAMES if stage_spec(stage).distributed],
                                  "ports": [{"port": RDZV_PORT, "protocol": "TCP"}]}],
                     "egress": egress}}


def all_objects(ref: RunRef, text: str, stages=STAGE_NAMES, *, with_configmap: bool = True) -> List[Dict[str, Any]]:
    out = [experiment_configmap(ref, text)] if with_configmap else []
    policy = stage_network_policy(ref) if with_configmap else None
    if policy is not None:
        out.append(policy)
    for stage in stages:
        out += stage_objects(ref, stage)
    return out


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (the experiment file stays readable) and no YAML aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: Any, data: str) -> Any:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def dump_yaml(objects: List[Dict[str, Any]]) -> str:
    """Objects as one multi-document YAML stream (what --dry-run prints and `kubectl apply -f` reads)."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False, width=120)


def pod_specs(obj: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every pod spec inside an object (Job, Deployment, ...) or [] for objects without pods."""
    kind = obj.get("kind")
    if kind in ("Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
        return [obj["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    if kind == "Pod":
        return [obj["spec"]]
    return []
