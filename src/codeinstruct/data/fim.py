"""Fill-in-the-Middle, as StarCoder's Megatron pretraining applied it.

Per document, with probability `fim_rate`, the text is split at two random character positions
into prefix / middle / suffix, each part is tokenized on its own, and the parts are reordered so
the model learns to write the middle after seeing both sides:

    PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
    SPM: <fim_prefix><fim_suffix> suffix <fim_middle> prefix middle      (StarCoder's SPM variant)

SPM is chosen with probability `fim_spm_rate`. Inference builds its prompt with the same function
(`codeinstruct.prompts.fim_prompt_ids`), so the tokens it feeds are exactly those training put before the middle.
"""

from __future__ import annotations

import random

from codeinstruct.errors import CodeinstructError
from codeinstruct.prompts import FimTokens, encode_text, fim_prompt_ids


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    """Prefix, middle, suffix at two uniformly random character positions (either may coincide)."""
    a, b = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return text[:a], text[a:b], text[b:]


def fim_parts(
    text: str,
    tokenizer,
    rng: random.Random,
    fim_rate: float = 0.5,
    fim_spm_rate: float = 0.5,
    tokens: FimTokens | None = None,
) -> tuple[list[int], list[int]]:
    """(context ids, middle ids) of a document: the middle is what the model writes after <fim_middle>.

    A plain document (probability 1 - fim_rate) has no context: all of it is the "middle".
    """
    if not (0.0 <= fim_rate <= 1.0 and 0.0 <= fim_spm_rate <= 1.0):
        raise CodeinstructError(f"fim_rate and fim_spm_rate must be in [0, 1], got {fim_rate}, {fim_spm_rate}")
    if rng.random() >= fim_rate:
        return [], encode_text(tokenizer, text)
    prefix, middle, suffix = fim_split(text, rng)
    spm = rng.random() < fim_spm_rate
    return fim_prompt_ids(tokenizer, prefix, suffix, spm, tokens), encode_text(tokenizer, middle)


def apply_fim(
    text: str,
    tokenizer,
    rng: random.Random,
    fim_rate: float = 0.5,
    fim_spm_rate: float = 0.5,
    tokens: FimTokens | None = None,
) -> list[int]:
    """A document's training tokens: plain with probability 1 - fim_rate, else PSM or SPM."""
    context, middle = fim_parts(text, tokenizer, rng, fim_rate, fim_spm_rate, tokens)
    return context + middle
