"""Fill-in-the-Middle examples mixed into instruction fine-tuning, so a code model keeps infilling.

A base model pretrained with FIM (data.fim) loses it when it is fine-tuned on instructions alone: nothing
in Alpaca prompts exercises the `<fim_prefix>`/`<fim_suffix>`/`<fim_middle>` layout. `data.fim_mix` adds
FIM examples, cut from a code corpus (read as pretraining reads it) and, optionally, from the code of the
training records' responses, until they are `fraction` of the training tokens (input tokens, what the
packed rows hold). Each is one more example beside the instruction examples: packed with them, isolated
by the block mask, with its own labels:

- `loss: middle` (default): labels on the middle and the EOS after it, as an instruction example has
  labels on its response: at inference the prefix and suffix are given and the model only writes the
  middle and stops. Loss on the context as well would spend most of the gradient on continuing
  pretraining (the context is most of a FIM example's tokens) and let the mix crowd out the
  instruction tokens in the loss;
- `loss: all`: every token, as pretraining trains them.

Everything is drawn from one generator seeded by the recipe's seed: the corpus order, where each chunk is
split, PSM or SPM. Corpus documents are cut at line boundaries into chunks that fit `chunk_tokens`, so a
FIM example is a real piece of a file and never crosses into another one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

from codeinstruct.data.fim import fim_parts
from codeinstruct.data.sft import IGNORE_INDEX, TokenizedExample
from codeinstruct.errors import CodeinstructError
from codeinstruct.prompts import FimTokens
from codeinstruct.tokenizer import encode_texts

# Room a chunk leaves in data.max_length: three control tokens, EOS, and the tokens that splitting
# a chunk into separately tokenized parts can add (at most one per cut).
FIM_OVERHEAD_TOKENS = 8

_FENCE = re.compile(r"^[ \t]*```[^\n`]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)


@dataclass
class FimMixReport:
    """What the mix added, for the log line at start, the run folder's fim_mix.json and the card."""

    examples: int = 0
    tokens: int = 0  # input tokens of the FIM examples
    target_tokens: int = 0
    instruction_examples: int = 0
    instruction_tokens: int = 0
    instruction_target_tokens: int = 0
    from_corpus: int = 0  # examples cut from the corpus
    from_responses: int = 0  # examples from the code of the training responses
    corpus_documents: int = 0  # corpus documents cut into chunks
    response_blocks: int = 0  # code blocks found in the training responses
    passes: int = 1  # > 1: the sources were used up and drawn again at new split points
    dropped_overlong: int = 0  # chunks longer than data.max_length once FIM-transformed
    skipped_lines: int = 0  # corpus lines too long for any chunk
    loss: str = "middle"

    @property
    def fraction(self) -> float:
        """FIM share of the training tokens (input tokens)."""
        return self.tokens / max(self.tokens + self.instruction_tokens, 1)

    @property
    def target_fraction(self) -> float:
        """FIM share of the target tokens (what the loss averages over)."""
        return self.target_tokens / max(self.target_tokens + self.instruction_target_tokens, 1)

    def as_dict(self) -> dict:
        return {**asdict(self), "fraction": round(self.fraction, 4), "target_fraction": round(self.target_fraction, 4)}


def _reads_as_prose(text: str) -> bool:
    """Most non-empty lines are sentences: six words or more, nearly all of them plain words, and none
    of the punctuation code is made of."""

    def sentence(line: str) -> bool:
        words = line.split()
        plain = sum(1 for w in words if w.strip(".,:;!?'\"()`").isalpha())
        return len(words) >= 6 and plain >= 0.8 * len(words) and not _CODE_MARKS.search(line)

    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return sum(map(sentence, lines)) * 2 > len(lines)


_CODE_MARKS = re.compile(r"[;{}=<>\[\]]|\w\(|^\s*(#|//|def |class |return |import |from )")


def code_blocks(response: str) -> list[str]:
    """The code of a response: its fenced blocks; a response without a fence is one block unless it
    reads as prose (GPTeacher's codegen responses are mostly bare code in many languages)."""
    fenced = [m.group(1) for m in _FENCE.finditer(response)]
    if fenced:
        return [b for b in fenced if b.strip()]
    if "```" in response or not response.strip() or _reads_as_prose(response):
        return []
    return [response]


def line_chunks(text: str, tokenizer, max_tokens: int) -> tuple[list[str], int]:
    """Consecutive lines of `text` grouped into chunks of at most `max_tokens` tokens (counted line by
    line, which never undercounts by more than a merge across a line end); and how many lines were
    skipped because one alone is longer than that."""
    lines = text.splitlines(keepends=True)
    if not lines:
        return [], 0
    counts = [len(ids) for ids in encode_texts(tokenizer, lines)]
    chunks: list[str] = []
    current: list[str] = []
    used = skipped = 0
    for line, n in zip(lines, counts):
        if n > max_tokens:
            skipped += 1
            if current:
                chunks.append("".join(current))
            current, used = [], 0
            continue
        if used + n > max_tokens and current:
            chunks.append("".join(current))
            current, used = [], 0
        current.append(line)
        used += n
    if current:
        chunks.append("".join(current))
    return [c for c in chunks if c.strip()], skipped


def fim_example(
    text: str,
    tokenizer,
    rng: random.Random,
    *,
    fim_rate: float = 1.0,
    fim_spm_rate: float = 0.5,
    loss: str = "middle",
    tokens: FimTokens | None = None,
) -> TokenizedExample:
    """One FIM training example of `text`, ending with EOS: labels on middle + EOS (`loss="middle"`;
    a plain, non-FIM draw is all middle) or on every token (`loss="all"`)."""
    if loss not in ("middle", "all"):
        raise CodeinstructError(f"fim_mix loss must be 'middle' or 'all', got {loss!r}")
    context, middle = fim_parts(text, tokenizer, rng, fim_rate, fim_spm_rate, tokens)
    ids = context + middle + [tokenizer.eos_token_id]
    labels = list(ids) if loss == "all" else [IGNORE_INDEX] * len(context) + ids[len(context) :]
    return TokenizedExample(ids, labels)


def _trained_targets(example: TokenizedExample) -> int:
    """Targets the loss sees: every label but the first (no token predicts the first), as data.batches counts."""
    return sum(1 for label in example.labels[1:] if label != IGNORE_INDEX)


def _pool(corpus: Sequence[str], responses: Sequence[str], rng: random.Random) -> list[tuple[str, int]]:
    """The order sources are drawn in: corpus documents and response blocks shuffled together."""
    pool = [("corpus", i) for i in range(len(corpus))] + [("response", i) for i in range(len(responses))]
    rng.shuffle(pool)
    return pool


def mix_fim_examples(
    instruction_examples: Sequence[TokenizedExample],
    tokenizer,
    *,
    corpus: Sequence[str] = (),
    responses: Sequence[str] = (),
    fraction: float = 0.3,
    fim_rate: float = 1.0,
    fim_spm_rate: float = 0.5,
    loss: str = "middle",
    max_length: int = 1024,
    chunk_tokens: int | None = None,
    seed: int = 0,
) -> tuple[list[TokenizedExample], FimMixReport]:
    """The instruction examples followed by FIM examples that make up `fraction` of all input tokens.

    `corpus` holds documents' texts, `responses` the training responses (their code blocks are used).
    Chunks are drawn in a seeded shuffle; when all are used, they are drawn again at new split points
    (counted in `passes`).
    """
    if not 0.0 < fraction < 1.0:
        raise CodeinstructError(f"fim_mix fraction must be between 0 and 1, got {fraction}")
    limit = max_length - FIM_OVERHEAD_TOKENS
    chunk_tokens = limit if chunk_tokens is None else chunk_tokens
    if not 16 <= chunk_tokens <= limit:
        raise CodeinstructError(
            f"data.fim_mix.chunk_tokens={chunk_tokens}: must be between 16 and data.max_length - "
            f"{FIM_OVERHEAD_TOKENS} = {limit}"
        )
    tokens = FimTokens.from_tokenizer(tokenizer)
    blocks = [b for r in responses for b in code_blocks(r)]
    report = FimMixReport(
        instruction_examples=len(instruction_examples),
        instruction_tokens=sum(len(e.input_ids) for e in instruction_examples),
        instruction_target_tokens=sum(map(_trained_targets, instruction_examples)),
        response_blocks=len(blocks),
        loss=loss,
    )
    if not corpus and not blocks:
        raise CodeinstructError(
            "data.fim_mix: nothing to draw FIM examples from (no corpus documents"
            + (", and no code in the training responses)" if responses else ")")
        )
    budget = fraction / (1.0 - fraction) * report.instruction_tokens
    if budget == 0:
        return list(instruction_examples), report
    rng = random.Random(f"fim_mix:{seed}")
    pool = _pool(corpus, blocks, rng)
    chunked: dict[tuple[str, int], list[str]] = {}

    def chunks_of(item: tuple[str, int]) -> list[str]:
        if item not in chunked:
            kind, i = item
            text = corpus[i] if kind == "corpus" else blocks[i]
            chunked[item], skipped = line_chunks(text, tokenizer, chunk_tokens)
            if report.passes == 1:
                report.skipped_lines += skipped
                report.corpus_documents += kind == "corpus"
        return chunked[item]

    def draws() -> Iterator[tuple[str, str]]:
        while True:
            made_any = False
            for item in pool:
                for chunk in chunks_of(item):
                    made_any = True
                    yield item[0], chunk
            if not made_any:
                return
            report.passes += 1

    mixed: list[TokenizedExample] = []
    for kind, chunk in draws():
        if report.tokens >= budget:
            break
        if report.passes > 1 and not mixed:
            break  # a whole pass made nothing that fits
        example = fim_example(
            chunk, tokenizer, rng, fim_rate=fim_rate, fim_spm_rate=fim_spm_rate, loss=loss, tokens=tokens
        )
        if len(example.input_ids) > max_length:
            if report.passes == 1:
                report.dropped_overlong += 1
            continue
        mixed.append(example)
        report.examples += 1
        report.tokens += len(example.input_ids)
        report.target_tokens += _trained_targets(example)
        if kind == "corpus":
            report.from_corpus += 1
        else:
            report.from_responses += 1
    if not mixed:
        raise CodeinstructError(f"data.fim_mix: no FIM example fits data.max_length={max_length}")
    return [*instruction_examples, *mixed], report
