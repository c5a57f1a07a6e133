"""Checking against corpora full of copies and near-copies, as real code is: every span is found
whatever holds it, and every holder is counted, listed with its lines and licensed."""

from __future__ import annotations

import collections
import json
import random
import re
import textwrap
from pathlib import Path

from codeinstruct.attribution import AttributionIndex, build_index
from codeinstruct.attribution.report import MAX_SOURCES

LICENSES = ("MIT", "Apache-2.0", "GPL-3.0-only", "BSD-3-Clause", None)

SPAN = textwrap.dedent("""\
    def merge_intervals(intervals, tolerance=0):
        ordered = sorted(intervals, key=lambda pair: pair[0])
        merged = [list(ordered[0])]
        for start, stop in ordered[1:]:
            last = merged[-1]
            if start <= last[1] + tolerance:
                last[1] = max(last[1], stop)
            else:
                merged.append([start, stop])
        return [tuple(pair) for pair in merged]
""")  # 102 tokens on 10 lines
# Every literal changed, consistently: the same fingerprints (literals are abstracted), but no
# 50 identical tokens and a renaming that keeps none of the literals, so not a copy.
NEAR = re.sub(r"\b[01]\b", lambda m: {"0": "2", "1": "3"}[m.group()], SPAN)


def novel(rng: random.Random, functions: int) -> str:
    """Functions of random names, literals and statement shapes: in no corpus."""

    def name() -> str:
        return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3)) + str(rng.randrange(99))

    out = []
    for _ in range(functions):
        names = [name() for _ in range(rng.randint(1, 3))]
        lines = [f"def {name()}({', '.join(names)}):"]
        for _ in range(rng.randint(2, 5)):
            target, a, b = name(), rng.choice(names), rng.choice(names)
            form = rng.randrange(4)
            if form == 0:
                lines.append(f"    {target} = {a} * {rng.randint(2, 999)} + {b}")
            elif form == 1:
                lines.append(f"    if {a} > {rng.randint(0, 99)}:\n        return [{b}, '{name()}']")
            elif form == 2:
                lines.append(f"    {target} = {{'{name()}': {a}, '{name()}': {b}}}")
            else:
                lines.append(f"    for {target} in {a}:\n        {b}.{name()}({target}, {rng.randint(0, 9)})")
            names.append(target)
        lines.append(f"    return {rng.choice(names)}")
        out.append("\n".join(lines) + "\n")
    return "\n\n".join(out)


def between(rng: random.Random, code: str) -> tuple[str, tuple[int, int]]:
    """Novel code with code in the middle, and the lines it is on."""
    before = novel(rng, 3) + "\n\n"
    first = before.count("\n") + 1
    return before + code + "\n\n" + novel(rng, 3), (first, first + code.rstrip("\n").count("\n"))


def index_of(tmp_path: Path, records: list[dict]) -> AttributionIndex:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in records))
    build_index([str(corpus)], tmp_path / "index", workers=1)
    return AttributionIndex.open(tmp_path / "index")


def test_a_span_held_by_many_files_is_found_among_near_copies_that_fingerprint_alike(tmp_path):
    rng = random.Random(1)
    # 200 near-copies first (their fingerprints match the span's; none verifies), then 60 files
    # holding the span itself: a verification budget spent on the first would find nothing.
    records = [
        {"content": novel(rng, 2) + "\n\n" + NEAR + "\n\n" + novel(rng, 2), "repo": f"near{i}", "path": "near.py"}
        for i in range(200)
    ]
    records += [
        {"content": f"# vendored copy {i}\n" + SPAN, "repo": f"holder{i}", "path": "merge.py", "license": "MIT"}
        for i in range(60)
    ]
    index = index_of(tmp_path, records)
    query, lines = between(rng, SPAN)
    for code, query_lines in ((query, lines), (SPAN, (1, 10))):
        [match] = index.check(code).matches
        assert (match.kind, match.query_lines, match.source_lines) == ("verbatim", query_lines, (2, 11))
        assert match.repo.startswith("holder") and match.copies == 60  # near-copies hold no span
        assert len(match.sources) == MAX_SOURCES
        assert all(s.repo.startswith("holder") and s.source_lines == (2, 11) for s in match.sources)


def test_a_span_in_a_heavily_duplicated_file_is_attributed_to_every_holder(tmp_path):
    rng = random.Random(2)
    head, tail = novel(rng, 4) + "\n\n", "\n\n" + novel(rng, 4)
    first = head.count("\n") + 1
    records, holders = [], {}
    for i in range(45):
        # Forks: distinct files (a header line of their own), some with byte-identical copies
        # in other repositories (one stored text, several documents); licenses of all kinds.
        content = f"# fork {i}\n" + head + SPAN + tail
        for j in range(1 + (i % 3 == 0)):
            record = {"content": content, "repo": f"fork{i}-{j}", "path": f"src/m{i}.py", "license": LICENSES[i % 5]}
            records.append(record)
            holders[(record["repo"], record["path"])] = record["license"]
    for i in range(30):  # near-copies of the whole file: everything but the span
        content = f"# near {i}\n" + head + NEAR + tail
        records.append({"content": content, "repo": f"near{i}", "path": f"src/m{i}.py", "license": "GPL-2.0-only"})
    index = index_of(tmp_path, records)
    report = index.check(between(rng, SPAN)[0])
    [match] = report.matches
    assert match.copies == len(holders) == 60
    assert len(match.sources) == MAX_SOURCES
    for source in match.sources:
        assert holders[(source.repo, source.path)] == source.license
        assert source.source_lines == (first + 1, first + 10) and source.kind == "verbatim"
    assert report.licenses == {
        (license or "unknown"): n for license, n in collections.Counter(holders.values()).most_common()
    }
    data = report.as_dict()["matches"][0]
    assert data["copies"] == 60 and len(data["sources"]) == MAX_SOURCES
    assert data["sources"][0] == {key: data[key] for key in data["sources"][0]}  # the match's own document first


def test_a_whole_indexed_document_finds_itself(tmp_path):
    rng = random.Random(3)
    document = novel(rng, 6) + "\n\n" + SPAN + "\n\n" + novel(rng, 6)
    # Near-copies indexed first: the document with a function added, or one line changed.
    records = [
        {"content": document + "\n\n" + novel(rng, 1), "repo": f"extended{i}", "path": "ext.py", "license": "MIT"}
        for i in range(5)
    ]
    changed = document.split("\n")
    changed[len(changed) // 2] += "  # reviewed"
    records += [{"content": "\n".join(changed).replace("return", "return  ", 1), "repo": "edited", "path": "e.py"}]
    records.append({"content": document, "repo": "origin", "path": "origin.py", "license": "GPL-3.0-only"})
    index = index_of(tmp_path, records)
    report = index.check(document)
    last = document.rstrip("\n").count("\n") + 1
    [match] = [m for m in report.matches if ("origin", "origin.py") in {(s.repo, s.path) for s in m.sources}]
    assert match.query_lines == (1, last) and match.kind == "verbatim"
    mine = [s for s in match.sources if s.repo == "origin"]
    assert [s.source_lines for s in mine] == [(1, last)]
    assert report.licenses["GPL-3.0-only"] == 1


def _method(i: int, label: str) -> str:
    return textwrap.indent(
        textwrap.dedent(f"""\
            def check_case_{i}(self):
                result = parse_record({label!r}, strict=True, limit={i + 7})
                self.assertEqual(result.name, {label!r})
                self.assertEqual(result.fields, [{i}, {i + 1}, {i + 2}])
                self.assertTrue(result.valid and result.size > {i * 3})
        """),
        "    ",
    )


def test_a_span_in_a_file_that_repeats_its_shape_is_found_wherever_it_is(tmp_path):
    rng = random.Random(4)
    labels = [f"record-{rng.randrange(10**6)}" for _ in range(40)]
    body = "class Tests:\n" + "\n".join(_method(i, labels[i]) for i in range(40))
    index = index_of(tmp_path, [{"content": body, "repo": "tests", "path": "test_records.py"}])
    # Forty places with the copied method's shape; only one holds its literals.
    for i in (3, 35):
        query, (first, _) = between(rng, "class Copied:\n" + _method(i, labels[i]))
        [match] = index.check(query).matches
        assert match.kind == "verbatim" and match.query_lines == (first + 1, first + 5)
        assert match.source_lines == (2 + 6 * i, 6 + 6 * i)


def test_a_verbatim_copy_among_same_shaped_code_is_reported_verbatim(tmp_path):
    rng = random.Random(5)

    def around() -> str:  # one statement shape over and over, with other names and values
        return "\n\n".join(
            f"def f{rng.randrange(999)}(a{i}, b{i}):\n    c{i} = [a{i} * {rng.randint(2, 99)} for d in b{i}]\n"
            f"    return {{'k{rng.randrange(99)}': c{i}, 'n{rng.randrange(99)}': b{i}}}\n"
            for i in range(4)
        )

    source = around() + "\n\n" + SPAN + "\n\n" + around()
    first = source[: source.index(SPAN)].count("\n") + 1
    index = index_of(tmp_path, [{"content": source, "repo": "r", "path": "p.py"}])
    # The alignment runs on through the same-shaped code around the copy (a renaming of it,
    # but one with other values, so not a copy): the copy in its middle is still verbatim.
    query, _ = between(rng, around() + "\n\n" + SPAN + "\n\n" + around())
    verbatim = [m for m in index.check(query).matches if m.kind == "verbatim"]
    assert [m.source_lines for m in verbatim] == [(first, first + 9)]


def test_a_span_across_two_stored_chunks_has_the_lines_that_hold_it(tmp_path):
    from codeinstruct.attribution.format import CHUNK_TOKENS
    from codeinstruct.attribution.normalize import scanner_for

    rng = random.Random(6)
    functions = []
    while len(scanner_for("Python").scan("\n\n".join(functions))) < CHUNK_TOKENS - 40:
        functions.append(novel(rng, 1))
    before = "\n\n".join(functions) + "\n\n"
    assert len(scanner_for("Python").scan(before)) < CHUNK_TOKENS < len(scanner_for("Python").scan(before + SPAN))
    document = before + SPAN + "\n\n" + novel(rng, 20)
    first = before.count("\n") + 1
    index = index_of(tmp_path, [{"content": document, "repo": "r", "path": "big.py"}])
    assert index.shards[0].texts[0]["chunks"] == 2
    for code in (SPAN, between(rng, SPAN)[0]):
        [match] = index.check(code).matches
        assert (match.source_lines, match.tokens, match.kind) == ((first, first + 9), 102, "verbatim")


def test_holders_of_one_code_differing_just_around_it_each_get_their_own_span(tmp_path):
    # Holders are checked together, and stretches, identical runs and alignments are shared
    # between holders whose tokens agree: a holder with the same code twice, and holders whose
    # code differs by one token just before or after the span, must each get what they hold.
    rng = random.Random(7)
    middle = novel(rng, 2)
    twice = novel(rng, 2) + "\n\n" + SPAN + "\n\n" + middle + "\n\n" + SPAN
    places = {
        (i + 1, i + 10) for i in range(len(twice.split("\n"))) if "\n".join(twice.split("\n")[i:]).startswith(SPAN)
    }
    assert len(places) == 2
    records = [{"content": twice, "repo": "twice", "path": "t.py", "license": "MIT"}]
    records += [{"content": f"# copy {i}\n" + SPAN, "repo": f"holder{i}", "path": "m.py"} for i in range(3)]
    records += [
        {"content": f"limit = {i % 3}\n" + SPAN + f"print(limit, {i})\n", "repo": f"edge{i}", "path": "e.py"}
        for i in range(6)
    ]
    index = index_of(tmp_path, records)
    [match] = index.check(SPAN).matches
    assert match.copies == len(match.sources) == 10 and match.kind == "verbatim"
    [mine] = [s for s in match.sources if s.repo == "twice"]
    assert mine.source_lines in places and mine.query_lines == (1, 10)
    # The line before the span is the query's in edge0 and edge3, the line after in edge4 only.
    [match] = index.check("limit = 0\n" + SPAN + "print(limit, 4)\n").matches
    sources = {s.repo: s for s in match.sources}
    assert match.copies == len(sources) == 10 and all(s.tokens >= 102 for s in sources.values())
    assert (sources["edge0"].query_lines, sources["edge0"].kind) == ((1, 11), "verbatim")
    assert (sources["edge4"].query_lines, sources["edge4"].kind) == ((2, 12), "verbatim")
    assert sources["edge3"].query_lines == (1, 12)
    for repo in ("holder0", "holder1", "holder2", "twice"):
        assert (sources[repo].query_lines, sources[repo].kind) == ((2, 11), "verbatim")


def generated_model(rng: random.Random, cls: str, fields: list[str]) -> str:
    """A model class as SDK generators write them: a getter and a setter per field, with docstrings
    naming the class and field (every file the same code under other names)."""
    out = [f"class {cls}(object):\n"]
    for field in fields:
        kind = rng.choice(["str", "int", "list[str]", "datetime"])
        out.append(
            f"    @property\n    def {field}(self):\n"
            f'        """\n        Gets the {field} of this {cls}.\n        The {field} of the resource.\n\n'
            f'        :return: The {field} of this {cls}.\n        :rtype: {kind}\n        """\n'
            f"        return self._{field}\n\n"
            f"    @{field}.setter\n    def {field}(self, {field}):\n"
            f'        """\n        Sets the {field} of this {cls}.\n\n'
            f'        :param {field}: The {field} of this {cls}.\n        :type: {kind}\n        """\n'
            f"        self._{field} = {field}\n\n"
        )
    return "".join(out)


def test_a_renamed_copy_is_found_among_hundreds_of_files_of_one_generated_template(tmp_path):
    # 700 generated files fingerprint alike (names are abstracted, and so are the docstrings)
    # and align as consistent renamings, but keep none of the docstrings; the one file the
    # code was copied from comes last. Verifying the others first would spend any budget.
    rng = random.Random(5)

    def word() -> str:
        return "".join(rng.choice("bcdfghklmnprstvz") + rng.choice("aeiou") for _ in range(3))

    records = []
    for i in range(701):
        cls = word().title() + word().title() + str(i)
        records.append(
            {
                "content": generated_model(rng, cls, [f"{word()}_{word()}" for _ in range(5)]),
                "repo": f"sdk{i}",
                "path": f"models/m{i}.py",
                "license": "Apache-2.0",
            }
        )
    source = records[-1]["content"]
    names = {n: "n" + str(i) for i, n in enumerate(sorted(set(re.findall(r"(?<![\w.])[a-z]+_[a-z]+\b", source))))}
    copy = re.sub(r"(?<=[ .(@_])([a-z]+_[a-z]+)\b(?!\s*(of|:))", lambda m: names.get(m.group(1), m.group(1)), source)
    index = index_of(tmp_path, records)
    query, lines = between(rng, copy.split("\n", 1)[1])
    matches = index.check(query).matches
    assert [m.repo for m in matches] == ["sdk700"]
    assert matches[0].kind == "renamed"
