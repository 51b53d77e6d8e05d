import json

import pytest

from srum_jobs.records import (Box, GlobalJudgment, Prompt, RecordError, RegionJudgment, RewardRecord,
                               dump_records, parse_record, read_records)


def _reward():
    box = Box(x0=1, y0=2, x1=10, y1=12, area=90.0, confidence=0.9)
    return RewardRecord(prompt_id="p1", prompt="a red circle", category="color", candidate_index=2, seed=7,
                        image_key="e/round-1/candidates/shard-00000/p1/2.png", image_sha256="ab" * 32,
                        width=32, height=32, boxes_proposed=3,
                        regions=[RegionJudgment(region_id=1, box=box, object="circle", score=0.5, parsed=True)],
                        global_judgment=GlobalJudgment(score=-0.3, reason="ok", parsed=True, raw="Score: -0.3"))


def test_round_trip_every_kind():
    recs = [Prompt(id="a", text="x", category="color", index=0), _reward(), Box(x0=0, y0=0, x1=1, y1=1)]
    text = dump_records(recs)
    assert all(json.loads(line)["v"] == 1 for line in text.splitlines())
    back = list(read_records(text))
    assert back == recs


def test_wrong_field_names_line_and_field():
    good = _reward().to_json_line()
    bad = json.loads(good)
    bad["global_judgment"]["score"] = 3.0
    text = good + "\n\n" + json.dumps(bad) + "\n"
    it = read_records(text, RewardRecord, source="shard-3.jsonl")
    assert next(it).prompt_id == "p1"
    with pytest.raises(RecordError, match=r"shard-3.jsonl:3: field 'global_judgment.score'"):
        next(it)


def test_missing_field_and_unknown_field():
    d = json.loads(_reward().to_json_line())
    del d["seed"]
    with pytest.raises(RecordError, match=r":1: field 'seed': Field required"):
        parse_record(json.dumps(d))
    d = json.loads(_reward().to_json_line())
    d["extra"] = 1
    with pytest.raises(RecordError, match="field 'extra': unknown field"):
        parse_record(json.dumps(d))


@pytest.mark.parametrize("line, msg", [
    ("not json", "not valid JSON"),
    ("[1]", "must be a JSON object"),
    ('{"v": 1}', "'kind' is missing"),
    ('{"kind": "prompt", "v": 9}', "'v' is 9"),
    ('{"kind": "nope", "v": 1}', "'kind' is 'nope'"),
])
def test_malformed_lines(line, msg):
    with pytest.raises(RecordError, match=msg):
        parse_record(line, source="f.jsonl", lineno=5)


def test_expected_kind_enforced():
    with pytest.raises(RecordError, match="expected a 'reward' record, found 'box'"):
        parse_record(Box(x0=0, y0=0, x1=1, y1=1).to_json_line(), RewardRecord)


def test_nan_score_cannot_be_serialised_or_read():
    with pytest.raises(ValueError):
        GlobalJudgment(score=float("nan"), parsed=True)
    line = _reward().to_json_line().replace('"score":-0.3', '"score":NaN')
    with pytest.raises(RecordError, match="global_judgment.score"):
        parse_record(line)
