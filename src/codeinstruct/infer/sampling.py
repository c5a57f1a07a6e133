"""Sampling parameters and next-token choice, one sequence at a time.

The order of the logits transforms is transformers': repetition penalty, temperature, top-k,
top-p. Each sequence draws from its own `torch.Generator`, so what it samples never depends on
which other requests share the batch.
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
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # free for callers (e.g. the server)

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
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
        if problems:
            raise CodeinstructError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def plain_greedy(self) -> bool:
        """Argmax of the raw logits: a whole batch can be decided in one op."""
        return self.greedy and self.repetition_penalty == 1.0


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


def choose_token(
    logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor, generator: torch.Generator | None
) -> int:
    """The next token of one sequence from its logits row [V]."""
    logits = logits.float()
    logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.greedy:
        return int(torch.argmax(logits))
    logits = filter_top_k_top_p(logits / params.temperature, params.top_k, params.top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))
