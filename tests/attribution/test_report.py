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
