"""Embedded, offline default data built from the local Python standard library.

The demo must run with no downloads, so both the tokenizer corpus and the
instruction records are derived from the ``.py`` files of the running
interpreter's stdlib. Everything here is deterministic: files are visited in
sorted order and every "random" choice is a stable hash of a name.
"""

from __future__ import annotations

import ast
import os
import pathlib
import re
import sysconfig
import warnings
import zlib
from collections.abc import Iterator

__all__ = [
    "stdlib_dir",
    "stdlib_instruction_records",
    "stdlib_python_files",
    "stdlib_source_texts",
]

# Test suites and tooling are noisy, repetitive code; installed third-party
# packages are not stdlib at all and differ between machines.
_SKIP_DIRS = frozenset({"test", "tests", "idlelib", "lib2to3", "site-packages"})
_MAX_FILE_BYTES = 200 * 1024

_TEMPLATES = (
    "Write a Python function `{sig}` for this task: {summary}",
    "Implement the Python function `{sig}`. Its job: {summary}",
    "Define `{sig}` in Python so that it does the following: {summary}",
    "Create a Python function named `{name}` with the signature `{sig}`. Purpose: {summary}",
)


def stdlib_dir() -> pathlib.Path:
    """Return the directory of the running interpreter's standard library."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _is_excluded(rel: pathlib.PurePath) -> bool:
    return any(part in _SKIP_DIRS or part.startswith("test") for part in rel.parts)


def stdlib_python_files() -> list[pathlib.PurePosixPath]:
    """The stdlib's ``.py`` files worth learning from, as paths relative to `stdlib_dir()`,
    sorted by path; test suites, tooling and site-packages are left out.

    The one walk of the stdlib: the embedded demo data and the ``builtin:stdlib`` corpus
    source both read these files.
    """
    root = stdlib_dir()
    found: list[pathlib.PurePosixPath] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = pathlib.PurePosixPath(pathlib.Path(dirpath).relative_to(root).as_posix())
        # Prune in place so large trees such as site-packages are never walked.
        dirnames[:] = [d for d in dirnames if not _is_excluded(pathlib.PurePosixPath(d))]
        for name in filenames:
            rel = rel_dir / name
            if name.endswith(".py") and not _is_excluded(rel):
                found.append(rel)
    return sorted(found, key=str)


def _iter_stdlib_files() -> Iterator[tuple[pathlib.PurePosixPath, bytes]]:
    """Yield ``(relative path, raw bytes)`` of eligible stdlib ``.py`` files up to the size cap, sorted by path."""
    root = stdlib_dir()
    for rel in stdlib_python_files():
        path = root / rel
        try:
            if path.stat().st_size > _MAX_FILE_BYTES:
                continue
            yield rel, path.read_bytes()
        except OSError:
            continue


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def stdlib_source_texts(max_bytes: int = 8_000_000) -> list[str]:
    """Return stdlib source texts in sorted path order, stopping before ``max_bytes`` is exceeded.

    Meant as a tokenizer-training corpus; ``max_bytes`` bounds the raw UTF-8 size.
    """
    texts: list[str] = []
    total = 0
    for _rel, raw in _iter_stdlib_files():
        text = _decode(raw)
        if text is None:
            continue
        if total + len(raw) > max_bytes:
            break
        texts.append(text)
        total += len(raw)
    return texts


def _module_name(rel: pathlib.PurePosixPath) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# Old-style docstrings open with a signature line ("execl(file, *args)") or a
# bare title ("Covariance"); the real summary is the next paragraph.
_SIGNATURE_LINE = re.compile(r"[\w.]+\(.*\)(\s*->.*)?")


def _summary(docstring: str) -> str:
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", docstring.strip())]
    if len(paragraphs) > 1 and (_SIGNATURE_LINE.fullmatch(paragraphs[0]) or len(paragraphs[0].split()) == 1):
        return paragraphs[1]
    return paragraphs[0]


def _lower_first(text: str) -> str:
    # Keep acronyms such as "URL ..." or "HTTP ..." intact.
    if len(text) > 1 and text[1].isupper():
        return text
    return text[:1].lower() + text[1:]


def _is_docstring_stmt(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _is_stub(stmt: ast.stmt) -> bool:
    if isinstance(stmt, ast.Pass):
        return True
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
        return stmt.value.value is Ellipsis
    if isinstance(stmt, ast.Raise) and stmt.exc is not None:
        exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
        return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
    return False


def _strip_docstring(lines: list[str], node: ast.FunctionDef) -> str | None:
    """Return the function's source without its docstring, or ``None`` if it is unusable.

    ``lines`` is the file split on newlines. Slicing it directly rather than calling
    ``ast.get_source_segment`` matters: that re-splits the whole file on every call,
    which made a full stdlib pass about five times slower.
    """
    doc, rest = node.body[0], node.body[1:]
    if not rest or (len(rest) == 1 and _is_stub(rest[0])):
        return None
    # A second string statement would become the new docstring.
    if _is_docstring_stmt(rest[0]):
        return None
    # Dropping whole lines is only safe when the docstring owns its lines
    # (col_offset counts UTF-8 bytes, hence the encode).
    if doc.lineno == node.lineno or rest[0].lineno <= doc.end_lineno:
        return None
    if lines[doc.lineno - 1].encode("utf-8")[: doc.col_offset].strip():
        return None
    first = min([node.lineno] + [dec.lineno for dec in node.decorator_list])
    head = lines[first - 1 : doc.lineno - 1]
    tail = lines[doc.end_lineno : node.end_lineno]
    # Blank lines that separated the docstring from the code would now open the body.
    while tail and not tail[0].strip():
        tail.pop(0)
    # Top-level defs already start at column 0, so no dedent: textwrap.dedent would
    # also blank whitespace-only lines inside multi-line string literals.
    return "\n".join(head + tail).rstrip() + "\n"


def _stable_hash(text: str) -> int:
    # Python's hash() is salted per process; crc32 is stable across runs.
    return zlib.crc32(text.encode("utf-8"))


def _records_from_source(source: str, module: str, max_chars: int) -> Iterator[dict]:
    with warnings.catch_warnings():
        # Old stdlib modules trip invalid-escape and similar warnings.
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return
    # Same line numbering as the parser: it treats \r\n, \r and \n as newlines.
    lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            continue
        docstring = ast.get_docstring(node)
        if not docstring:
            continue
        summary = _summary(docstring)
        # A doctest is no description of the task.
        if not (3 <= len(summary) <= 200 and summary.isascii()) or summary.startswith(">>>"):
            continue
        response = _strip_docstring(lines, node)
        if response is None or len(response) > max_chars:
            continue
        qualname = f"{module}.{node.name}"
        sig = f"{node.name}({ast.unparse(node.args)})"
        template = _TEMPLATES[_stable_hash(qualname) % len(_TEMPLATES)]
        instruction = template.format(sig=sig, name=node.name, summary=_lower_first(summary))
        # Salted so the choice of input is independent of the template choice.
        context_hash = _stable_hash("input:" + qualname)
        if context_hash % 3 == 0:
            context = f"Module: {module}"
            if context_hash % 2:
                context += f"\nSignature: {sig}"
        else:
            context = ""
        yield {"instruction": instruction, "input": context, "response": response}


def stdlib_instruction_records(limit: int | None = None, max_chars: int = 900) -> list[dict]:
    """Return instruction records derived from documented top-level stdlib functions.

    Each record is ``{"instruction", "input", "response"}``: the instruction
    paraphrases the docstring summary, the response is the function's source
    without its docstring. Order is sorted file path, then source order.
    """
    records: list[dict] = []
    seen: set[str] = set()
    if limit is not None and limit <= 0:
        return records
    for rel, raw in _iter_stdlib_files():
        source = _decode(raw)
        if source is None:
            continue
        for record in _records_from_source(source, _module_name(rel), max_chars):
            if record["response"] in seen:
                continue
            seen.add(record["response"])
            records.append(record)
            if limit is not None and len(records) >= limit:
                return records
    return records
