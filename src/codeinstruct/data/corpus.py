"""Reading a code corpus: source files with their repository, path, license and language.

The corpus feeds tokenizer training, pretraining with Fill-in-the-Middle, the model card and
the attribution index, which must say where matched code came from and under which license.
So every document carries that metadata from the moment it is read.

A source is one of:

- a directory, walked in sorted order (hidden directories, ``__pycache__`` and
  ``node_modules`` are never entered); metadata is inferred on the way down: the nearest
  directory that declares a project name (``pyproject.toml``, ``package.json``,
  ``Cargo.toml``) becomes the repo, the nearest declared license or LICENSE/COPYING file
  gives the license, and a site-packages directory maps each installed distribution's
  ``*.dist-info`` metadata onto the top-level packages it installed;
- a ``.jsonl`` file of ``{"content", "repo", "path", "license"}`` records;
- a single source file;
- ``builtin:stdlib``, the running interpreter's standard library.

Files that would teach a model nothing (binary, minified, generated, oversized) are skipped
and counted by reason, following the spirit of StarCoder's data filters.
"""

from __future__ import annotations

import collections
import csv
import email.parser
import fnmatch
import json
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from codeinstruct.data.builtin import is_excluded_stdlib_path
from codeinstruct.data.builtin import stdlib_dir
from codeinstruct.data.records import BUILTIN_STDLIB
from codeinstruct.errors import CodeinstructError

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


# ---------------------------------------------------------------- languages

_LANGUAGES: dict[str, tuple[str, ...]] = {
    "Python": ("py", "pyi", "pyw"),
    "Cython": ("pyx", "pxd", "pxi"),
    "C": ("c", "h"),
    "C++": ("cc", "cpp", "cxx", "c++", "hh", "hpp", "hxx", "h++", "ipp", "tpp", "inl"),
    "CUDA": ("cu", "cuh"),
    "C#": ("cs",),
    "Objective-C": ("m",),
    "Objective-C++": ("mm",),
    "Java": ("java",),
    "Kotlin": ("kt", "kts"),
    "Scala": ("scala",),
    "Groovy": ("groovy", "gradle"),
    "JavaScript": ("js", "mjs", "cjs", "jsx"),
    "TypeScript": ("ts", "tsx", "mts", "cts"),
    "Vue": ("vue",),
    "Svelte": ("svelte",),
    "Go": ("go",),
    "Rust": ("rs",),
    "Zig": ("zig",),
    "Nim": ("nim",),
    "Swift": ("swift",),
    "Dart": ("dart",),
    "Ruby": ("rb",),
    "PHP": ("php",),
    "Perl": ("pl", "pm"),
    "Lua": ("lua",),
    "R": ("r",),
    "Julia": ("jl",),
    "Haskell": ("hs",),
    "OCaml": ("ml", "mli"),
    "F#": ("fs", "fsx"),
    "Erlang": ("erl", "hrl"),
    "Elixir": ("ex", "exs"),
    "Clojure": ("clj", "cljs", "cljc"),
    "Fortran": ("f", "f77", "f90", "f95", "f03", "f08", "for"),
    "Assembly": ("s", "asm"),
    "Verilog": ("v",),
    "SystemVerilog": ("sv", "svh"),
    "VHDL": ("vhd", "vhdl"),
    "Shell": ("sh", "bash", "zsh"),
    "PowerShell": ("ps1", "psm1"),
    "Batchfile": ("bat", "cmd"),
    "SQL": ("sql",),
    "HTML": ("html", "htm"),
    "CSS": ("css",),
    "SCSS": ("scss",),
    "Less": ("less",),
    "Makefile": ("mk",),
    "CMake": ("cmake",),
    "Protocol Buffer": ("proto",),
    "Tcl": ("tcl",),
    "Visual Basic": ("vb",),
    "Pascal": ("pas",),
    # Data and prose: known when asked for with --include, not read by default.
    "JSON": ("json",),
    "YAML": ("yaml", "yml"),
    "TOML": ("toml",),
    "XML": ("xml",),
    "CSV": ("csv",),
    "INI": ("ini", "cfg"),
    "Markdown": ("md", "markdown"),
    "reStructuredText": ("rst",),
    "Text": ("txt",),
}
_LANGUAGE_BY_EXTENSION = {ext: lang for lang, exts in _LANGUAGES.items() for ext in exts}
_LANGUAGE_BY_NAME = {
    "Makefile": "Makefile",
    "GNUmakefile": "Makefile",
    "CMakeLists.txt": "CMake",
    "Dockerfile": "Dockerfile",
}
# Long lines are normal in data and prose (one paragraph per line), so the minified
# filter would throw away good files of these kinds.
_DATA_AND_PROSE = frozenset(
    {"JSON", "YAML", "TOML", "XML", "CSV", "INI", "Markdown", "reStructuredText", "Text"}
)
_DEFAULT_EXTENSIONS = frozenset(
    ext for ext, lang in _LANGUAGE_BY_EXTENSION.items() if lang not in _DATA_AND_PROSE
)


def _extension(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    # ".bashrc" is a name, not an extension.
    return ext.lower() if dot and stem else ""


def language_of(path: str) -> str | None:
    """The language of a file by its name or extension, or None."""
    name = path.rpartition("/")[2]
    return _LANGUAGE_BY_NAME.get(name) or _LANGUAGE_BY_EXTENSION.get(_extension(name))


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
            self.extensions, self.names = _DEFAULT_EXTENSIONS, frozenset(_LANGUAGE_BY_NAME)
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
        if _extension(name) in self.extensions or name in self.names:
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
    if language not in _DATA_AND_PROSE:
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


# ---------------------------------------------------------------- licenses

# Canonical spelling of the SPDX ids people write in metadata, by lowercase id.
_SPDX_IDS = (
    "0BSD", "AFL-3.0", "AGPL-3.0", "AGPL-3.0-only", "AGPL-3.0-or-later", "Apache-1.1", "Apache-2.0",
    "Artistic-2.0", "BSD-1-Clause", "BSD-2-Clause", "BSD-3-Clause", "BSD-3-Clause-Clear", "BSD-4-Clause",
    "BSL-1.0", "CC0-1.0", "CC-BY-4.0", "CC-BY-SA-4.0", "CDDL-1.0", "ECL-2.0", "EPL-1.0", "EPL-2.0",
    "EUPL-1.2", "GPL-2.0", "GPL-2.0-only", "GPL-2.0-or-later", "GPL-3.0", "GPL-3.0-only",
    "GPL-3.0-or-later", "HPND", "ISC", "LGPL-2.0", "LGPL-2.0-or-later", "LGPL-2.1", "LGPL-2.1-only",
    "LGPL-2.1-or-later", "LGPL-3.0", "LGPL-3.0-only", "LGPL-3.0-or-later", "MIT", "MIT-0", "MIT-CMU",
    "MPL-1.1", "MPL-2.0", "NCSA", "OFL-1.1", "PSF-2.0", "Python-2.0", "Unlicense", "UPL-1.0", "WTFPL",
    "X11", "Zlib", "ZPL-2.1",
)  # fmt: skip
_SPDX_BY_LOWER = {spdx.lower(): spdx for spdx in _SPDX_IDS}

# Free-text names found in License: fields, pyproject tables and trove classifiers.
_LICENSE_ALIASES = {
    "mit license": "MIT",
    "the mit license": "MIT",
    "mit no attribution license (mit-0)": "MIT-0",
    "expat": "MIT",
    "apache": "Apache-2.0",
    "apache 2": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "apache-2": "Apache-2.0",
    "apache license": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache license, version 2.0": "Apache-2.0",
    "apache license version 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "apache software license 2.0": "Apache-2.0",
    "apache software license, version 2.0": "Apache-2.0",
    "apache 2.0 license": "Apache-2.0",
    "asl 2.0": "Apache-2.0",
    "new bsd": "BSD-3-Clause",
    "new bsd license": "BSD-3-Clause",
    "modified bsd": "BSD-3-Clause",
    "modified bsd license": "BSD-3-Clause",
    "3-clause bsd": "BSD-3-Clause",
    "3-clause bsd license": "BSD-3-Clause",
    "bsd 3-clause": "BSD-3-Clause",
    "bsd 3-clause license": "BSD-3-Clause",
    "bsd-3": "BSD-3-Clause",
    "simplified bsd": "BSD-2-Clause",
    "2-clause bsd": "BSD-2-Clause",
    "bsd 2-clause": "BSD-2-Clause",
    "bsd 2-clause license": "BSD-2-Clause",
    "freebsd": "BSD-2-Clause",
    "gplv2": "GPL-2.0",
    "gpl v2": "GPL-2.0",
    "gplv2+": "GPL-2.0-or-later",
    "gplv3": "GPL-3.0",
    "gpl v3": "GPL-3.0",
    "gplv3+": "GPL-3.0-or-later",
    "lgplv2.1": "LGPL-2.1",
    "lgplv3": "LGPL-3.0",
    "lgplv3+": "LGPL-3.0-or-later",
    "mpl 2.0": "MPL-2.0",
    "mpl-2": "MPL-2.0",
    "mozilla public license 2.0": "MPL-2.0",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "isc license": "ISC",
    "isc license (iscl)": "ISC",
    "the unlicense": "Unlicense",
    "the unlicense (unlicense)": "Unlicense",
    "psf": "PSF-2.0",
    "psf license": "PSF-2.0",
    "psfl": "PSF-2.0",
    "python software foundation license": "PSF-2.0",
    "gnu general public license v2 (gplv2)": "GPL-2.0",
    "gnu general public license v2 or later (gplv2+)": "GPL-2.0-or-later",
    "gnu general public license v3 (gplv3)": "GPL-3.0",
    "gnu general public license v3 or later (gplv3+)": "GPL-3.0-or-later",
    "gnu lesser general public license v2 or later (lgplv2+)": "LGPL-2.0-or-later",
    "gnu lesser general public license v3 (lgplv3)": "LGPL-3.0",
    "gnu lesser general public license v3 or later (lgplv3+)": "LGPL-3.0-or-later",
    "gnu affero general public license v3": "AGPL-3.0",
    "boost software license 1.0 (bsl-1.0)": "BSL-1.0",
    "eclipse public license 2.0 (epl-2.0)": "EPL-2.0",
    "historical permission notice and disclaimer (hpnd)": "HPND",
    "universal permissive license (upl)": "UPL-1.0",
    "zope public license": "ZPL-2.1",
    "cc0 1.0 universal (cc0 1.0) public domain dedication": "CC0-1.0",
}
_SPDX_TOKEN = r"[A-Za-z0-9][A-Za-z0-9.+-]*"
# An SPDX expression as modern metadata writes it ("MIT OR Apache-2.0").
_SPDX_EXPRESSION = re.compile(rf"\(*{_SPDX_TOKEN}\)*(\s+(AND|OR|WITH)\s+\(*{_SPDX_TOKEN}\)*)*")
# An id we do not list but which has SPDX's shape: a name and a version ("BlueOak-1.0.0").
_SPDX_LIKE_ID = re.compile(r"[A-Za-z][A-Za-z0-9.]*(-[A-Za-z0-9.]+)*-\d[\d.]*(-only|-or-later|\+)?")
# Names that look like ids but do not say which license ("BSD": 2, 3 or 4 clauses?).
_AMBIGUOUS = frozenset(
    {"bsd", "bsd license", "gpl", "lgpl", "gnu gpl", "other", "unknown", "dual license", "proprietary", "public domain"}
)


def _spdx_id(token: str) -> str | None:
    """The canonical spelling of one SPDX id, or None if the token is not shaped like one."""
    if token.lower() in _SPDX_BY_LOWER:
        return _SPDX_BY_LOWER[token.lower()]
    if token.startswith("LicenseRef-") or _SPDX_LIKE_ID.fullmatch(token) or token.lower().endswith("-exception"):
        return token
    return None


def _spdx_expression(text: str) -> str | None:
    """``text`` with canonical id spellings if it is an SPDX expression, else None."""
    if not _SPDX_EXPRESSION.fullmatch(text):
        return None
    out = []
    for token in re.split(r"(\s+|[()])", text):
        if token in ("AND", "OR", "WITH", "(", ")", "") or token.isspace():
            out.append(" " if token.isspace() else token)
            continue
        spdx = _spdx_id(token)
        if spdx is None:
            return None
        out.append(spdx)
    return "".join(out)


def normalize_license(name: str | None) -> str | None:
    """An SPDX id or expression for a declared license name ("MIT License", "Apache 2.0"), or None.

    Names that cannot be mapped are None rather than passed through, so the license
    breakdown lists ids, not prose; a License: field holding the whole license text is
    classified by its text.
    """
    if not name or not name.strip():
        return None
    text = " ".join(name.split())
    if len(text) > 200 or "\n" in name.strip():
        return license_from_text(name)
    lower = text.lower()
    for prefix in ("license :: osi approved :: ", "license :: "):
        lower = lower.removeprefix(prefix)
    if lower in _AMBIGUOUS:
        return None
    if lower in _LICENSE_ALIASES:
        return _LICENSE_ALIASES[lower]
    if lower.endswith(" license") and lower.removesuffix(" license") in _SPDX_BY_LOWER:
        return _SPDX_BY_LOWER[lower.removesuffix(" license")]
    if "/" in text:  # Cargo's old "MIT/Apache-2.0" means either
        ids = [_spdx_id(part.strip()) for part in text.split("/")]
        return " OR ".join(ids) if all(ids) else None  # type: ignore[arg-type]
    return _spdx_expression(text)


def _version_after(text: str, start: int, window: int = 250) -> str | None:
    m = re.search(r"version (\d(?:\.\d)?)", text[start : start + window])
    return m.group(1) if m else None


def _gpl_family(text: str, pos: int, name: str) -> str | None:
    version = _version_after(text, pos)
    if name == "LGPL":
        return {"2": "LGPL-2.0", "2.0": "LGPL-2.0", "2.1": "LGPL-2.1", "3": "LGPL-3.0", "3.0": "LGPL-3.0"}.get(version or "")
    if name == "AGPL":
        return "AGPL-3.0" if version in ("3", "3.0") else None
    return {"2": "GPL-2.0", "2.0": "GPL-2.0", "3": "GPL-3.0", "3.0": "GPL-3.0"}.get(version or "")


def _bsd_family(text: str, pos: int) -> str:
    conditions = text[pos : pos + 2000]
    if "all advertising materials" in conditions:
        return "BSD-4-Clause"
    if "neither the name" in conditions or "names of its contributors" in conditions or "name of the copyright holder" in conditions:
        return "BSD-3-Clause"
    return "BSD-2-Clause"


# Each license is recognised by a phrase from its text; a file holding several (a project's
# license followed by those of vendored code) is classified by the phrase found first, and
# only near the top: a project's own license comes first, so a phrase found deep into
# the file (matplotlib's bundled MIT notices after its own license) says nothing about it.
_LICENSE_PHRASE_WITHIN = 4000
_LICENSE_PHRASES: tuple[tuple[str, Callable[[str, int], str | None]], ...] = (
    (
        "permission is hereby granted, free of charge, to any person obtaining a copy",
        # NCSA reuses MIT's grant, but "to deal with" the software rather than "in" it.
        lambda t, p: "NCSA" if "to deal with the software" in t[p : p + 300] else "MIT",
    ),
    ("apache license", lambda t, p: "Apache-2.0" if _version_after(t, p, 80) in ("2", "2.0") else None),
    ("redistribution and use in source and binary forms", _bsd_family),
    ("gnu lesser general public license", lambda t, p: _gpl_family(t, p, "LGPL")),
    ("gnu library general public license", lambda t, p: _gpl_family(t, p, "LGPL")),
    ("gnu affero general public license", lambda t, p: _gpl_family(t, p, "AGPL")),
    ("gnu general public license", lambda t, p: _gpl_family(t, p, "GPL")),
    ("mozilla public license", lambda t, p: "MPL-2.0" if _version_after(t, p, 80) in ("2", "2.0") or t.startswith("mozilla public license 2.0", p) else None),
    (
        "with or without fee is hereby granted",
        # ISC keeps the notice requirement; 0BSD is the same grant without it.
        lambda t, p: "ISC" if "provided that the above copyright notice" in t[p : p + 200] else "0BSD",
    ),
    ("this is free and unencumbered software released into the public domain", lambda t, p: "Unlicense"),
    ("python software foundation license", lambda t, p: "PSF-2.0"),
)


def license_from_text(text: str) -> str | None:
    """Classify a license file's text to an SPDX id, or None when it is none of the common ones."""
    # Comment markers and line breaks would split the phrases we look for.
    flat = " ".join(re.sub(r"(?m)^[ \t]*(#|//|\*|;|--)+", " ", text[:65536]).lower().split())
    best: tuple[int, str] | None = None
    for phrase, classify in _LICENSE_PHRASES:
        pos = flat.find(phrase)
        while -1 < pos < _LICENSE_PHRASE_WITHIN and (best is None or pos < best[0]):
            spdx = classify(flat, pos)
            if spdx is not None:
                best = (pos, spdx)
                break
            # A mention without a version (e.g. "unlike the GPL ...") is no verdict; look further.
            pos = flat.find(phrase, pos + 1)
    return best[1] if best else None


# ---------------------------------------------------------------- metadata of directories

_LICENSE_FILE = re.compile(r"(licen[cs]e|copying)(\.(txt|md|rst))?", re.IGNORECASE)
# LICENSE-MIT + LICENSE-APACHE is how Rust and others state a dual license.
_LICENSE_VARIANT_FILE = re.compile(r"(licen[cs]e|copying)[-_.]([a-z0-9]+)(\.(txt|md|rst))?", re.IGNORECASE)
_SKIP_DIRS = frozenset({"__pycache__", "node_modules"})
_LICENSE_FILE_MAX = 65536


@dataclass(frozen=True)
class _Origin:
    """Whose files these are: the repo, its license, and where its root is."""

    repo: str
    license: str | None
    root_depth: int  # the repo root is the first root_depth parts of a path inside the source
    prefix: str = ""  # put before every path (python/cpython keeps the stdlib under Lib/)


@dataclass(frozen=True)
class _Declared:
    name: str | None = None
    license: str | None = None


def _read_text(path: str, limit: int | None = None) -> str | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(limit if limit is not None else -1)
    except OSError:
        return None
    return raw.decode("utf-8", errors="replace")


def _is_license_variant(name: str) -> bool:
    # license.py is a module about licenses, not the license of the code beside it.
    return bool(_LICENSE_VARIANT_FILE.fullmatch(name)) and language_of(name) in (None, "Text", "Markdown", "reStructuredText")


def _license_of_files(dir_path: str, names: list[str]) -> str | None:
    """The license stated by LICENSE/COPYING files in a directory, or None."""
    main = sorted(n for n in names if _LICENSE_FILE.fullmatch(n))
    # COPYING holds the GPL that COPYING.LESSER builds on; the project's license is the LGPL.
    lesser = [n for n in names if n.lower().startswith("copying.lesser")]
    for name in lesser + main:
        spdx = license_from_text(_read_text(os.path.join(dir_path, name), _LICENSE_FILE_MAX) or "")
        if spdx:
            return spdx
    variants = sorted(n for n in names if _is_license_variant(n) and n not in main and n not in lesser)
    found = []
    for name in variants:
        spdx = license_from_text(_read_text(os.path.join(dir_path, name), _LICENSE_FILE_MAX) or "")
        if spdx and spdx not in found:
            found.append(spdx)
    return " OR ".join(found) or None


def _classifier_license(classifiers: Iterable[str]) -> str | None:
    found: list[str] = []
    for classifier in classifiers:
        if classifier.startswith("License ::"):
            spdx = normalize_license(classifier)
            if spdx and spdx not in found:
                found.append(spdx)
    return " OR ".join(found) or None


def _pyproject(dir_path: str) -> _Declared:
    try:
        with open(os.path.join(dir_path, "pyproject.toml"), "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return _Declared()  # metadata is a best guess; a broken file must not stop the corpus
    project = data.get("project") if isinstance(data.get("project"), dict) else {}
    poetry = data.get("tool", {}).get("poetry", {}) if isinstance(data.get("tool"), dict) else {}
    name = project.get("name") or (poetry.get("name") if isinstance(poetry, dict) else None)
    license = project.get("license")
    spdx = None
    if isinstance(project.get("license-expression"), str):
        spdx = " ".join(project["license-expression"].split()) or None
    elif isinstance(license, str):
        spdx = normalize_license(license)
    elif isinstance(license, dict):
        if isinstance(license.get("text"), str):
            spdx = normalize_license(license["text"])
        elif isinstance(license.get("file"), str):
            spdx = license_from_text(_read_text(os.path.join(dir_path, license["file"]), _LICENSE_FILE_MAX) or "")
    if spdx is None and isinstance(poetry, dict) and isinstance(poetry.get("license"), str):
        spdx = normalize_license(poetry["license"])
    if spdx is None and isinstance(project.get("classifiers"), list):
        spdx = _classifier_license(c for c in project["classifiers"] if isinstance(c, str))
    return _Declared(name if isinstance(name, str) and name else None, spdx)


def _package_json(dir_path: str) -> _Declared:
    try:
        with open(os.path.join(dir_path, "package.json"), "rb") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return _Declared()
    if not isinstance(data, dict):
        return _Declared()
    license = data.get("license")
    if isinstance(license, dict):  # the old {"type": "MIT", "url": ...} form
        license = license.get("type")
    if license is None and isinstance(data.get("licenses"), list):
        types = [lic.get("type") for lic in data["licenses"] if isinstance(lic, dict)]
        license = " OR ".join(t for t in types if isinstance(t, str)) or None
    name = data.get("name")
    return _Declared(name if isinstance(name, str) and name else None,
                     normalize_license(license) if isinstance(license, str) else None)


def _cargo_toml(dir_path: str) -> _Declared:
    try:
        with open(os.path.join(dir_path, "Cargo.toml"), "rb") as f:
            package = tomllib.load(f).get("package", {})
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return _Declared()
    if not isinstance(package, dict):
        return _Declared()
    name, license = package.get("name"), package.get("license")
    spdx = normalize_license(license) if isinstance(license, str) else None
    if spdx is None and isinstance(package.get("license-file"), str):
        spdx = license_from_text(_read_text(os.path.join(dir_path, package["license-file"]), _LICENSE_FILE_MAX) or "")
    return _Declared(name if isinstance(name, str) and name else None, spdx)


_MANIFESTS = (("pyproject.toml", _pyproject), ("package.json", _package_json), ("Cargo.toml", _cargo_toml))


def _declared(dir_path: str, names: set[str]) -> _Declared:
    """Project name and license declared by the manifests in one directory (first that says wins)."""
    name = license = None
    for manifest, read in _MANIFESTS:
        if manifest in names:
            found = read(dir_path)
            name, license = name or found.name, license or found.license
    return _Declared(name, license)


def _dist_info(dist_dir: str) -> tuple[_Declared, list[tuple[str, ...]]]:
    """An install's name and license, and the paths (as parts) of what it installed.

    Wheels leave a .dist-info with METADATA and RECORD; setuptools' egg-info (also what a
    src layout holds after an editable install) has the same fields in PKG-INFO.
    """
    text = _read_text(os.path.join(dist_dir, "METADATA")) or _read_text(os.path.join(dist_dir, "PKG-INFO")) or ""
    headers = email.parser.HeaderParser().parsestr(text, headersonly=True)
    # License-Expression is SPDX by definition (PEP 639): trust it as written.
    license = " ".join((headers.get("License-Expression") or "").split()) or normalize_license(headers.get("License"))
    if license is None:
        license = _classifier_license(headers.get_all("Classifier") or [])
    if license is None:
        # Wheels built with License-File ship the text; classify it as a last resort.
        for name in headers.get_all("License-File") or []:
            for candidate in (os.path.join(dist_dir, "licenses", name), os.path.join(dist_dir, name)):
                license = license_from_text(_read_text(candidate, _LICENSE_FILE_MAX) or "")
                if license:
                    break
            if license:
                break
    paths: list[tuple[str, ...]] = []
    record = _read_text(os.path.join(dist_dir, "RECORD"))
    if record:
        for row in csv.reader(record.splitlines()):
            if not row:
                continue
            parts = tuple(PurePosixPath(row[0]).parts)
            # Scripts and data land outside site-packages ("../../bin"); the dist-info is metadata.
            if not parts or parts[0] in ("..", "/", "__pycache__") or parts[0].endswith((".dist-info", ".egg-info", ".data")):
                continue
            paths.append(parts)
    else:
        top_level = _read_text(os.path.join(dist_dir, "top_level.txt")) or ""
        paths = [tuple(PurePosixPath(line.strip()).parts) for line in top_level.splitlines() if line.strip()]
    return _Declared(headers.get("Name"), license), paths


def _claim(dists: list[tuple[_Declared, list[tuple[str, ...]]]], depth: int = 1) -> dict[tuple[str, ...], _Declared]:
    """Map path prefixes to the one distribution that owns them.

    Namespace packages (google/, nvidia/) are shared by several distributions, so a shared
    prefix is split one level deeper until each part has a single owner.
    """
    owners: dict[tuple[str, ...], set[int]] = collections.defaultdict(set)
    for index, (_, paths) in enumerate(dists):
        for parts in paths:
            if len(parts) >= depth:
                owners[parts[:depth]].add(index)
    claimed: dict[tuple[str, ...], _Declared] = {}
    for prefix, indices in owners.items():
        if len(indices) == 1:
            claimed[prefix] = dists[next(iter(indices))][0]
        elif depth < 4:
            shared = [(dists[i][0], [p for p in dists[i][1] if p[:depth] == prefix]) for i in sorted(indices)]
            claimed.update(_claim(shared, depth + 1))
    return claimed


def _site_index(dir_path: str, dist_infos: list[str]) -> dict[tuple[str, ...], _Declared]:
    return _claim([_dist_info(os.path.join(dir_path, name)) for name in sorted(dist_infos)])


# ---------------------------------------------------------------- reading


class _Reader:
    """One pass over the sources, counting into a report."""

    def __init__(self, include: Sequence[str] | None, max_file_bytes: int, report: CorpusReport):
        self.include = _Include(include)
        self.max_file_bytes = max_file_bytes
        self.report = report

    def document(self, content: str, size: int, repo: str, path: str, license: str | None,
                 language: str | None) -> Document | None:
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

    def walk(self, dir_path: str, parts: tuple[str, ...], origin: _Origin,
             site: tuple[int, dict[tuple[str, ...], _Declared]] | None = None,
             prune: Callable[[PurePosixPath], bool] | None = None, discover: bool = True) -> Iterator[Document]:
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
        if discover:
            origin, site = self.discover(dir_path, parts, [e.name for e in entries], origin, site)
        for entry in entries:
            name = entry.name
            rel_parts = parts + (name,)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)  # a linked directory may loop back
            except OSError:
                continue
            if is_dir:
                if name.startswith(".") or name in _SKIP_DIRS or name.endswith((".dist-info", ".egg-info")):
                    continue
                if prune is not None and prune(PurePosixPath(name)):
                    continue
                child = origin
                if site is not None and (owner := site[1].get(rel_parts[site[0] :])) is not None:
                    child = _Origin(owner.name or origin.repo, owner.license, site[0])
                yield from self.walk(entry.path, rel_parts, child, site, prune, discover)
                continue
            try:
                if not entry.is_file():
                    continue
            except OSError:
                continue
            rel = "/".join(rel_parts)
            if not self.include(name, rel) or (prune is not None and prune(PurePosixPath(rel))):
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

    def discover(self, dir_path: str, parts: tuple[str, ...], names: list[str], origin: _Origin,
                 site: tuple[int, dict[tuple[str, ...], _Declared]] | None):
        """The origin for this directory's subtree, and the site-packages index in force."""
        dist_infos = [n for n in names if n.endswith((".dist-info", ".egg-info")) and os.path.isdir(os.path.join(dir_path, n))]
        if dist_infos:
            site = (len(parts), _site_index(dir_path, dist_infos))
        name_set = set(names)
        declared = _declared(dir_path, name_set) if not name_set.isdisjoint(m for m, _ in _MANIFESTS) else _Declared()
        license = declared.license
        if license is None and any(_LICENSE_FILE.fullmatch(n) or _is_license_variant(n) for n in names):
            license = _license_of_files(dir_path, names)
        if declared.name:
            # A named project keeps the enclosing license when it states none (a monorepo part).
            return _Origin(declared.name, license or origin.license, len(parts)), site
        if license:
            return replace(origin, license=license), site
        return origin, site

    def jsonl(self, path: Path) -> Iterator[Document]:
        """Documents of a JSONL file; a malformed line is an error naming the line."""
        try:
            with open(path, "rb") as f:
                yield from self._jsonl_lines(path, f)
        except OSError as e:
            raise CodeinstructError(f"{path}: cannot read ({e.strerror})") from None

    def _jsonl_lines(self, path: Path, lines: Iterable[bytes]) -> Iterator[Document]:
        # Bytes, not text mode: a decoding error must name its line, and dumps can be large.
        for lineno, raw in enumerate(lines, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CodeinstructError(f"{path}: line {lineno}: not valid UTF-8 (byte {e.start} of the line)") from None
            if lineno == 1:
                line = line.removeprefix("\ufeff")
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CodeinstructError(f"{path}: line {lineno}: invalid JSON ({e.msg})") from None
            doc = self.record(obj, f"{path}: line {lineno}", path.stem)
            if doc is not None:
                yield doc

    def record(self, obj: object, where: str, default_repo: str) -> Document | None:
        if not isinstance(obj, dict):
            raise CodeinstructError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        content = obj.get("content")
        if not isinstance(content, str) or not content.strip():
            problem = "missing field 'content'" if content is None else (
                "field 'content' is empty" if isinstance(content, str) else
                f"field 'content' must be a string, got {type(content).__name__}")
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
        return self.document(content, len(content.encode("utf-8")), fields["repo"] or default_repo, path, spdx, language)


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
    python_only = _Reader(["*.py"], reader.max_file_bytes, reader.report)
    origin = _Origin("python/cpython", "PSF-2.0", 0, prefix="Lib/")
    yield from python_only.walk(str(stdlib_dir()), (), origin, prune=is_excluded_stdlib_path, discover=False)


def read_corpus(
    sources: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    include: Sequence[str] | None = None,
    max_file_bytes: int = 1_000_000,
) -> tuple[list[Document], CorpusReport]:
    """All documents of the sources, and the report of what was kept and skipped."""
    report = CorpusReport()
    return list(iter_documents(sources, include, max_file_bytes, report)), report
