"""Batches for training: packed sequences with isolated examples, or plain padding.

Packing puts several examples into one row of at most `max_length` tokens (best-fit
decreasing; an example is never split). Position ids restart at 0 for each example, and the
attention mask is block-diagonal causal, so an example never attends to its neighbours:
transformers' GPTBigCode does not infer that isolation from position ids, so the 4-D mask is
built here and passed to the model as is.

Targets are shifted inside each example (`targets[t] = labels[t + 1]`, and the last token of
an example predicts nothing), so no loss ever crosses from one example into the next.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from codeinstruct.data.sft import IGNORE_INDEX, TokenizedExample


def pack_examples(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Best-fit decreasing bin packing of example indices into rows of `max_length` tokens.

    Deterministic: ties are broken by index. Each returned row lists example indices.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (remaining capacity, row index), kept sorted
    for i in order:
        n = lengths[i]
        if n > max_length:
            raise ValueError(f"example {i} has {n} tokens > max_length {max_length}")
        slot = bisect.bisect_left(free, (n, -1))
        if slot < len(free):
            remaining, row = free.pop(slot)
            rows[row].append(i)
            bisect.insort(free, (remaining - n, row))
        else:
            rows.append([i])
            bisect.insort(free, (max_length - n, len(rows) - 1))
    return rows


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, T] next-token ids, IGNORE_INDEX where no loss
    position_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, 1, T, T] bool (packed) or [B, T] (padded)
    n_targets: int

    def to(self, device) -> "Batch":
        return Batch(
            self.input_ids.to(device),
            self.targets.to(device),
            self.position_ids.to(device),
            self.attention_mask.to(device),
            self.n_targets,
        )


def _shifted_targets(example: TokenizedExample) -> list[int]:
    return example.labels[1:] + [IGNORE_INDEX]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def collate_packed(rows: Sequence[Sequence[TokenizedExample]], pad_id: int, pad_to_multiple: int = 8) -> Batch:
    """Rows of examples -> one batch with a block-diagonal causal mask per row."""
    width = _round_up(max(sum(len(e.input_ids) for e in row) for row in rows), pad_to_multiple)
    b = len(rows)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    targets = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((b, width), dtype=torch.long)
    # Padding positions get a segment of their own (negative ids) so each attends only to itself:
    # a fully masked row would make sdpa return NaN.
    segment = -torch.arange(1, width + 1).repeat(b, 1)
    for r, row in enumerate(rows):
        start = 0
        for k, example in enumerate(row):
            n = len(example.input_ids)
            input_ids[r, start : start + n] = torch.tensor(example.input_ids)
            targets[r, start : start + n] = torch.tensor(_shifted_targets(example))
            position_ids[r, start : start + n] = torch.arange(n)
            segment[r, start : start + n] = k
            start += n
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (segment[:, :, None] == segment[:, None, :]) & causal
    n_targets = int((targets != IGNORE_INDEX).sum())
    return Batch(input_ids, targets, position_ids, mask[:, None], n_targets)


def collate_padded(examples: Sequence[TokenizedExample], pad_id: int, pad_to_multiple: int = 8) -> Batch:
    """One example per row, right-padded; the model builds its usual causal mask from the 2-D mask."""
    width = _round_up(max(len(e.input_ids) for e in examples), pad_to_multiple)
    b = len(examples)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    targets = torch.full((b, width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((b, width), dtype=torch.long)
    for r, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[r, :n] = torch.tensor(example.input_ids)
        targets[r, :n] = torch.tensor(_shifted_targets(example))
        attention_mask[r, :n] = 1
    position_ids = torch.arange(width).repeat(b, 1)
    n_targets = int((targets != IGNORE_INDEX).sum())
    return Batch(input_ids, targets, position_ids, attention_mask, n_targets)
