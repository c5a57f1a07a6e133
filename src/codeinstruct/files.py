"""Files the package reads and writes: atomic writes and JSONL reading, with one error format.

Writes go to a temporary file beside the target and become the target with one rename, so a
reader (or a crash) sees the old file or the whole new one, never a part, and nothing
half-written is left behind. Errors name the file, the line and the reason in one line:
`data.jsonl: line 7: invalid JSON (Expecting value)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from codeinstruct.errors import CodeinstructError


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing ("w" text, "wb" bytes); on a clean exit it
    replaces `path` in one rename, on an error it is removed and `path` is untouched."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise CodeinstructError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make results unreadable to others
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_writer(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    with atomic_writer(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return Path(path)


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> Path:
    with atomic_writer(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def read_error(path: Path, error: OSError) -> CodeinstructError:
    """The one-line error for a file that cannot be read."""
    if isinstance(error, FileNotFoundError):
        return CodeinstructError(f"{path}: no such file")
    if isinstance(error, IsADirectoryError):
        return CodeinstructError(f"{path}: is a directory, not a file")
    return CodeinstructError(f"{path}: cannot read ({error.strerror or error})")


def read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as e:
        raise read_error(path, e) from None


def read_text(path: str | Path) -> str:
    """A UTF-8 text file, or a one-line error naming the file (and the line of a bad byte)."""
    path = Path(path)
    raw = read_bytes(path)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise CodeinstructError(f"{path}: line {line}: not valid UTF-8") from None


def iter_jsonl(
    path: str | Path, lines: Iterable[bytes | str] | None = None, objects_only: bool = True
) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of a JSONL file, read lazily.

    `lines` reads from an already open source instead of `path` (which then only names it in
    errors). Bad UTF-8, bad JSON, and (with `objects_only`) a value that is not a JSON object are
    errors naming the file and the 1-based line.
    """
    path = Path(path)
    if lines is None:
        try:
            with open(path, "rb") as f:
                yield from iter_jsonl(path, f, objects_only)
            return
        except OSError as e:
            raise read_error(path, e) from None
    for line_no, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CodeinstructError(
                    f"{path}: line {line_no}: not valid UTF-8 (byte {e.start} of the line)"
                ) from None
        else:
            line = raw
        if line_no == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise CodeinstructError(f"{path}: line {line_no}: invalid JSON ({e.msg})") from None
        if objects_only and not isinstance(value, dict):
            raise CodeinstructError(f"{path}: line {line_no}: expected a JSON object, not {type(value).__name__}")
        yield line_no, value
