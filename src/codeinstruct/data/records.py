"""Reading and validating instruction data before any training starts.

Accepted: GPTeacher JSON (`instruction`, `input`, `response`), Alpaca JSON (`instruction`,
`input`, `output`), and JSONL with one such object per line. `input` may be absent (taken as
empty). Other keys are ignored. Every problem is reported as one line naming the file, the
record (JSON list, 1-based) or line (JSONL) and what is wrong.
"""

from __future__ import annotations

import codecs
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from codeinstruct.data.builtin import stdlib_instruction_records
from codeinstruct.errors import CodeinstructError
from codeinstruct.files import iter_jsonl, read_bytes


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


def load_records(path: str | Path) -> list[InstructionRecord]:
    """All records of a JSON or JSONL file, or CodeinstructError on the first problem."""
    path = Path(path)
    raw = read_bytes(path)
    # JSON whitespace is ASCII, so the first byte after a BOM and blanks tells a list from JSONL.
    head = raw.removeprefix(codecs.BOM_UTF8).lstrip()
    if not head:
        raise CodeinstructError(f"{path}: file is empty")

    if head.startswith(b"["):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise CodeinstructError(f"{path}: line {line}: not valid UTF-8 (byte offset {e.start})") from None
        try:
            data = json.loads(text.removeprefix("\ufeff"))
        except json.JSONDecodeError as e:
            raise CodeinstructError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from None
        records = [_validate(obj, f"{path}: record {i + 1}") for i, obj in enumerate(data)]
    else:
        records = _jsonl_records(path, raw, lone_object=head.startswith(b"{") and b"\n" in head.rstrip())
    if not records:
        raise CodeinstructError(f"{path}: no records")
    return records


def _jsonl_records(path: Path, raw: bytes, lone_object: bool) -> list[InstructionRecord]:
    """The records of a JSONL file's bytes; `lone_object`: it may be one pretty-printed JSON object."""
    records = []
    try:
        for line_no, obj in iter_jsonl(path, io.BytesIO(raw), objects_only=False):
            records.append(_validate(obj, f"{path}: line {line_no}"))
    except CodeinstructError as e:
        # A lone object spread over lines fails on its first line; say what a JSON file must hold.
        if lone_object and f"{path}: line 1: invalid JSON" in str(e):
            raise CodeinstructError(f"{e} (a JSON file must hold a list of records)") from None
        raise
    return records


def records_from_dicts(items: list[dict], source: str = "<memory>") -> list[InstructionRecord]:
    """Validate in-memory records (e.g. the embedded demo data) with the same rules as files."""
    return [_validate(obj, f"{source}: record {i + 1}") for i, obj in enumerate(items)]


BUILTIN_STDLIB = "builtin:stdlib"


def load_instruction_data(spec: str) -> list[InstructionRecord]:
    """A data file, or `builtin:stdlib`: records derived from the local Python standard library."""
    if spec == BUILTIN_STDLIB:
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
