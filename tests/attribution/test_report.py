"""Grouping verified spans into matches, copies and the license summary."""

from __future__ import annotations

from codeinstruct.attribution.report import SourceSpan, assemble

DOCUMENTS = {
    0: [("acme/geo", "hull.py", "MIT")],
    1: [("fork/geo", "hull.py", "BSD-3-Clause"), ("vendor/geo", "third_party/hull.py", None)],
    2: [("octo/timers", "scheduler.py", "GPL-3.0-only")],
}


def span(text, query_lines, tokens=80, verbatim=True, copies=()):
    return SourceSpan(
        text=text, tokens=tokens, verbatim=verbatim, query_lines=query_lines, source_lines=(1, 10), copies=copies
    )


def test_spans_over_the_same_lines_are_one_match_with_copies():
    report = assemble([span(0, (5, 20), copies=(0, 1))], DOCUMENTS.__getitem__, 50)
    [match] = report.matches
    assert (match.repo, match.path, match.license, match.copies) == ("acme/geo", "hull.py", "MIT", 3)
    assert report.licenses == {"BSD-3-Clause": 1, "MIT": 1, "unknown": 1}


def test_verbatim_represents_a_group_before_a_longer_renamed_span():
    report = assemble(
        [span(2, (5, 21), tokens=90, verbatim=False), span(0, (5, 20), tokens=80)], DOCUMENTS.__getitem__, 50
    )
    [match] = report.matches
    assert (match.repo, match.kind, match.copies) == ("acme/geo", "verbatim", 2)


def test_separate_parts_of_the_query_are_separate_matches_in_query_order():
    report = assemble([span(2, (40, 60)), span(0, (5, 20))], DOCUMENTS.__getitem__, 50)
    assert [(m.repo, m.query_lines) for m in report.matches] == [("acme/geo", (5, 20)), ("octo/timers", (40, 60))]
    assert report.licenses == {"GPL-3.0-only": 1, "MIT": 1}
    assert report.as_dict()["matches"][1]["query_lines"] == [40, 60]


def test_no_spans_no_matches():
    report = assemble([], DOCUMENTS.__getitem__, 50)
    assert not report and report.as_dict() == {"matches": [], "licenses": {}}


def test_every_holder_is_counted_listed_with_its_own_lines_and_licensed():
    documents = {i: [(f"fork{i}/geo", "hull.py", ("MIT", "Apache-2.0", None)[i % 3])] for i in range(30)}
    documents[30] = [("near/geo", "hull.py", "GPL-3.0-only"), ("near/vendored", "lib/hull.py", "GPL-3.0-only")]
    spans = [
        SourceSpan(text=i, tokens=80, verbatim=True, query_lines=(5, 20), source_lines=(i + 1, i + 16))
        for i in reversed(range(30))
    ]
    # A near-copy holding part of the code, renamed, at its own lines.
    spans.append(SourceSpan(text=30, tokens=60, verbatim=False, query_lines=(8, 20), source_lines=(40, 52)))
    report = assemble(spans, documents.__getitem__, 50, max_sources=4)
    [match] = report.matches
    assert (match.repo, match.source_lines, match.copies) == ("fork0/geo", (1, 16), 32)
    assert [(s.repo, s.source_lines, s.kind) for s in match.sources] == [
        (f"fork{i}/geo", (i + 1, i + 16), "verbatim") for i in range(4)
    ]
    assert report.licenses == {"Apache-2.0": 10, "MIT": 10, "unknown": 10, "GPL-3.0-only": 2}
    [*_, near, vendored] = assemble(spans, documents.__getitem__, 50, max_sources=40).matches[0].sources
    assert (near.repo, near.source_lines, near.query_lines, near.tokens, near.kind) == (
        "near/geo",
        (40, 52),
        (8, 20),
        60,
        "renamed",
    )
    assert vendored.path == "lib/hull.py"
    assert report.as_dict()["matches"][0]["sources"][0] == {
        "repo": "fork0/geo",
        "path": "hull.py",
        "license": "MIT",
        "source_lines": [1, 16],
        "query_lines": [5, 20],
        "tokens": 80,
        "kind": "verbatim",
    }
