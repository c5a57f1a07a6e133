"""Infilling problems for the tests: a small suite written from HumanEval (always there), and the real
human-eval-infilling files from ../shared/data (only checks of their own figures need them)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "humaneval-infilling"
SINGLE_LINE = "HumanEval-SingleLineInfilling.jsonl.gz"
MULTI_LINE = "HumanEval-MultiLineInfilling.jsonl.gz"
RANDOM_SPAN = "HumanEval-RandomSpanInfilling.jsonl.gz"
RANDOM_SPAN_LIGHT = "HumanEval-RandomSpanInfillingLight.jsonl.gz"


def shared_file(name: str) -> Path:
    """A human-eval-infilling file from ../shared/data; skips where this checkout has none."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is not here (human-eval-infilling lives in ../shared/data beside the repository)")
    return path


def read_rows(path: Path) -> list[dict]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def single_line_rows(problems: int = 6) -> list[dict]:
    """Single-line infilling as human-eval-infilling built it: each non-blank line of a canonical solution
    becomes a middle, what precedes it the prompt, what follows it the suffix."""
    from codeinstruct.evaluate.benchmarks import load_humaneval

    rows = []
    for p in load_humaneval().problems[:problems]:
        lines = p.canonical_solution.splitlines(keepends=True)
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            rows.append(
                {
                    "task_id": f"SingleLineInfilling/{p.task_id}/L{i}",
                    "entry_point": p.entry_point,
                    "prompt": p.prompt + "".join(lines[:i]),
                    "suffix": "".join(lines[i + 1 :]),
                    "canonical_solution": line,
                    "test": p.test,
                }
            )
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path
