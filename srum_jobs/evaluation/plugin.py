"""The evaluation plugin: registers the paper's benchmarks and the prompt-file formats of the published
benchmark files (see registry.py). Each format is parsed by its benchmark module; how a file or a folder
is recognised (format `auto`) is below, so recognising one imports no benchmark module. Standard library
only: `srum config validate` reads the registries."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict

from ..registry import BENCHMARKS, PROMPT_FORMATS

BENCHMARKS.register("compbench", "srum_jobs.evaluation.compbench:CompBench")
BENCHMARKS.register("geneval", "srum_jobs.evaluation.geneval:GenEval")
BENCHMARKS.register("wise", "srum_jobs.evaluation.wise:Wise")
BENCHMARKS.register("reasonbench", "srum_jobs.evaluation.reasonbench:ReasonBench")

# Published benchmark files keep the metadata their evaluation protocol needs (Prompt.meta).
PROMPT_FORMATS.register("geneval", "srum_jobs.evaluation.geneval:parse_prompts",        # evaluation_metadata.jsonl
                        hooks={"sniff_text": "srum_jobs.evaluation.plugin:is_geneval",
                               "hint": "srum_jobs.evaluation.plugin:geneval_hint"})
PROMPT_FORMATS.register("wise", "srum_jobs.evaluation.wise:parse_prompts",              # WISE's JSON lists
                        hooks={"sniff_text": "srum_jobs.evaluation.plugin:is_wise"})
PROMPT_FORMATS.register("reasonbench", "srum_jobs.evaluation.reasonbench:load",         # prompts/ + evaluation_qs/
                        hooks={"sniff_uri": "srum_jobs.evaluation.plugin:is_reasonbench"}, reads_uri=True)


def is_geneval(name: str, text: str) -> bool:
    """GenEval metadata lines: JSON objects with `tag` and `include`."""
    head = text.lstrip()[:4000]
    if not head.startswith("{"):
        return False
    try:
        row = json.loads(head.split("\n", 1)[0])
    except ValueError:
        return False
    return isinstance(row, dict) and {"tag", "include"} <= set(row)


def is_wise(name: str, text: str) -> bool:
    """A WISE list: JSON objects with `Prompt`, `Explanation` and `prompt_id`."""
    head = text.lstrip()[:4000]
    m = re.match(r"\[\s*(\{.*?\})\s*[,\]]", head, re.S) if head.startswith("[") else None
    if not m:
        return False
    try:
        row = json.loads(m.group(1))
    except ValueError:
        return False
    return isinstance(row, dict) and {"Prompt", "Explanation", "prompt_id"} <= set(row)


def is_reasonbench(uri: str) -> bool:
    """A T2I-ReasonBench folder (prompts/ beside evaluation_qs/) or one of its prompt files."""
    from .reasonbench import dimension_of

    path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
    if not uri.startswith("s3://") and path.is_dir() and (path / "prompts").is_dir() and (path / "evaluation_qs").is_dir():
        return True
    return dimension_of(uri) is not None and "/prompts/" in uri.replace("\\", "/")


def geneval_hint(row: Dict[str, Any]) -> str:
    return " (this is GenEval metadata: import it with --format geneval)" if {"tag", "include"} <= set(row) else ""
