"""Judge-output parsers: every case the core issue lists, the CLI, and property tests."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from srum_jobs.judging.parse import (MAX_REGIONS, parse_choice, parse_count, parse_global, parse_regions, parse_sample,
                                     parse_verify, parse_yes_no, read_number)
from srum_jobs.judging.parse_cli import parse_command

# ------------------------------------------------------------------------------------------ global


@pytest.mark.parametrize("text, score", [
    ("Score: 0.8\nReason: fine", 0.8),
    ("**Score:** 0.8", 0.8),                         # emphasis around the label
    ("Score: **-0.7**", -0.7),                       # emphasis around the number
    ("__Score__: 0.3", 0.3),
    ("Score: +0.5", 0.5),
    ("Score: .9", 0.9),
    ("Score: -.25", -0.25),
    ("Score: 1", 1.0),                               # integer
    ("Score: 0", 0.0),                               # a real zero is a real judgment
    ("Score: 0.6.", 0.6),                            # trailing period
    ("Score: \u22120.4", -0.4),                      # Unicode minus sign
    ("Score:\n0.3\nReason: on the next line", 0.3),  # number on the line after the label
    ("Score:\n\n  -0.2", -0.2),
    ("Score: [0.7]", 0.7),                           # brackets copied from the format
    ("Score: `0.7`", 0.7),                           # backticks
    ("Score: <0.65>", 0.65),
    ('Score: "0.55"', 0.55),
    ('{"score": 0.25, "reason": "ok"}', 0.25),       # a JSON object
    ('Here you go:\n```json\n{"Score": "-0.5", "Reason": "x"}\n```', -0.5),
    ("<think>Score: 0.9 maybe?</think>Score: -0.2", -0.2),   # only after the last closing tag
    ("<think>a</think><think>Score: 0.1</think>\nScore: 0.4", 0.4),
    ("Final score: 0.45", 0.45),
    ("Score (from -1 to 1): 0.4", 0.4),
    ("**Score** 0.35", 0.35),                        # label without colon, at a line start
    ("0.75", 0.75),                                  # a bare number as the whole answer
    ("Score: <a number from -1 to 1>\nReason: <..>\n\nScore: 0.6\nReason: real", 0.6),  # echoed format first
    ("Reason: fine.\nScore: 0.5", 0.5),              # reason first
])
def test_global_scores(text, score):
    r = parse_global(text)
    assert r.parsed is True
    assert r.score == pytest.approx(score)
    assert r.clamped is False


@pytest.mark.parametrize("text", [
    "Score: N/A", "Score: n/a\nReason: no spatial intent", "Score: NaN", "Score: nan", "Score: none",
    "The layout looks fine.", "", "Score:", "Score:\nReason: forgot the number", '{"score": NaN}',
    '{"score": null}', '{"score": true}', "<think>Score: 0.9 cut off while thinking", "Score: 1e999",
])
def test_global_not_parsed_is_never_zero(text):
    r = parse_global(text)
    assert r.parsed is False
    assert r.score is None


@pytest.mark.parametrize("text, score", [("Score: 3", 1.0), ("Score: -5.0", -1.0), ("Score: 1.01", 1.0),
                                         ("Score: 1e5", 1.0), ('{"score": -2}', -1.0)])
def test_out_of_range_is_clamped_and_flagged(text, score):
    r = parse_global(text)
    assert r.parsed and r.clamped
    assert r.score == score


def test_reason_is_extracted():
    assert parse_global("Score: 0.8\nReason: The cat is left of the dog.").reason == "The cat is left of the dog."
    assert parse_global("**Reason:** swapped sides\n**Score:** -0.6").reason == "swapped sides"
    assert parse_global("Reason: fine. Score: 0.5").reason == "fine."
    assert parse_global('{"score": 0.1, "reason": "meh"}').reason == "meh"
    assert parse_global("Score: 0.3").reason is None


def test_sample_parser_reads_the_same_format():
    assert parse_sample("Score: -0.3\nReason: broken").score == -0.3


def test_non_string_input_is_not_parsed():
    assert parse_global(None).parsed is False
    assert parse_regions(None, 2).parsed is False
    assert parse_verify(b"Answer: yes").parsed in (True, False)  # never raises


# ----------------------------------------------------------------------------------------- regions

BLOCKS_BLANK_LINES = """Region ID: 1
Object: red circle
Score: 0.8
Reason: clean

Region ID: 2
Object: blue square
Score: -0.6
Reason: distorted"""

BLOCKS_DASHES = """**Region ID: 1**
**Object:** red circle
**Score:** 0.8
---
**Region ID: 2**
**Object:** blue square
**Score:** -0.6
---"""

BLOCKS_NOTHING = """Region 1: the circle
Object: red circle
Score: 0.8
Region 2 (the square)
Object: blue square
Score: -0.6"""


@pytest.mark.parametrize("text", [BLOCKS_BLANK_LINES, BLOCKS_DASHES, BLOCKS_NOTHING])
def test_region_headers_and_separators(text):
    r = parse_regions(text, 2)
    assert r.parsed and r.complete
    assert r.regions[1].score == 0.8 and r.regions[1].object == "red circle"
    assert r.regions[2].score == -0.6 and r.regions[2].object == "blue square"


def test_regions_out_of_order_blank_lines_inside_and_unasked_ids():
    text = """<think>Region ID: 1 Score: -1</think>
Region ID: 3
Object: triangle

Score: 0.1

Reason: small

Region ID: 9
Object: ghost
Score: 0.9

Region ID: 1 - the red one
Object: circle
Score: **+.5**
"""
    r = parse_regions(text, 3)
    assert set(r.regions) == {1, 2, 3}            # a key for every requested region, none for region 9
    assert r.regions[1].score == 0.5 and r.regions[1].object == "circle"
    assert r.regions[2] is None                   # asked for, never answered
    assert r.regions[3].score == 0.1 and r.regions[3].reason == "small"
    assert r.parsed and not r.complete and r.scored == 2


def test_region_header_variants_with_text_after_number():
    for header in ("Region ID: 2", "**Region ID: 2**", "Region 2:", "Region ID 2 (blue square)", "### Region 2",
                   "Region #2", "- Region 2: blue square", "[Region 2]"):
        r = parse_regions(f"{header}\nObject: square\nScore: 0.4", 2)
        assert r.regions[2] is not None and r.regions[2].score == 0.4, header
        assert r.regions[1] is None


def test_one_line_blocks():
    r = parse_regions("Region ID: 1, Object: cat, Score: 0.5, Reason: ok. Region ID: 2, Object: dog, Score: -0.5", 2)
    assert r.regions[1].score == 0.5 and r.regions[1].object == "cat"
    assert r.regions[2].score == -0.5 and r.regions[2].object == "dog"


def test_echoed_region_lines_do_not_erase_answers():
    text = "Region 1: box [0, 0, 10, 10]\nRegion 2: box [5, 5, 20, 20]\n\nRegion ID: 1\nScore: 0.2\nRegion ID: 2\nScore: 0.3"
    r = parse_regions(text, 2)
    assert (r.regions[1].score, r.regions[2].score) == (0.2, 0.3)


def test_reason_line_starting_with_region_word_is_not_a_header():
    text = "Region ID: 1\nObject: cat\nReason: partly hidden;\nregion 2 overlaps it\nScore: 0.3"
    r = parse_regions(text, 2)
    assert r.regions[1].score == 0.3 and r.regions[2] is None


def test_region_scores_clamped_nan_and_missing():
    text = "Region ID: 1\nScore: 7\nRegion ID: 2\nScore: NaN\nRegion ID: 3\nObject: cat"
    r = parse_regions(text, 3)
    assert r.regions[1].score == 1.0 and r.regions[1].clamped
    assert r.regions[2] is None and r.regions[3] is None


def test_regions_json_and_single_region_without_header():
    r = parse_regions('{"regions": [{"region_id": 2, "object": "cat", "score": 0.3}, {"region_id": 5, "score": 1}]}', 2)
    assert r.regions[1] is None and r.regions[2].score == 0.3 and r.regions[2].object == "cat"
    r = parse_regions("Object: dog\nScore: -0.2", 1)
    assert r.regions[1].score == -0.2 and r.regions[1].object == "dog"


def test_region_count_is_bounded():
    with pytest.raises(ValueError, match="at most"):
        parse_regions("Region 1: Score: 1", MAX_REGIONS + 1)


def test_no_region_parsed():
    r = parse_regions("I cannot see any regions.", 3)
    assert r.parsed is False and all(v is None for v in r.regions.values()) and len(r.regions) == 3
    assert parse_regions("Region ID: 1\nScore: 0.5", 0).parsed is False


# ------------------------------------------------------------------------------------------ verify


@pytest.mark.parametrize("text, answer, obj", [
    ("Answer: yes\nObject: circle", True, "circle"),
    ("**Answer:** No\n**Object:** none", False, None),
    ("Answer: [yes]\nObject: `red circle`", True, "red circle"),
    ("<think>Answer: no</think>Answer: yes\nObject: square.", True, "square"),
    ("Yes. Object: cat", True, "cat"),
    ('{"answer": true, "object": "dog"}', True, "dog"),
    ("Answer: true\nObject: tree", True, "tree"),
])
def test_verify(text, answer, obj):
    r = parse_verify(text)
    assert r.parsed and r.answer is answer and r.object == obj


def test_verify_unreadable():
    r = parse_verify("The region is ambiguous.")
    assert r.parsed is False and r.answer is None


# ----------------------------------------------------------------- numbers are read whole (issue 14)


@pytest.mark.parametrize("text, score", [
    ("Score: 0,8", 0.8),                             # a decimal comma is read whole, never as its prefix 0
    ("Score: -0,5\nReason: x", -0.5),
    ("0,75", 0.75),
    ("Score: \\-0.5", -0.5),                         # the escaped markdown minus
    ("Score: \\+0.5", 0.5),
    ("Score: 8/10", 0.8),                            # a fraction is read whole
    ("Score: 0.8, because the layout is right", 0.8),
    ("Score: 0.6.", 0.6),
])
def test_numbers_are_read_whole(text, score):
    r = parse_global(text)
    assert r.parsed and r.score == pytest.approx(score)


@pytest.mark.parametrize("text", [
    "Score: 1,000",          # thousands separator or decimal: ambiguous
    "Score: 0.5-0.7",        # a range
    "Score: 0.5 to 0.7",
    "Score: 80%",            # a percentage of what scale?
    "Score: 0.8.5",          # two decimal points
    "Score: 8th",            # letters glued to the digits
    "Score: 1,000.5",
    "Score: 0.8\nScore: 0,8,5",                       # the last (corrected) value is unreadable
    "Score: 3/0",
])
def test_malformed_numbers_are_unparsed_never_a_prefix(text):
    r = parse_global(text)
    assert r.parsed is False and r.score is None


def test_malformed_region_score_is_unparsed():
    r = parse_regions("Region ID: 1\nScore: 0,9\nRegion ID: 2\nScore: 1.2.3", 2)
    assert r.regions[1].score == pytest.approx(0.9) and r.regions[2] is None


@pytest.mark.parametrize("text, status, value", [
    ("0,8", "number", 0.8), ("12,5", "number", 12.5), ("0,125", "number", 0.125), ("1,000", "malformed", None),
    ("N/A", "na", None), ("abc", "absent", None), ("7/10", "number", 0.7), ("3e2", "number", 300.0),
])
def test_read_number(text, status, value):
    r = read_number(text)
    assert r.status == status and (r.value == pytest.approx(value) if value is not None else r.value is None)


@pytest.mark.parametrize("text, answer", [
    ("Yes", True), ("no.", False), ("Answer: yes", True), ('{"answer": "No"}', False), ("The answer is yes.", True),
    ("Yes, there is no blue square", True), ("**No**", False),
])
def test_yes_no(text, answer):
    r = parse_yes_no(text)
    assert r.parsed and r.value is answer


@pytest.mark.parametrize("text", ["yes and no", "I cannot tell", "", "maybe"])
def test_yes_no_unparsed(text):
    assert parse_yes_no(text).parsed is False


@pytest.mark.parametrize("text, n", [
    ("3", 3), ("There are two clocks.", 2), ("Answer: 2", 2), ("Count: three", 3), ('{"count": 4}', 4), ("none", 0),
    ("There is one clock.", 1),
])
def test_count(text, n):
    r = parse_count(text)
    assert r.parsed and r.value == n


@pytest.mark.parametrize("text", ["2.5", "2 or 3", "2-3", "I see 2 red and 3 blue", "Answer: 2,5,1", "many"])
def test_count_unparsed(text):
    assert parse_count(text).parsed is False


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("(C)", "C"), ("Answer: A", "A"), ("A. red circle", "A"), ("The answer is B.", "B"),
    ('{"answer": "b"}', "B"), ("B. A red circle", "B"), ("Option C", "C"),
])
def test_choice(text, letter):
    r = parse_choice(text, "ABC")
    assert r.parsed and r.value == letter


@pytest.mark.parametrize("text", ["A or B", "D", "Between (A) and (B), I pick (B)", "An image", ""])
def test_choice_unparsed(text):
    assert parse_choice(text, "ABC").parsed is False


# --------------------------------------------------------------------------------------- properties

_fragments = st.sampled_from(["Score:", "score", "Region ID:", "Region", "Object:", "Reason:", "Answer:", "yes",
                              "**", "---", "\n", " ", "<think>", "</think>", "N/A", "NaN", "{", "}", "[", "]",
                              '"score":', "-", "+", ".", "e", "1e999", "\u2212", "`", "#", "|", "0.5", "7",
                              "-3.2", ".9"])
_texts = st.one_of(st.text(max_size=300), st.lists(st.one_of(_fragments, st.text(max_size=6)), max_size=40).map("".join))


def _in_range(x):
    return x is None or (math.isfinite(x) and -1.0 <= x <= 1.0)


@settings(max_examples=300, deadline=None)
@given(_texts, st.integers(min_value=-2, max_value=12))
def test_property_parsers_never_raise_and_scores_in_range(text, n):
    g = parse_global(text)
    assert _in_range(g.score) and (g.score is None) == (not g.parsed)
    r = parse_regions(text, n)
    assert set(r.regions) == set(range(1, n + 1)) if n >= 1 else r.regions == {}
    for v in r.regions.values():
        assert v is None or _in_range(v.score)
    assert r.parsed == any(v is not None for v in r.regions.values())
    v = parse_verify(text)
    assert v.answer in (True, False, None)
    assert parse_yes_no(text).value in (True, False, None)
    c = parse_count(text)
    assert c.parsed == (c.value is not None) and (c.value is None or c.value >= 0)
    assert parse_choice(text, "ABCD").value in (None, "A", "B", "C", "D")


_SP = " " * 20000


@pytest.mark.parametrize("text", [
    "Object:" + _SP + "x", "Reason:" + _SP + "x", "Region" + _SP + "x", "\nRegion" + _SP + ":" + _SP + "x",
    "Region ID" + _SP + "x", "Score:" + _SP + "x", "Answer:" + _SP, "Reason: a" + _SP + ", score" + _SP,
    "Object: a" + _SP + "reason" + _SP + "x", "[" * 20000, "{" * 20000, "Score: " + "(" * 20000,
    "\n".join(["Region ID: 1 Object:" + " " * 200 + "a"] * 200),
])
def test_no_catastrophic_backtracking(text):
    """Judge output is outside data: a long run of spaces or brackets must not make a regex go quadratic."""
    # the quadratic regex this guards against took 97 s on 100 kB; a linear parse takes milliseconds, so a
    # generous bound stays meaningful on a loaded CI machine
    t0 = time.perf_counter()
    parse_global(text), parse_regions(text, 5), parse_verify(text)
    parse_yes_no(text), parse_count(text), parse_choice(text, "ABCD")
    assert time.perf_counter() - t0 < 5.0


# --------------------------------------------------------------------------------------------- CLI


def test_cli_global():
    res = CliRunner().invoke(parse_command, ["--kind", "global"], input="**Score:** 0.8\nReason: ok\n")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"parsed": True, "score": 0.8, "reason": "ok"}
    res = CliRunner().invoke(parse_command, ["--kind", "global"], input="Score: N/A\n")
    assert json.loads(res.output) == {"parsed": False, "score": None, "reason": None}


def test_cli_regions_has_key_for_every_region():
    res = CliRunner().invoke(parse_command, ["--kind", "regions", "--regions", "3"],
                             input="Region ID: 2\nObject: cat\nScore: 0.5\nRegion 7:\nScore: 1\n")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"parsed": True, "regions": {"1": None, "2": {"score": 0.5, "object": "cat"},
                                                                  "3": None}}


@pytest.mark.parametrize("args", [[], ["--kind", "regions"], ["--kind", "global", "--jsonl", "x"],
                                  ["--kind", "global", "--regions", "2"], ["--kind", "regions", "--regions", "0"],
                                  ["--kind", "regions", "--regions", str(MAX_REGIONS + 1)]])
def test_cli_usage_errors(args):
    res = CliRunner().invoke(parse_command, args, input="")
    assert res.exit_code == 2


def test_cli_jsonl_in_order_with_bad_lines(tmp_path):
    f = tmp_path / "outs.jsonl"
    f.write_text("\n".join([
        json.dumps({"kind": "global", "text": "Score: -0.3"}),
        json.dumps({"kind": "regions", "regions": 2, "text": "Region 2:\nScore: 0.9"}),
        "not json",
        json.dumps({"kind": "regions", "text": "Region 1:\nScore: 0.1"}),
        json.dumps({"kind": "global", "text": "nothing"}),
    ]) + "\n\n")
    res = CliRunner().invoke(parse_command, ["--jsonl", str(f)])
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert len(lines) == 5
    assert lines[0] == {"parsed": True, "score": -0.3, "reason": None}
    assert lines[1] == {"parsed": True, "regions": {"1": None, "2": {"score": 0.9, "object": None}}}
    assert lines[2]["parsed"] is False and f"{f}:3" in lines[2]["error"]
    assert "'regions'" in lines[3]["error"] and f"{f}:4" in lines[3]["error"]
    assert lines[4] == {"parsed": False, "score": None, "reason": None}
    assert res.exit_code == 78          # bad input lines are reported, not silently passed


def test_cli_jsonl_missing_file(tmp_path):
    res = CliRunner().invoke(parse_command, ["--jsonl", str(tmp_path / "nope.jsonl")])
    assert res.exit_code != 0 and "nope.jsonl" in res.output


def test_cli_jsonl_1000_lines_fast_without_torch(tmp_path):
    """The JSONL mode in a fresh interpreter: under 2 s for 1,000 lines, and torch/numpy never imported."""
    f = tmp_path / "big.jsonl"
    rows = []
    for i in range(1000):
        if i % 2:
            rows.append({"kind": "global", "text": f"<think>hmm</think>**Score:** {(i % 21 - 10) / 10}\nReason: r{i}"})
        else:
            rows.append({"kind": "regions", "regions": 5, "text": "\n---\n".join(
                f"**Region ID: {j}**\nObject: thing {j}\n\nScore: {j / 10}\nReason: because" for j in (5, 3, 1, 2, 4))})
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code = ("import sys, time; t = time.perf_counter()\n"
            "from srum_jobs.judging.parse_cli import parse_command\n"
            "try:\n    parse_command(['--jsonl', sys.argv[1]])\n"
            "except SystemExit as e:\n    rc = e.code\n"
            "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'\n"
            "print('ELAPSED', time.perf_counter() - t, file=sys.stderr)\nsys.exit(rc)\n")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr
    out = [json.loads(x) for x in p.stdout.splitlines()]
    assert len(out) == 1000
    assert out[0]["regions"]["5"] == {"score": 0.5, "object": "thing 5"}
    assert out[1]["score"] == -0.9
    assert wall < 2.0, f"JSONL mode took {wall:.2f} s for 1,000 lines"


@pytest.mark.parametrize("kind, text, out", [
    ("compbench", '{"score": 72, "explanation": "x"}', {"parsed": True, "value": 72.0}),
    ("compbench", "score: 70-80", {"parsed": False, "value": None}),
    ("wise", "Consistency: 10\nRealism: 1\nAesthetic Quality: 0", {"parsed": False, "value": None}),
    ("yesno", "Yes.", {"parsed": True, "value": True}),
    ("count", "There are two clocks.", {"parsed": True, "value": 2}),
])
def test_cli_evaluator_kinds(kind, text, out):
    res = CliRunner().invoke(parse_command, ["--kind", kind], input=text)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == out
