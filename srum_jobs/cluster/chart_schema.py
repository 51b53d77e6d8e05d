"""`helm/srum/values.schema.json`, generated: the chart's own values plus the experiment schema.

The experiment part comes from the pydantic models (`config.json_schema()`), so `helm install` rejects a
wrong experiment (unknown key, wrong type, value out of range) before anything starts, with the same
rules `srum config validate` applies. Regenerate after changing config.py:

    python -m srum_jobs.cluster.chart_schema --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "helm" / "srum" / "values.schema.json"

_QUANTITY = {"anyOf": [{"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"},
                       {"type": "integer", "minimum": 0}]}
_RESOURCES = {
    "type": "object", "additionalProperties": False, "required": ["requests", "limits"],
    "properties": {k: {"type": "object", "additionalProperties": False, "minProperties": 1,
                       "properties": {"cpu": _QUANTITY, "memory": _QUANTITY, "ephemeral-storage": _QUANTITY}}
                   for k in ("requests", "limits")},
}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_TOLERATIONS = {"type": "array", "items": {"type": "object"}}
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
_IMAGE = {"type": "string", "minLength": 1}
_PULL = {"enum": ["", "Always", "IfNotPresent", "Never"], "description": "'' = IfNotPresent for a digest, Always for a tag"}
_LIST_OF_OBJECTS = {"type": "array", "items": {"type": "object"}}
_ENV = {"type": "array", "items": {"type": "object", "additionalProperties": False, "required": ["name", "value"],
                                   "properties": {"name": {"type": "string", "minLength": 1},
                                                  "value": {"type": "string"}}}}
_PORTS = {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535}}


def _obj(props: Dict[str, Any], required=()) -> Dict[str, Any]:
    out: Dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = list(required)
    return out


def chart_values_schema() -> Dict[str, Any]:
    """The chart's values (everything but `experiment`), strict like the experiment itself."""
    return {
        "round": {"type": "integer", "minimum": 1, "description": "self-rewarding round this release drives"},
        "clusterDomain": {"type": "string", "minLength": 1},
        "driver": _obj({
            "image": {"type": "string", "description": "'' = experiment.cluster.image"},
            "imagePullPolicy": _PULL,
            "pollSeconds": {"type": "number", "exclusiveMinimum": 0},
            "stageTimeoutSeconds": {"type": ["number", "null"], "exclusiveMinimum": 0},
            "backoffLimit": {"type": "integer", "minimum": 0},
            "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
            "resources": _RESOURCES,
            "nodeSelector": _STR_MAP,
            "tolerations": _TOLERATIONS,
            "extraEnv": _ENV,
            "extraVolumes": _LIST_OF_OBJECTS,
            "extraVolumeMounts": _LIST_OF_OBJECTS,
        }),
        "serviceAccount": _obj({
            "annotations": {**_STR_MAP, "description": "cloud identity of the driver (IRSA, workload identity)"},
        }),
        "triton": _obj({
            "enabled": {"type": "boolean"},
            "image": _IMAGE,
            "imagePullPolicy": _PULL,
            "replicas": {"type": "integer", "minimum": 1},
            "gpu": {"type": "integer", "minimum": 0},
            "resources": _RESOURCES,
            "shmSize": _QUANTITY,
            "modelRepository": {"type": "string", "minLength": 1},
            "weightsClaim": {"type": "string", "description": "PVC with model weights, mounted read-only at /weights"},
            "env": {"type": "array", "items": _obj({"name": {"type": "string", "minLength": 1},
                                                    "value": {"type": "string"}}, required=("name", "value"))},
            "nodeSelector": _STR_MAP,
            "tolerations": _TOLERATIONS,
            "extraVolumes": _LIST_OF_OBJECTS,
            "extraVolumeMounts": _LIST_OF_OBJECTS,
        }, required=("enabled",)),
        "networkPolicy": _obj({
            "enabled": {"type": "boolean"},
            "apiServerCidrs": {"type": "array", "items": {"type": "string", "minLength": 1}},
            "apiServerPorts": _PORTS,
        }),
        "monitoring": _obj({"serviceMonitor": {"type": "boolean"}}),
        "kueue": _obj({
            "createLocalQueue": {"type": "boolean"},
            "clusterQueue": {"type": "string"},
            "apiVersion": {"type": "string", "pattern": r"^kueue\.x-k8s\.io/v1(beta[0-9]+)?$"},
        }),
    }


def values_schema() -> Dict[str, Any]:
    from ..config import _NAME_RE, json_schema

    exp = json_schema()
    # The name rule is a validator in config.py, invisible to JSON Schema; the chart puts the name in
    # labels and object names, so Helm must refuse a bad one before install. The pattern is imported, not
    # restated.
    exp["properties"]["name"].setdefault("pattern", _NAME_RE.pattern)
    defs = exp.pop("$defs", {})
    defs["Experiment"] = exp
    props = chart_values_schema()
    props = {"experiment": {"$ref": "#/$defs/Experiment",
                            "description": "the experiment file, inline (same schema as `srum config schema`)"},
             **props}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "srum Helm chart values",
            "type": "object", "additionalProperties": False, "required": ["experiment", "round"],
            "properties": props, "$defs": defs}


def render() -> str:
    return json.dumps(values_schema(), indent=2, sort_keys=False) + "\n"


def main(argv: list) -> int:
    if argv[1:] == ["--write"]:
        DEFAULT_PATH.write_text(render(), encoding="utf-8")
        print(f"wrote {DEFAULT_PATH}")
        return 0
    if argv[1:] == ["--check"]:
        ok = DEFAULT_PATH.exists() and DEFAULT_PATH.read_text(encoding="utf-8") == render()
        print(f"{DEFAULT_PATH} is {'up to date' if ok else 'stale: run python -m srum_jobs.cluster.chart_schema --write'}")
        return 0 if ok else 1
    print("usage: python -m srum_jobs.cluster.chart_schema --write | --check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
