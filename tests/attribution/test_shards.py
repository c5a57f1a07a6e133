"""An index of several shards, built as Ray tasks on a local 2-worker cluster, answers as one shard
built in one process over the same corpus does; --add adds shards and leaves the others alone;
a build that fails leaves nothing behind."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from codeinstruct.attribution import AttributionIndex, build_index
from codeinstruct.attribution.format import SHARDS_VERSION
from codeinstruct.errors import CodeinstructError

from .conftest import HULL, SCHEDULER, TEXTKIT, lines_of
from .test_duplication import SPAN, novel
from .test_index import planted, rename

ray = pytest.importorskip("ray")

RENAMES = {"convex_hull": "outline", "points": "cloud", "pts": "ordered", "lower": "bottom", "upper": "top"}


def _padded(rng: random.Random, code: str, size: int = 1400) -> str:
    """Code among novel functions, about size characters in all (so that shards split predictably)."""
    before, after = novel(rng, 2), ""
    while len(before) + len(code) + len(after) < size:
        after += "\n\n" + novel(rng, 1)
    return before + "\n\n" + code + after + "\n"


def corpus_records(seed: int = 11) -> list[dict]:
    """Ten documents of about equal size, in three groups (the three shards of a 3-shard build): the
    convex hull byte for byte in each (one content in three shards) and a part of it in a document of
    the second, before its copy (so that one shard would number the texts otherwise than shards
    end to end), the scheduler's span in the first and second, the intervals span verbatim in the
    first and third and renamed in the second."""
    rng = random.Random(seed)
    renamed_span = rename(SPAN, {"merge_intervals": "fuse", "ordered": "ranked", "merged": "fused", "last": "tail"})
    docs = [
        ("alpha/geometry", "hull.py", "MIT", HULL),
        ("alpha/timers", "scheduler.py", "GPL-3.0-only", _padded(rng, SCHEDULER)),
        ("alpha/misc", "intervals.py", "Apache-2.0", _padded(rng, SPAN)),
        ("beta/snippets", "hull_snippet.py", "MIT", _padded(rng, lines_of(HULL, 10, 25))),
        ("beta/geometry-fork", "hull.py", "BSD-3-Clause", HULL),
        ("beta/vendored", "vendor/sched.py", None, _padded(rng, lines_of(SCHEDULER, 13, 30))),
        ("beta/renamed", "fuse.py", "MIT", _padded(rng, renamed_span)),
        ("gamma/textkit", "textkit.py", "Apache-2.0", _padded(rng, TEXTKIT)),
        ("gamma/geometry-copy", "geometry/hull.py", "MIT", HULL),
        ("gamma/misc", "spans.py", "Apache-2.0", _padded(rng, SPAN)),
    ]
    return [{"content": c, "repo": r, "path": p, "license": lic} for r, p, lic, c in docs]


def write_records(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def queries() -> dict[str, str]:
    rng = random.Random(5)
    return {
        "verbatim, one content in three shards": planted(lines_of(HULL, 10, 25))[0],
        "renamed": planted(rename(lines_of(HULL, 10, 25), RENAMES))[0],
        "a span held in two shards": planted(lines_of(SCHEDULER, 13, 30))[0],
        "verbatim and renamed holders in three shards": novel(rng, 2) + "\n\n" + SPAN + "\n\n" + novel(rng, 2),
        "two spans": planted(lines_of(HULL, 10, 25) + "\n\n" + lines_of(TEXTKIT, 19, 32))[0],
        "a whole document": corpus_records()[1]["content"],
        "another whole document": corpus_records()[5]["content"],
        "novel code": novel(rng, 6),
    }


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster of 2 workers for the module (starting one takes seconds); build_index uses it."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> str:
    return write_records(tmp_path_factory.mktemp("sharded-corpus") / "corpus.jsonl", corpus_records())


@pytest.fixture(scope="module")
def single(tmp_path_factory, corpus_file) -> AttributionIndex:
    out = tmp_path_factory.mktemp("single") / "index"
    summary = build_index([corpus_file], out, shards=1, workers=1)  # in this process, no Ray
    assert summary.shards == 1
    return AttributionIndex.open(out)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, ray_cluster, corpus_file) -> AttributionIndex:
    out = tmp_path_factory.mktemp("sharded") / "index"
    summary = build_index([corpus_file], out, shards=3, workers=2)
    assert (summary.shards, summary.documents) == (3, 10)
    return AttributionIndex.open(out)


def shard_of(index: AttributionIndex) -> dict[tuple[str, str], int]:
    """(repo, path) -> the shard holding that document."""
    return {
        (repo, path): number
        for number, shard in enumerate(index.shards)
        for text in range(len(shard.texts))
        for repo, path, _ in shard.documents_of(text)
    }


def test_the_sharded_build_spreads_copies_over_shards(sharded):
    where = shard_of(sharded)
    assert len(where) == len(sharded) == 10
    # Contiguous ranges of about equal bytes: the three groups of the corpus.
    assert [where[(r["repo"], r["path"])] for r in corpus_records()] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    manifest = json.loads((sharded.path / "manifest.json").read_text())
    assert manifest["version"] == SHARDS_VERSION
    assert [s["name"] for s in manifest["shards"]] == ["shard-00000", "shard-00001", "shard-00002"]
    assert manifest["documents"] == sum(s["documents"] for s in manifest["shards"]) == 10


@pytest.mark.parametrize("name", list(queries()))
def test_sharded_answers_equal_one_shard(single, sharded, name):
    code = queries()[name]
    expected = single.check(code).as_dict()
    assert sharded.check(code).as_dict() == expected
    if name != "novel code":
        assert expected["matches"]  # the query does find something
    assert sharded.may_contain(code) == single.may_contain(code)


def test_a_span_held_in_several_shards_is_one_match_with_every_holder(sharded):
    [match] = sharded.check(queries()["verbatim, one content in three shards"]).matches
    assert match.copies == 4 and (match.repo, match.path) == ("alpha/geometry", "hull.py")
    # One content's holders together, in corpus order, then the next content's: as one shard lists them.
    assert [s.repo for s in match.sources] == [
        "alpha/geometry",
        "beta/geometry-fork",
        "gamma/geometry-copy",
        "beta/snippets",
    ]
    report = sharded.check(queries()["verbatim and renamed holders in three shards"])
    [match] = report.matches
    assert match.copies == 3
    assert {(s.repo, s.kind) for s in match.sources} == {
        ("alpha/misc", "verbatim"),
        ("gamma/misc", "verbatim"),
        ("beta/renamed", "renamed"),
    }
    assert report.licenses == {"Apache-2.0": 2, "MIT": 1}


def _files(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(directory)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in directory.rglob("*")
        if p.is_file()
    }


def test_add_builds_new_shards_and_leaves_the_others_alone(tmp_path, ray_cluster, single):
    records = corpus_records()
    first = write_records(tmp_path / "first.jsonl", records[:6])
    rest = write_records(tmp_path / "rest.jsonl", records[6:])
    out = tmp_path / "index"
    assert build_index([first], out, shards=2, workers=2).shards == 2
    before = _files(out / "shard-00000") | {"1/" + k: v for k, v in _files(out / "shard-00001").items()}
    assert not AttributionIndex.open(out).check(lines_of(TEXTKIT, 19, 32)).matches

    summary = build_index([rest], out, add=True, shards=2, workers=2)
    assert (summary.added, summary.documents, summary.shards) == (4, 10, 4)
    after = _files(out / "shard-00000") | {"1/" + k: v for k, v in _files(out / "shard-00001").items()}
    assert after == before  # the shards already there are not rewritten, not even touched
    added = AttributionIndex.open(out)
    [match] = added.check(lines_of(TEXTKIT, 19, 32)).matches
    assert (match.repo, match.path) == ("gamma/textkit", "textkit.py")
    # Added in corpus order, the index answers as one shard over the whole corpus.
    for code in queries().values():
        assert added.check(code).as_dict() == single.check(code).as_dict()
    # Adding documents already there adds nothing, not even an empty shard.
    again = build_index([first, rest], out, add=True, workers=2)
    assert (again.added, again.documents, again.shards) == (0, 10, 4)
    names = ["manifest.json", "shard-00000", "shard-00001", "shard-00002", "shard-00003"]
    assert sorted(p.name for p in out.iterdir()) == names


def test_add_to_a_one_shard_index_makes_it_the_first_shard(tmp_path, corpus_file):
    out = tmp_path / "index"
    build_index([corpus_file], out, shards=1)
    old = _files(out)
    extra = write_records(tmp_path / "extra.jsonl", [{"content": TEXTKIT, "repo": "delta/textkit", "path": "t.py"}])
    assert build_index([extra], out, add=True).shards == 2
    assert {k: v[0] for k, v in _files(out / "shard-00000").items()} == {k: v[0] for k, v in old.items()}
    [match] = AttributionIndex.open(out).check(lines_of(TEXTKIT, 19, 32)).matches
    assert match.copies == 2 and {s.repo for s in match.sources} == {"gamma/textkit", "delta/textkit"}


def test_a_build_that_fails_midway_leaves_nothing(tmp_path, ray_cluster, corpus_file):
    parent = tmp_path / "out"

    def crash_after_the_first_shard(what, done, total):
        if what.startswith("indexing") and done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index([corpus_file], parent / "index", shards=3, workers=2, progress=crash_after_the_first_shard)
    assert list(parent.iterdir()) == []

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"content": "x = 1\n", "repo": "r"}) + "\n{not json\n")
    with pytest.raises(CodeinstructError, match=r"bad.jsonl: line 2: invalid JSON"):
        build_index([corpus_file, str(bad)], parent / "index", shards=3, workers=2)
    assert list(parent.iterdir()) == []

    # An add that fails leaves the index as it was.
    build_index([corpus_file], parent / "index", shards=2, workers=2)
    before = _files(parent / "index")
    extra = write_records(
        tmp_path / "extra.jsonl",
        [{"content": TEXTKIT, "repo": "delta/textkit", "path": "t.py"}, {"content": SCHEDULER, "repo": "delta/s"}],
    )
    for shards in (1, 2):
        with pytest.raises(KeyboardInterrupt):
            build_index([extra], parent / "index", add=True, shards=shards, progress=crash_after_the_first_shard)
    with pytest.raises(CodeinstructError, match=r"bad.jsonl: line 2"):
        build_index([extra, str(bad)], parent / "index", add=True, shards=1)
    assert _files(parent / "index") == before and [p.name for p in parent.iterdir()] == ["index"]


def test_index_with_shards_then_check_through_the_cli(cli, tmp_path, ray_cluster, corpus_file, single):
    out = tmp_path / "index"
    code, stdout, err = cli("attribute", "index", corpus_file, "-o", out, "--shards", "2", "--workers", "2")
    assert code == 0, err
    assert "indexed 10 documents" in stdout and "in 2 shards" in stdout
    query = tmp_path / "generated.py"
    query.write_text(queries()["a span held in two shards"])
    code, stdout, err = cli("attribute", "check", out, query, "--json")
    assert code == 0, err
    data = json.loads(stdout)
    assert data == single.check(query.read_text(), language="Python").as_dict()
    assert data["matches"][0]["copies"] == 2 and data["licenses"] == {"GPL-3.0-only": 1, "unknown": 1}
    code, _, err = cli("attribute", "index", corpus_file, "-o", tmp_path / "other", "--shards", "0")
    assert code != 0


def test_a_damaged_or_mixed_shard_is_a_clear_error(tmp_path, sharded):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(sharded.path, copy)
    shutil.copy(copy / "shard-00000" / "manifest.json", copy / "shard-00001" / "manifest.json")
    with pytest.raises(CodeinstructError, match=r"shard-00001/manifest.json: not the shard the index lists"):
        AttributionIndex.open(copy)
    shutil.rmtree(copy / "shard-00002")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][2:]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CodeinstructError, match=r"shard-00002: shard missing"):
        AttributionIndex.open(copy)
