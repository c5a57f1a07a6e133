"""Reading and validating instruction data before any training starts.

Accepted: GPTeacher JSON (`instruction`, `input`, `response`), Alpaca JSON (`instruction`,
`input`, `output`), and JSONL with one such object per line. `input` may be absent (taken as
empty). Other keys are ignored. Every problem is reported as one line naming the file, the
record (JSON list, 1-based) or line (JSONL) and what is wrong.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from codeinstruct.errors import CodeinstructError


@dataclass(frozen=True)
class InstructionRecord:
    instruction: str
    input: str
    response: str

    @property
    def has_input(self) -> bool:
        return bool(self.input.strip())


def _validate(obj: object, where: str) -> InstructionRecord:
    if not isinstance(obj, dict):
        raise CodeinstructError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "response" in obj and "output" in obj:
        raise CodeinstructError(f"{where}: has both 'response' and 'output'; keep one")
    response_key = "output" if "output" in obj else "response"
    values = {}
    for key, required in (("instruction", True), ("input", False), (response_key, True)):
        if key not in obj:
            if required:
                expected = "'response' (GPTeacher) or 'output' (Alpaca)" if key == response_key else repr(key)
                raise CodeinstructError(f"{where}: missing field {expected}")
            values[key] = ""
            continue
        value = obj[key]
        if value is None and not required:
            value = ""
        if not isinstance(value, str):
            raise CodeinstructError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
        if required and not value.strip():
            raise CodeinstructError(f"{where}: field '{key}' is empty")
        values[key] = value
    return InstructionRecord(values["instruction"], values["input"], values[response_key])


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def load_records(path: str | Path) -> list[InstructionRecord]:
    """All records of a JSON or JSONL file, or CodeinstructError on the first problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CodeinstructError(f"{path}: no such file") from None
    except OSError as e:
        raise CodeinstructError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise CodeinstructError(f"{path}: line {line}: not valid UTF-8 (byte offset {e.start})") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    stripped = text.lstrip()
    if not stripped:
        raise CodeinstructError(f"{path}: file is empty")

    if stripped[0] == "[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CodeinstructError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        records = [_validate(obj, f"{path}: record {i + 1}") for i, obj in enumerate(data)]
    else:
        # JSONL, or a single JSON object per line; a lone object file is a mistake worth naming.
        records = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                hint = " (a JSON file must hold a list of records)" if lineno == 1 and stripped[0] == "{" and len(records) == 0 and "\n" in stripped.strip() else ""
                raise CodeinstructError(f"{path}: line {lineno}: invalid JSON ({e.msg}){hint}") from None
            records.append(_validate(obj, f"{path}: line {lineno}"))
    if not records:
        raise CodeinstructError(f"{path}: no records")
    return records


def records_from_dicts(items: list[dict], source: str = "<memory>") -> list[InstructionRecord]:
    """Validate in-memory records (e.g. the embedded demo data) with the same rules as files."""
    return [_validate(obj, f"{source}: record {i + 1}") for i, obj in enumerate(items)]


BUILTIN_STDLIB = "builtin:stdlib"


def load_instruction_data(spec: str) -> list[InstructionRecord]:
    """A data file, or `builtin:stdlib`: records derived from the local Python standard library."""
    if spec == BUILTIN_STDLIB:
        from codeinstruct.data.builtin import stdlib_instruction_records

        return records_from_dicts(stdlib_instruction_records(), BUILTIN_STDLIB)
    if spec.startswith("builtin:"):
        raise CodeinstructError(f"unknown built-in data '{spec}' (known: {BUILTIN_STDLIB})")
    return load_records(spec)


def split_held_out(records: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, held_out) split; held_out is empty for fraction 0."""
    if fraction <= 0:
        return list(records), []
    n_held = max(1, round(fraction * len(records)))
    if n_held >= len(records):
        raise CodeinstructError(f"data.held_out={fraction} leaves no training records")
    held = set(random.Random(seed).sample(range(len(records)), n_held))
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]
