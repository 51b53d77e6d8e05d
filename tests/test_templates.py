"""Judge prompt templates: the defaults carry the contract lines; overrides are validated."""

from __future__ import annotations

import re

import pytest

from srum_jobs.config import RewardConfig
from srum_jobs.judging.parse import parse_global, parse_regions, parse_verify
from srum_jobs.judging.templates import KINDS, OUTPUT_LINES, TemplateError, Templates, load_templates, region_line

# What the toy understanding model (and any regex reader) relies on.
PROMPT_LINE = re.compile(r"^Prompt: (.*)$", re.M)
REGION_LINE = re.compile(r"^Region (\d+): box \[(-?\d+), (-?\d+), (-?\d+), (-?\d+)\]$", re.M)


@pytest.fixture(scope="module")
def tpl():
    return Templates.load()


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_ask_for_the_answer_lines(tpl, kind):
    text = tpl.text(kind)
    for line in OUTPUT_LINES[kind]:
        assert re.search(rf"^{re.escape(line)} ", text, re.M), f"{kind}.txt lacks an answer line {line!r}"


def test_global_and_sample_render_prompt_line_on_one_line(tpl):
    for out in (tpl.render_global("a red circle\nleft of  a blue square"), tpl.render_sample("a cat", 32, 32)):
        lines = PROMPT_LINE.findall(out)
        assert len(lines) == 1
    assert PROMPT_LINE.findall(tpl.render_global("a red circle\nleft of  a blue square")) == \
        ["a red circle left of a blue square"]
    assert not REGION_LINE.search(tpl.render_global("a cat"))


def test_global_quotes_the_paper_bands_from_config():
    text = load_templates(None, RewardConfig(neutral_band=[-0.3, 0.3], severe_band=[-0.8, -0.6])).render_global("x")
    assert "-0.3 to 0.3" in text and "0.5 to 0.9" in text and "-1.0" in text
    regions = Templates.load(reward=RewardConfig(severe_band=[-0.8, -0.6])).render_regions("x", [(0, 0, 4, 4)], 8, 8)
    assert "-0.8 to -0.6" in regions


def test_regions_render_integer_box_lines_in_order(tpl):
    out = tpl.render_regions("two things", [(1.4, 2.6, 30.6, 31), (0, 0, 10, 10)], 32, 32)
    assert PROMPT_LINE.findall(out) == ["two things"]
    assert REGION_LINE.findall(out) == [("1", "1", "3", "31", "31"), ("2", "0", "0", "10", "10")]
    assert "32 x 32" in out


def test_verify_renders_one_region(tpl):
    out = tpl.render_verify("a cat", (5, 6, 7, 8), 64, 48)
    assert REGION_LINE.findall(out) == [("1", "5", "6", "7", "8")]
    assert PROMPT_LINE.findall(out) == ["a cat"]


def test_region_line_rejects_bad_boxes():
    with pytest.raises(ValueError, match="non-finite"):
        region_line(1, (0, float("nan"), 1, 1))
    with pytest.raises(ValueError, match="4 coordinates"):
        region_line(2, (0, 1, 2))


def test_a_reply_in_the_requested_format_parses(tpl):
    """The format a default template asks for is exactly what the parser reads."""
    assert parse_global("Score: 0.7\nReason: ok").parsed
    reply = "\n".join(f"Region ID: {i}\nObject: thing\nScore: 0.{i}\nReason: r" for i in (1, 2))
    assert parse_regions(reply, 2).complete
    assert parse_verify("Answer: yes\nObject: cat").answer is True


def test_override_directory_replaces_only_given_files(tmp_path):
    (tmp_path / "global.txt").write_text("Judge layout.\nPrompt: $prompt\nScore: <n>\nReason: <r>\n")
    t = Templates.load(tmp_path)
    assert t.render_global("a dog").startswith("Judge layout.\nPrompt: a dog")
    assert t.origins["global"] == str(tmp_path / "global.txt")
    assert t.text("regions") == Templates.load().text("regions")


@pytest.mark.parametrize("name, body, message", [
    ("regions.txt", "Prompt: $prompt\nScore:\n", r"regions\.txt.*missing required placeholder.*\$regions"),
    ("verify.txt", "Prompt: $prompt\n", r"verify\.txt.*\$region"),
    ("global.txt", "Score:\n", r"global\.txt.*\$prompt"),
    ("global.txt", "Prompt: $prompt $colour\n", r"global\.txt.*unknown placeholder.*\$colour"),
    ("global.txt", "Prompt: $prompt costs 5 $\n", r"global\.txt, line 1.*\$\$"),
    ("regoins.txt", "Prompt: $prompt\n$regions\n", r"regoins\.txt.*unknown template name"),
])
def test_bad_override_is_rejected_naming_the_file(tmp_path, name, body, message):
    (tmp_path / name).write_text(body)
    with pytest.raises(TemplateError, match=message):
        Templates.load(tmp_path)


def test_override_dir_must_exist(tmp_path):
    with pytest.raises(TemplateError, match="not a directory"):
        Templates.load(tmp_path / "missing")


def test_dollar_escape_and_size_placeholder_errors(tmp_path):
    (tmp_path / "sample.txt").write_text("Costs $$5. Prompt: $prompt (${width}px)\n")
    t = Templates.load(str(tmp_path))
    assert "Costs $5." in t.render_sample("x", 10, 10) and "(10px)" in t.render_sample("x", 10, 10)
    with pytest.raises(TemplateError, match=r"sample\.txt.*\$width"):
        t.render_sample("x")
