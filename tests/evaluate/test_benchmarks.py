import gzip
import json

import pytest

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate import benchmarks
from codeinstruct.evaluate.benchmarks import (
    load_benchmark,
    load_humaneval,
    load_problems,
)

GOOD = {
    "task_id": "Custom/0",
    "prompt": 'def add(a, b):\n    """Add."""\n',
    "canonical_solution": "    return a + b\n",
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
    "entry_point": "add",
}


def test_humaneval_comes_from_the_installed_wheel_and_has_164_problems():
    bench = load_humaneval()
    assert bench.name == "humaneval"
    assert len(bench.problems) == 164
    assert bench.problems[0].task_id == "HumanEval/0" and bench.problems[-1].task_id == "HumanEval/163"
    assert bench.problems[0].entry_point == "has_close_elements"
    assert load_benchmark("humaneval").sha256 == bench.sha256


def test_a_tampered_humaneval_file_is_refused(tmp_path, monkeypatch):
    raw = gzip.decompress(benchmarks.humaneval_path().read_bytes()).replace(b"has_close_elements", b"has_far_elements")
    fake = tmp_path / "HumanEval.jsonl.gz"
    fake.write_bytes(gzip.compress(raw))
    monkeypatch.setattr(benchmarks, "humaneval_path", lambda: fake)
    with pytest.raises(CodeinstructError, match="checksum .* is not HumanEval's"):
        load_humaneval()


def test_a_custom_suite_loads_with_its_checksum(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps({**GOOD, "task_id": "Custom/1"}) + "\n")
    bench = load_problems(path)
    assert [p.task_id for p in bench.problems] == ["Custom/0", "Custom/1"]
    assert bench.name == str(path.resolve())
    assert bench.problems[0].program("    return a + b\n").endswith("check(add)")
    gz = tmp_path / "suite.jsonl.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert load_problems(gz).sha256 == bench.sha256


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", r"suite.jsonl: line 2: invalid JSON"),
        (json.dumps([1, 2]), r"suite.jsonl: line 2: expected a JSON object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "test"}), r"suite.jsonl: line 2: missing field\(s\) test"),
        (json.dumps({**GOOD, "task_id": 7}), r"suite.jsonl: line 2: field 'task_id' must be a string, not int"),
        (
            json.dumps({**GOOD, "entry_point": "sub"}),
            r"suite.jsonl: line 2: the prompt does not define entry_point 'sub'",
        ),
        (json.dumps({**GOOD, "entry_point": "a b"}), r"suite.jsonl: line 2: entry_point 'a b' is not a Python name"),
        (json.dumps({**GOOD, "test": "assert True"}), r"suite.jsonl: line 2: the test does not define check"),
        (json.dumps(GOOD), r"suite.jsonl: line 2: task_id 'Custom/0' repeats line 1"),
    ],
)
def test_a_bad_record_names_file_line_and_reason(tmp_path, line, reason):
    path = tmp_path / "suite.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(CodeinstructError, match=reason):
        load_problems(path)


def test_missing_or_empty_suite_files_are_errors(tmp_path):
    with pytest.raises(CodeinstructError, match="cannot read"):
        load_problems(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(CodeinstructError, match="no problems"):
        load_problems(tmp_path / "empty.jsonl")
