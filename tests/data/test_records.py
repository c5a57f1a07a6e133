import json

import pytest

from codeinstruct.data.records import InstructionRecord, load_records, split_held_out
from codeinstruct.errors import CodeinstructError


def test_gpteacher_json(tmp_path):
    p = tmp_path / "g.json"
    p.write_text(
        json.dumps(
            [{"instruction": "a", "input": "", "response": "b"}, {"instruction": "c", "input": "d", "response": "e"}]
        )
    )
    assert load_records(p) == [InstructionRecord("a", "", "b"), InstructionRecord("c", "d", "e")]


def test_alpaca_json_and_missing_input(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(
        json.dumps(
            [{"instruction": "a", "input": "x", "output": "b", "text": "ignored"}, {"instruction": "c", "output": "e"}]
        )
    )
    assert load_records(p) == [InstructionRecord("a", "x", "b"), InstructionRecord("c", "", "e")]


def test_jsonl(tmp_path):
    p = tmp_path / "a.jsonl"
    p.write_text('{"instruction": "a", "input": "", "response": "b"}\n\n{"instruction": "c", "output": "d"}\n')
    assert [r.response for r in load_records(p)] == ["b", "d"]


def test_shipped_fixtures_load_in_both_schemas(instruction_records):
    from tests.conftest import ALPACA, INSTRUCTIONS

    records = load_records(INSTRUCTIONS)
    assert len(records) == len(instruction_records) == 64
    assert all(set(r) == {"instruction", "input", "response"} for r in instruction_records)  # GPTeacher's keys
    assert sum(not r.has_input for r in records) == 16
    assert any("<filename>" in r.response for r in records) and any("<fim_middle>" in r.response for r in records)
    alpaca = json.loads(ALPACA.read_text(encoding="utf-8"))
    assert all(set(r) == {"instruction", "input", "output"} for r in alpaca)
    assert load_records(ALPACA) == [InstructionRecord(r["instruction"], r["input"], r["output"]) for r in alpaca]


def test_shared_gpteacher_file_loads(real_gpteacher):
    records = load_records(real_gpteacher)
    assert len(records) == 4535
    assert sum(not r.has_input for r in records) == 955


BAD = [
    ("bad.json", b'[{"instruction": "a", "response": "b"},\n {"instruction": ', "bad.json: line 2: invalid JSON"),
    (
        "bad.jsonl",
        b'{"instruction": "a", "response": "b"}\n{"instruction": "a" "response": "b"}\n',
        "bad.jsonl: line 2: invalid JSON",
    ),
    (
        "bad.json",
        json.dumps([{"instruction": "a", "response": "b"}, {"instruction": "a"}]).encode(),
        "bad.json: record 2: missing field 'response' (GPTeacher) or 'output' (Alpaca)",
    ),
    (
        "bad.json",
        json.dumps([{"instruction": "", "response": "b"}]).encode(),
        "bad.json: record 1: field 'instruction' is empty",
    ),
    (
        "bad.json",
        json.dumps([{"instruction": "a", "response": "  \n"}]).encode(),
        "bad.json: record 1: field 'response' is empty",
    ),
    (
        "bad.json",
        json.dumps([{"instruction": "a", "input": 3, "response": "b"}]).encode(),
        "bad.json: record 1: field 'input' must be a string, got int",
    ),
    ("bad.json", json.dumps([["a", "b"]]).encode(), "bad.json: record 1: expected a JSON object, got list"),
    (
        "bad.jsonl",
        b'{"instruction": "a", "response": "b"}\n{"instruction": "\xff\xfe", "response": "b"}\n',
        "bad.jsonl: line 2: not valid UTF-8",
    ),
    ("bad.json", b"", "bad.json: file is empty"),
    ("bad.json", b"[]", "bad.json: no records"),
    (
        "bad.json",
        json.dumps([{"instruction": "a", "response": "b", "output": "c"}]).encode(),
        "bad.json: record 1: has both",
    ),
]


@pytest.mark.parametrize("name,content,message", BAD)
def test_bad_input_names_file_record_and_reason(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_bytes(content)
    with pytest.raises(CodeinstructError) as e:
        load_records(p)
    text = str(e.value)
    assert text.startswith(str(tmp_path / message.split(":")[0]))
    assert message.split(":", 1)[1] in text
    assert "\n" not in text


def test_missing_file(tmp_path):
    with pytest.raises(CodeinstructError, match="no such file"):
        load_records(tmp_path / "nope.json")


def test_split_held_out_is_deterministic_and_disjoint():
    items = list(range(100))
    train, held = split_held_out(items, 0.1, seed=3)
    assert len(held) == 10 and len(train) == 90
    assert sorted(train + held) == items
    assert split_held_out(items, 0.1, seed=3) == (train, held)
    assert split_held_out(items, 0.1, seed=4)[1] != held
    assert split_held_out(items, 0.0, seed=3) == (items, [])
    assert len(split_held_out(items[:3], 0.01, seed=0)[1]) == 1


def test_split_held_out_refuses_to_hold_out_everything():
    with pytest.raises(CodeinstructError, match="leaves no training records"):
        split_held_out([1], 0.5, seed=0)
