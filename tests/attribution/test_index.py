"""Building, opening and checking an attribution index, as a user of the library sees it."""

from __future__ import annotations

import json
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from codeinstruct.attribution import AttributionIndex, build_index
from codeinstruct.attribution import build as build_module
from codeinstruct.errors import CodeinstructError

from .conftest import C_SOURCE, HULL, SCHEDULER, TEXTKIT, lines_of, write_corpus

NOVEL_BEFORE = """\
def tally_orders(orders, region):
    kept = [order for order in orders if order.region == region]
    return sum(order.amount for order in kept)


"""
NOVEL_AFTER = """

def describe(sensor):
    return f"{sensor.name}: {sensor.reading:.1f} {sensor.unit}"
"""


def planted(snippet: str) -> tuple[str, tuple[int, int]]:
    """Novel code with the snippet in the middle, and the snippet's query lines."""
    first = NOVEL_BEFORE.count("\n") + 1
    return NOVEL_BEFORE + snippet + NOVEL_AFTER, (first, first + snippet.rstrip("\n").count("\n"))


def rename(code: str, names: dict[str, str]) -> str:
    return re.sub(r"\b\w+\b", lambda m: names.get(m.group(0), m.group(0)), code)


def test_verbatim_copy_is_found_with_repo_path_license_and_lines(index):
    query, query_lines = planted(lines_of(HULL, 10, 25))  # convex_hull
    report = index.check(query)
    [match] = report.matches
    assert (match.repo, match.path, match.license) == ("acme-geometry", "geometry/hull.py", "MIT")
    assert match.source_lines == (10, 25)
    assert match.query_lines == query_lines
    assert match.kind == "verbatim"
    assert match.tokens >= 100
    assert match.copies == 1
    assert report.licenses == {"MIT": 1}


def test_renamed_and_reflowed_copy_is_found_as_renamed(index):
    snippet = rename(
        lines_of(HULL, 10, 25),
        {
            "convex_hull": "outline",
            "points": "cloud",
            "pts": "ordered",
            "lower": "bottom",
            "upper": "top",
            "p": "q",
        },
    )
    # Re-flowed: two-space indentation, no spaces around operators, a call broken over lines.
    snippet = snippet.replace("    ", "  ").replace(" <= ", "<=").replace(" >= ", ">=")
    snippet = snippet.replace(
        "cross(bottom[-2], bottom[-1], q)", "cross(\n        bottom[-2],\n        bottom[-1],\n        q)"
    )
    query, query_lines = planted(snippet)
    [match] = index.check(query).matches
    assert match.kind == "renamed"
    assert (match.repo, match.path) == ("acme-geometry", "geometry/hull.py")
    assert match.source_lines == (10, 25)
    assert match.query_lines == query_lines


def test_whitespace_comments_and_quote_style_still_count_as_verbatim(index):
    snippet = lines_of(TEXTKIT, 19, 32).replace('" "', "' '").replace("used = 0", "used = 0  # width so far")
    [match] = index.check(planted(snippet)[0]).matches
    assert match.kind == "verbatim"
    assert (match.repo, match.path, match.license) == ("textkit", "textkit.py", "Apache-2.0")


def test_novel_code_is_not_reported(index):
    novel = (
        NOVEL_BEFORE
        + """
class Inventory:
    def __init__(self):
        self.items = {}

    def restock(self, sku, quantity):
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        self.items[sku] = self.items.get(sku, 0) + quantity

    def ship(self, sku, quantity):
        available = self.items.get(sku, 0)
        if available < quantity:
            return False
        self.items[sku] = available - quantity
        return True
"""
        + NOVEL_AFTER
    )
    report = index.check(novel)
    assert report.matches == []
    assert report.licenses == {}
    assert not index.may_contain(novel)


def test_span_shorter_than_min_tokens_is_not_reported(index):
    short = lines_of(HULL, 28, 33)  # 45 tokens of polygon_area
    assert index.check(planted(short)[0]).matches == []
    whole = lines_of(HULL, 28, 35)  # all of polygon_area: 61 tokens
    assert [m.tokens for m in index.check(planted(whole)[0]).matches] == [61]
    assert index.check(planted(whole)[0], min_tokens=70).matches == []


def test_min_tokens_below_what_the_index_guarantees_is_an_error(index):
    with pytest.raises(CodeinstructError, match="finds spans of 50 tokens or more"):
        index.check("x = 1", min_tokens=20)


def test_jsonl_records_keep_their_metadata(index):
    [match] = index.check(planted(lines_of(SCHEDULER, 13, 30))[0]).matches
    assert (match.repo, match.path, match.license) == ("octo/timers", "timers/scheduler.py", "GPL-3.0-only")
    assert match.source_lines == (13, 30)


def test_c_code_is_found_with_its_own_lexer(index):
    snippet = "int twice(int x) { return 2 * x; }\n\n" + lines_of(C_SOURCE, 4, 17)
    for language in (None, "C"):
        [match] = index.check(snippet, language=language).matches
        assert (match.path, match.source_lines, match.query_lines) == ("search.c", (4, 17), (3, 16))


def test_copies_are_counted_and_licenses_summed(tmp_path):
    sources = write_corpus(tmp_path / "corpus")
    fork = tmp_path / "corpus" / "fork"
    fork.mkdir()
    (fork / "pyproject.toml").write_text('[project]\nname = "hull-fork"\nlicense = "BSD-3-Clause"\n')
    (fork / "hull.py").write_text(HULL)  # the same file in another repository
    build_index([*sources, str(fork)], tmp_path / "index", workers=1)
    report = AttributionIndex.open(tmp_path / "index").check(planted(lines_of(HULL, 10, 25))[0])
    [match] = report.matches
    assert match.copies == 2
    assert report.licenses == {"BSD-3-Clause": 1, "MIT": 1}
    assert report.as_dict()["matches"][0]["copies"] == 2


def test_report_json_shape(index):
    data = json.loads(json.dumps(index.check(planted(lines_of(HULL, 10, 25))[0]).as_dict()))
    assert set(data) == {"matches", "licenses"}
    assert set(data["matches"][0]) == {
        "repo",
        "path",
        "license",
        "source_lines",
        "query_lines",
        "tokens",
        "kind",
        "copies",
        "sources",
    }
    assert data["matches"][0]["source_lines"] == [10, 25]
    [source] = data["matches"][0]["sources"]
    assert source == {key: data["matches"][0][key] for key in source}
    assert set(source) == {"repo", "path", "license", "source_lines", "query_lines", "tokens", "kind"}


def test_concurrent_readers_get_the_same_answers(index_dir):
    shared = AttributionIndex.open(index_dir)
    queries = [
        planted(lines_of(HULL, 10, 25))[0],
        planted(lines_of(SCHEDULER, 13, 30))[0],
        planted(lines_of(TEXTKIT, 19, 32))[0],
        NOVEL_BEFORE * 5,
    ]
    expected = [shared.check(q) for q in queries]
    for shard in shared.shards:
        shard._chunk.cache_clear()
    barrier = threading.Barrier(8)

    def work(i: int):
        barrier.wait()
        return [(j, shared.check(queries[j])) for j in [(i + n) % len(queries) for n in range(12)]]

    with ThreadPoolExecutor(8) as pool:
        for results in pool.map(work, range(8)):
            for j, report in results:
                assert report == expected[j]


# ---------------------------------------------------------------- building


def test_add_keeps_old_documents_and_is_idempotent(tmp_path, corpus):
    out = tmp_path / "index"
    first = build_index(corpus[:1], out, workers=1)
    assert first.documents == 1
    added = build_index(corpus[1:], out, add=True, workers=1)
    assert added.documents == 4 and added.added == 3
    index = AttributionIndex.open(out)
    assert index.check(planted(lines_of(HULL, 10, 25))[0]).matches[0].path == "geometry/hull.py"
    assert index.check(planted(lines_of(SCHEDULER, 13, 30))[0]).matches[0].repo == "octo/timers"
    again = build_index(corpus, out, add=True, workers=1)
    assert (again.added, again.documents) == (0, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temporary directories left


def test_add_needs_an_index_and_the_same_min_tokens(tmp_path, corpus):
    with pytest.raises(CodeinstructError, match="no index to add to"):
        build_index(corpus, tmp_path / "missing", add=True)
    build_index(corpus[:1], tmp_path / "index", workers=1)
    with pytest.raises(CodeinstructError, match="built with --min-tokens 50"):
        build_index(corpus[1:], tmp_path / "index", add=True, min_tokens=30)


def test_existing_path_is_not_overwritten(tmp_path, corpus):
    (tmp_path / "index").mkdir()
    with pytest.raises(CodeinstructError, match="already exists"):
        build_index(corpus, tmp_path / "index")


def test_bad_input_leaves_nothing_behind(tmp_path, corpus):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"content": "x = 1\n", "repo": "r"}) + "\n{not json\n")
    out = tmp_path / "out" / "index"
    with pytest.raises(CodeinstructError, match=r"bad.jsonl: line 2: invalid JSON"):
        build_index([*corpus, str(bad)], out, workers=1)
    assert list((tmp_path / "out").iterdir()) == []


def test_workers_do_not_change_a_one_shard_index(tmp_path, corpus, monkeypatch):
    # Tiny batches, so that the dictionary is trained on the first and the rest are compressed with it.
    monkeypatch.setattr(build_module, "_BATCH_DOCUMENTS", 1)
    one = build_index(corpus, tmp_path / "one", workers=1)
    two = build_index(corpus, tmp_path / "two", workers=2)
    assert (one.shards, two.shards) == (1, 1)  # a small corpus is one shard, built in this process
    assert one.index_bytes == two.index_bytes

    def manifest(p):
        return json.loads((p / "manifest.json").read_text())

    assert manifest(tmp_path / "one") == manifest(tmp_path / "two")


# ---------------------------------------------------------------- a damaged index


@pytest.fixture
def damaged(tmp_path, index_dir) -> Path:
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    return copy


def test_corrupted_file_is_a_clear_error(damaged):
    data = bytearray((damaged / "postings.npy").read_bytes())
    data[-1] ^= 0xFF
    (damaged / "postings.npy").write_bytes(bytes(data))
    with pytest.raises(
        CodeinstructError, match=r"postings.npy: checksum does not match the manifest; the index is corrupted"
    ):
        AttributionIndex.open(damaged)


def test_truncated_file_is_a_clear_error(damaged):
    data = (damaged / "views.bin").read_bytes()
    (damaged / "views.bin").write_bytes(data[:-10])
    with pytest.raises(CodeinstructError, match=r"views.bin: \d+ bytes, the manifest says \d+"):
        AttributionIndex.open(damaged)


def test_missing_file_and_missing_manifest_are_clear_errors(damaged):
    (damaged / "bloom.npy").unlink()
    with pytest.raises(CodeinstructError, match="bloom.npy: missing"):
        AttributionIndex.open(damaged)
    (damaged / "manifest.json").unlink()
    with pytest.raises(CodeinstructError, match="not an attribution index"):
        AttributionIndex.open(damaged)


def test_other_format_version_is_a_clear_error(damaged):
    manifest = json.loads((damaged / "manifest.json").read_text())
    manifest["version"] = 99
    (damaged / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CodeinstructError, match="format version 99"):
        AttributionIndex.open(damaged)


def test_files_from_another_index_are_caught(damaged, tmp_path, corpus):
    other = tmp_path / "other"
    build_index(corpus[:1], other, workers=1)
    shutil.copy(other / "texts.npy", damaged / "texts.npy")
    with pytest.raises(CodeinstructError, match="texts.npy: .*(bytes|checksum)"):
        AttributionIndex.open(damaged)


def test_the_literal_prefilter_never_drops_a_window_that_could_hold_a_reported_span():
    # IndexShard drops a place before verifying it when no min_tokens of it can hold a span
    # verification reports (fewer than three literals, or at least as many kept as changed).
    # Compared with trying every range of every window, on random windows.
    import types

    import numpy as np

    from codeinstruct.attribution.index import _may_hold

    rng = np.random.default_rng(0)
    dropped = 0
    for _ in range(150):
        n, m = int(rng.integers(60, 160)), int(rng.integers(5, 40))
        literal = rng.random(n) < rng.uniform(0.05, 0.5)
        query_keys = rng.integers(1, 4, n).astype(np.uint64)
        lo = rng.integers(0, n - m, 5)
        hi = np.minimum(n, lo + rng.integers(m, n, 5))
        pool = rng.integers(1, 4, (5, n)).astype(np.uint64)
        q = types.SimpleNamespace(literal_positions=np.flatnonzero(literal), keys=query_keys, view=np.zeros(n))
        got = _may_hold(q, lo, hi, np.arange(5) * n, pool.ravel(), m)
        for row in range(5):
            kept = literal & (pool[row] == query_keys)
            expected = any(
                literal[x:y].sum() < 3 or 2 * kept[x:y].sum() >= literal[x:y].sum()
                for x in range(lo[row], hi[row] - m + 1)
                for y in range(x + m, hi[row] + 1)
            )
            assert bool(got[row]) == expected
            dropped += not expected
    assert dropped > 50  # the comparison covered windows it drops
