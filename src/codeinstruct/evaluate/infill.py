"""HumanEval infilling (Fill-in-the-Middle): generation, and one call that generates and scores.

The problems are openai/human-eval-infilling's files (single-line, multi-line, random-span and
random-span-light; `task_id, entry_point, prompt, suffix, canonical_solution, test`), which users
bring as a path (.jsonl or .jsonl.gz); `codeinstruct.evaluate.benchmarks` reads them (task
"infill").

Generation. The model is given the FIM prompt training built (`codeinstruct.prompts`): PSM
`<fim_prefix> prompt <fim_suffix> suffix <fim_middle>`, or SPM with `spm=True`, each part tokenized
as text on its own; it writes the middle. Decoding stops at EOS, at any FIM token, and at the
text of INFILL_STOP_WORDS (StarCoder's evaluation in bigcode-evaluation-harness stops at
`<|endoftext|>`, `<|filename|>` and `<file_sep>`; `<filename>` and the FIM tokens' text are added
for servers that return special tokens as text). The middle is the output cut before the first
stop word, nothing else removed. `max_new_tokens` defaults per set (MAX_NEW_TOKENS: 128 for
single-line, whose longest canonical middle is 141 characters; 256 for multi-line and random
span). Samples files are those of `codeinstruct.evaluate.humaneval` with `task: "infill"` in their
config and `spm` per record; `prompt` holds the FIM prompt as one string of control-token text.

Scoring. `codeinstruct eval score` (or `score_samples`) sees the task in the samples' config and
runs `prompt + middle + suffix + "\\n" + test + "\\n" + f"check({entry_point})"` in the sandbox:
outcomes, pass@k, and exact match (the middle equals the canonical middle after `strip()`, as
bigcode-evaluation-harness's FIM tasks compare; the fraction of samples).

The library call for other code (fine-tuning with FIM, issue 15):

    from codeinstruct.evaluate.infill import run_infill
    result = run_infill("runs/NAME/final", "HumanEval-SingleLineInfilling.jsonl.gz", limit=100)
    result.pass_at_1, result.exact_match      # floats in [0, 1]
    result.report                             # the ScoreReport (outcomes per sample, isolation, ...)

`run_infill(model_dir, problems, *, spm=False, n=1, temperature=0.0, limit=None, max_new_tokens=None,
seed=0, out=None, workers=None, timeout_s=3.0, device="auto")`: `problems` is a path or a loaded
`Benchmark`; greedy by default; the samples go to `out` (default: a temporary file, removed) and
`result.samples_file` says where they went.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.benchmarks import INFILL, Benchmark, load_problems
from codeinstruct.evaluate.endpoint import Endpoint
from codeinstruct.evaluate.humaneval import (
    GenerationReport,
    PromptSpec,
    Sampling,
    check_sampling,
    generate_texts,
)
from codeinstruct.evaluate.postprocess import cut_at_stop
from codeinstruct.files import atomic_writer
from codeinstruct.prompts import FIM_MIDDLE, FIM_PAD, FIM_PREFIX, FIM_SUFFIX

if TYPE_CHECKING:
    from codeinstruct.evaluate.scoring import ScoreReport

INFILL_STOP_WORDS = (
    "<|endoftext|>",
    "<|filename|>",
    "<file_sep>",
    "<filename>",
    FIM_PREFIX,
    FIM_MIDDLE,
    FIM_SUFFIX,
    FIM_PAD,
)
# max_new_tokens by the set a task_id names (human-eval-infilling's prefixes); others get DEFAULT
MAX_NEW_TOKENS = {
    "SingleLineInfilling": 128,
    "MultiLineInfilling": 256,
    "RandomSpanInfilling": 256,
    "RandomSpanInfillingLight": 256,
}
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class InfillConfig:
    model: str | None  # a model directory; None with `endpoint`
    benchmark: str | Path | Benchmark  # an infilling problems file (or one loaded)
    spm: bool = False  # suffix-prefix-middle order instead of prefix-suffix-middle
    n: int = 1
    temperature: float = 0.0  # 0: greedy
    top_p: float = 0.95
    max_new_tokens: int | None = None  # None: by set (MAX_NEW_TOKENS)
    seed: int = 0
    limit: int | None = None  # only the first `limit` problems
    device: str = "auto"
    endpoint: Endpoint | None = None


@dataclass(frozen=True)
class InfillResult:
    pass_at_1: float
    exact_match: float
    pass_at_k: dict[str, float]
    problems: int
    samples: int
    samples_file: Path | None  # None when the samples went to a temporary file
    report: "ScoreReport"  # outcomes per sample, isolation, limits, ...


def load_infill(problems: str | Path | Benchmark) -> Benchmark:
    """An infilling benchmark from a path (.jsonl or .jsonl.gz) or as given."""
    if isinstance(problems, Benchmark):
        if problems.task != INFILL:
            raise CodeinstructError(f"{problems.name}: not an infilling benchmark (task {problems.task})")
        return problems
    return load_problems(problems, INFILL)


def default_max_new_tokens(benchmark: Benchmark) -> int:
    sets = {p.task_id.split("/", 1)[0] for p in benchmark.problems}
    return max(MAX_NEW_TOKENS.get(name, DEFAULT_MAX_NEW_TOKENS) for name in sets)


def generate_infill_samples(
    config: InfillConfig, out: str | Path, on_progress: Callable[[int, int], None] | None = None
) -> GenerationReport:
    """Generate `config.n` middles for each problem and write the samples file `out`.

    `on_progress(done, total)` is called as problems finish.
    """
    check_sampling(config.n, config.limit, config.model, config.endpoint)
    benchmark = load_infill(config.benchmark)
    problems = benchmark.problems[: config.limit] if config.limit else benchmark.problems
    max_new_tokens = config.max_new_tokens or default_max_new_tokens(benchmark)
    if max_new_tokens < 1:
        raise CodeinstructError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    specs = [PromptSpec(p.prompt, p.suffix, config.spm) for p in problems]
    sampling = Sampling(config.n, config.temperature, config.top_p, max_new_tokens, config.seed, INFILL_STOP_WORDS)
    outputs, source = generate_texts(
        specs, sampling, model=config.model, endpoint=config.endpoint, device=config.device, on_progress=on_progress
    )
    shared = {
        "task": INFILL,
        "benchmark": benchmark.name,
        "benchmark_sha256": benchmark.sha256,
        **source,
        "fim_order": "spm" if config.spm else "psm",
        "n": config.n,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": max_new_tokens,
        "seed": config.seed,
        "stop_words": list(INFILL_STOP_WORDS),
    }
    written = 0
    with atomic_writer(out) as f:
        for index, (problem, spec, texts) in enumerate(zip(problems, specs, outputs)):
            for j, raw in enumerate(texts):
                record = {
                    "task_id": problem.task_id,
                    "sample": j,
                    "seed": config.seed + index,
                    "spm": config.spm,
                    "prompt": spec.shown,
                    "raw_output": raw,
                    "completion": cut_at_stop(raw, INFILL_STOP_WORDS),
                    "config": shared,
                }
                f.write(json.dumps(record) + "\n")
                written += 1
    return GenerationReport(Path(out), len(problems), written)


def run_infill(
    model_dir: str | Path,
    problems: str | Path | Benchmark,
    *,
    spm: bool = False,
    n: int = 1,
    temperature: float = 0.0,
    limit: int | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    workers: int | None = None,
    timeout_s: float = 3.0,
    device: str = "auto",
    on_progress: Callable[[str, int, int], None] | None = None,
) -> InfillResult:
    """Generate middles with the local model and score them in the sandbox: pass@1, exact match.

    Running the model's code is what this call is for, so it allows it (in the sandbox).
    `on_progress(stage, done, total)` is called with stage "generate" then "score".
    """
    from codeinstruct.evaluate.sandbox import SandboxLimits
    from codeinstruct.evaluate.scoring import score_samples

    benchmark = load_infill(problems)
    config = InfillConfig(
        model=str(model_dir),
        benchmark=benchmark,
        spm=spm,
        n=n,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
        limit=limit,
        device=device,
    )

    def progress(stage: str):
        return None if on_progress is None else (lambda done, total: on_progress(stage, done, total))

    with tempfile.TemporaryDirectory(prefix="codeinstruct-infill-") as tmp:
        path = Path(out) if out is not None else Path(tmp) / "samples.jsonl"
        generated = generate_infill_samples(config, path, on_progress=progress("generate"))
        report = score_samples(
            path,
            allow_code_execution=True,
            benchmark=benchmark,
            limits=SandboxLimits(timeout_s=timeout_s),
            workers=workers,
            on_progress=progress("score"),
        )
    return InfillResult(
        pass_at_1=report.pass_at_k["pass@1"],
        exact_match=report.exact_match or 0.0,
        pass_at_k=report.pass_at_k,
        problems=generated.problems,
        samples=generated.samples,
        samples_file=Path(out) if out is not None else None,
        report=report,
    )
