"""Shared fixtures: instruction records shipped in tests/data/fixtures, a tokenizer trained on them
in-process, and (for the checks of the real file's figures only) GPTeacher from ../shared/data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "data" / "fixtures"
# 64 hand-written code-instruction records in GPTeacher's schema (16 with an empty input)
INSTRUCTIONS = FIXTURES / "instructions.json"
# 8 records in Alpaca's schema (`output` instead of `response`)
ALPACA = FIXTURES / "alpaca.json"
# The real GPTeacher Code-Instruct file: only in a checkout beside ../shared, never needed by default.
GPTEACHER = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gpteacher-codegen" / "codegen-instruct.json"
)


@pytest.fixture(scope="session")
def instruction_records() -> list[dict]:
    """The shipped instruction records (GPTeacher's schema): always present, never skips."""
    return json.loads(INSTRUCTIONS.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def real_gpteacher() -> Path:
    """Path of the real GPTeacher file in ../shared/data; skips where this checkout has no ../shared."""
    if not GPTEACHER.exists():
        pytest.skip(
            f"the real GPTeacher Code-Instruct file is not at {GPTEACHER} "
            "(it lives in ../shared/data beside the repository; only checks of its own figures need it)"
        )
    return GPTEACHER


@pytest.fixture(scope="session")
def eight_records(instruction_records) -> list[dict]:
    """4 records with input and 4 without: the shortest of each kind, so a tiny model can memorize them."""
    size = lambda r: len(r["instruction"]) + len(r["input"]) + len(r["response"])  # noqa: E731
    with_input = sorted((r for r in instruction_records if r["input"].strip()), key=size)
    without = sorted((r for r in instruction_records if not r["input"].strip()), key=size)
    return with_input[:4] + without[:4]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, instruction_records) -> Path:
    """A small BPE tokenizer with StarCoder's special tokens, trained on the shipped records."""
    from codeinstruct.tokenizer import save_tokenizer, train_tokenizer

    texts = [r["instruction"] + "\n" + r["input"] + "\n" + r["response"] for r in instruction_records]
    out = tmp_path_factory.mktemp("tokenizer")
    # 800 tokens: the 64 records hold enough pairs seen twice to reach it (len(tokenizer) == 800)
    save_tokenizer(train_tokenizer(texts, vocab_size=800), out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from codeinstruct.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the real `codeinstruct` entry point in-process: (exit code, stdout, stderr)."""
    from codeinstruct.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["codeinstruct", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run
