"""Causal-LM pretraining examples: documents (FIM-transformed or plain) joined by EOS, cut into blocks.

Document order and FIM are drawn afresh each epoch (a generator seeded by seed and epoch), as Megatron drew it per
sample, so a document is seen split at many different places over a run. The number of blocks is
fixed by epoch 0, so every epoch has the same number of steps and the schedule is known upfront.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from codeinstruct.data.fim import apply_fim
from codeinstruct.data.sft import TokenizedExample
from codeinstruct.prompts import FimTokens


def pretraining_blocks(
    documents: Sequence[str],
    tokenizer,
    block_size: int,
    *,
    fim_rate: float = 0.5,
    fim_spm_rate: float = 0.5,
    seed: int = 0,
    epoch: int = 0,
    n_blocks: int | None = None,
) -> list[TokenizedExample]:
    """Blocks of `block_size` tokens (the last may be shorter); every token is a target."""
    rng = random.Random(f"fim:{seed}:{epoch}")
    tokens = FimTokens.from_tokenizer(tokenizer) if fim_rate > 0 else None
    eos = tokenizer.eos_token_id
    order = list(range(len(documents)))
    rng.shuffle(order)  # a fixed order would let the model lean on which document comes next
    stream: list[int] = []
    for i in order:
        stream += apply_fim(documents[i], tokenizer, rng, fim_rate, fim_spm_rate, tokens)
        stream.append(eos)
    if n_blocks is not None:
        stream = stream[: n_blocks * block_size]
    blocks = [stream[i : i + block_size] for i in range(0, len(stream), block_size)]
    blocks = [b for b in blocks if len(b) >= 2]  # a 1-token block predicts nothing
    return [TokenizedExample(b, list(b)) for b in blocks]
