"""Shared fixtures: a tokenizer trained in-process, a tiny model, GPTeacher records from ../shared/data."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

GPTEACHER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gpteacher-codegen" / "codegen-instruct.json"


@pytest.fixture(scope="session")
def gpteacher_records() -> list[dict]:
    if not GPTEACHER.exists():
        pytest.skip(f"shared GPTeacher data not found at {GPTEACHER}")
    return json.loads(GPTEACHER.read_text())


@pytest.fixture(scope="session")
def eight_records(gpteacher_records) -> list[dict]:
    """4 records with input and 4 without: the shortest of each kind, so a tiny model can memorize them."""
    size = lambda r: len(r["instruction"]) + len(r["input"]) + len(r["response"])  # noqa: E731
    with_input = sorted((r for r in gpteacher_records if r["input"].strip()), key=size)
    without = sorted((r for r in gpteacher_records if not r["input"].strip()), key=size)
    return with_input[:4] + without[:4]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, gpteacher_records) -> Path:
    """A small BPE tokenizer with StarCoder's special tokens, trained on 300 GPTeacher records."""
    from codeinstruct.tokenizer import save_tokenizer, train_tokenizer

    texts = [r["instruction"] + "\n" + r["input"] + "\n" + r["response"] for r in gpteacher_records[:300]]
    out = tmp_path_factory.mktemp("tokenizer")
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
