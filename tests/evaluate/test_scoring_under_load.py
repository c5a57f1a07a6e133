"""Outcomes do not depend on load: the same samples score the same beside hostile neighbours and CPU hogs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from codeinstruct.evaluate.benchmarks import load_problems
from codeinstruct.evaluate.sandbox import SandboxLimits, probe_isolation
from codeinstruct.evaluate.scoring import score_samples

from .conftest import write_samples

PROBLEM = {
    "task_id": "Load/0",
    "prompt": "def add(a, b):\n",
    "canonical_solution": "    return a + b\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}
COMPLETIONS = {
    "correct": "    return a + b\n",
    "wrong": "    return a + b + 1\n",
    "spin": "    while True:\n        pass\n",
    "fork bomb": (
        "    import os\n    while True:\n        try:\n            os.fork()\n"
        "        except OSError:\n            pass\n"
    ),
}


@pytest.fixture
def cpu_hogs():
    """More runnable processes than cores, outside the sandbox, for the length of the test."""
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
        for _ in range(2 * (os.cpu_count() or 1))
    ]
    try:
        yield len(hogs)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def _score_beside_hostile_neighbours(tmp_path, controls: int, hostile: int, timeout_s: float):
    isolation = probe_isolation()
    kinds = ["spin"] * hostile
    if isolation.unprivileged:  # RLIMIT_NPROC holds only for an unprivileged uid
        kinds += ["fork bomb"] * hostile
    order = []  # controls interleaved with the hostile programs, so that they run side by side
    for i in range(controls):
        order += ["correct", "wrong"]
        if i < len(kinds):
            order.append(kinds[i])
    order += kinds[controls:]
    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(PROBLEM) + "\n")
    samples = write_samples(
        tmp_path / "samples.jsonl", [{"task_id": "Load/0", "completion": COMPLETIONS[k]} for k in order]
    )
    # A generous wall-clock backstop: on a loaded machine a spinning loop needs many seconds of wall
    # time to use its CPU budget, and it is the budget that must decide.
    limits = SandboxLimits(timeout_s=timeout_s, wall_timeout_s=60, memory_mb=512, processes=16)
    report = score_samples(
        samples, allow_code_execution=True, benchmark=load_problems(problems), limits=limits, workers=4
    )
    outcomes = report.tasks[0]["outcomes"]
    by_kind: dict[str, list[dict]] = {}
    for kind, outcome in zip(order, outcomes, strict=True):
        by_kind.setdefault(kind, []).append(outcome)
    return report, by_kind


def _check(report, by_kind, controls: int) -> None:
    assert [o["status"] for o in by_kind["correct"]] == ["passed"] * controls
    assert [o["status"] for o in by_kind["wrong"]] == ["failed"] * controls
    for kind in ("spin", "fork bomb"):
        for outcome in by_kind.get(kind, []):
            # The program used its own CPU budget: neither its neighbours nor the hogs decided it.
            assert (outcome["status"], outcome["timeout_by"]) == ("timeout", "cpu"), (kind, outcome)
            assert outcome["cpu_seconds"] >= report.limits["timeout_s"]
    assert report.counts["timeout"] == sum(len(by_kind.get(k, [])) for k in ("spin", "fork bomb"))
    assert all(o["timeout_by"] is None for k in ("correct", "wrong") for o in by_kind[k])


def test_twenty_correct_and_twenty_wrong_hold_beside_fork_bombs_spinning_loops_and_cpu_hogs(tmp_path, cpu_hogs):
    report, by_kind = _score_beside_hostile_neighbours(tmp_path, controls=20, hostile=4, timeout_s=1.0)
    _check(report, by_kind, controls=20)
