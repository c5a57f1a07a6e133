"""Does an instruction-tuned model still fill in the middle? FIM retention, measured on code it never saw.

- `line_infilling_tasks`: one missing line per held-out file, chosen by a generator seeded by the seed
  and the file's name, with a few lines of context on each side. A line whose three-line window occurs
  in any text the models trained on (`seen`) is never chosen, so a score is infilling, not recall.
- `fim_exact_match`: the model fills each gap greedily (PSM, as `complete` and the server's `suffix` do);
  a task counts when the first line it writes equals the missing line (indentation included, trailing
  whitespace ignored): single-line infilling's exact match.
- `fim_loss`: the mean loss of the missing line (+ EOS) after its FIM prompt, which moves long before a
  small model gets whole lines right;
- `instruction_loss`: the other side of the trade: mean loss per response token (response + EOS, the
  trained targets) on held-out instruction records.
- `measure_retention` scores several models on the same tasks and records; `write_retention` saves
  the result as RUN/fim_retention.json, which the model card (codeinstruct.card) shows.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from codeinstruct.card import FIM_RETENTION_FILE
from codeinstruct.data.records import InstructionRecord
from codeinstruct.errors import CodeinstructError
from codeinstruct.files import write_json
from codeinstruct.prompts import FimTokens

CONTEXT_BEFORE = 12  # lines of prefix
CONTEXT_AFTER = 6  # lines of suffix
MIN_LINE_CHARS = 6  # a missing line holds at least this much code (so `else:` and `)` are not tasks)
MAX_LINE_CHARS = 80
LINE_TOKENS = 40  # generation budget for one line


@dataclass(frozen=True)
class FimTask:
    source: str  # the held-out file's name
    line: int  # 1-based number of the missing line
    prefix: str
    middle: str  # the missing line, with its newline
    suffix: str


@dataclass(frozen=True)
class FimScore:
    correct: int
    tasks: int
    outputs: tuple[str, ...]  # the first line each task got, in task order

    @property
    def exact_match(self) -> float:
        return self.correct / self.tasks if self.tasks else 0.0


def _is_candidate(line: str) -> bool:
    code = line.strip()
    return (
        MIN_LINE_CHARS <= len(code) <= MAX_LINE_CHARS
        and not code.startswith(("#", '"""', "'''"))
        and code.isascii()
        and "\t" not in line
    )


def _windows(lines: list[str]) -> list[str]:
    """Every run of three consecutive lines (the last line's newline dropped, so a file's end matches too)."""
    return ["".join(lines[i : i + 3]).rstrip("\n") for i in range(len(lines) - 2)]


def line_infilling_tasks(
    documents: Sequence[tuple[str, str]],
    count: int,
    seed: int = 0,
    seen: Sequence[str] = (),
    before: int = CONTEXT_BEFORE,
    after: int = CONTEXT_AFTER,
) -> list[FimTask]:
    """Up to `count` tasks, one missing line per document of (name, text), in the documents' order.

    A line is a candidate when it holds 6-80 characters of code that is not a comment, has a line on
    each side, and its window (the line before, it, the line after) is three consecutive lines of none
    of `seen`.
    """
    if count < 1:
        raise CodeinstructError(f"count must be at least 1, got {count}")
    seen_windows = {window for text in seen for window in _windows(text.splitlines(keepends=True))}
    tasks: list[FimTask] = []
    for name, text in documents:
        lines = text.splitlines(keepends=True)
        if not lines or not lines[-1].endswith("\n"):
            lines = (text + "\n").splitlines(keepends=True)
        candidates = [
            i
            for i in range(1, len(lines) - 1)
            if _is_candidate(lines[i])
            and lines[i - 1].strip()
            and "".join(lines[i - 1 : i + 2]).rstrip("\n") not in seen_windows
        ]
        if not candidates:
            continue
        i = random.Random(f"fim-line:{seed}:{name}").choice(candidates)
        tasks.append(
            FimTask(
                name, i + 1, "".join(lines[max(0, i - before) : i]), lines[i], "".join(lines[i + 1 : i + 1 + after])
            )
        )
        if len(tasks) == count:
            break
    if not tasks:
        raise CodeinstructError("no held-out line to fill: every candidate line was seen in training")
    return tasks


def fim_exact_match(engine, tasks: Sequence[FimTask], max_new_tokens: int = LINE_TOKENS) -> FimScore:
    """Greedy PSM infilling of every task with an `infer.engine.Engine`, batched; exact match of the first line."""
    from codeinstruct.infer.generate import fim_request
    from codeinstruct.infer.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=max_new_tokens, stop=("\n",))
    handles = []
    for task in tasks:
        ids, request_params = fim_request(engine, task.prefix, task.suffix, params=params)
        handles.append(engine.submit(ids, request_params))
    outputs = tuple(h.result().text.split("\n", 1)[0].rstrip() for h in handles)
    correct = sum(out == task.middle.rstrip() for out, task in zip(outputs, tasks))
    return FimScore(correct, len(tasks), outputs)


def _mean_loss(model, tokenizer, examples, batch_size: int = 8) -> tuple[float, int]:
    """Mean next-token loss per target token of tokenized examples, one padded batch at a time."""
    import torch

    from codeinstruct.data.packing import collate_padded
    from codeinstruct.train.step import batch_loss_sum

    total, targets = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = collate_padded(examples[start : start + batch_size], tokenizer.eos_token_id).to(device)
            total += float(batch_loss_sum(model, batch, None))
            targets += batch.n_targets
    return total / targets, targets


def fim_loss(model, tokenizer, tasks: Sequence[FimTask]) -> float:
    """Mean loss per token of the missing line + EOS after its PSM prompt: how likely the model finds the
    right middle, a finer measure than exact match where a small model rarely gets a whole line right."""
    from codeinstruct.data.sft import IGNORE_INDEX, TokenizedExample
    from codeinstruct.prompts import encode_text, fim_prompt_ids

    tokens = FimTokens.from_tokenizer(tokenizer)
    examples = []
    for task in tasks:
        prompt = fim_prompt_ids(tokenizer, task.prefix, task.suffix, tokens=tokens)
        middle = encode_text(tokenizer, task.middle) + [tokenizer.eos_token_id]
        examples.append(TokenizedExample(prompt + middle, [IGNORE_INDEX] * len(prompt) + middle))
    return _mean_loss(model, tokenizer, examples)[0]


def instruction_loss(model, tokenizer, records: Sequence[InstructionRecord], max_length: int, batch_size: int = 8):
    """Mean next-token loss per target token (response + EOS) of `records`: (loss, target tokens)."""
    from codeinstruct.data.sft import tokenize_records

    examples, _ = tokenize_records(records, tokenizer, max_length, "truncate", source="held-out records")
    return _mean_loss(model, tokenizer, examples, batch_size)


@dataclass(frozen=True)
class RetentionRow:
    name: str
    model: str
    fim_exact_match: float
    fim_correct: int
    fim_tasks: int
    fim_loss: float  # mean loss per token of the missing lines (+ EOS)
    instruction_loss: float | None  # None when no held-out records were given


def measure_retention(
    models: dict[str, str | Path],
    tasks: Sequence[FimTask],
    records: Sequence[InstructionRecord] = (),
    max_length: int = 1024,
    device: str = "cpu",
) -> list[RetentionRow]:
    """FIM exact-match on `tasks` and (with `records`) held-out instruction loss of each model {name: dir}."""
    from codeinstruct.infer.engine import Engine
    from codeinstruct.modeling import load_for_inference

    rows = []
    for name, path in models.items():
        model, tokenizer = load_for_inference(path, device=device)
        score = fim_exact_match(Engine(model, tokenizer, max_batch_size=16), tasks)
        loss = instruction_loss(model, tokenizer, records, max_length)[0] if records else None
        middle_loss = fim_loss(model, tokenizer, tasks)
        rows.append(RetentionRow(name, str(path), score.exact_match, score.correct, score.tasks, middle_loss, loss))
    return rows


def write_retention(run_dir: str | Path, rows: Sequence[RetentionRow], description: str, **extra) -> Path:
    """RUN/fim_retention.json, shown by the run's model card."""
    return write_json(
        Path(run_dir) / FIM_RETENTION_FILE,
        {"description": description, "models": [asdict(r) for r in rows], **extra},
    )
