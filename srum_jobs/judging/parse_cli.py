"""`srum judge parse`: run the judge-output parser by hand, to debug what a judge really wrote.

    srum judge parse --kind global                  < output.txt
    srum judge parse --kind regions --regions N     < output.txt
    srum judge parse --kind compbench|wise|yesno|count < output.txt   (evaluator protocols, srum_jobs/evaluation/)
    srum judge parse --jsonl FILE                   (lines {"kind": ..., "regions": N, "text": ...})

Only click is imported at module level (the CLI root must stay fast); the parser itself is standard
library only, so the JSONL mode never imports torch or numpy.
"""

from __future__ import annotations

import click


def _dumps(obj) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False)


EVALUATOR_KINDS = ("compbench", "wise", "yesno", "count")
KINDS = ("global", "regions") + EVALUATOR_KINDS


def _result(kind: str, text: str, regions) -> dict:
    from . import parse

    if kind == "global":
        return parse.global_to_json(parse.parse_global(text))
    if kind == "regions":
        return parse.regions_to_json(parse.parse_regions(text, regions))
    if kind == "compbench":
        from ..evaluation.compbench import parse_compbench as fn
    elif kind == "wise":
        from ..evaluation.wise import parse_wise as fn
    elif kind == "yesno":
        fn = parse.parse_yes_no
    else:
        fn = parse.parse_count
    r = fn(text)
    return {"parsed": r.parsed, "value": r.value}


def _jsonl_line(line: str, lineno: int, source: str) -> dict:
    """One input line -> its result, or raise ValueError naming the line and the field."""
    import json

    where = f"{source}:{lineno}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(item, dict):
        raise ValueError(f"{where}: each line must be a JSON object")
    kind = item.get("kind")
    if kind not in KINDS:
        raise ValueError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    text = item.get("text")
    if not isinstance(text, str):
        raise ValueError(f"{where}: field 'text' must be a string")
    n = item.get("regions")
    if kind == "regions":
        from .parse import MAX_REGIONS

        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_REGIONS:
            raise ValueError(f"{where}: field 'regions' must be an integer from 1 to {MAX_REGIONS} for kind "
                             f"\"regions\", got {n!r}")
    return _result(kind, text, n)


@click.command("parse")
@click.option("--kind", type=click.Choice(list(KINDS)), default=None,
              help="parse one judge output (global, regions) or evaluator answer (compbench, wise, yesno, count) "
                   "read from stdin")
# 4096 = parse.MAX_REGIONS, written out because only click may be imported at module level here
@click.option("--regions", "n_regions", type=click.IntRange(min=1, max=4096), default=None,
              help="number of regions asked for (with --kind regions)")
@click.option("--jsonl", "jsonl_file", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help='file of lines {"kind", "regions", "text"}; one result line per input line, in order')
def parse_command(kind, n_regions, jsonl_file):
    """Parse judge outputs into scores, exactly as the judging pipeline does.

    A missing, N/A or NaN score is reported as not parsed (score null), never as 0; values outside
    [-1, 1] are clamped.
    """
    if (kind is None) == (jsonl_file is None):
        raise click.UsageError("give exactly one of --kind (one output on stdin) or --jsonl FILE")
    if kind is not None:
        if kind == "regions" and n_regions is None:
            raise click.UsageError("--kind regions needs --regions N (how many regions were asked for)")
        if kind != "regions" and n_regions is not None:
            raise click.UsageError("--regions only applies to --kind regions")
        import sys

        text = sys.stdin.read()
        click.echo(_dumps(_result(kind, text, n_regions)))
        return
    if n_regions is not None:
        raise click.UsageError("--regions applies to --kind regions; in --jsonl mode each line gives its own")
    _run_jsonl(jsonl_file)


def _run_jsonl(path: str) -> None:
    import contextlib
    import sys

    from ..exitcodes import CONFIG_ERROR

    source = "<stdin>" if path == "-" else path
    try:
        stream = contextlib.nullcontext(sys.stdin) if path == "-" else open(path, encoding="utf-8")
    except OSError as e:
        raise click.ClickException(f"cannot read {source}: {e.strerror}") from None
    bad = 0
    out = sys.stdout
    with stream as lines:
        try:
            for lineno, line in enumerate(lines, start=1):
                if not line.strip():
                    continue  # blank lines (a trailing newline) carry no item
                try:
                    out.write(_dumps(_jsonl_line(line, lineno, source)) + "\n")
                except ValueError as e:
                    # keep one output line per input line so results stay aligned with their inputs
                    bad += 1
                    out.write(_dumps({"parsed": False, "error": str(e)}) + "\n")
                    click.echo(f"error: {e}", err=True)
        except UnicodeDecodeError as e:
            raise click.ClickException(f"{source} is not UTF-8 text (byte {e.start})") from None
    out.flush()
    if bad:
        click.echo(f"{bad} line(s) of {source} could not be read", err=True)
        raise SystemExit(CONFIG_ERROR)

