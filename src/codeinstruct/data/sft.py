"""Instruction records -> token ids with response-only labels.

Labels come from the tokenization of the full text (prompt + target), with -100 over the
prompt and the real ids over the target and the appended EOS id. Every example is checked
so that the prompt's own tokens (what inference feeds the model) are exactly the prefix
of that full tokenization.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from codeinstruct.data.records import InstructionRecord
from codeinstruct.data.stats import percentiles  # noqa: F401  (re-exported: the CLI imports it from here)
from codeinstruct.errors import CodeinstructError
from codeinstruct.prompts import format_prompt, format_target
from codeinstruct.tokenizer import encode_texts

IGNORE_INDEX = -100
Overlong = Literal["drop", "truncate"]


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # aligned with input_ids: IGNORE_INDEX over the prompt

    @property
    def n_targets(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class TokenizeReport:
    records: int = 0
    kept: int = 0
    dropped_overlong: int = 0  # did not fit max_length (with overlong=drop, or a prompt that alone fills it)
    truncated: int = 0  # response cut to fit (overlong=truncate); these examples end without EOS
    lengths: list[int] = field(default_factory=list)  # full lengths (prompt + target + EOS) of every record


def tokenize_records(
    records: Sequence[InstructionRecord],
    tokenizer,
    max_length: int,
    overlong: Overlong = "drop",
    source: str = "<data>",
) -> tuple[list[TokenizedExample], TokenizeReport]:
    if overlong not in ("drop", "truncate"):
        raise CodeinstructError(f"overlong must be 'drop' or 'truncate', got {overlong!r}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CodeinstructError("the tokenizer has no EOS token")
    prompts = [format_prompt(r.instruction, r.input) for r in records]
    fulls = [p + format_target(r.response) for p, r in zip(prompts, records)]
    # split_special_tokens: text such as "<|endoftext|>" inside a record is text, not a control token;
    # otherwise a response that mentions it would teach the model to stop mid-answer.
    prompt_ids = encode_texts(tokenizer, prompts)
    full_ids = encode_texts(tokenizer, fulls)

    report = TokenizeReport(records=len(records))
    examples = []
    for i, (p_ids, ids) in enumerate(zip(prompt_ids, full_ids)):
        n_prompt = len(p_ids)
        if ids[:n_prompt] != p_ids or len(ids) == n_prompt:
            raise CodeinstructError(
                f"{source}: record {i + 1}: the tokens of the prompt are not a prefix of the tokens of "
                "prompt + response, so training would not match inference (unsupported tokenizer?)"
            )
        ids = ids + [eos]
        report.lengths.append(len(ids))
        if len(ids) > max_length:
            if overlong == "drop" or n_prompt >= max_length:
                report.dropped_overlong += 1
                continue
            ids = ids[:max_length]
            report.truncated += 1
        labels = [IGNORE_INDEX] * n_prompt + ids[n_prompt:]
        examples.append(TokenizedExample(ids, labels))
    report.kept = len(examples)
    if not examples:
        raise CodeinstructError(f"{source}: no record fits max_length={max_length} tokens")
    return examples, report
