"""`srum`: the command line. Thin: every command parses options and calls into the package.

Commands of other concerns (judge server, toy world, stages, cluster) are mounted lazily by dotted path,
so `srum --help` imports neither torch nor tritonclient nor kubernetes and answers in well under a second.
Every failure of every command leaves through the root group: one line and the exit code that
`entry.classify` gives it (`--debug` or SRUM_DEBUG=1 add the traceback). Nothing imports this module.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Dict, List, Optional, Tuple

import click

from . import __version__, exitcodes

# name -> ("module:attribute", one-line help). The help lives here so listing commands imports nothing.
LAZY_COMMANDS: Dict[str, Tuple[str, str]] = {
    "run": ("srum_jobs.local.executor:run_command", "Run the whole SRUM loop on this machine (toy world by default)."),
    "stage": ("srum_jobs.stages.commands:stage_group", "Run one stage entrypoint (what each Kubernetes Job runs)."),
    "toy": ("srum_jobs.toy.commands:toy_group", "The built-in toy world: pretrain its base model."),
    "bench": ("srum_jobs.bench_cli:bench_group", "Measurements: toy base vs SFT vs SRUM; per-item costs for plan."),
    "enqueue": ("srum_jobs.cluster.commands:enqueue_command", "Submit stage Jobs to Kubernetes (--dry-run prints YAML)."),
    "status": ("srum_jobs.cluster.commands:status_command", "Per-stage and per-shard progress of an experiment."),
    "logs": ("srum_jobs.cluster.commands:logs_command", "Logs of a stage's pods."),
    "cancel": ("srum_jobs.cluster.commands:cancel_command", "Delete an experiment round's Jobs."),
    "orchestrate": ("srum_jobs.cluster.commands:orchestrate_command", "In-cluster driver: every stage in order."),
    "plan": ("srum_jobs.capacity.commands:plan_command", "Capacity plan: wall time and GPU-hours of a real run."),
}

JUDGE_COMMANDS: Dict[str, Tuple[str, str]] = {
    "parse": ("srum_jobs.judging.parse_cli:parse_command", "Parse judge outputs (debug what a VLM answered)."),
    "serve": ("srum_jobs.judging.serve_cli:serve_command", "Start a local Triton judge server (foreground)."),
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported only when one is invoked."""

    def __init__(self, *args, lazy: Optional[Dict[str, Tuple[str, str]]] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name in self.lazy:
            module, attr = self.lazy[name][0].split(":")
            try:
                cmd = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise click.ClickException(f"command {name!r} is not available in this installation: {e}")
            cmd.name = name
            return cmd
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy:
                rows.append((name, self.lazy[name][1]))
            else:
                cmd = super().get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(80)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class RootGroup(LazyGroup):
    """The `srum` group: whatever a command raises is classified once, here (click's own errors pass)."""

    def invoke(self, ctx: click.Context):
        from .entry import guarded

        with guarded():
            return super().invoke(ctx)


@click.group(cls=RootGroup, lazy=LAZY_COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="On failure, print the traceback too (also: SRUM_DEBUG=1).")
def main(debug: bool) -> None:
    """srum: self-rewarding post-training for unified multimodal models.

    Start with `srum run` (the whole loop on this machine, toy world), then write an experiment
    file (`srum config show examples/toy-local.yaml`) for your own models and cluster.
    """
    from .entry import DEBUG_ENV, bind_to_parent

    if debug:
        os.environ[DEBUG_ENV] = "1"     # children inherit it
    bind_to_parent()


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"srum {__version__}")


@main.group()
def config() -> None:
    """Validate and inspect experiment files."""


@config.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--stages", default=None, help="Check only what these comma-separated stages need (default: all).")
def config_validate(files: Tuple[str, ...], stages: Optional[str]) -> None:
    """Check experiment FILES as far as possible without running: the schema, registry names (adapter,
    backends, presets), the templates directory, prompt and eval files, the storage root. Prints one
    line each; exits 78 if any is invalid."""
    from . import entry
    from .stages.spec import parse_stage_list

    try:
        chosen = parse_stage_list(stages) if stages else ()
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--stages") from None
    worst = exitcodes.OK
    for f in files:
        try:
            loaded = entry.load(f)
            warnings = entry.check(loaded.exp, chosen, where="validate", source=f)
        except Exception as e:          # one bad file does not hide the verdict on the others
            code, message = entry.classify(e)
            worst = max(worst, code)
            click.echo(f"error: {message}", err=True)
            continue
        click.echo(f"ok: {f} (experiment {loaded.exp.name!r})")
        for w in warnings:
            click.echo(f"warning: {f}: {w}", err=True)
    if worst:
        sys.exit(worst)


@config.command("show")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of YAML.")
def config_show(file: str, as_json: bool) -> None:
    """Print FILE with every default filled in."""
    from .config import dump_experiment
    from .entry import load

    exp = load(file).exp
    click.echo(json.dumps(exp.model_dump(mode="json"), indent=2) if as_json else dump_experiment(exp), nl=not as_json)


@config.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of experiment files (generated from the pydantic models)."""
    from .config import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.group()
def prompts() -> None:
    """Prompt lists."""


@prompts.command("import")
@click.argument("src")
@click.argument("dest")
# the formats of prompts.FORMATS (written out: the CLI root must not import pydantic)
@click.option("--format", "fmt", type=click.Choice(["auto", "compbench", "jsonl", "text", "geneval", "wise", "reasonbench"]),
              default="auto", help="auto recognises every format, a T2I-ReasonBench folder included")
@click.option("--endpoint-url", default=None, help="S3-compatible endpoint for s3:// SRC/DEST.")
@click.option("--overwrite", is_flag=True, help="Replace DEST if it exists (refused otherwise).")
def prompts_import(src: str, dest: str, fmt: str, endpoint_url: Optional[str], overwrite: bool) -> None:
    """Copy and normalise prompt file SRC into storage at DEST (a file:// or s3:// URI ending in .jsonl),
    reporting counts per category."""
    from .config import StorageConfig
    from .prompts import category_counts, duplicate_texts, load_prompts
    from .storage import open_store

    if not dest.endswith(".jsonl"):
        raise click.BadParameter("DEST must name a .jsonl object, e.g. s3://bucket/prompts/train.jsonl", param_hint="DEST")
    scheme = "s3://" if dest.startswith("s3://") else "file://"
    rest = dest[len(scheme):] if dest.startswith(scheme) else dest
    root, _, key = rest.rpartition("/")
    if scheme == "file://" and not root:
        root = "."
    storage = StorageConfig(root="s3://" + src[5:].split("/", 1)[0], endpoint_url=endpoint_url) \
        if src.startswith("s3://") else None
    items = load_prompts(src, fmt, storage=storage)
    store = open_store(scheme + root, **({"endpoint_url": endpoint_url} if scheme == "s3://" else {}))
    if store.exists(key) and not overwrite:
        raise click.ClickException(f"{store.uri_for(key)} exists; pass --overwrite to replace it")
    store.put_jsonl(key, ({"prompt": p.text, "category": p.category, "id": p.id, **({"meta": p.meta} if p.meta else {})}
                          for p in items))
    click.echo(f"imported {len(items)} prompts into {store.uri_for(key)}")
    for cat, n in category_counts(items).items():
        click.echo(f"  {cat:<20} {n}")
    repeats = duplicate_texts(items)
    if repeats:
        click.echo(f"warning: {sum(repeats.values())} prompts repeat an earlier prompt's text (kept, each with its "
                   f"own id); e.g. {next(iter(repeats))!r}", err=True)


@main.group(cls=LazyGroup, lazy=JUDGE_COMMANDS)
def judge() -> None:
    """The judge: parse its outputs, serve it locally with Triton."""


if __name__ == "__main__":  # pragma: no cover
    main()
