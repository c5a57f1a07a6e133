"""Reading a code corpus: source files with their repository, path, license and language.

The corpus feeds tokenizer training, pretraining with Fill-in-the-Middle, the model card and
the attribution index, which must say where matched code came from and under which license.
So every document carries that metadata from the moment it is read.

A source is one of:

- a directory, walked in sorted order (hidden directories, ``__pycache__`` and
  ``node_modules`` are never entered); metadata is inferred on the way down
  (`codeinstruct.data.provenance`): the nearest directory that declares a project name
  (``pyproject.toml``, ``package.json``, ``Cargo.toml``) becomes the repo, the nearest
  declared license or LICENSE/COPYING file gives the license, and a site-packages directory
  maps each installed distribution's ``*.dist-info`` metadata onto the top-level packages it
  installed;
- a ``.jsonl`` file of ``{"content", "repo", "path", "license"}`` records;
- a single source file;
- ``builtin:stdlib``, the running interpreter's standard library.

Files that would teach a model nothing (binary, minified, generated, oversized) are skipped
and counted by reason, following the spirit of StarCoder's data filters. Languages come from
`codeinstruct.data.languages`, license ids from `codeinstruct.data.licenses`.
"""

from __future__ import annotations

import collections
import fnmatch
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from codeinstruct.data.builtin import stdlib_dir, stdlib_python_files
from codeinstruct.data.languages import (
    DATA_AND_PROSE,
    DEFAULT_EXTENSIONS,
    LANGUAGE_BY_NAME,
    extension_of,
    language_of,
)
from codeinstruct.data.licenses import license_from_text, normalize_license
from codeinstruct.data.provenance import (
    SiteIndex,
    declared_in,
    is_install_metadata,
    site_packages_index,
)
from codeinstruct.data.records import BUILTIN_STDLIB
from codeinstruct.errors import CodeinstructError
from codeinstruct.files import iter_jsonl

__all__ = [
    "CorpusReport",
    "Document",
    "iter_documents",
    "language_of",
    "license_from_text",
    "normalize_license",
    "read_corpus",
]


@dataclass(frozen=True)
class Document:
    content: str
    repo: str  # e.g. "python/cpython", a package name, or the source directory's name
    path: str  # path inside the repo/source, POSIX separators
    license: str | None  # SPDX id (or expression) where known, else None
    language: str | None  # from the file extension


@dataclass
class CorpusReport:
    documents: int = 0
    bytes: int = 0  # UTF-8 bytes of kept documents
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    languages: collections.Counter[str] = field(default_factory=collections.Counter)
    licenses: collections.Counter[str] = field(default_factory=collections.Counter)  # "unknown" for None

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def add(self, doc: Document, size: int) -> None:
        self.documents += 1
        self.bytes += size
        self.languages[doc.language or "unknown"] += 1
        self.licenses[doc.license or "unknown"] += 1

    def as_dict(self) -> dict:
        """Plain JSON-ready dict; counters ordered most common first."""
        return {
            "documents": self.documents,
            "bytes": self.bytes,
            "skipped": dict(sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))),
            "languages": dict(self.languages.most_common()),
            "licenses": dict(self.licenses.most_common()),
        }


class _Include:
    """Which file names to read: extensions in a set (fast path) or general globs.

    Bare words ("py", ".py") and plain "*.ext" globs match extensions case-insensitively
    (a bare word also matches a whole file name, for "Makefile"); other globs match the
    file name, or the path inside the source when they contain "/".
    """

    def __init__(self, include: Sequence[str] | None):
        self.names: frozenset[str]
        self.extensions: frozenset[str]
        self.name_globs: list[re.Pattern[str]] = []
        self.path_globs: list[re.Pattern[str]] = []
        if not include:
            self.extensions, self.names = DEFAULT_EXTENSIONS, frozenset(LANGUAGE_BY_NAME)
            return
        extensions: set[str] = set()
        names: set[str] = set()
        for raw in include:
            pattern = raw.strip()
            if not pattern:
                raise CodeinstructError("include: empty pattern")
            plain = not any(c in pattern for c in "*?[") and "/" not in pattern
            if plain:
                extensions.add(pattern.lstrip(".").lower())
                names.add(pattern)
            elif pattern.startswith("*.") and not any(c in pattern[2:] for c in "*?[/."):
                extensions.add(pattern[2:].lower())
            elif "/" in pattern:
                self.path_globs.append(re.compile(fnmatch.translate(pattern)))
            else:
                self.name_globs.append(re.compile(fnmatch.translate(pattern)))
        self.extensions, self.names = frozenset(extensions), frozenset(names)

    def __call__(self, name: str, path: str) -> bool:
        if extension_of(name) in self.extensions or name in self.names:
            return True
        return any(g.match(name) for g in self.name_globs) or any(g.match(path) for g in self.path_globs)


# ---------------------------------------------------------------- content filters

_GENERATED_MARKERS = (
    "auto-generated",
    "autogenerated",
    "automatically generated",
    "generated by",
    "do not edit",
    "@generated",
)
_MAX_MEAN_LINE = 100
_MAX_LINE = 1000


def _content_problem(text: str, language: str | None) -> str | None:
    """Why a decoded document should be skipped ("empty", "generated", "minified"), or None."""
    if not text.strip():
        return "empty"
    head = "\n".join(text[:1024].split("\n", 5)[:5]).lower()
    if any(marker in head for marker in _GENERATED_MARKERS):
        return "generated"
    if language not in DATA_AND_PROSE:
        lines = text.count("\n") + (not text.endswith("\n"))
        if len(text) / lines > _MAX_MEAN_LINE:
            return "minified"
        # No line can be that long in a short text; skip the split for most files.
        if len(text) > _MAX_LINE and max(map(len, text.split("\n"))) > _MAX_LINE:
            return "minified"
    return None


def _decode(raw: bytes) -> str | None:
    """The text of a source file, or None when it is binary (NUL early on, or not UTF-8)."""
    if b"\0" in raw[:8192]:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.removeprefix("\ufeff")


# ---------------------------------------------------------------- reading

_SKIP_DIRS = frozenset({"__pycache__", "node_modules"})


@dataclass(frozen=True)
class _Origin:
    """Whose files these are: the repo, its license, and where its root is."""

    repo: str
    license: str | None
    root_depth: int  # the repo root is the first root_depth parts of a path inside the source
    prefix: str = ""  # put before every path (python/cpython keeps the stdlib under Lib/)


class _Reader:
    """One pass over the sources, counting into a report."""

    def __init__(self, include: Sequence[str] | None, max_file_bytes: int, report: CorpusReport):
        self.include = _Include(include)
        self.max_file_bytes = max_file_bytes
        self.report = report

    def document(
        self, content: str, size: int, repo: str, path: str, license: str | None, language: str | None
    ) -> Document | None:
        """A Document if the content passes the filters, else None (counted as skipped)."""
        if size > self.max_file_bytes:
            self.report.skip("too_large")
            return None
        problem = _content_problem(content, language)
        if problem is not None:
            self.report.skip(problem)
            return None
        doc = Document(content, repo, path, license, language)
        self.report.add(doc, size)
        return doc

    def read_file(self, file_path: str, origin: _Origin, rel: str, size: int | None = None) -> Document | None:
        """Read one file (rel is its path inside the source); None if it is skipped."""
        try:
            if size is None:
                size = os.stat(file_path).st_size
            if size > self.max_file_bytes:
                self.report.skip("too_large")
                return None
            with open(file_path, "rb") as f:
                raw = f.read()
        except OSError:
            self.report.skip("unreadable")
            return None
        text = _decode(raw)
        if text is None:
            self.report.skip("binary")
            return None
        parts = rel.split("/")
        path = origin.prefix + "/".join(parts[origin.root_depth :])
        size = len(raw) - 3 if raw.startswith(b"\xef\xbb\xbf") else len(raw)  # _decode drops the BOM
        return self.document(text, size, origin.repo, path, origin.license, language_of(parts[-1]))

    def walk(
        self, dir_path: str, parts: tuple[str, ...], origin: _Origin, site: tuple[int, SiteIndex] | None = None
    ) -> Iterator[Document]:
        """Documents under dir_path in sorted order; parts is its path inside the source.

        Metadata is worked out once per directory on the way down and handed to the
        subtree, so a large tree costs one scandir per directory and one read per file.
        """
        try:
            with os.scandir(dir_path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            self.report.skip("unreadable")
            return
        origin, site = self.discover(dir_path, parts, [e.name for e in entries], origin, site)
        for entry in entries:
            name = entry.name
            rel_parts = parts + (name,)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)  # a linked directory may loop back
            except OSError:
                continue
            if is_dir:
                if name.startswith(".") or name in _SKIP_DIRS or is_install_metadata(name):
                    continue
                child = origin
                if site is not None and (owner := site[1].get(rel_parts[site[0] :])) is not None:
                    child = _Origin(owner.name or origin.repo, owner.license, site[0])
                yield from self.walk(entry.path, rel_parts, child, site)
                continue
            try:
                if not entry.is_file():
                    continue
            except OSError:
                continue
            rel = "/".join(rel_parts)
            if not self.include(name, rel):
                self.report.skip("excluded")
                continue
            file_origin = origin
            if site is not None and len(rel_parts) == site[0] + 1:
                # A top-level module (six.py); top_level.txt names it without the suffix.
                owner = site[1].get((name,)) or site[1].get((name.split(".", 1)[0],))
                if owner is not None:
                    file_origin = _Origin(owner.name or origin.repo, owner.license, site[0])
            try:
                size = entry.stat().st_size
            except OSError:
                self.report.skip("unreadable")
                continue
            doc = self.read_file(entry.path, file_origin, rel, size)
            if doc is not None:
                yield doc

    def discover(
        self,
        dir_path: str,
        parts: tuple[str, ...],
        names: list[str],
        origin: _Origin,
        site: tuple[int, SiteIndex] | None,
    ):
        """The origin for this directory's subtree, and the site-packages index in force."""
        index = site_packages_index(dir_path, names)
        if index is not None:
            site = (len(parts), index)
        declared = declared_in(dir_path, names)
        if declared.name:
            # A named project keeps the enclosing license when it states none (a monorepo part).
            return _Origin(declared.name, declared.license or origin.license, len(parts)), site
        if declared.license:
            return replace(origin, license=declared.license), site
        return origin, site

    def jsonl(self, path: Path) -> Iterator[Document]:
        """Documents of a JSONL file, read lazily (dumps can be large); a malformed line is an error naming it."""
        # Not objects_only: record() says what a non-object line is, in the words of its other checks.
        for line_no, obj in iter_jsonl(path, objects_only=False):
            doc = self.record(obj, f"{path}: line {line_no}", path.stem)
            if doc is not None:
                yield doc

    def record(self, obj: object, where: str, default_repo: str) -> Document | None:
        if not isinstance(obj, dict):
            raise CodeinstructError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        content = obj.get("content")
        if not isinstance(content, str) or not content.strip():
            problem = (
                "missing field 'content'"
                if content is None
                else (
                    "field 'content' is empty"
                    if isinstance(content, str)
                    else f"field 'content' must be a string, got {type(content).__name__}"
                )
            )
            raise CodeinstructError(f"{where}: {problem}")
        fields: dict[str, str | None] = {}
        for key in ("repo", "path", "license", "language"):
            value = obj.get(key)
            if value is not None and not isinstance(value, str):
                raise CodeinstructError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
            fields[key] = value or None
        path = (fields["path"] or "").replace("\\", "/")
        license = fields["license"]
        # Keep a license we cannot map as written: the record's author knew better than a guess.
        spdx = normalize_license(license) or license
        language = fields["language"] or (language_of(path) if path else None)
        if "\0" in content[:8192]:
            self.report.skip("binary")
            return None
        size = len(content.encode("utf-8"))
        return self.document(content, size, fields["repo"] or default_repo, path, spdx, language)


def _source_name(path: Path) -> str:
    return path.resolve().name or str(path)


def iter_documents(
    sources: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    include: Sequence[str] | None = None,
    max_file_bytes: int = 1_000_000,
    report: CorpusReport | None = None,
) -> Iterator[Document]:
    """Documents of all sources in a deterministic order, counting into ``report`` as it goes.

    ``include`` picks files in directories (globs like "*.py" or bare extensions like "py";
    default: common source-code extensions); JSONL records and files named directly are
    always considered. Every source is checked to exist before the first document comes.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = [os.fspath(s) for s in sources]
    if max_file_bytes <= 0:
        raise CodeinstructError(f"max_file_bytes must be positive, got {max_file_bytes}")
    for source in sources:
        if source.startswith("builtin:"):
            if source != BUILTIN_STDLIB:
                raise CodeinstructError(f"unknown built-in corpus '{source}' (known: {BUILTIN_STDLIB})")
        elif not os.path.exists(source):
            raise CodeinstructError(f"{source}: no such file or directory")
    reader = _Reader(include, max_file_bytes, report if report is not None else CorpusReport())
    for source in sources:
        if source == BUILTIN_STDLIB:
            yield from _stdlib(reader)
            continue
        path = Path(source)
        if path.is_dir():
            yield from reader.walk(source, (), _Origin(_source_name(path), None, 0))
        elif path.suffix.lower() == ".jsonl":
            yield from reader.jsonl(path)
        else:
            # A file named on the command line: its directory's metadata applies, not --include.
            parent = path.parent
            try:
                names = os.listdir(parent)
            except OSError:
                names = []
            origin, _ = reader.discover(str(parent), (), names, _Origin(_source_name(parent), None, 0), None)
            doc = reader.read_file(source, origin, path.name)
            if doc is not None:
                yield doc


def _stdlib(reader: _Reader) -> Iterator[Document]:
    """The running interpreter's stdlib as python/cpython's Lib/ directory, tests left out."""
    root = stdlib_dir()
    origin = _Origin("python/cpython", "PSF-2.0", 0, prefix="Lib/")
    for rel in stdlib_python_files():
        doc = reader.read_file(str(root / rel), origin, rel.as_posix())
        if doc is not None:
            yield doc


def read_corpus(
    sources: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    include: Sequence[str] | None = None,
    max_file_bytes: int = 1_000_000,
) -> tuple[list[Document], CorpusReport]:
    """All documents of the sources, and the report of what was kept and skipped."""
    report = CorpusReport()
    return list(iter_documents(sources, include, max_file_bytes, report)), report
