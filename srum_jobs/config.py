"""The experiment file: one validated schema for every stage, local or on a cluster.

One YAML or JSON file describes an experiment. Every section has defaults, so a minimal file names only
what differs. Unknown keys, wrong types and impossible values fail with a message naming the field
(pydantic v2, `extra="forbid"`, strict types). Credentials never live here: S3 keys come from the
environment or a mounted Secret.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1
MAX_TRAINING_STEPS = 1_000_000          # far beyond any SRUM recipe (the paper trains 300); a typo guard
MAX_EXPERIMENT_BYTES = 1 << 20          # an experiment file is a page of settings; /dev/zero is not one

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")


class ConfigError(ValueError):
    """An experiment file that cannot be used; the message names the file and the field."""


class _Section(BaseModel):
    # strict: "5" is not an int, "yes" is not a bool; forbid: a typo in a key is an error, not a silent default.
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, frozen=False, allow_inf_nan=False)


class StorageConfig(_Section):
    """Where every artifact of the experiment lives (`file://` is the embedded default)."""

    root: str = Field("file://./srum-runs", description="file://PATH or s3://bucket/prefix")
    endpoint_url: Optional[str] = Field(None, description="S3-compatible endpoint (MinIO...); None = AWS")
    region: Optional[str] = None
    max_attempts: int = Field(5, ge=1, le=20, description="attempts on throttling / 5xx before giving up")
    multipart_threshold_mb: int = Field(64, ge=5)
    timeout_s: float = Field(30.0, gt=0, le=3600,
                             description="S3: seconds to connect and to wait for each reply; one storage call "
                                         "takes at most max_attempts x timeout_s plus backoff")
    probe_timeout_s: float = Field(10.0, gt=0, le=600,
                                   description="S3: seconds the start-up probe waits before naming a silent endpoint")

    @field_validator("root")
    @classmethod
    def _check_root(cls, v: str) -> str:
        if v.startswith("s3://"):
            bucket = v[len("s3://"):].split("/", 1)[0]
            if not bucket:
                raise ValueError("an s3:// root needs a bucket: s3://BUCKET[/prefix]")
            if not re.match(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$", bucket):
                raise ValueError(f"{bucket!r} is not a valid S3 bucket name")
        elif v.startswith("file://"):
            if not v[len("file://"):]:
                raise ValueError("a file:// root needs a path: file://PATH")
            if ".." in v[len("file://"):].split("/"):
                raise ValueError("a file:// root may not contain '..' (as an s3:// prefix may not): write the path "
                                 "without it")
        else:
            raise ValueError("storage.root must start with file:// or s3://")
        return v


class PromptsConfig(_Section):
    """The prompt source: T2I-CompBench JSON list, JSONL of {prompt, category, id}, or plain text."""

    source: str = Field("toy://train", description="URI of a prompt file, or toy://train|val|eval for the toy world")
    format: Literal["auto", "compbench", "jsonl", "text"] = "auto"
    limit: Optional[int] = Field(None, ge=1, description="use only the first N prompts")
    categories: Optional[List[str]] = Field(None, description="keep only these categories")
    num_shards: int = Field(1, ge=1, le=100000)
    eval_source: Optional[str] = Field("toy://eval", description="held-out prompts for the eval stage")
    eval_limit: Optional[int] = Field(None, ge=1)


class ModelConfig(_Section):
    """Which `UnifiedModel` adapter, and its own parameters (validated by the adapter)."""

    adapter: str = Field("toy", description="registry name: toy | bagel | diffusers")
    params: Dict[str, Any] = Field(default_factory=dict)
    checkpoint: Optional[str] = Field(None, description="base weights: local dir or storage URI")


class JudgeConfig(_Section):
    """The shared judge endpoint (Triton gRPC) and how this experiment talks to it."""

    url: Optional[str] = Field(None, description="host:port of Triton gRPC; None = start a local tritonserver")
    judge_model: str = "srum_judge"
    judge_version: str = Field("", description="'' = the server's latest")
    boxer_model: str = "srum_boxer"
    boxer_version: str = ""
    evaluator_model: Optional[str] = Field("srum_evaluator", description="the Triton model that scores the eval "
                                                                         "stage: a different model than judge_model")
    backend: str = Field("toy", description="backend of the LOCAL server: toy | hf | bagel")
    boxer_backend: str = Field("components", description="boxer of the LOCAL server: components | sam")
    backend_params: Dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(60.0, gt=0)
    max_in_flight: int = Field(16, ge=1, le=4096)
    retries: int = Field(4, ge=0, le=50)
    parse_attempts: int = Field(2, ge=1, le=10, description="re-ask on unparseable output, then neutral + parsed=false")
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0)
    think: bool = False
    verify_boxes: bool = Field(True, description="paper's box verification; False = top regions by area (reference code)")
    verify_candidates: int = Field(0, ge=0, le=256, description="with verify_boxes: how many of the largest boxes "
                                   "verification sees (at least reward.max_regions; the largest confirmed "
                                   "reward.max_regions are kept)")
    cache: bool = Field(True, description="cache judgments in storage keyed by model, image and instruction")
    templates_dir: Optional[str] = Field(None, description="directory overriding the default judge prompt templates")
    team: Optional[str] = Field(None, description="attribution in the shared server's log")
    key_file: Optional[str] = Field(None, description="file holding this team's judge key (a mounted Secret); the "
                                                      "key itself never goes in the experiment file")
    key_env: str = Field("SRUM_JUDGE_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                         description="environment variable holding the team's judge key when key_file is unset")
    tls: bool = Field(False, description="talk TLS to the judge (the gateway's certificate)")
    tls_ca_file: Optional[str] = Field(None, description="CA bundle that signed the judge's certificate "
                                                         "(implies tls); None = the system's roots")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not re.match(r"^(dns:///)?[A-Za-z0-9.\-_\[\]:]+:\d+$", v):
            raise ValueError("judge.url must be HOST:PORT (optionally dns:///HOST:PORT)")
        return v


class GenerationConfig(_Section):
    candidates_per_prompt: int = Field(4, ge=1, le=256)
    think: bool = False
    steps: int = Field(20, ge=1, le=1000)
    guidance: float = Field(2.0, ge=0)
    resolution: int = Field(32, ge=8, le=4096)
    seed: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)


class RewardConfig(_Section):
    mode: Literal["reference", "signed", "sparse", "corrective", "sample"] = Field(
        "reference", description="reward map (rewards.py): reference | signed | sparse | corrective (1 except "
                                 "penalised regions) | sample (one value per image)")
    weighting: Literal["paper", "debiased"] = Field(
        "paper", description="paper: per-token loss weights alpha*R; debiased: uniform weights, the reward moves "
                             "the target between the sample's flow and the frozen base's velocity (training/loss.py)")
    reference: Literal["sample", "base"] = Field(
        "sample", description="what the lambda_c term anchors to: the sample's flow (paper) or the frozen base "
                              "model's velocity (a KL-style anchor)")
    anchor: Literal["base", "self"] = Field(
        "base", description="debiased: what a low reward blends the target toward: the frozen base model's "
                            "velocity (base), or the model's own current prediction without gradient (self: the "
                            "anchor ablation; its gradient is the paper's per-token weighting by the same map)")
    push_away: float = Field(0.5, ge=0, le=1, description="debiased: strength of the push away from penalised regions")
    dense_max_t: float = Field(1.0, gt=0, le=1, description="apply the dense map only at flow times t <= this; "
                                                             "above, each record's map is replaced by its mean")
    score_unverified: bool = Field(False, description="judge.verify_boxes: score the boxes the judge rejects "
                                                      "(specks, stray objects) instead of dropping them")
    lambda_c: float = Field(0.5, ge=0)
    max_regions: int = Field(5, ge=0, le=64)
    min_region_area: float = Field(0.0, ge=0, description="fraction of the image; smaller boxes are dropped")
    neutral_band: List[float] = Field(default_factory=lambda: [-0.4, 0.4])
    severe_band: List[float] = Field(default_factory=lambda: [-0.9, -0.5])
    use_global: bool = True
    sparse_threshold: float = Field(0.0, ge=-1, le=1, description="sparse mode: reward 1 if global score > this")
    drop_zero_global: bool = Field(True, description="reference pipeline drops records whose global score is exactly 0")
    min_global_score: Optional[float] = Field(None, ge=-1, le=1,
                                              description="also drop records whose global score is <= this "
                                                          "(None: keep them; the reward map down-weights them)")
    drop_unparsed: bool = True

    @field_validator("neutral_band", "severe_band")
    @classmethod
    def _band(cls, v: List[float]) -> List[float]:
        if len(v) != 2 or not (-1.0 <= v[0] <= v[1] <= 1.0):
            raise ValueError("a band is [low, high] with -1 <= low <= high <= 1")
        return v

    @model_validator(mode="after")
    def _weighting_reads_signs(self) -> "RewardConfig":
        if self.weighting == "debiased" and self.mode == "reference":
            raise ValueError("weighting 'debiased' reads the sign of the map; mode 'reference' has none (use "
                             "corrective, signed, sparse or sample)")
        if self.anchor != "base" and self.weighting != "debiased":
            raise ValueError(f"reward.anchor {self.anchor!r} only applies to weighting 'debiased' (the paper's "
                             "weighting has no anchor in its target)")
        return self


class TrainingConfig(_Section):
    """Defaults are the paper's recipe (Table 5)."""

    lr: float = Field(2.5e-5, gt=0)
    betas: List[float] = Field(default_factory=lambda: [0.9, 0.95])
    eps: float = Field(1e-15, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(500, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    timestep_shift: Optional[float] = Field(None, gt=0, description="None: the model's own (the toy's 1.0, else "
                                                                    "4.0, the paper's)")
    prompt_dropout: Optional[float] = Field(None, ge=0, lt=1, description="share of samples trained with the "
                                            "empty prompt (and no plan); None: the model's pretraining rate")
    plan_dropout: float = Field(0.5, ge=0, le=1, description="share of think-mode records trained without their "
                                                              "plan, so both modes learn")
    steps: int = Field(300, ge=1, le=MAX_TRAINING_STEPS)
    batch_size: int = Field(8, ge=1)
    save_every: int = Field(100, ge=1)
    keep_checkpoints: Optional[int] = Field(2, ge=1, le=1000,
                                            description="complete checkpoints kept: the newest N (two, so a damaged "
                                                        "last one has a fallback); null keeps every one")
    ema: Optional[float] = Field(None, gt=0, lt=1, description="EMA decay of the trained weights; None = off")
    nproc_per_node: int = Field(1, ge=1, le=64)
    nnodes: int = Field(1, ge=1, le=4096)
    seed: int = Field(0, ge=0)
    use_reference: bool = Field(True, description="ablation switch: the lambda_c reference term")
    fsdp: bool = False
    bf16: bool = False
    activation_checkpointing: bool = False

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: List[float]) -> List[float]:
        if len(v) != 2 or not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("betas are two numbers in [0, 1)")
        return v


def _benchmark_names() -> Tuple[str, ...]:
    from .registry import BENCHMARKS

    return tuple(BENCHMARKS)


def _prompt_formats() -> Tuple[str, ...]:
    from .prompts import formats

    return formats()


def _one_of(names: Callable[[], Tuple[str, ...]]) -> Callable[[Dict[str, Any]], None]:
    """JSON Schema of a string field whose values a registry holds: its `enum`, read when the schema is made
    (the plugins are loaded then, not when this module is imported)."""
    def extra(schema: Dict[str, Any]) -> None:
        rest = dict(schema)
        schema.clear()
        schema.update({"enum": list(names()), **rest})
    return extra


class BenchmarkConfig(_Section):
    """One benchmark of the eval stage (srum_jobs/evaluation/<name>.py: protocol, parser, aggregation)."""

    name: str = Field(..., json_schema_extra=_one_of(_benchmark_names))     # registry.BENCHMARKS
    prompts: Optional[Union[str, List[str]]] = Field(
        None, description="prompt file(s) of this benchmark (as `srum prompts import` reads them; several are "
                          "concatenated, e.g. the three WISE files); None = prompts.eval_source")
    format: str = Field("auto", json_schema_extra=_one_of(_prompt_formats))
    limit: Optional[int] = Field(None, ge=1, description="first N prompts (after `categories`); None = all "
                                                         "(prompts.eval_limit when the source is eval_source)")
    categories: Optional[List[str]] = Field(None, description="keep only these categories")
    samples_per_prompt: Optional[int] = Field(None, ge=1, description="None = eval.samples_per_prompt")

    @field_validator("name", "format")
    @classmethod
    def _registered(cls, v: str, info: Any) -> str:
        what, names = ("benchmark", _benchmark_names()) if info.field_name == "name" else ("format", _prompt_formats())
        if v not in names:
            raise ValueError(f"unknown {what} {v!r}; {what}s are {', '.join(names)}")
        return v


class UnderstandingConfig(_Section):
    """The understanding-regression check: yes/no and multiple-choice VQA through the model's own
    `understand`, base vs trained (evaluation/understanding.py)."""

    enabled: bool = True
    source: Optional[str] = Field(None, description="a VQA set (JSONL; README 'Evaluation'); None = the "
                                                    "shipped self-made set")
    style: Literal["auto", "question", "judge"] = Field(
        "auto", description="question: ask the question (VLMs); judge: pose each claim in the judge's own "
                            "instruction format (models whose understanding only speaks it, the toy); auto "
                            "picks judge for the toy adapter")
    limit: Optional[int] = Field(None, ge=1)


class PerStepConfig(_Section):
    """The paper's per-step analysis (Fig. 4): the predicted x0 at chosen sampling steps, scored for layout
    and detail by the evaluator, per named checkpoint."""

    enabled: bool = False
    steps: List[int] = Field(default_factory=list, description="sampling steps (1-based) whose predicted x0 is "
                                                               "scored; empty = 5 evenly spaced")
    prompts: int = Field(24, ge=1, le=10000, description="the first N prompts of the first benchmark")
    checkpoints: Dict[str, str] = Field(default_factory=dict,
                                        description="more named checkpoints beside base and trained, e.g. "
                                                    "{sft: file:///ckpt/sft, sample_reward: ...}")


class ClustersConfig(_Section):
    """The paper's functional-cluster analysis (Appendix B): mean activation strength of clusters of units
    on understanding vs generation tasks, per named checkpoint."""

    enabled: bool = False
    clusters: int = Field(6, ge=2, le=256)
    inputs: int = Field(32, ge=2, le=4096, description="inputs per task type")
    checkpoints: Dict[str, str] = Field(default_factory=dict)


class EvalConfig(_Section):
    """The eval stage: base vs trained (and plain vs think) on each benchmark, scored by the srum_evaluator
    model (judge.evaluator_model, never the model being trained), with paired bootstrap intervals."""

    benchmarks: List[BenchmarkConfig] = Field(default_factory=lambda: [BenchmarkConfig(name="toy")], min_length=1)
    samples_per_prompt: int = Field(1, ge=1)
    seed: int = Field(1234, ge=0)
    modes: List[Literal["plain", "think"]] = Field(
        default_factory=lambda: ["plain", "think"], min_length=1,
        description="generation modes to evaluate; think runs only for a model that supports it")
    judge_agreement: bool = Field(True, description="toy: how often the model's own judge agrees with the benchmark")
    understanding: UnderstandingConfig = Field(default_factory=UnderstandingConfig)
    evaluator_backend: str = Field("toy_rules", description="backend of the LOCAL server's srum_evaluator: "
                                                            "toy_rules | hf | bagel | module:Class")
    evaluator_params: Dict[str, str] = Field(default_factory=dict)
    templates_dir: Optional[str] = Field(None, description="directory overriding evaluator instruction templates")
    max_new_tokens: int = Field(512, ge=1, description="evaluator answer budget (the SRUM reference uses 512)")
    bootstrap_resamples: int = Field(2000, ge=100, le=1000000)
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    per_step: PerStepConfig = Field(default_factory=PerStepConfig)
    clusters: ClustersConfig = Field(default_factory=ClustersConfig)

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        """Files written before `benchmarks` keep working: `benchmark: X` is `benchmarks: [{name: X}]`, and
        `understanding_check` is `judge_agreement`."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "benchmark" in data:
            if "benchmarks" in data:
                raise ValueError("eval.benchmark (one name) was replaced by eval.benchmarks (a list); "
                                 "give only eval.benchmarks")
            old = data.pop("benchmark")
            data["benchmarks"] = [{"name": old}] if isinstance(old, str) else old
        if "understanding_check" in data:
            if "judge_agreement" in data:
                raise ValueError("eval.understanding_check was renamed eval.judge_agreement; give only that")
            data["judge_agreement"] = data.pop("understanding_check")
        return data

    @field_validator("benchmarks")
    @classmethod
    def _unique(cls, v: List[BenchmarkConfig]) -> List[BenchmarkConfig]:
        names = [b.name for b in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"benchmark(s) {dup} listed twice")
        return v


_QUANTITY = r"^[0-9]+(\.[0-9]+)?(k|Ki|M|Mi|G|Gi|T|Ti)?$"


class ResourcesConfig(_Section):
    cpu: str = "4"
    memory: str = "16Gi"
    gpu: int = Field(0, ge=0, le=16)
    scratch: str = Field("50Gi", pattern=_QUANTITY,
                         description="size limit of the pod's emptyDir scratch (the kubelet evicts a pod past it)")
    shm: str = Field("8Gi", pattern=_QUANTITY,
                     description="size limit of /dev/shm (memory-backed; GPU and training pods only)")


class NetworkPolicyConfig(_Section):
    """Egress of the stage pods (`srum enqueue`; the Helm chart has its own for the driver): DNS, S3, the judge."""

    enabled: bool = True
    s3_cidrs: List[str] = Field(default_factory=lambda: ["0.0.0.0/0"],
                                description="where S3 is (AWS S3 has no fixed range: any address, port-limited)")
    s3_ports: List[int] = Field(default_factory=lambda: [443])
    s3_namespace: Optional[str] = Field(None, description="namespace of an in-cluster S3 (MinIO), on s3_ports")
    judge_namespace: Optional[str] = Field("srum-judge", description="namespace of the shared judge (k8s/)")
    judge_ports: List[int] = Field(default_factory=lambda: [8001])


class ExtraEnv(_Section):
    name: str = Field(..., pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    value: str


class ClusterConfig(_Section):
    namespace: str = "srum"
    image: str = Field("ghcr.io/srum/srum-jobs:0.1.0", description="a pinned tag, or name@sha256:DIGEST")
    image_pull_policy: Optional[Literal["Always", "IfNotPresent", "Never"]] = Field(
        None, description="None: IfNotPresent for an image pinned by digest, Always for a tag (a re-pushed tag "
                          "is never run stale)")
    service_account: Optional[str] = None
    s3_secret: Optional[str] = Field(None, description="existing Secret whose key `credentials` is an AWS shared "
                                                       "credentials file; mounted read-only as a file, never env")
    queue_name: Optional[str] = Field(None, description="Kueue LocalQueue of the GPU stages; Jobs are created suspended")
    cpu_queue_name: Optional[str] = Field(None, description="Kueue LocalQueue of the CPU-only stages (rewards, report); "
                                                            "None: they are not queued")
    generate_parallelism: int = Field(4, ge=1)
    backoff_limit_per_index: int = Field(3, ge=0)
    ttl_seconds_after_finished: int = Field(86400, ge=0)
    generate: ResourcesConfig = Field(default_factory=lambda: ResourcesConfig(gpu=1))
    train: ResourcesConfig = Field(default_factory=lambda: ResourcesConfig(cpu="16", memory="200Gi", gpu=8))
    eval: ResourcesConfig = Field(default_factory=lambda: ResourcesConfig(gpu=1))
    rewards: ResourcesConfig = Field(default_factory=lambda: ResourcesConfig(gpu=0))
    report: ResourcesConfig = Field(default_factory=lambda: ResourcesConfig(gpu=0))
    node_selector: Dict[str, str] = Field(default_factory=dict, description="GPU stages only")
    tolerations: List[Dict[str, str]] = Field(default_factory=list, description="GPU stages only")
    cpu_node_selector: Dict[str, str] = Field(default_factory=dict, description="CPU-only stages (rewards, report)")
    cpu_tolerations: List[Dict[str, str]] = Field(default_factory=list, description="CPU-only stages")
    extra_env: List[ExtraEnv] = Field(default_factory=list, description="added to every stage container "
                                      "(never credentials: those go in mounted Secrets)")
    extra_volumes: List[Dict[str, Any]] = Field(default_factory=list, description="Kubernetes volumes added to every "
                                                "stage pod (e.g. a Secret or a read-only weights PVC)")
    extra_volume_mounts: List[Dict[str, Any]] = Field(default_factory=list, description="mounts of extra_volumes "
                                                      "in every stage container")
    network_policy: NetworkPolicyConfig = Field(default_factory=NetworkPolicyConfig)


class Experiment(_Section):
    """The whole experiment file."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str = Field(..., pattern=_NAME_RE.pattern,
                      description="lower-case DNS label: used in storage keys and Kubernetes names")
    storage: StorageConfig = Field(default_factory=StorageConfig)
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("name must be a lower-case DNS label of 1-40 characters: [a-z0-9-], no leading/trailing '-'")
        return v


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid experiment {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not part of the schema)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_experiment(data: Any, source: str = "<dict>") -> Experiment:
    """Validate already-parsed data; `source` names the file in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid experiment {source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return Experiment.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


class _DuplicateKey(ValueError):
    pass


def yaml_loader():
    """The one YAML loader of srum's input files (experiment files, `srum plan --costs` files). PyYAML
    follows YAML 1.1, where `2e-5` (no dot) is a string; users mean a number (YAML 1.2 agrees). A key
    written twice in one mapping is refused: YAML would keep the last one silently."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen: Dict[Any, Any] = {}
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # merged keys may be overridden: that is what a merge is for
                    key = self.construct_object(key_node, deep=True)
                    try:
                        first = seen.setdefault(key, key_node.start_mark)
                    except TypeError:
                        continue  # an unhashable key: construct_mapping below rejects it
                    if first is not key_node.start_mark:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"key {key!r} appears twice (first on line {first.line + 1})",
                            key_node.start_mark)
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
    return Loader


def _json_pairs(pairs):
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(f"key {k!r} appears twice in one object")
        out[k] = v
    return out


def _yaml_problem(e: Exception) -> str:
    """A YAML error on one line: where, what, and in which construct."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None)
    if mark is None or problem is None:
        return " ".join(str(e).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    context, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and cmark is not None and (cmark.line, cmark.column) != (mark.line, mark.column):
        where += f" ({context} on line {cmark.line + 1})"
    return where


def read_experiment_text(path: str | Path) -> str:
    """The text of an experiment file, or a ConfigError naming the file: missing, a folder, unreadable,
    larger than MAX_EXPERIMENT_BYTES (read no further: /dev/zero fails at once), binary, not UTF-8."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_EXPERIMENT_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"experiment file not found: {p}") from None
    except IsADirectoryError:
        raise ConfigError(f"experiment file {p} is a folder, not a file") from None
    except OSError as e:
        raise ConfigError(f"cannot read experiment file {p}: {e.strerror}") from None
    if len(raw) > MAX_EXPERIMENT_BYTES:
        raise ConfigError(f"experiment file {p} is larger than {MAX_EXPERIMENT_BYTES >> 20} MiB: not an experiment "
                          "file (an experiment is a page of YAML or JSON settings)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"experiment file {p} is not UTF-8 text (byte {e.start})") from None
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ConfigError(f"experiment file {p} is binary, not YAML or JSON text (NUL at byte {nul})")
    return text


def parse_experiment_text(text: str, source: str, *, as_json: bool) -> Any:
    """YAML (or JSON) text -> data, refusing duplicate keys; errors name `source` and the line."""
    import yaml

    try:
        if as_json:
            return json.loads(text, object_pairs_hook=_json_pairs)
        return yaml.load(text, Loader=yaml_loader())
    except yaml.YAMLError as e:
        raise ConfigError(f"experiment file {source} is not valid YAML: {_yaml_problem(e)}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"experiment file {source} is not valid JSON: line {e.lineno}, column {e.colno}: "
                          f"{e.msg}") from None
    except (ValueError, RecursionError) as e:  # ints over 4300 digits, impossible dates, deep nesting
        kind = "JSON" if as_json else "YAML"
        raise ConfigError(f"experiment file {source} is not valid {kind}: {' '.join(str(e).split())[:300]}") from None


def read_experiment_data(path: str | Path) -> Tuple[Any, str]:
    """(data, text) of an experiment file: the one reader every command uses (`load_experiment`, and
    `srum run`, which rewrites parts of the data before handing it to its stages)."""
    text = read_experiment_text(path)
    return parse_experiment_text(text, str(path), as_json=Path(path).suffix == ".json"), text


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate a YAML or JSON experiment file."""
    data, _ = read_experiment_data(path)
    return parse_experiment(data, str(path))


def dump_experiment(exp: Experiment) -> str:
    """Every field, defaults filled in, as YAML (what `srum config show` prints)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.yaml_implicit_resolvers = {k: list(v) for k, v in yaml_loader().yaml_implicit_resolvers.items()}
    return yaml.dump(exp.model_dump(mode="json"), Dumper=Dumper, sort_keys=False)


def json_schema() -> Dict[str, Any]:
    """JSON Schema generated from the models (never written by hand)."""
    return Experiment.model_json_schema()
