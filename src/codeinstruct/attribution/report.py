"""What a check found: one match per stretch of the query, with where it came from.

Verified spans are grouped by the part of the query they cover: spans that cover mostly the
same query lines are one match. A verbatim span represents its group before a renamed one,
a longer before a shorter. Every indexed document holding a span of the group is a holder of
the match (byte-identical files included): ``copies`` counts them, ``sources`` lists the first
MAX_SOURCES (the representative first, then verbatim before renamed, longer before shorter),
each with its own lines, and the license summary counts every holder of every match by license,
as GitHub Copilot's code referencing aggregates licenses.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["MAX_SOURCES", "AttributionReport", "Match", "Source", "SourceSpan", "assemble"]

UNKNOWN_LICENSE = "unknown"
MAX_SOURCES = 20  # holders listed per match (all are counted)


@dataclass(frozen=True)
class Source:
    """One indexed document holding a match's code: all of it, or (a near-copy) a part of it."""

    repo: str
    path: str
    license: str | None
    source_lines: tuple[int, int]  # first and last line of the code in this document (1-based, inclusive)
    query_lines: tuple[int, int]  # the lines of the checked code it holds
    tokens: int
    kind: str

    def as_dict(self) -> dict:
        return {
            "repo": self.repo,
            "path": self.path,
            "license": self.license,
            "source_lines": list(self.source_lines),
            "query_lines": list(self.query_lines),
            "tokens": self.tokens,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class Match:
    repo: str
    path: str
    license: str | None  # SPDX id or expression where known
    source_lines: tuple[int, int]  # first and last line in the source document (1-based, inclusive)
    query_lines: tuple[int, int]  # first and last line in the checked code
    tokens: int  # matched tokens (whitespace and comments not counted)
    kind: str  # "verbatim" (identical up to whitespace, comments and quote style) or "renamed"
    copies: int  # indexed documents holding the code (all of them)
    sources: tuple[Source, ...] = ()  # the first MAX_SOURCES of them, this match's own first

    def as_dict(self) -> dict:
        own = Source(self.repo, self.path, self.license, self.source_lines, self.query_lines, self.tokens, self.kind)
        return own.as_dict() | {"copies": self.copies, "sources": [source.as_dict() for source in self.sources]}


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
    # Texts that hold the same span at the same lines (this one may be included); the index gives
    # each holder its own span instead.
    copies: tuple[int, ...] = ()


DocumentInfo = tuple[str, str, "str | None"]  # repo, path, license


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]) + 1)


def assemble(
    spans: Sequence[SourceSpan],
    documents_of: Callable[[int], Sequence[DocumentInfo]],
    min_tokens: int,
    max_sources: int = MAX_SOURCES,
) -> AttributionReport:
    """Group spans into matches; documents_of(text) lists the documents holding that text."""
    groups: list[tuple[SourceSpan, dict[int, SourceSpan]]] = []
    for span in sorted(spans, key=lambda s: (not s.verbatim, -s.tokens, s.text, s.query_lines)):
        height = span.query_lines[1] - span.query_lines[0] + 1
        for representative, members in groups:
            if _overlap(span.query_lines, representative.query_lines) * 2 >= height:
                for text in span.copies or (span.text,):
                    members.setdefault(text, span)
                break
        else:
            groups.append((span, {text: span for text in span.copies or (span.text,)} | {span.text: span}))
    matches = []
    licensed: dict[tuple[str, str], str] = {}
    for representative, members in groups:
        copies = 0
        sources: list[Source] = []
        seen: set[tuple[str, str]] = set()
        # The representative's text first, then in the order spans were ranked (dicts keep it).
        for text in sorted(members, key=lambda t: t != representative.text):
            member = members[text]
            kind = "verbatim" if member.verbatim else "renamed"
            for repo, path, license in documents_of(text):
                if (repo, path) in seen:
                    continue
                seen.add((repo, path))
                copies += 1
                licensed[(repo, path)] = license or UNKNOWN_LICENSE
                if len(sources) < max_sources:
                    sources.append(
                        Source(repo, path, license, member.source_lines, member.query_lines, member.tokens, kind)
                    )
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
                sources=tuple(sources),
            )
        )
    matches.sort(key=lambda m: (m.query_lines, -m.tokens))
    counts = collections.Counter(licensed.values())
    licenses = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return AttributionReport(matches, licenses, min_tokens)
