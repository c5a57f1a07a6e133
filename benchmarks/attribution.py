"""Attribution on a real corpus: recall per kind of copy, precision, query latency, build throughput
and index size, measured in one run.

    .venv/bin/python benchmarks/attribution.py [--queries 300] [--max-mb 0] [--workers N] [--json out.json]

The corpus is the local Python standard library plus the Python sources of the installed
packages in this interpreter's site-packages (about 290 MB in this project's .venv), read with
codeinstruct.data.corpus as `attribute index` reads it. Each query is about 2 KB of novel
code (generated: random names, literals and statement shapes, so it occurs in no corpus) with,
for positive queries, a span of 50-200 tokens of a random indexed document planted in the middle:

- verbatim: the span as it is;
- reformatted: spacing around operators changed, lines broken after commas inside brackets,
  indentation halved, blank lines and end-of-line comments added, quote style swapped;
- renamed: every local name consistently renamed (attributes, builtins and imported names
  kept), and reformatted.

Negative queries are novel code only. As a check on real code that is not in the index, this
repository's own sources are checked too, in chunks of 60 lines; what is reported there is
listed, to be read (a real copy is a right answer there). A planted span counts as found when a reported match
overlaps its query lines and names its source document (or a copy of it: a match with
copies > 1). Precision is the share of reported matches that are such finds; a match on novel
code is a false positive. Timings are wall-clock on a shared machine: read them as rough;
build throughput is also given per CPU-second of all processes, which load does not inflate.
"""

from __future__ import annotations

import argparse
import builtins
import json
import keyword
import os
import random
import re
import resource
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codeinstruct.attribution import AttributionIndex, build_index
from codeinstruct.attribution.fingerprint import keys_of, kgram_hashes
from codeinstruct.attribution.normalize import scanner_for, view_of
from codeinstruct.data.corpus import iter_documents
from codeinstruct.data.stats import percentile

KINDS = ("verbatim", "reformatted", "renamed")
_PYTHON = scanner_for("Python")
_KEEP_NAMES = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins)) | {"self", "cls"}
_WORD = re.compile(r"[A-Za-z_]\w*")


@dataclass
class Planted:
    kind: str
    repo: str
    path: str
    source_lines: tuple[int, int]
    query: str
    query_lines: tuple[int, int] | None  # None for a negative
    tokens: int


# ---------------------------------------------------------------- novel code


class NovelCode:
    """Random but well-formed Python: names and literals nobody wrote before."""

    def __init__(self, rng: random.Random):
        self.rng = rng

    def name(self) -> str:
        r = self.rng
        return "".join(r.choice("bcdfghjklmnpqrstvwxz") + r.choice("aeiou") for _ in range(r.randint(2, 4))) + r.choice(
            ["", "_" + str(r.randint(0, 99))]
        )

    def literal(self) -> str:
        r = self.rng
        if r.random() < 0.5:
            return str(r.randint(0, 10_000))
        return repr(" ".join(self.name() for _ in range(r.randint(1, 4))))

    def expr(self, names: list[str]) -> str:
        r = self.rng
        a, b = r.choice(names), r.choice(names + [self.literal()])
        form = r.randrange(5)
        if form == 0:
            return f"{a} {r.choice('+-*%')} {b}"
        if form == 1:
            return f"{self.name()}({a}, {b})"
        if form == 2:
            return f"{a}.{self.name()}({self.literal()})"
        if form == 3:
            return f"[{a} for {self.name()} in {b}]"
        return f"({a}, {self.literal()}, {b})"

    def function(self) -> str:
        r = self.rng
        names = [self.name() for _ in range(r.randint(1, 3))]
        lines = [f"def {self.name()}({', '.join(names)}):"]
        for _ in range(r.randint(2, 6)):
            form = r.randrange(4)
            target = self.name()
            if form == 0:
                lines.append(f"    {target} = {self.expr(names)}")
            elif form == 1:
                lines.append(
                    f"    if {r.choice(names)} > {self.literal()}:\n        {target} = {self.expr(names)}\n"
                    f"    else:\n        {target} = {self.literal()}"
                )
            elif form == 2:
                i = self.name()
                lines.append(f"    {target} = 0\n    for {i} in {self.expr(names)}:\n        {target} += {i}")
            else:
                lines.append(
                    f"    {target} = {{{self.literal()}: {r.choice(names)}, {self.literal()}: {self.expr(names)}}}"
                )
            names.append(target)
        lines.append(f"    return {self.expr(names)}")
        return "\n".join(lines) + "\n"

    def block(self, size: int) -> str:
        out = ""
        while len(out) < size:
            out += self.function() + "\n"
        return out


# ---------------------------------------------------------------- copies


def spans_of(content: str) -> list[tuple[int, int]]:
    """Candidate (first line, last line) ranges that neither start nor end inside a multi-line token."""
    tokens = _PYTHON.scan(content)
    inside = set()
    starts: dict[int, int] = {}
    for i, (text, line) in enumerate(zip(tokens.texts, tokens.lines)):
        starts.setdefault(line, i)
        inside.update(range(line + 1, line + text.count("\n") + 1))
    return [(line, i) for line, i in sorted(starts.items()) if line not in inside]


def reformat(span: str, rng: random.Random) -> str:
    """The same tokens laid out differently (whitespace, line breaks, comments, quote style)."""
    out: list[str] = []
    depth = 0
    pieces = _PYTHON.pattern.findall(span)
    for k, piece in enumerate(pieces):
        if piece == "\n":
            if out and rng.random() < 0.15:
                out.append("  # " + " ".join(rng.choice(["see", "note", "keep", "why", "ok"]) for _ in range(2)))
            out.append("\n\n" if rng.random() < 0.1 else "\n")
            continue
        if piece.isspace():
            if out and out[-1].endswith("\n"):
                out.append(" " * (len(piece.expandtabs(4)) // 2))  # halve the indentation
                continue
            before, after = out[-1][-1:] if out else "", pieces[k + 1][:1] if k + 1 < len(pieces) else ""
            glue = (before.isalnum() or before in "_\"'") and (after.isalnum() or after in "_\"'")
            out.append(" " if glue else rng.choice(["", " ", "  "]))
            continue
        if piece in "([{":
            depth += 1
        elif piece in ")]}":
            depth = max(0, depth - 1)
        if (
            piece[:1] in "'\""
            and len(piece) >= 2
            and piece[0] == piece[-1]
            and "'" not in piece[1:-1]
            and '"' not in piece[1:-1]
            and "\\" not in piece
        ):
            piece = ('"' if piece[0] == "'" else "'") + piece[1:-1] + ('"' if piece[0] == "'" else "'")
        out.append(piece)
        if piece == "," and depth > 0 and rng.random() < 0.3:
            out.append("\n        ")
    return "".join(out)


def rename(span: str, rng: random.Random) -> str:
    """Every local name consistently renamed; attributes (after a dot), keywords, builtins and
    names that an import statement in the span binds or reads kept."""
    pieces = _PYTHON.pattern.findall(span)
    imported: set[str] = set()
    importing, depth, previous = False, 0, "\n"
    for piece in pieces:
        if piece in ("import", "from") and previous == "\n":
            importing = True
        elif piece in "([{" and piece:
            depth += 1
        elif piece in ")]}" and piece:
            depth = max(0, depth - 1)
        elif piece == "\n" and depth == 0:
            importing = False
        elif importing and _WORD.fullmatch(piece):
            imported.add(piece)
        if not piece.isspace() or piece == "\n":
            previous = piece
    mapping: dict[str, str] = {}
    out = []
    previous = ""
    for piece in pieces:
        if _WORD.fullmatch(piece) and piece not in _KEEP_NAMES and piece not in imported and previous != ".":
            if piece not in mapping:
                mapping[piece] = f"{piece[:1].lower()}{rng.choice('xyzqw')}{len(mapping)}_{rng.randrange(1000)}"
            piece = mapping[piece]
        if not piece.isspace():
            previous = piece
        out.append(piece)
    return "".join(out)


def plant(
    kind: str, content: str, spans: list[tuple[int, int]], novel: NovelCode, rng: random.Random, query_bytes: int
) -> tuple[str, tuple[int, int], tuple[int, int], int] | None:
    """A query with a copy of a 50-200 token span of content, or None if no such span was drawn."""
    lines = content.split("\n")
    target = rng.randint(50, 200)
    for _ in range(10):
        a = rng.randrange(len(spans))
        first_line, first_token = spans[a]
        for b in range(a + 1, len(spans)):
            last_line, end_token = spans[b][0] - 1, spans[b][1]
            if end_token - first_token >= target:
                break
        else:
            continue
        text = "\n".join(lines[first_line - 1 : last_line])
        tokens = len(_PYTHON.scan(text))
        if not 50 <= tokens <= 200:
            continue
        copy = text if kind == "verbatim" else reformat(text if kind == "reformatted" else rename(text, rng), rng)
        room = max(0, query_bytes - len(copy))
        before = novel.block(room // 2) if room > 200 else ""
        after = novel.block(room - len(before)) if room > 200 else ""
        start = before.count("\n") + 1
        query = before + copy + "\n" + after
        return query, (start, start + copy.count("\n")), (first_line, last_line), tokens
    return None


# ---------------------------------------------------------------- run


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the build's worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def default_sources() -> list[str]:
    return ["builtin:stdlib", sysconfig.get_paths()["purelib"]]


def sample_documents(sources: list[str], include: list[str], n: int, rng: random.Random) -> list:
    """A uniform sample of n Python documents (reservoir), to draw spans from."""
    sample: list = []
    seen = 0
    for doc in iter_documents(sources, include=include):
        if doc.language != "Python" or len(doc.content) < 2000:
            continue
        seen += 1
        if len(sample) < n:
            sample.append(doc)
        elif (j := rng.randrange(seen)) < n:
            sample[j] = doc
    return sample


def make_queries(
    sources: list[str], include: list[str], per_kind: int, query_bytes: int, rng: random.Random
) -> list[Planted]:
    """per_kind planted queries of each kind and per_kind negatives, shuffled."""
    docs = sample_documents(sources, include, max(200, per_kind), rng)
    novel = NovelCode(rng)
    queries: list[Planted] = []
    for kind in KINDS:
        while sum(q.kind == kind for q in queries) < per_kind:
            doc = rng.choice(docs)
            planted = plant(kind, doc.content, spans_of(doc.content), novel, rng, query_bytes)
            if planted is not None:
                query, query_lines, source_lines, tokens = planted
                queries.append(Planted(kind, doc.repo, doc.path, source_lines, query, query_lines, tokens))
    for _ in range(per_kind):
        queries.append(Planted("negative", "", "", (0, 0), novel.block(query_bytes), None, 0))
    rng.shuffle(queries)
    return queries


def judge(q: Planted, report) -> tuple[bool, int, bool]:
    """(whether the planted span was found, how many reported matches are right, whether one
    names the planted source lines).

    A match is right when it covers planted lines and names the planted document or a copy of
    it (copies > 1: the span is in several files and any may represent it); anything on the
    novel code around it, or on a negative query, is wrong.
    """
    right, located = 0, False
    for m in report.matches:
        overlaps = (
            q.query_lines is not None and m.query_lines[0] <= q.query_lines[1] and q.query_lines[0] <= m.query_lines[1]
        )
        same_document = (m.repo, m.path) == (q.repo, q.path)
        right += overlaps and (same_document or m.copies > 1)
        located |= (
            overlaps
            and same_document
            and m.source_lines[0] <= q.source_lines[1]
            and q.source_lines[0] <= m.source_lines[1]
        )
    return right > 0, right, located


def check_held_out(index: AttributionIndex) -> dict:
    """This repository's own code, which is not in the index: what is reported there must be a real copy."""
    root = Path(__file__).resolve().parents[1]
    chunks, matches = 0, []
    for path in sorted([*root.glob("src/**/*.py"), *root.glob("tests/**/*.py"), *root.glob("benchmarks/*.py")]):
        lines = path.read_text(encoding="utf-8").split("\n")
        for start in range(0, len(lines), 60):
            chunk = "\n".join(lines[start : start + 60])
            if len(chunk) < 500:
                continue
            chunks += 1
            for m in index.check(chunk).matches:
                matches.append(
                    f"{path.relative_to(root)}:{start + m.query_lines[0]}-{start + m.query_lines[1]} {m.kind} "
                    f"{m.tokens} tokens = {m.repo} {m.path}:{m.source_lines[0]}-{m.source_lines[1]}"
                )
    return {"chunks": chunks, "matches": matches}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", nargs="*", help="corpus sources (default: stdlib + site-packages)")
    ap.add_argument("--include", nargs="*", default=["*.py"])
    ap.add_argument("--queries", type=int, default=300, help="queries per kind, and negatives")
    ap.add_argument("--query-bytes", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--index", type=Path, help="reuse (or keep) the index at this path")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    sources = args.sources or default_sources()

    with tempfile.TemporaryDirectory() as tmp:
        index_dir = args.index or Path(tmp) / "index"
        build = None
        if not index_dir.exists():
            t, cpu = time.perf_counter(), cpu_seconds()
            summary = build_index(sources, index_dir, include=args.include, workers=args.workers)
            seconds, cpu = time.perf_counter() - t, cpu_seconds() - cpu
            mb = summary.corpus_bytes / 1e6
            build = {
                "seconds": round(seconds, 1),
                "cpu_seconds": round(cpu, 1),
                "corpus_mb": round(mb, 1),
                "mb_per_s": round(mb / seconds, 2),
                "mb_per_cpu_s": round(mb / cpu, 2),
                "documents": summary.documents,
                "texts": summary.texts,
                "workers": args.workers,
                "load_average": round(os.getloadavg()[0], 1),
            }
            print(
                f"build: {summary.documents:,} documents ({summary.texts:,} distinct), {mb:.1f} MB in {seconds:.1f} s "
                f"= {build['mb_per_s']:.2f} MB/s wall with {args.workers} worker(s); {cpu:.0f} CPU-s in all processes "
                f"= {build['mb_per_cpu_s']:.2f} MB per CPU-second (load average {build['load_average']} on "
                f"{os.cpu_count()} CPUs)"
            )
        t = time.perf_counter()
        index = AttributionIndex.open(index_dir)
        open_s = time.perf_counter() - t
        index_bytes = sum(p.stat().st_size for p in index_dir.iterdir())
        corpus_bytes = index.manifest["corpus_bytes"]
        print(
            f"index: {index_bytes / 1e6:.1f} MB = {index_bytes / corpus_bytes:.1%} of the corpus; "
            f"opened and checksummed in {open_s * 1e3:.0f} ms"
        )

        queries = make_queries(sources, args.include, args.queries, args.query_bytes, rng)

        index.check(queries[0].query)  # warm the page cache and lazy imports
        latencies, found = [], {kind: 0 for kind in KINDS}
        reported = correct = located = 0
        misses = []
        for q in queries:
            t = time.perf_counter()
            report = index.check(q.query)
            latencies.append(time.perf_counter() - t)
            hit, right, at_lines = judge(q, report)
            reported += len(report.matches)
            correct += right
            if q.kind in found:
                found[q.kind] += hit
                located += at_lines
                if not hit:
                    misses.append(
                        {
                            "kind": q.kind,
                            "repo": q.repo,
                            "path": q.path,
                            "source_lines": q.source_lines,
                            "tokens": q.tokens,
                        }
                    )
        sketch, probe = [], []
        for q in queries[:200]:
            t = time.perf_counter()
            index.may_contain(q.query)
            sketch.append(time.perf_counter() - t)
            keys = np.unique(keys_of(kgram_hashes(view_of(_PYTHON.scan(q.query)), index.k)))
            t = time.perf_counter()
            index.bloom.contains(keys)
            probe.append(time.perf_counter() - t)
        held_out = check_held_out(index)

    results = {
        "corpus_mb": round(corpus_bytes / 1e6, 1),
        "build": build,
        "index_mb": round(index_bytes / 1e6, 1),
        "index_fraction": round(index_bytes / corpus_bytes, 4),
        "open_ms": round(open_s * 1e3, 1),
        "recall": {kind: round(found[kind] / args.queries, 4) for kind in KINDS},
        "precision": round(correct / reported, 4) if reported else None,
        "reported": reported,
        "at_planted_lines": round(located / max(1, sum(found.values())), 4),
        "latency_ms": {
            "p50": round(percentile(latencies, 50) * 1e3, 2),
            "p95": round(percentile(latencies, 95) * 1e3, 2),
            "max": round(max(latencies) * 1e3, 2),
        },
        "may_contain_us": {"p50": round(percentile(sketch, 50) * 1e6, 1)},
        "bloom_probe_us": {"p50": round(percentile(probe, 50) * 1e6, 1)},
        "held_out": held_out,
        "queries": {"per_kind": args.queries, "negatives": args.queries, "bytes": args.query_bytes},
        "misses": misses[:20],
    }
    print(
        "recall: "
        + ", ".join(f"{kind} {results['recall'][kind]:.3f}" for kind in KINDS)
        + f"   ({args.queries} planted spans of 50-200 tokens per kind)"
    )
    print(
        f"precision: {results['precision']}  ({correct}/{reported} reported matches correct; "
        f"{args.queries} negatives); "
        f"{results['at_planted_lines']:.1%} of found spans name the planted source lines "
        f"(the others a same-shaped place in the same file)"
    )
    print(
        f"query latency ({args.query_bytes} B): p50 {results['latency_ms']['p50']} ms, "
        f"p95 {results['latency_ms']['p95']} ms, "
        f"max {results['latency_ms']['max']} ms; may_contain (lex + hash + Bloom + locator) p50 "
        f"{results['may_contain_us']['p50']} us, "
        f"of which the Bloom filter's probes {results['bloom_probe_us']['p50']} us"
    )
    print(
        f"held-out real code (this repository's own sources, not indexed): {held_out['chunks']} chunks of 60 lines, "
        f"{len(held_out['matches'])} matches" + "".join(f"\n  {m}" for m in held_out["matches"][:5])
    )
    if build:
        print(
            f"build throughput: {build['mb_per_s']} MB/s wall, {build['mb_per_cpu_s']} MB per CPU-second "
            f"(= {build['mb_per_cpu_s'] * args.workers:.1f} MB/s on {args.workers} idle cores); "
            f"index size: {results['index_fraction']:.1%} of the corpus"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
