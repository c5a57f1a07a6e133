"""What a check found: one match per stretch of the query, with where it came from.

Verified spans are grouped by the part of the query they cover: spans that cover mostly the
same query lines are one match. A verbatim span represents its group before a renamed one,
a longer before a shorter; ``copies`` counts every indexed document holding the span
(byte-identical files included; see index.py for how). The license summary counts those
documents by license, as GitHub Copilot's code referencing aggregates licenses.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["AttributionReport", "Match", "SourceSpan", "assemble"]

UNKNOWN_LICENSE = "unknown"


@dataclass(frozen=True)
class Match:
    repo: str
    path: str
    license: str | None  # SPDX id or expression where known
    source_lines: tuple[int, int]  # first and last line in the source document (1-based, inclusive)
    query_lines: tuple[int, int]  # first and last line in the checked code
    tokens: int  # matched tokens (whitespace and comments not counted)
    kind: str  # "verbatim" (identical up to whitespace, comments and quote style) or "renamed"
    copies: int  # indexed documents holding the same span

    def as_dict(self) -> dict:
        return {
            "repo": self.repo,
            "path": self.path,
            "license": self.license,
            "source_lines": list(self.source_lines),
            "query_lines": list(self.query_lines),
            "tokens": self.tokens,
            "kind": self.kind,
            "copies": self.copies,
        }


@dataclass(frozen=True)
class AttributionReport:
    matches: list[Match]
    licenses: dict[str, int]  # license ("unknown" when not known) -> matched documents, most first
    min_tokens: int

    def __bool__(self) -> bool:
        return bool(self.matches)

    def as_dict(self) -> dict:
        return {"matches": [m.as_dict() for m in self.matches], "licenses": dict(self.licenses)}


@dataclass(frozen=True)
class SourceSpan:
    """One verified span in one stored text (a distinct document content)."""

    text: int
    tokens: int
    verbatim: bool
    query_lines: tuple[int, int]
    source_lines: tuple[int, int]
    copies: tuple[int, ...] = ()  # texts that hold the same span (this one included)


DocumentInfo = tuple[str, str, "str | None"]  # repo, path, license


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]) + 1)


def assemble(
    spans: Sequence[SourceSpan], documents_of: Callable[[int], Sequence[DocumentInfo]], min_tokens: int
) -> AttributionReport:
    """Group spans into matches; documents_of(text) lists the documents holding that text."""
    groups: list[tuple[SourceSpan, dict[int, SourceSpan]]] = []
    for span in sorted(spans, key=lambda s: (not s.verbatim, -s.tokens, s.text, s.query_lines)):
        height = span.query_lines[1] - span.query_lines[0] + 1
        for representative, members in groups:
            if _overlap(span.query_lines, representative.query_lines) * 2 >= height:
                members.setdefault(span.text, span)
                break
        else:
            groups.append((span, {span.text: span}))
    matches = []
    licensed: dict[tuple[str, str], str] = {}
    for representative, members in groups:
        copies = 0
        for text in sorted({t for member in members.values() for t in (member.copies or (member.text,))}):
            documents = documents_of(text)
            copies += len(documents)
            for repo, path, license in documents:
                licensed[(repo, path)] = license or UNKNOWN_LICENSE
        repo, path, license = documents_of(representative.text)[0]
        matches.append(
            Match(
                repo=repo,
                path=path,
                license=license,
                source_lines=representative.source_lines,
                query_lines=representative.query_lines,
                tokens=representative.tokens,
                kind="verbatim" if representative.verbatim else "renamed",
                copies=copies,
            )
        )
    matches.sort(key=lambda m: (m.query_lines, -m.tokens))
    counts = collections.Counter(licensed.values())
    licenses = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return AttributionReport(matches, licenses, min_tokens)
