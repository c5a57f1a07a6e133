"""The Open LLM Leaderboard (v1) tasks through lm-eval, on a local model and local datasets only.

The leaderboard's seven tasks, with its few-shot counts and metrics, and the numbers the
StarCoder GPTeacher-Codegen card reports for them (shown beside the model's as a reference):

    ARC          arc_challenge   25-shot  acc_norm                 32.68
    HellaSwag    hellaswag       10-shot  acc_norm                 47.6
    MMLU         mmlu             5-shot  acc                      28.63
    TruthfulQA   truthfulqa_mc2   0-shot  mc2 (lm-eval's acc)      40.41
    Winogrande   winogrande       5-shot  acc                      55.56
    GSM8K        gsm8k            5-shot  exact match (strict)     0.0
    DROP         drop             3-shot  f1                       23.11

Scores are percentages; "Avg." is their mean, as on the card. lm-eval's own task definitions are
used unchanged, through its Python API (`simple_evaluate`) with an `HFLM` wrapped around the
model codeinstruct loads. HF_DATASETS_OFFLINE and HF_HUB_OFFLINE are set, so nothing is
downloaded: a task whose dataset is not in the local Hugging Face cache stops the run with a
message naming the dataset. Any other lm-eval task, including your own YAML tasks in an
`include_path` directory, can be run too; it is scored with its own few-shot setting and its
first metric, and has no reference number.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codeinstruct.errors import CodeinstructError

CARD_MODEL = "StarCoder GPTeacher-Codegen"


@dataclass(frozen=True)
class LeaderboardTask:
    key: str  # what --tasks accepts (the lm-eval task name works too)
    task: str  # lm-eval task or group
    num_fewshot: int | None  # None: the task's own setting
    metric: str | None  # lm-eval result key "metric,filter"; None: the task's first metric
    label: str
    card: float | None  # the card's number, in percent


LEADERBOARD = (
    LeaderboardTask("arc", "arc_challenge", 25, "acc_norm,none", "ARC (25-shot)", 32.68),
    LeaderboardTask("hellaswag", "hellaswag", 10, "acc_norm,none", "HellaSwag (10-shot)", 47.6),
    LeaderboardTask("mmlu", "mmlu", 5, "acc,none", "MMLU (5-shot)", 28.63),
    LeaderboardTask("truthfulqa", "truthfulqa_mc2", 0, "acc,none", "TruthfulQA (0-shot)", 40.41),
    LeaderboardTask("winogrande", "winogrande", 5, "acc,none", "Winogrande (5-shot)", 55.56),
    LeaderboardTask("gsm8k", "gsm8k", 5, "exact_match,strict-match", "GSM8K (5-shot)", 0.0),
    LeaderboardTask("drop", "drop", 3, "f1,none", "DROP (3-shot)", 23.11),
)


@dataclass(frozen=True)
class LeaderboardRow:
    label: str
    task: str
    num_fewshot: int | None
    metric: str
    score: float  # percent
    card: float | None


@dataclass
class LeaderboardReport:
    model: str
    limit: int | float | None
    rows: list[LeaderboardRow] = field(default_factory=list)
    seconds: float = 0.0
    lm_eval_version: str = ""

    @property
    def average(self) -> float | None:
        return sum(r.score for r in self.rows) / len(self.rows) if self.rows else None

    @property
    def card_average(self) -> float | None:
        """The card's average over the same tasks; None when some task has no card number."""
        if not self.rows or any(r.card is None for r in self.rows):
            return None
        return sum(r.card for r in self.rows) / len(self.rows)  # type: ignore[misc]

    def as_dict(self) -> dict:
        return {**asdict(self), "average": self.average, "card_average": self.card_average, "card_model": CARD_MODEL}


def resolve_tasks(names: Sequence[str] | None) -> list[LeaderboardTask]:
    """The leaderboard's tasks (all by default); unknown names become plain lm-eval tasks."""
    if not names:
        return list(LEADERBOARD)
    known = {t.key: t for t in LEADERBOARD} | {t.task: t for t in LEADERBOARD}
    out = []
    for name in names:
        name = name.strip()
        if name:
            out.append(known.get(name) or LeaderboardTask(name, name, None, None, name, None))
    if not out:
        raise CodeinstructError("no tasks given")
    return out


def _go_offline() -> None:
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    # The variables are read at import; if datasets or huggingface_hub were imported already, tell them too.
    import sys

    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_DATASETS_OFFLINE = True
        datasets.config.HF_HUB_OFFLINE = True
    if "huggingface_hub" in sys.modules:
        import huggingface_hub.constants

        huggingface_hub.constants.HF_HUB_OFFLINE = True


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise CodeinstructError(
            f"the leaderboard needs lm-eval (pip install 'lm-eval[hf]', or codeinstruct's [eval] extra): {e}"
        ) from None
    for name in ("lm-eval", "lm_eval", "lm_eval.evaluator", "lm_eval.models.huggingface"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return lm_eval, HFLM, TaskManager


def _task_manager(TaskManager, tasks: list[LeaderboardTask], include_path: str | Path | None):
    """lm-eval's task index; its ~15k built-in tasks take seconds to index, so only when needed."""
    if include_path is not None:
        include_path = Path(include_path)
        if not include_path.is_dir():
            raise CodeinstructError(f"{include_path}: --include-path must be a directory of lm-eval task YAML files")
        local = TaskManager(include_path=str(include_path), include_defaults=False, verbosity="ERROR")
        if all(t.task in local.all_tasks for t in tasks):
            return local
    manager = TaskManager(include_path=str(include_path) if include_path else None, verbosity="ERROR")
    unknown = [t.task for t in tasks if t.task not in manager.all_tasks]
    if unknown:
        raise CodeinstructError(f"unknown lm-eval task(s): {', '.join(unknown)}")
    return manager


def _dataset_of(manager, task: str, error: BaseException) -> str:
    entry = getattr(manager, "task_index", {}).get(task)
    cfg = getattr(entry, "cfg", None) or {}
    if cfg.get("dataset_path"):
        name = cfg.get("dataset_name")
        return cfg["dataset_path"] + (f" ({name})" if name else "")
    quoted = re.search(r"'([^']+)'", str(error))
    return quoted.group(1) if quoted else "its dataset"


def run_leaderboard(
    model_dir: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    limit: float | None = None,
    batch_size: int = 1,
    device: str = "auto",
    include_path: str | Path | None = None,
    on_task: Callable[[LeaderboardTask, int, int], None] | None = None,
) -> LeaderboardReport:
    """Evaluate a local model on the leaderboard's tasks (or `tasks`); `limit` caps examples per task.

    `on_task(task, index, total)` is called before each task starts.
    """
    _go_offline()
    lm_eval, HFLM, TaskManager = _import_lm_eval()
    from codeinstruct.modeling import load_for_inference

    specs = resolve_tasks(tasks)
    manager = _task_manager(TaskManager, specs, include_path)
    model, tokenizer = load_for_inference(model_dir, device=device)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
    report = LeaderboardReport(model=str(model_dir), limit=limit, lm_eval_version=getattr(lm_eval, "__version__", ""))
    start = time.monotonic()
    for index, spec in enumerate(specs):
        if on_task is not None:
            on_task(spec, index, len(specs))
        try:
            output = lm_eval.simple_evaluate(
                model=lm,
                tasks=[spec.task],
                num_fewshot=spec.num_fewshot,
                limit=limit,
                task_manager=manager,
                log_samples=False,
                bootstrap_iters=0,
                verbosity="ERROR",
            )
        except (ConnectionError, FileNotFoundError) as e:
            raise CodeinstructError(
                f"{spec.label}: dataset {_dataset_of(manager, spec.task, e)} is not available offline "
                f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); nothing is downloaded: put it in the "
                f"local Hugging Face datasets cache, or leave the task out with --tasks"
            ) from None
        results = output["results"][spec.task]
        metric = spec.metric or _first_metric(results, spec.task)
        if metric not in results or not isinstance(results[metric], (int, float)):
            raise CodeinstructError(f"{spec.label}: lm-eval reported no '{metric}' (it has: {', '.join(results)})")
        report.rows.append(
            LeaderboardRow(spec.label, spec.task, spec.num_fewshot, metric, 100.0 * results[metric], spec.card)
        )
    report.seconds = round(time.monotonic() - start, 3)
    return report


def _first_metric(results: dict, task: str) -> str:
    for key, value in results.items():
        if "," in key and "_stderr" not in key and isinstance(value, (int, float)):
            return key
    raise CodeinstructError(f"{task}: lm-eval reported no metric")
