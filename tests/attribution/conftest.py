"""A small corpus for attribution tests: three repositories under different licenses and a C file.

The code is written for these tests; each file is long enough that spans of 50-150 tokens
can be cut from it.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

HULL = textwrap.dedent('''\
    """Planar geometry helpers."""

    import math


    def cross(origin, a, b):
        return (a[0] - origin[0]) * (b[1] - origin[1]) - (a[1] - origin[1]) * (b[0] - origin[0])


    def convex_hull(points):
        """Andrew's monotone chain; returns the hull counter-clockwise."""
        pts = sorted(set(points))
        if len(pts) <= 2:
            return pts
        lower = []
        for p in pts:
            while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
                lower.pop()
            lower.append(p)
        upper = []
        for p in reversed(pts):
            while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
                upper.pop()
            upper.append(p)
        return lower[:-1] + upper[:-1]


    def polygon_area(vertices):
        total = 0.0
        count = len(vertices)
        for index in range(count):
            x1, y1 = vertices[index]
            x2, y2 = vertices[(index + 1) % count]
            total += x1 * y2 - x2 * y1
        return abs(total) / 2.0


    def perimeter(vertices):
        length = 0.0
        for index, here in enumerate(vertices):
            there = vertices[(index + 1) % len(vertices)]
            length += math.dist(here, there)
        return length


    def centroid(vertices):
        area = polygon_area(vertices)
        if area == 0:
            raise ValueError("degenerate polygon")
        cx = cy = 0.0
        count = len(vertices)
        for index in range(count):
            x1, y1 = vertices[index]
            x2, y2 = vertices[(index + 1) % count]
            weight = x1 * y2 - x2 * y1
            cx += (x1 + x2) * weight
            cy += (y1 + y2) * weight
        return cx / (6.0 * area), cy / (6.0 * area)
''')

TEXTKIT = textwrap.dedent('''\
    """Small text utilities."""

    import re
    from collections import Counter

    WORD = re.compile(r"[A-Za-z']+")


    def words(text):
        return [match.group(0).lower() for match in WORD.finditer(text)]


    def top_words(text, limit=10, stop=frozenset({"the", "a", "of", "and"})):
        counts = Counter(word for word in words(text) if word not in stop)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:limit]


    def wrap(text, width):
        lines, current = [], []
        used = 0
        for word in text.split():
            extra = len(word) + (1 if current else 0)
            if current and used + extra > width:
                lines.append(" ".join(current))
                current, used = [word], len(word)
            else:
                current.append(word)
                used += extra
        if current:
            lines.append(" ".join(current))
        return lines


    class Redactor:
        def __init__(self, secrets, mask="*"):
            self.patterns = [re.compile(re.escape(secret), re.IGNORECASE) for secret in secrets]
            self.mask = mask

        def redact(self, text):
            for pattern in self.patterns:
                text = pattern.sub(lambda found: self.mask * len(found.group(0)), text)
            return text
''')

SCHEDULER = textwrap.dedent('''\
    import heapq
    import itertools


    class Scheduler:
        """Runs callbacks at virtual times, earliest first, ties in insertion order."""

        def __init__(self):
            self._queue = []
            self._counter = itertools.count()
            self.now = 0.0

        def call_at(self, when, callback, *args):
            if when < self.now:
                raise ValueError(f"cannot schedule in the past: {when} < {self.now}")
            entry = (when, next(self._counter), callback, args)
            heapq.heappush(self._queue, entry)
            return entry

        def call_later(self, delay, callback, *args):
            return self.call_at(self.now + delay, callback, *args)

        def run_until(self, deadline):
            fired = 0
            while self._queue and self._queue[0][0] <= deadline:
                when, _, callback, args = heapq.heappop(self._queue)
                self.now = when
                callback(*args)
                fired += 1
            self.now = max(self.now, deadline)
            return fired
''')

C_SOURCE = textwrap.dedent("""\
    #include <stddef.h>

    /* Binary search over a sorted array of ints; returns the index or -1. */
    long find_sorted(const int *values, size_t count, int wanted) {
        size_t low = 0, high = count;
        while (low < high) {
            size_t middle = low + (high - low) / 2;
            if (values[middle] < wanted) {
                low = middle + 1;
            } else if (values[middle] > wanted) {
                high = middle;
            } else {
                return (long)middle;
            }
        }
        return -1;
    }
""")

MIT_TEXT = """MIT License

Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without restriction.
"""


def lines_of(text: str, first: int, last: int) -> str:
    """Lines first..last (1-based, inclusive) of text."""
    return "\n".join(text.split("\n")[first - 1 : last]) + "\n"


def write_corpus(root: Path) -> list[str]:
    """The test corpus under root; returns the sources to index."""
    geometry = root / "geometry"
    (geometry / "geometry").mkdir(parents=True)
    (geometry / "pyproject.toml").write_text('[project]\nname = "acme-geometry"\nlicense = "MIT"\n')
    (geometry / "geometry" / "hull.py").write_text(HULL)
    textkit = root / "textkit"
    textkit.mkdir()
    (textkit / "pyproject.toml").write_text('[project]\nname = "textkit"\nlicense = "Apache-2.0"\n')
    (textkit / "textkit.py").write_text(TEXTKIT)
    (textkit / "search.c").write_text(C_SOURCE)
    records = root / "records.jsonl"
    records.write_text(
        json.dumps(
            {"content": SCHEDULER, "repo": "octo/timers", "path": "timers/scheduler.py", "license": "GPL-3.0-only"}
        )
        + "\n"
    )
    return [str(geometry), str(textkit), str(records)]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> list[str]:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory, corpus) -> Path:
    from codeinstruct.attribution import build_index

    out = tmp_path_factory.mktemp("indexes") / "index"
    build_index(corpus, out, workers=1)
    return out


@pytest.fixture(scope="session")
def index(index_dir):
    from codeinstruct.attribution import AttributionIndex

    return AttributionIndex.open(index_dir)
