"""Exact verification: align a query against a candidate source and keep only real spans.

Fingerprints only say where to look. A span is reported when, token for token:

- keywords, operators and punctuation are identical;
- names map one-to-one onto names and literals one-to-one onto literals (a consistent
  renaming: ``x`` becomes ``y`` everywhere in the span and nothing else becomes ``y``);
  checked as equal back-reference encodings (Baker's parameterized matching), so the
  check is linear and needs no search for the renaming;
- it is at least ``min_tokens`` tokens long.

The maximal aligned stretch can run past the copy into neighbouring code that happens to
have the same shape (a closing bracket, a following ``def f(x):``); its ends are trimmed to
whole lines of the query, and end lines are dropped while none of their names or literals
is evidence (identical, or renamed but used elsewhere in the span).

A span whose tokens are all identical is ``verbatim`` (whitespace, comments and quote style
aside); otherwise ``renamed``. Every identical stretch of ``min_tokens`` or more that no reported
run holds is reported as verbatim, also where the renamed stretch around it (same-shaped code
around a copy) fails the checks below.

A renamed span must also carry evidence that it was copied: a consistent renaming says little
when the code is one statement shape over and over (a column of imports, a constructor
assigning ``self.x = x`` for ten fields, a table of numbers), which unrelated files share by
construction, nor when most of its values differ (the same test shape over other data). So a
renamed span is reported when it keeps at least half of its literals (if it has three or
more), and it is varied (many distinct token shapes) or keeps at least 64 characters of
literals unchanged (the same docstrings, table entries). A run is varied when it is as a whole or
some range of min_tokens of it is: so a run is reported wherever a shorter run inside it would
be (a table of settings copied under other names, whose every 50 tokens are varied while the
whole repeats one line shape, is reported as a whole, not only where a near-copy cuts it short).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codeinstruct.attribution.fingerprint import abstract_codes
from codeinstruct.attribution.normalize import LITERAL, OTHER, TokenView

__all__ = ["Run", "aligned_runs", "identical_run", "is_varied", "next_same", "stretch_runs"]

# A renamed span must have at least this share of distinct abstract 6-grams. Measured on the
# standard library: boilerplate (imports, constructors, tables, argparse calls) has 0.04-0.25,
# while nine in ten 50-120 token stretches of real code have more than 0.45.
_MIN_VARIETY = 0.35
_SHAPE = 6
_MIN_KEPT_LITERAL_CHARS = 64


@dataclass(frozen=True)
class Run:
    """A verified span: query tokens [q_start, q_end) equal source tokens [d_start, d_end)."""

    q_start: int
    q_end: int
    d_start: int
    d_end: int
    verbatim: bool

    @property
    def tokens(self) -> int:
        return self.q_end - self.q_start


def is_varied(view: TokenView, start: int, end: int, window: int | None = None) -> bool:
    """Whether a span is more than one statement shape repeated (see the module docstring): as a
    whole, or (with ``window``) in some range of ``window`` tokens of it, so that a longer run
    holding a varied part is varied too."""
    n = end - start
    if n < _SHAPE:
        return False
    codes = abstract_codes(view)[start:end]
    grams = codes[: n - _SHAPE + 1].copy()
    for j in range(1, _SHAPE):
        grams = grams * np.uint64(0x100000001B3) ^ codes[j : n - _SHAPE + 1 + j]
    if len(np.unique(grams)) >= _MIN_VARIETY * len(grams):
        return True
    if window is None or not _SHAPE <= window < n:
        return False
    # Distinct grams of each range of window tokens (window - _SHAPE + 1 grams, from s): gram j
    # counts for the ranges starting after its previous equal gram and holding it.
    count = len(grams)
    previous = np.full(count, -1, dtype=np.int64)
    order = np.lexsort((np.arange(count), grams))
    same = grams[order[1:]] == grams[order[:-1]]
    previous[order[1:][same]] = order[:-1][same]
    per = window - _SHAPE + 1
    ranges = n - window + 1
    j = np.arange(count)
    first = np.maximum(previous + 1, j - per + 1)
    last = np.minimum(j, ranges - 1)
    counted = first <= last
    delta = np.zeros(ranges + 1, dtype=np.int64)
    np.add.at(delta, first[counted], 1)
    np.add.at(delta, last[counted] + 1, -1)
    return bool((np.cumsum(delta[:-1]) >= _MIN_VARIETY * per).any())


def aligned_runs(
    query: TokenView, query_prev: np.ndarray, source: TokenView, source_prev: np.ndarray, diagonal: int, min_tokens: int
) -> list[Run]:
    """The maximal verified spans where source token i + diagonal faces query token i.

    ``*_prev`` are the back-reference distances of fingerprint.previous_same.
    """
    q_lo, q_hi = max(0, -diagonal), min(len(query), len(source) - diagonal)
    if q_hi - q_lo < min_tokens:
        return []
    q = slice(q_lo, q_hi)
    s = slice(q_lo + diagonal, q_hi + diagonal)
    kinds = query.kinds[q]
    same_text = query.hashes[q] == source.hashes[s]
    compatible = (kinds == source.kinds[s]) & ((kinds != OTHER) | same_text)
    return _verified(query, query_prev, q_lo, diagonal, same_text, compatible, source_prev[s], min_tokens)


def stretch_runs(
    query: TokenView,
    query_prev: np.ndarray,
    start: int,
    end: int,
    same_text: np.ndarray,
    source_prev: np.ndarray,
    min_tokens: int,
    following: np.ndarray | None = None,
) -> list[Run]:
    """aligned_runs over query tokens [start, end) faced by a source window whose tokens are all
    compatible with them (same kinds, identical keywords and punctuation), given only which the
    source holds as they are and its back-references (fingerprint.previous_of over the window's
    own token keys, with the roles of the query's tokens there, which are the window's: roles
    are read off kinds and punctuation). Runs in query positions on both sides."""
    if end - start < min_tokens:
        return []
    compatible = np.ones(end - start, dtype=bool)
    return _verified(query, query_prev, start, 0, same_text, compatible, source_prev, min_tokens, following)


def _verified(
    query: TokenView,
    query_prev: np.ndarray,
    q_lo: int,
    diagonal: int,
    same_text: np.ndarray,
    compatible: np.ndarray,
    sp_all: np.ndarray,
    min_tokens: int,
    following: np.ndarray | None = None,
) -> list[Run]:
    """The runs of aligned_runs, from query position q_lo on: same_text, compatible and the
    source's back-references sp_all are given for the query tokens from q_lo."""
    # Maximal stretches of compatible tokens.
    edges = np.flatnonzero(np.diff(np.concatenate(([0], compatible.view(np.int8), [0]))))
    runs: list[Run] = []
    qp_all = query_prev[q_lo : q_lo + len(compatible)]
    for a, b in zip(edges[::2], edges[1::2]):
        if b - a < min_tokens:
            continue
        qp, sp = qp_all[a:b], sp_all[a:b]
        start = 0
        # Where the back-references differ, a run may include token i only if both point
        # before the run's start (so neither constrains it): start > i - nearer reference.
        for i in np.flatnonzero(qp != sp).tolist():
            nearer = min(d for d in (int(qp[i]), int(sp[i])) if d)
            lowest_start = i - nearer + 1
            if lowest_start > start:
                if i - start >= min_tokens:
                    runs.append(_run(a + start, a + i, q_lo, diagonal, same_text))
                start = lowest_start
        if (b - a) - start >= min_tokens:
            runs.append(_run(a + start, b, q_lo, diagonal, same_text))
    # Identical stretches are copies whatever surrounds them: where a renamed run that also spans
    # same-shaped code around a verbatim copy fails the evidence checks, the copy is still reported.
    edges = np.flatnonzero(np.diff(np.concatenate(([0], same_text.view(np.int8), [0]))))
    identical = [(a, b) for a, b in zip(edges[::2].tolist(), edges[1::2].tolist()) if b - a >= min_tokens]
    if not runs and not identical:
        return []
    if following is None:
        following = next_same(query_prev)
    out = []
    for run in runs:
        run = _trimmed(run, query, query_prev, following, same_text, q_lo, min_tokens)
        if run.verbatim or _copied(query, run, same_text[run.q_start - q_lo : run.q_end - q_lo], min_tokens):
            out.append(run)
    for a, b in identical:
        run = _trimmed(_run(a, b, q_lo, diagonal, same_text), query, query_prev, following, same_text, q_lo, min_tokens)
        if not any(kept.q_start <= run.q_start and run.q_end <= kept.q_end for kept in out):
            out.append(run)
    return out


def identical_run(
    query: TokenView,
    query_prev: np.ndarray,
    start: int,
    end: int,
    min_tokens: int,
    following: np.ndarray | None = None,
) -> Run:
    """The span aligned_runs reports for query tokens [start, end) where a source holds them as they
    are (cut to whole lines as any run is); in query positions on both sides. ``following``:
    next_same(query_prev), where the caller has it."""
    same_text = np.ones(end - start, dtype=bool)
    run = Run(start, end, start, end, True)
    if following is None:
        following = next_same(query_prev)
    return _trimmed(run, query, query_prev, following, same_text, start, min_tokens)


def _copied(query: TokenView, run: Run, same_text: np.ndarray, min_tokens: int) -> bool:
    """Whether a renamed run carries evidence of copying (see the module docstring)."""
    literals = query.kinds[run.q_start : run.q_end] == LITERAL
    kept = literals & same_text
    if literals.sum() >= 3 and 2 * kept.sum() < literals.sum():
        return False  # most values differ: the same code shape with other data, not a copy
    if int(query.sizes[run.q_start : run.q_end][kept].sum()) >= _MIN_KEPT_LITERAL_CHARS:
        return True
    return is_varied(query, run.q_start, run.q_end, min_tokens)


def next_same(prev: np.ndarray) -> np.ndarray:
    """The forward counterpart of previous_same: distance to the next occurrence (0 if none)."""
    following = np.zeros_like(prev)
    later = np.flatnonzero(prev)
    following[later - prev[later]] = prev[later]
    return following


def _trimmed(
    run: Run,
    query: TokenView,
    prev: np.ndarray,
    following: np.ndarray,
    same_text: np.ndarray,
    q_lo: int,
    min_tokens: int,
) -> Run:
    """The run cut to whole query lines and stripped of end lines without evidence (see the module
    docstring), when enough is left of it."""
    start, end = run.q_start, run.q_end
    lines, end_lines = query.lines, query.end_lines
    # Partial lines: the run starts after, or ends before, another token of the same line.
    if start > 0 and end_lines[start - 1] == lines[start]:
        line = lines[start]
        while start < end and lines[start] == line:
            start += 1
    if end < len(query) and lines[end] == end_lines[end - 1]:
        line = lines[end]
        while end > start and end_lines[end - 1] >= line:
            end -= 1
    whole_lines = (start, end)

    def evidence(i: int) -> bool:
        if query.kinds[i] == OTHER:
            return False
        return bool(same_text[i - q_lo]) or (0 < prev[i] <= i - start) or (0 < following[i] < end - i)

    def line_without_evidence(first: int, last: int) -> bool:
        names = [i for i in range(first, last) if query.kinds[i] != OTHER]
        return bool(names) and not any(evidence(i) for i in names)

    while start < end:  # leading lines
        stop = start
        while stop < end and lines[stop] == lines[start]:
            stop += 1
        if not line_without_evidence(start, stop):
            break
        start = stop
    while end > start:  # trailing lines
        first = end
        while first > start and lines[first - 1] == lines[end - 1]:
            first -= 1
        if not line_without_evidence(first, end):
            break
        end = first
    if end - start < min_tokens:
        # Too short without its end lines: a short copy that ends, say, on a renamed keyword
        # argument; keep it cut to whole lines, or as aligned.
        start, end = whole_lines if whole_lines[1] - whole_lines[0] >= min_tokens else (run.q_start, run.q_end)
    shift = start - run.q_start
    return Run(
        start,
        end,
        run.d_start + shift,
        run.d_start + shift + end - start,
        bool(same_text[start - q_lo : end - q_lo].all()),
    )


def _run(start: int, end: int, q_lo: int, diagonal: int, same_text: np.ndarray) -> Run:
    start, end = int(start), int(end)
    return Run(
        q_lo + start, q_lo + end, q_lo + start + diagonal, q_lo + end + diagonal, bool(same_text[start:end].all())
    )
