"""The leaderboard command on a tiny model, with small local lm-eval tasks written here."""

import json
import os

import pytest

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.leaderboard import (
    LEADERBOARD,
    LeaderboardReport,
    LeaderboardRow,
    resolve_tasks,
)

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture
def task_dir(tmp_path):
    """Two tasks whose accuracy does not depend on the model.

    tie_mc: both choices are the same text, so their likelihoods tie and the first wins: a
    document is right exactly when its answer is 0. Answers 0, 0, 1, 0: accuracy 75%, and 100%
    on the first two. single_mc: one choice, always right.
    """
    docs = {
        "tie_mc": [{"question": f"q{i}", "choices": ["same", "same"], "answer": a} for i, a in enumerate([0, 0, 1, 0])],
        "single_mc": [{"question": f"q{i}", "choices": ["only"], "answer": 0} for i in range(3)],
    }
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, rows in docs.items():
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tasks / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data))
    return tasks


def _table_rows(out: str) -> dict[str, list[str]]:
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if len(cells) == 3 and cells[0]:
            rows[cells[0]] = cells[1:]
    return rows


def test_leaderboard_runs_local_tasks_and_prints_the_card_table(cli, tiny_model_dir, task_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")  # restored afterwards; the command must turn it on
    out = tmp_path / "leaderboard.json"
    code, stdout, stderr = cli(
        "eval",
        "leaderboard",
        "--model",
        tiny_model_dir,
        "--tasks",
        "tie_mc,single_mc",
        "--include-path",
        task_dir,
        "--out",
        out,
    )
    assert code == 0, stderr
    assert os.environ["HF_DATASETS_OFFLINE"] == "1" and os.environ["HF_HUB_OFFLINE"] == "1"
    assert "StarCoder GPTeacher-Codegen card" in stdout
    rows = _table_rows(stdout)
    assert rows["tie_mc"] == ["75.00", "-"]
    assert rows["single_mc"] == ["100.00", "-"]
    assert rows["Avg."] == ["87.50", "-"]
    saved = json.loads(out.read_text())
    assert [r["score"] for r in saved["rows"]] == [75.0, 100.0] and saved["average"] == 87.5


def test_limit_runs_the_first_examples_only(cli, tiny_model_dir, task_dir):
    code, stdout, stderr = cli(
        "eval",
        "leaderboard",
        "--model",
        tiny_model_dir,
        "--tasks",
        "tie_mc",
        "--include-path",
        task_dir,
        "--limit",
        "2",
    )
    assert code == 0, stderr
    assert _table_rows(stdout)["tie_mc"] == ["100.00", "-"]
    assert "limit 2 per task" in stdout


def test_a_leaderboard_task_without_its_dataset_offline_is_named(cli, tiny_model_dir):
    code, stdout, stderr = cli("eval", "leaderboard", "--model", tiny_model_dir, "--tasks", "arc", "--limit", "1")
    if code == 0:  # this machine has ARC in its datasets cache: then the row is there with the card's number
        assert _table_rows(stdout)["ARC (25-shot)"][1] == "32.68"
        return
    assert code == 1
    assert "error: ARC (25-shot): dataset allenai/ai2_arc (ARC-Challenge) is not available offline" in " ".join(
        stderr.split()
    )
    assert "Traceback" not in stderr


def test_the_card_average_matches_the_card():
    report = LeaderboardReport(
        model="m",
        limit=None,
        rows=[LeaderboardRow(t.label, t.task, t.num_fewshot, t.metric, 50.0, t.card) for t in LEADERBOARD],
    )
    assert report.card_average == pytest.approx(32.57, abs=0.005)  # the card's "Avg."
    assert [r.label for r in report.rows] == [
        "ARC (25-shot)",
        "HellaSwag (10-shot)",
        "MMLU (5-shot)",
        "TruthfulQA (0-shot)",
        "Winogrande (5-shot)",
        "GSM8K (5-shot)",
        "DROP (3-shot)",
    ]


def test_task_names_resolve_to_leaderboard_settings():
    arc, custom = resolve_tasks(["arc", "my_task"])
    assert (arc.task, arc.num_fewshot, arc.metric) == ("arc_challenge", 25, "acc_norm,none")
    assert (custom.task, custom.num_fewshot, custom.metric, custom.card) == ("my_task", None, None, None)
    assert resolve_tasks(["truthfulqa_mc2"])[0].label == "TruthfulQA (0-shot)"
    with pytest.raises(CodeinstructError):
        resolve_tasks([" "])
