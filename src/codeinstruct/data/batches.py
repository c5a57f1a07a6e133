"""Which rows each optimizer step trains on, and how they are dealt out to micro-batches and ranks.

A row is one line of a batch: several examples packed together (see data.packing) or one example,
padded. This module works on row and example *indices*; data.packing turns the chosen examples into
tensors. An epoch shuffles its rows with a permutation fixed by (seed, epoch), cuts them into
micro-batches of `batch_size` rows and groups `grad_accum` micro-batches into one optimizer step, so
a run resumed at (epoch, step) sees exactly the rows a run that never stopped would have seen.

A step's rows are dealt to ranks round-robin, so the rows of a step and therefore the update are
the same whatever the world size; every rank runs the same number of micro-batches (a rank with
fewer rows runs the last one again with zero weight) because FSDP's collectives must match.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from codeinstruct.data.packing import Batch, collate_packed, collate_padded, pack_examples
from codeinstruct.data.sft import IGNORE_INDEX, TokenizedExample


def make_rows(examples: list[TokenizedExample], max_length: int, packing: bool) -> list[list[int]]:
    """Example indices of each row: packed best-fit into `max_length` tokens, or one example a row."""
    if packing:
        return pack_examples([len(e.input_ids) for e in examples], max_length)
    return [[i] for i in range(len(examples))]


def row_target_counts(examples: list[TokenizedExample], rows: list[list[int]]) -> list[int]:
    """Target tokens of each row (what a Batch of it would count), without collating."""
    per_example = [sum(1 for label in e.labels[1:] if label != IGNORE_INDEX) for e in examples]
    return [sum(per_example[i] for i in row) for row in rows]


def collate_rows(
    examples: list[TokenizedExample], rows: list[list[int]], row_ids: list[int], packing: bool, pad_id: int
) -> Batch:
    """The rows `row_ids` as one batch."""
    if packing:
        return collate_packed([[examples[i] for i in rows[r]] for r in row_ids], pad_id)
    return collate_padded([examples[rows[r][0]] for r in row_ids], pad_id)


@dataclass(frozen=True)
class EpochRows:
    """One epoch's examples cut into rows, with each row's target count (a step's loss divides by their sum)."""

    examples: list[TokenizedExample]
    rows: list[list[int]]
    row_targets: list[int]
    packing: bool

    @classmethod
    def build(cls, examples: list[TokenizedExample], max_length: int, packing: bool) -> EpochRows:
        rows = make_rows(examples, max_length, packing)
        return cls(examples, rows, row_target_counts(examples, rows), packing)

    def n_targets(self, row_ids: list[int]) -> int:
        return sum(self.row_targets[r] for r in row_ids)

    def collate(self, row_ids: list[int], pad_id: int) -> Batch:
        return collate_rows(self.examples, self.rows, row_ids, self.packing, pad_id)


def epoch_micro_batches(n_rows: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Row indices of each micro-batch of one epoch: a shuffle fixed by (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_rows, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, n_rows, batch_size)]


def epoch_steps(n_rows: int, batch_size: int, grad_accum: int, seed: int, epoch: int) -> list[list[int]]:
    """Row indices of each optimizer step of one epoch: its `grad_accum` micro-batches' rows, in order."""
    micro = epoch_micro_batches(n_rows, batch_size, seed, epoch)
    return [[r for ids in micro[i : i + grad_accum] for r in ids] for i in range(0, len(micro), grad_accum)]


def steps_per_epoch(n_rows: int, batch_size: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(n_rows / batch_size) / grad_accum)


def rank_rows(step_rows: list[int], rank: int, world: int) -> list[int]:
    """This rank's rows of one optimizer step."""
    return step_rows[rank::world]


def rank_micro_batches(step_rows: list[int], batch_size: int, rank: int, world: int) -> list[tuple[list[int], float]]:
    """(row ids, weight) of each micro-batch this rank runs in one step; weight 0 marks a filler."""
    mine = rank_rows(step_rows, rank, world)
    most = max(len(rank_rows(step_rows, r, world)) for r in range(world))
    n_micro = -(-most // batch_size)
    batches = [(mine[i : i + batch_size], 1.0) for i in range(0, len(mine), batch_size)]
    filler = (mine or step_rows)[-1:]
    batches += [(filler, 0.0)] * (n_micro - len(batches))
    return batches
