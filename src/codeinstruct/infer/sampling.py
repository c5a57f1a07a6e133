"""Sampling parameters and next-token choice, one sequence at a time.

The order of the logits transforms: logit bias, repetition penalty (transformers'), presence and
frequency penalties (OpenAI's, over the counts of the tokens generated so far), temperature, top-k,
top-p. Each sequence draws from its own `torch.Generator`, so what it samples never depends on
which other requests share the batch. Log-probabilities reported to callers (`token_logprobs`,
`prompt_logprobs`) are the model's own distribution, before any of these transforms (as vLLM's).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from codeinstruct.errors import CodeinstructError


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # 1: off; > 1 discourages tokens already in prompt or output
    seed: int = 0
    n: int = 1  # samples per prompt, sharing one prefill
    first_sample: int = 0  # sample i of the request is sample first_sample + i of (seed): for splitting large n
    stop: tuple[str, ...] = ()  # cut before the first occurrence; never emitted
    stop_token_ids: tuple[int, ...] = ()  # besides EOS
    ignore_eos: bool = False  # benchmarks: always produce max_new_tokens
    skip_special_tokens: bool = True
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token generated at least once
    frequency_penalty: float = 0.0  # OpenAI's: subtracted per time a token has been generated
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit), bias in [-100, 100]
    logprobs: int | None = None  # record each generated token's log-probability and the top-N alternatives
    adapter: str | None = None  # a LoRA adapter loaded into the engine (infer/lora.py); None: the base model
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # free for callers (e.g. the server)

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        bias = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b)) for t, b in bias))
        problems = []
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.n < 1:
            problems.append(f"n must be at least 1, got {self.n}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                problems.append(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if any(not -100.0 <= b <= 100.0 for _, b in self.logit_bias):
            problems.append("logit_bias values must be in [-100, 100]")
        if self.logprobs is not None and self.logprobs < 0:
            problems.append(f"logprobs must be >= 0, got {self.logprobs}")
        if problems:
            raise CodeinstructError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits: a whole batch can be decided in one op."""
        return self.greedy and self.repetition_penalty == 1.0 and not self.reshapes_logits

    @property
    def reshapes_logits(self) -> bool:
        """Whether penalties over generated tokens or a logit bias change the scores."""
        return bool(self.presence_penalty or self.frequency_penalty or self.logit_bias)


def sequence_generator(seed: int, index: int, device) -> torch.Generator:
    """The random stream of sample `index` of a request: fixed by (seed, index) alone."""
    g = torch.Generator(device=device)
    g.manual_seed((int(seed) * 1_000_003 + index) % (2**63))
    return g


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty as transformers applies it: divide positive scores, multiply negative ones."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    scores = logits.gather(-1, seen)
    scores = torch.where(scores < 0, scores * penalty, scores / penalty)
    return logits.scatter(-1, seen, scores)


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Logits with everything outside the top-k and the top-p nucleus set to -inf (1-D)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens ranked above it already hold top_p; the first always stays
        drop = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop[0] = False
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def apply_logit_bias(logits: torch.Tensor, bias: tuple[tuple[int, float], ...]) -> torch.Tensor:
    """OpenAI's logit_bias: each (token id, bias) added to that token's score (ids past the row are ignored)."""
    if not bias:
        return logits
    ids = [t for t, _ in bias if 0 <= t < logits.shape[-1]]
    values = [b for t, b in bias if 0 <= t < logits.shape[-1]]
    if not ids:
        return logits
    return logits.index_add(-1, torch.tensor(ids, device=logits.device), torch.tensor(values, device=logits.device))


def apply_presence_frequency(
    logits: torch.Tensor, generated: list[int], presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI's penalties: score[j] -= count[j] * frequency + (count[j] > 0) * presence, counts over `generated`."""
    if not generated or not (presence or frequency):
        return logits
    counts = torch.bincount(torch.tensor(generated, device=logits.device), minlength=logits.shape[-1])
    counts = counts[: logits.shape[-1]].to(logits.dtype)
    return logits - counts * frequency - (counts > 0).to(logits.dtype) * presence


def choose_token(
    logits: torch.Tensor,
    params: SamplingParams,
    seen: torch.Tensor,
    generator: torch.Generator | None,
    generated: list[int] = (),
) -> int:
    """The next token of one sequence from its logits row [V]; `generated`: its tokens so far (for the penalties)."""
    logits = logits.float()
    logits = apply_logit_bias(logits, params.logit_bias)
    logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    logits = apply_presence_frequency(logits, list(generated), params.presence_penalty, params.frequency_penalty)
    if params.greedy:
        return int(torch.argmax(logits))
    logits = filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass(frozen=True)
class TokenLogprob:
    """One position's log-probability under the model, and the `top` most likely tokens there (id, logprob)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprob(logits: torch.Tensor, token: int, top_n: int) -> TokenLogprob:
    """`token`'s log-probability in the distribution of a logits row [V], with the top `top_n` alternatives."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    top: tuple[tuple[int, float], ...] = ()
    if top_n:
        values, ids = torch.topk(logprobs, min(top_n, logprobs.shape[-1]))
        top = tuple(zip(ids.tolist(), values.tolist()))
    return TokenLogprob(int(token), float(logprobs[token]), top)


def prompt_logprobs(logits: torch.Tensor, ids: list[int], top_n: int) -> list[TokenLogprob | None]:
    """Each prompt token's log-probability given the tokens before it, from the logits at every position [L, V];
    the first token has none (None)."""
    logprobs = torch.log_softmax(logits[: len(ids) - 1].float(), dim=-1)
    target = torch.tensor(ids[1:], device=logprobs.device)
    chosen = logprobs.gather(-1, target[:, None])[:, 0].tolist()
    tops: list[tuple] = [()] * len(chosen)
    if top_n and chosen:
        values, top_ids = torch.topk(logprobs, min(top_n, logprobs.shape[-1]), dim=-1)
        tops = [tuple(zip(i, v)) for i, v in zip(top_ids.tolist(), values.tolist())]
    return [None] + [TokenLogprob(t, lp, top) for t, lp, top in zip(ids[1:], chosen, tops)]
