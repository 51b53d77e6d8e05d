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
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION = 1

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
    evaluator_model: Optional[str] = Field(None, description="a different model for eval (e.g. srum_evaluator)")
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
    cache: bool = Field(True, description="cache judgments in storage keyed by model, image and instruction")
    templates_dir: Optional[str] = Field(None, description="directory overriding the default judge prompt templates")
    team: Optional[str] = Field(None, description="attribution in the shared server's log")

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
    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    save_every: int = Field(100, ge=1)
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


class EvalConfig(_Section):
    benchmark: Literal["toy", "compbench", "geneval"] = "toy"
    samples_per_prompt: int = Field(1, ge=1)
    seed: int = Field(1234, ge=0)
    understanding_check: bool = True


class ResourcesConfig(_Section):
    cpu: str = "4"
    memory: str = "16Gi"
    gpu: int = Field(0, ge=0, le=16)
    scratch: Optional[str] = Field(None, description="size limit of the pod's emptyDir scratch, e.g. 100Gi")


class ClusterConfig(_Section):
    namespace: str = "srum"
    image: str = "ghcr.io/srum/srum-jobs:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    service_account: Optional[str] = None
    s3_secret: Optional[str] = Field(None, description="existing Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    queue_name: Optional[str] = Field(None, description="Kueue LocalQueue; Jobs are created suspended")
    generate_parallelism: int = Field(4, ge=1)
    backoff_limit_per_index: int = Field(3, ge=0)
    ttl_seconds_after_finished: int = Field(86400, ge=0)
    generate: ResourcesConfig = Field(default_factory=lambda: ResourcesConfig(gpu=1))
    train: ResourcesConfig = Field(default_factory=lambda: ResourcesConfig(cpu="16", memory="200Gi", gpu=8))
    eval: ResourcesConfig = Field(default_factory=lambda: ResourcesConfig(gpu=1))
    rewards: ResourcesConfig = Field(default_factory=lambda: ResourcesConfig(gpu=0))
    report: ResourcesConfig = Field(default_factory=lambda: ResourcesConfig(gpu=0))
    node_selector: Dict[str, str] = Field(default_factory=dict)
    tolerations: List[Dict[str, str]] = Field(default_factory=list)


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


def _yaml_loader():
    """PyYAML follows YAML 1.1, where `2e-5` (no dot) is a string; users mean a number (YAML 1.2 agrees)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
        r"|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))
    return Loader


def load_experiment(path: str | Path) -> Experiment:
    """Read a YAML or JSON experiment file."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"experiment file not found: {p}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"experiment file {p} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"cannot read experiment file {p}: {e.strerror}") from None
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.load(text, Loader=_yaml_loader())
    except (yaml.YAMLError, ValueError, RecursionError) as e:
        raise ConfigError(f"experiment file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {e}") from None
    return parse_experiment(data, str(p))


def dump_experiment(exp: Experiment) -> str:
    """Every field, defaults filled in, as YAML (what `srum config show` prints)."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.yaml_implicit_resolvers = {k: list(v) for k, v in _yaml_loader().yaml_implicit_resolvers.items()}
    return yaml.dump(exp.model_dump(mode="json"), Dumper=Dumper, sort_keys=False)


def json_schema() -> Dict[str, Any]:
    """JSON Schema generated from the models (never written by hand)."""
    return Experiment.model_json_schema()
