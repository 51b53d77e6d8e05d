import json

import pytest
from hypothesis import given, settings, strategies as st

from srum_jobs.prompts import (PromptError, category_counts, load_prompts, parse_prompts, shard_prompts)
from srum_jobs.records import Prompt


def _compbench(n=10):
    cats = ["color", "shape", "spatial"]
    return json.dumps([{"Question": f"prompt {i}", "Category": cats[i % 3], "Question_id": i} for i in range(n)])


def test_three_formats(tmp_path):
    cb = parse_prompts(_compbench(), source="train.json")
    assert [p.index for p in cb] == list(range(10)) and cb[1].category == "shape" and cb[3].id == "3"
    jl = parse_prompts('{"prompt": "a cat", "category": "x", "id": "c1"}\n\n{"prompt": "a dog"}\n', source="p.jsonl")
    assert [(p.id, p.text, p.category) for p in jl] == [("c1", "a cat", "x"), ("3", "a dog", "uncategorised")]
    tx = parse_prompts("# comment\na red cube\n\n  a blue ball  \n", source="p.txt")
    assert [(p.id, p.text) for p in tx] == [("2", "a red cube"), ("4", "a blue ball")]


@pytest.mark.parametrize("text, name, msg", [
    ('[{"Question": "x", "Category": "c"}]', "t.json", "entry 0: field 'Question_id' is missing"),
    ('[{"Question": 5, "Category": "c", "Question_id": 1}]', "t.json", "entry 0: field 'prompt' must be a string"),
    ('{"prompt": "ok"}\n{"prompt": ""}\n', "p.jsonl", "line 2: field 'prompt'"),
    ('{"prompt": "ok"}\n{"text": "x"}\n', "p.jsonl", "line 2: field 'prompt' is missing"),
    ('{"prompt": "ok", "colour": "x"}\n', "p.jsonl", "line 1: unknown field"),
    ('{"prompt": "ok"}\n{bad json\n', "p.jsonl", "line 2: not valid JSON"),
    ('[1, 2', "t.json", "not valid JSON"),
    ('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n', "p.jsonl", "id '1' appears twice"),
    ("\n\n", "p.txt", "no prompts found"),
    ("x" * 10_000, "p.txt", "line 1: prompt is 10000 characters"),
])
def test_bad_prompt_files_name_file_and_line(text, name, msg):
    with pytest.raises(PromptError) as err:
        parse_prompts(text, source=name)
    assert name in str(err.value) and msg in str(err.value)


def test_load_file_filters_and_reindexes(tmp_path):
    f = tmp_path / "train.json"
    f.write_text(_compbench(30))
    ps = load_prompts(f"file://{f}", categories=["spatial"], limit=4)
    assert [p.index for p in ps] == [0, 1, 2, 3] and {p.category for p in ps} == {"spatial"}
    with pytest.raises(PromptError, match="categories"):
        load_prompts(str(f), categories=["texture"])
    with pytest.raises(PromptError, match="not found"):
        load_prompts(str(tmp_path / "nope.json"))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(PromptError, match="bin.txt: not UTF-8"):
        load_prompts(str(tmp_path / "bin.txt"))


def test_load_from_s3(s3_endpoint, s3_bucket):
    import boto3

    from srum_jobs.config import StorageConfig

    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=s3_bucket, Key="data/train.json", Body=_compbench(5))
    ps = load_prompts(f"s3://{s3_bucket}/data/train.json",
                      storage=StorageConfig(root=f"s3://{s3_bucket}", endpoint_url=s3_endpoint))
    assert len(ps) == 5


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), shards=st.integers(1, 17))
def test_sharding_covers_each_prompt_exactly_once(n, shards):
    prompts = [Prompt(id=str(i), text=f"p{i}", category="c", index=i) for i in range(n)]
    seen = []
    for s in range(shards):
        part = shard_prompts(prompts, s, shards)
        assert part == shard_prompts(list(reversed(prompts)), s, shards)[::-1]  # order of input irrelevant
        seen += [p.id for p in part]
    assert sorted(seen, key=int) == [p.id for p in prompts]
    sizes = [len(shard_prompts(prompts, s, shards)) for s in range(shards)]
    assert max(sizes) - min(sizes) <= 1


def test_sharding_is_stable_and_validated():
    prompts = parse_prompts(_compbench(12), source="t.json")
    assert [p.id for p in shard_prompts(prompts, 1, 4)] == ["1", "5", "9"]
    with pytest.raises(ValueError):
        shard_prompts(prompts, 4, 4)
    with pytest.raises(ValueError):
        shard_prompts(prompts, 0, 0)
    assert category_counts(prompts) == {"color": 4, "shape": 4, "spatial": 4}
