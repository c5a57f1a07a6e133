"""Attribution on a corpus that looks like users' data: recall, precision, why spans are missed,
latency, build throughput and index size, each beside its goal.

    .venv/bin/python benchmarks/attribution.py [--size-mb 300] [--quick] [--per-kind N] [--out results.json]

Corpus. Python code full of near-copies, as a code dump like The Stack is: the interpreter's
standard library and the sources of the packages installed in this .venv (transformers' models
copied from one another, torch, vendored copies such as pip/_vendor, ...), read with
codeinstruct.data.corpus. That reader skips generated files (a marker such as "automatically
generated" in the first 5 lines), which in such a dump are the densest near-copies (transformers'
modeling_*.py written from modular_*.py): the benchmark puts those of every directory source back, with 5
lines ("#") before each so that the reader keeps them (--skip-generated leaves them out; the
counts are printed). Whole directories are drawn at random (seed) until --size-mb: about 20%
standard library, 30% transformers, 20% torch, the rest other packages, and any shortfall from
what is left. The draw is written to a JSONL of {content, repo, path, license} records and the
index is built from that file, as a user indexes a dump (--sources reads directories or JSONL
files instead). The corpus's duplication is measured two ways: the share of 20-token shingles
(tokens: words and punctuation, comments included; a deterministic 1/8 sample of shingles) that
also occur in another document, and the same for non-blank lines of 20 or more characters
(stripped); also the share of documents with at least half of their shingles elsewhere.

Plants. Each query is about 2 KB: novel functions (written by this script from random names and
literals, so in no corpus) with, for positive queries, one span planted between them: 60-200
tokens (this script's own lexer: no whitespace or comments) at a RANDOM line range of a random
indexed document of 1.5 KB or more (not aligned to functions; a range never starts or ends inside a
multi-line string), in one of three forms:

- verbatim: the lines as they are;
- reformatted: indentation rescaled (x0.5 or x2, from another base), spacing between tokens
  changed, lines broken after commas inside brackets, blank lines added (tokens unchanged);
- renamed: every identifier consistently renamed, layout unchanged; kept are keywords,
  builtins, self/cls, dunders, imported names and names used as an attribute (after a dot)
  anywhere in the span, so that the renaming is one to one (self.x = x stays self.x = x).

Negative queries are novel code only.

Judging, independent of the index's own verification. For every reported match the benchmark
takes the reported source lines of the named document and aligns their tokens (this script's
lexer, difflib) with the planted tokens that lie on the match's query lines; for a match reported
as "renamed", names are compared as placeholders and must map one to one (the most frequent
consistent pairing; other name pairs do not count). A match is confirmed when at least half of the
tokens on its query lines are planted and 80% of those planted tokens are found in its source
lines (how much wider than the copy those lines are is printed as the extent). A span is found
when confirmed matches, from any document, together cover 80% of its tokens; a plant found only
through "renamed" matches (a near-copy, where the verbatim source went unreported) is counted too.
Precision = confirmed matches / all reported matches (on planted and negative queries; any match
on a negative is wrong). A missed span gets one cause, the first that applies:

- partial: confirmed matches cover part of it (under 80%);
- no candidate: may_contain(planted span) is false, no fingerprint of it is found;
- not reported: it has fingerprints in the index but no match touches its lines;
- wrong lines: a match touches it and names a document that holds the span verbatim, but the
  reported source lines do not hold it;
- near-copy only: matches touch it, but only from documents that do not hold the span verbatim
  (near-copies), and their reported lines do not hold it.

Every missed span is checked again with max_verified=512 (or four times check()'s default, if
more): how many a larger verification budget would find is printed.

Timings are wall-clock on a possibly shared machine (the load average is printed): build MB/s
with --workers processes (2), index size as a share of the corpus, open time (with checksums),
and check() latency per query (p50, p95 by codeinstruct.data.stats.percentile).
"""

from __future__ import annotations

import argparse
import builtins
import collections
import difflib
import inspect
import json
import keyword
import os
import random
import re
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codeinstruct.attribution import AttributionIndex, build_index
from codeinstruct.data.corpus import CorpusReport, Document, _content_problem, iter_documents
from codeinstruct.data.stats import percentile

KINDS = ("verbatim", "reformatted", "renamed")
CAUSES = ("partial", "no candidate", "not reported", "wrong lines", "near-copy only")
GOALS = {
    "recall_verbatim": 0.99,
    "recall_reformatted": 0.97,
    "recall_renamed": 0.97,
    "precision": 0.99,
    "p50_ms": 20.0,
    "p95_ms": 100.0,
    "build_mb_per_s": 5.0,
    "index_fraction": 0.25,
}
MIN_COVER = 0.8  # share of planted tokens that must be found in reported source lines
SPAN_TOKENS = (60, 200)
MIN_DOCUMENT_CHARS = 1500
SHARES = {"python/cpython": 0.2, "transformers": 0.3, "torch": 0.2}  # of --size-mb; the rest from other repos
SHINGLE = 20
SHINGLE_SAMPLE = 8
MIN_LINE_CHARS = 20
RECHECK_BUDGET = 512  # at least; four times check()'s default where that is larger
GENERATED_PREFIX = "#\n" * 5

# ---------------------------------------------------------------- this benchmark's own lexer

# Alternatives tile the text: whitespace, comments, strings (with prefixes), numbers, names, operators.
_TILE = re.compile(
    r"""
  (?P<ws>[ \t\f\r\v]+|\\\r?\n|\n)
| (?P<comment>\#[^\n]*)
| (?P<string>(?:[rRbBuUfF]{1,2})?(?:
      '''(?:[^'\\]|\\.|'(?!''))*(?:'''|\Z)
    | \"\"\"(?:[^"\\]|\\.|"(?!""))*(?:\"\"\"|\Z)
    | '(?:[^'\\\n]|\\.)*'?
    | "(?:[^"\\\n]|\\.)*"?))
| (?P<number>0[xXoObB][\w]+|(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d[\d_]*)?[jJ]?)
| (?P<name>\w+)
| (?P<op>->|\*\*=?|//=?|<<=?|>>=?|:=|\.\.\.|[-+*/%@&|^=<>!]=|.)
""",
    re.VERBOSE | re.DOTALL,
)
_KEEP_NAMES = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins)) | {"self", "cls"}
_NAME = "\x00name"


def pieces(text: str) -> list[tuple[str, str]]:
    """(class, text) of every piece of text, whitespace and comments included; they tile it."""
    return [(m.lastgroup or "op", m.group()) for m in _TILE.finditer(text)]


def code_tokens(text: str, first_line: int = 1) -> list[tuple[str, int]]:
    """(token, line of its first character) without whitespace and comments."""
    out, line = [], first_line
    for kind, piece in pieces(text):
        if kind not in ("ws", "comment"):
            out.append((piece, line))
        line += piece.count("\n")
    return out


def is_name(token: str) -> bool:
    return (token[:1].isalpha() or token[:1] == "_") and token.isidentifier() and not keyword.iskeyword(token)


def split_lines(text: str) -> set[int]:
    """Lines L whose boundary with L - 1 lies inside one piece (a multi-line string or a
    backslash continuation): a line range may not start on L nor end on L - 1."""
    inside, line = set(), 1
    for kind, piece in pieces(text):
        n = piece.count("\n")
        if n and (kind == "string" or piece.startswith("\\")):
            inside.update(range(line + 1, line + n + 1))
        line += n
    return inside


# ---------------------------------------------------------------- corpus


def default_sources() -> list[str]:
    return ["builtin:stdlib", sysconfig.get_paths()["purelib"]]


def read_pool(sources: list[str], keep_generated: bool) -> tuple[list[Document], CorpusReport, int]:
    """Python documents of sources, the reader's report, and how many generated files were kept."""
    report = CorpusReport()
    docs = [d for d in iter_documents(sources, include=["*.py"], report=report) if d.language == "Python"]
    if not keep_generated:
        return docs, report, 0
    generated = []
    for source in sources:
        if os.path.isdir(source):
            generated += generated_documents(source, docs)
    return docs + generated, report, len(generated)


def generated_documents(root_dir: str, docs: list[Document]) -> list[Document]:
    """The files of a directory source that the corpus reader skips as generated (transformers'
    modeling_*.py written from modular_*.py, cloud SDKs' generated clients, ...), with 5 lines put
    before them so that the reader, which looks for its markers in the first 5 lines, keeps them;
    repo and license are those of the reader's documents of the same top-level package, or the
    directory's name and no license where the reader kept none of it."""
    seen: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for d in docs:
        if "/" in d.path:
            seen[d.path.split("/", 1)[0]][(d.repo, d.license)] += 1
    owners = {top: counts.most_common(1)[0][0] for top, counts in seen.items()}
    is_site = os.path.basename(os.path.normpath(root_dir)) == "site-packages"
    fallback = None if is_site else (os.path.basename(os.path.normpath(root_dir)), None)
    out = []
    for root, dirs, files in os.walk(root_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__" and "." not in d)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = Path(root, name)
            rel = path.relative_to(root_dir).as_posix()
            owner = owners.get(rel.split("/", 1)[0]) if is_site else fallback
            if owner is None:
                continue
            try:
                content = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            kept = GENERATED_PREFIX + content
            if (
                _content_problem(content, "Python") == "generated"
                and _content_problem(kept, "Python") is None
                and len(kept.encode("utf-8", "surrogatepass")) <= 1_000_000
            ):
                out.append(Document(kept, owner[0], rel, owner[1], "Python"))
    return out


def select_corpus(pool: list[Document], size_mb: float, rng: random.Random) -> list[Document]:
    """Whole directories drawn at random: SHARES of the budget per named repo, then the rest."""
    budget = size_mb * 1e6
    groups: dict[tuple[str, str], list[Document]] = collections.defaultdict(list)
    for doc in pool:
        groups[(doc.repo, os.path.dirname(doc.path))].append(doc)
    buckets: dict[str, list[list[Document]]] = collections.defaultdict(list)
    for (repo, _), docs in sorted(groups.items()):
        buckets[repo if repo in SHARES else ""].append(docs)
    for bucket in buckets.values():
        rng.shuffle(bucket)

    def size(docs: list[Document]) -> int:
        return sum(len(d.content.encode("utf-8", "surrogatepass")) for d in docs)

    chosen: list[list[Document]] = []
    left: list[list[Document]] = []
    taken = 0
    for name, bucket in sorted(buckets.items()):
        share = budget * SHARES.get(name, 1 - sum(SHARES.values()))
        got = 0
        for group in bucket:
            if got < share:
                n = size(group)
                chosen.append(group)
                got += n
                taken += n
            else:
                left.append(group)
    rng.shuffle(left)
    for group in left:
        if taken >= budget:
            break
        chosen.append(group)
        taken += size(group)
    picked = {id(d) for group in chosen for d in group}
    return [d for d in pool if id(d) in picked]  # corpus order, as a dump would list it


def write_jsonl(docs: list[Document], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for d in docs:
            record = {"content": d.content, "repo": d.repo, "path": d.path, "license": d.license}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


_DUP_TOKEN = re.compile(r"\w+|[^\w\s]")
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _shared(per_doc: list[np.ndarray]) -> tuple[int, int, list[float]]:
    """(items that occur in another document, all items, share of each document's items elsewhere)."""
    nonempty = [a for a in per_doc if len(a)]
    if not nonempty:
        return 0, 0, []
    values, counts = np.unique(np.concatenate(nonempty), return_counts=True)
    shared = total = 0
    fractions = []
    for a in nonempty:
        elsewhere = counts[np.searchsorted(values, a)] >= 2
        shared += int(elsewhere.sum())
        total += len(a)
        fractions.append(float(elsewhere.mean()))
    return shared, total, fractions


def duplication(docs: list[Document]) -> dict:
    """How much of the corpus also occurs in another document (see the module docstring)."""
    vocabulary: dict[str, int] = {}
    shingles, lines = [], []
    contents = collections.Counter(hash(d.content) for d in docs)
    for d in docs:
        ids = np.array([vocabulary.setdefault(t, len(vocabulary)) for t in _DUP_TOKEN.findall(d.content)], np.uint64)
        if len(ids) >= SHINGLE:
            h = np.zeros(len(ids) - SHINGLE + 1, dtype=np.uint64)
            for j in range(SHINGLE):
                h = h * _MIX + ids[j : len(ids) - SHINGLE + 1 + j] + np.uint64(1)
            h ^= h >> np.uint64(31)
            h *= _MIX
            h ^= h >> np.uint64(29)
            shingles.append(np.unique(h[h % np.uint64(SHINGLE_SAMPLE) == 0]))
        else:
            shingles.append(np.zeros(0, np.uint64))
        kept = {hash(s) for line in d.content.split("\n") if len(s := line.strip()) >= MIN_LINE_CHARS}
        lines.append(np.fromiter(kept, dtype=np.int64, count=len(kept)))
    s_shared, s_total, fractions = _shared(shingles)
    l_shared, l_total, _ = _shared(lines)
    return {
        "shingle_tokens": SHINGLE,
        "shingles_elsewhere": round(s_shared / max(1, s_total), 4),
        "lines_elsewhere": round(l_shared / max(1, l_total), 4),
        "documents_half_elsewhere": round(sum(f >= 0.5 for f in fractions) / max(1, len(fractions)), 4),
        "exact_duplicate_documents": sum(n - 1 for n in contents.values()),
    }


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
        """At least one function, and more until size characters."""
        out = self.function() + "\n"
        while len(out) < size:
            out += self.function() + "\n"
        return out


# ---------------------------------------------------------------- plants


def random_span(content: str, rng: random.Random) -> tuple[int, int, str, int] | None:
    """(first line, last line, text, tokens) of a random line range of 60-200 tokens, or None."""
    lines = content.split("\n")
    per_line = collections.Counter(line for _, line in code_tokens(content))
    inside = split_lines(content)
    target = rng.randint(*SPAN_TOKENS)
    for _ in range(20):
        first = rng.randint(1, len(lines))
        if first in inside or not lines[first - 1].strip():
            continue
        last, tokens = first, 0
        while last <= len(lines):
            tokens += per_line[last]
            if tokens >= target and last + 1 not in inside:
                break
            last += 1
        if SPAN_TOKENS[0] <= tokens <= SPAN_TOKENS[1] and last <= len(lines):
            return first, last, "\n".join(lines[first - 1 : last]), tokens
    return None


def reformat(span: str, rng: random.Random) -> str:
    """The same tokens laid out differently: indentation rescaled, spacing changed, lines broken
    after commas inside brackets opened in the span, blank lines added."""
    parts = pieces(span)
    indents = [
        len(parts[i][1].expandtabs(4)) if parts[i][0] == "ws" and parts[i][1][0] in " \t" else 0
        for i in range(len(parts))
        if i == 0 or parts[i - 1][1] == "\n"
    ]
    base_old = min(indents) if indents else 0
    factor, base = rng.choice([0.5, 2.0]), rng.choice([0, 2, 4, 8])
    out: list[str] = []
    at_start, depth, indent, broke = True, 0, base, False
    for i, (kind, piece) in enumerate(parts):
        if broke:
            broke = False
            if kind == "ws" and piece != "\n":
                continue  # the line break replaced the space after the comma
        if piece == "\n":
            if out and not out[-1].endswith("\\") and rng.random() < 0.06 and depth <= 0:
                out.append("\n")
            out.append("\n")
            at_start = True
            continue
        if at_start:
            at_start = False
            width = len(piece.expandtabs(4)) if kind == "ws" and piece[0] in " \t" else 0
            indent = base + int((width - base_old) * factor)
            out.append(" " * indent)
            if kind == "ws" and piece[0] in " \t":
                continue
        if kind == "ws" and piece[0] in " \t":
            before, after = (out[-1][-1:] if out else ""), (parts[i + 1][1][:1] if i + 1 < len(parts) else "")
            glue = (before.isalnum() or before in "_\"'") and (after.isalnum() or after in "_\"'")
            out.append(" " if glue else rng.choice(["", " ", "  "]))
            continue
        if kind == "op" and piece in "([{":
            depth += 1
        elif kind == "op" and piece in ")]}":
            depth -= 1
        out.append(piece)
        nxt = parts[i + 1] if i + 1 < len(parts) else ("", "")
        if piece == "," and depth > 0 and rng.random() < 0.25 and nxt[0] != "comment" and nxt[1] != "\n":
            out.append("\n" + " " * (indent + 8))
            broke = True
        elif kind != "ws" and kind != "comment" and nxt[0] not in ("ws", "comment", "") and rng.random() < 0.15:
            out.append(" ")
    return "".join(out)


def rename(span: str, rng: random.Random) -> tuple[str, dict[str, str]]:
    """Every identifier consistently renamed (see the module docstring), and the renaming."""
    parts = pieces(span)
    imported: set[str] = set()
    statement_start, importing = True, False
    for kind, piece in parts:
        if kind == "ws":
            if piece == "\n":
                statement_start, importing = True, False
            continue
        if statement_start and piece in ("import", "from"):
            importing = True
        elif importing and kind == "name":
            imported.add(piece)
        statement_start = False
    attributes = {piece for (_, before), (kind, piece) in zip(parts, parts[1:]) if before == "." and kind == "name"}
    words = ["value", "item", "node", "acc", "tmp", "obj", "res", "buf", "cur", "ref", "arg", "elem", "key", "part"]
    mapping: dict[str, str] = {}
    out = []
    for kind, piece in parts:
        if (
            kind == "name"
            and is_name(piece)
            and piece not in _KEEP_NAMES
            and piece not in imported
            and piece not in attributes
            and not (piece.startswith("__") and piece.endswith("__"))
        ):
            if piece not in mapping:
                mapping[piece] = f"{rng.choice(words)}_{len(mapping)}{rng.choice('abcdefgh')}"
            piece = mapping[piece]
        out.append(piece)
    return "".join(out), mapping


@dataclass
class Query:
    kind: str  # a KINDS value, or "negative"
    text: str
    repo: str = ""
    path: str = ""
    source_lines: tuple[int, int] = (0, 0)
    original: str = ""  # the span as it is in the document
    planted: str = ""  # the span as planted
    query_lines: tuple[int, int] = (0, 0)
    planted_tokens: list[tuple[str, int]] = field(default_factory=list)  # with query lines
    tokens: int = 0


def make_queries(docs: list[Document], per_kind: int, query_bytes: int, rng: random.Random) -> list[Query]:
    """per_kind planted queries of each kind and per_kind negatives, shuffled."""
    candidates = [d for d in docs if len(d.content) >= MIN_DOCUMENT_CHARS]
    novel = NovelCode(rng)
    queries: list[Query] = []
    for kind in KINDS:
        made = 0
        while made < per_kind:
            doc = rng.choice(candidates)
            drawn = random_span(doc.content, rng)
            if drawn is None:
                continue
            first, last, original, tokens = drawn
            if kind == "verbatim":
                planted = original
            elif kind == "reformatted":
                planted = reformat(original, rng)
            else:
                planted, mapping = rename(original, rng)
                if len(mapping) < 2:
                    continue  # nothing much to rename here; draw another span
            room = max(0, query_bytes - len(planted))
            before = novel.block(room // 2)
            after = novel.block(room - room // 2)
            start = before.count("\n") + 1
            text = before + planted + "\n\n" + after
            queries.append(
                Query(
                    kind=kind,
                    text=text,
                    repo=doc.repo,
                    path=doc.path,
                    source_lines=(first, last),
                    original=original,
                    planted=planted,
                    query_lines=(start, start + planted.count("\n")),
                    planted_tokens=code_tokens(planted, start),
                    tokens=tokens,
                )
            )
            made += 1
    for _ in range(per_kind):
        queries.append(Query(kind="negative", text=novel.block(query_bytes)))
    rng.shuffle(queries)
    return queries


# ---------------------------------------------------------------- the independent aligner


def covered(planted: list[str], source: list[str], renamed: bool) -> np.ndarray:
    """Which planted tokens the source tokens hold, in order (difflib blocks of 3+ tokens); with
    renamed, names are placeholders and count only where they follow one consistent 1:1 renaming."""
    mask = np.zeros(len(planted), dtype=bool)
    if not planted or not source:
        return mask
    a = [_NAME if renamed and is_name(t) else t for t in planted]
    b = [_NAME if renamed and is_name(t) else t for t in source]
    blocks = [blk for blk in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks() if blk.size >= 3]
    pairs: collections.Counter[tuple[str, str]] = collections.Counter()
    for blk in blocks:
        mask[blk.a : blk.a + blk.size] = True
        if renamed:
            pairs.update((planted[blk.a + j], source[blk.b + j]) for j in range(blk.size) if a[blk.a + j] == _NAME)
    if renamed:
        forward: dict[str, str] = {}
        backward: set[str] = set()
        for (p, s), _ in pairs.most_common():
            if p not in forward and s not in backward:
                forward[p] = s
                backward.add(s)
        for blk in blocks:
            for j in range(blk.size):
                if a[blk.a + j] == _NAME and forward.get(planted[blk.a + j]) != source[blk.b + j]:
                    mask[blk.a + j] = False
    return mask


class Corpus:
    """The indexed documents by (repo, path), to read reported source lines from."""

    def __init__(self, docs: list[Document]):
        self.by_key: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
        for d in docs:
            self.by_key[(d.repo, d.path)].append(d.content)

    def lines(self, repo: str, path: str, span: tuple[int, int]) -> list[str]:
        """The text of lines span of every document with this repo and path."""
        return ["\n".join(c.split("\n")[span[0] - 1 : span[1]]) for c in self.by_key.get((repo, path), [])]

    def holds(self, repo: str, path: str, text: str) -> bool:
        return any(text in c for c in self.by_key.get((repo, path), []))


@dataclass
class Verdict:
    confirmed: int = 0
    wrong: collections.Counter = field(default_factory=collections.Counter)
    found: bool = False
    renamed_only: bool = False
    cover: float = 0.0
    widths: list = field(default_factory=list)  # confirmed matches: source-line tokens per planted token
    touching: list = field(default_factory=list)  # matches whose query lines overlap the plant


def judge(q: Query, report, corpus: Corpus) -> Verdict:
    verdict = Verdict()
    query_tokens = code_tokens(q.text)
    union = np.zeros(len(q.planted_tokens), dtype=bool)
    confirmed_kinds = set()
    for m in report.matches:
        lo, hi = m.query_lines
        if q.kind == "negative":
            verdict.wrong["on a negative query"] += 1
            continue
        if lo <= q.query_lines[1] and q.query_lines[0] <= hi:
            verdict.touching.append(m)
        inside = [i for i, (_, line) in enumerate(q.planted_tokens) if lo <= line <= hi]
        on_lines = sum(lo <= line <= hi for _, line in query_tokens)
        if not inside or 2 * len(inside) < on_lines:
            verdict.wrong["mostly on novel code"] += 1
            continue
        planted = [q.planted_tokens[i][0] for i in inside]
        best, width = np.zeros(len(inside), dtype=bool), 0
        for text in corpus.lines(m.repo, m.path, m.source_lines):
            source = [t for t, _ in code_tokens(text)]
            mask = covered(planted, source, m.kind == "renamed")
            if mask.sum() > best.sum():
                best, width = mask, len(source)
        if best.mean() >= MIN_COVER:
            verdict.confirmed += 1
            verdict.widths.append(width / len(inside))
            union[np.asarray(inside)[best]] = True
            confirmed_kinds.add(m.kind)
        else:
            verdict.wrong["source lines do not hold the planted code"] += 1
    if q.kind != "negative":
        verdict.cover = float(union.mean()) if len(union) else 0.0
        verdict.found = verdict.cover >= MIN_COVER
        verdict.renamed_only = verdict.found and confirmed_kinds == {"renamed"}
    return verdict


def cause_of(q: Query, verdict: Verdict, index: AttributionIndex, corpus: Corpus) -> str:
    if verdict.cover > 0:
        return "partial"
    if not verdict.touching:
        return "not reported" if index.may_contain(q.planted) else "no candidate"
    if any(corpus.holds(m.repo, m.path, q.original) for m in verdict.touching):
        return "wrong lines"
    return "near-copy only"


# ---------------------------------------------------------------- run


def mark(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=float, help="corpus size (default 300; 30 with --quick)")
    ap.add_argument("--quick", action="store_true", help="30 MB and 100 plants per kind unless given")
    ap.add_argument("--per-kind", type=int, help="plants per kind, and negatives (default 300; 100 with --quick)")
    ap.add_argument("--sources", nargs="*", help="corpus sources: directories, JSONL files (default: stdlib + .venv)")
    ap.add_argument(
        "--skip-generated", action="store_true", help="leave out the generated files the corpus reader skips"
    )
    ap.add_argument("--query-bytes", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, help="keep the corpus JSONL and the index here (default: a temp dir)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    size_mb = args.size_mb or (30.0 if args.quick else 300.0)
    default_budget = inspect.signature(AttributionIndex.check).parameters["max_verified"].default
    recheck = max(RECHECK_BUDGET, 4 * default_budget)
    per_kind = args.per_kind or (100 if args.quick else 300)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    load_start = os.getloadavg()[0]

    t = time.perf_counter()
    pool, pool_report, kept_generated = read_pool(args.sources or default_sources(), not args.skip_generated)
    docs = select_corpus(pool, size_mb, rng)
    del pool
    corpus_bytes = sum(len(d.content.encode("utf-8", "surrogatepass")) for d in docs)
    repos = collections.Counter()
    for d in docs:
        repos[d.repo] += len(d.content.encode("utf-8", "surrogatepass"))
    dup = duplication(docs)
    print(
        f"corpus: {len(docs):,} Python documents, {corpus_bytes / 1e6:.1f} MB (asked {size_mb:g} MB) from "
        f"{len(repos)} repos: "
        + ", ".join(f"{r} {b / 1e6:.1f}" for r, b in repos.most_common(5))
        + f" MB ...; of the whole pool the reader skipped {dict(sorted(pool_report.skipped.items()))}, "
        f"{kept_generated} generated files put back "
        f"({time.perf_counter() - t:.0f} s to read, draw and measure)"
    )
    print(
        f"duplication: {dup['shingles_elsewhere']:.1%} of {SHINGLE}-token shingles and {dup['lines_elsewhere']:.1%} "
        f"of lines (>= {MIN_LINE_CHARS} chars) also occur in another document; "
        f"{dup['documents_half_elsewhere']:.1%} of documents have half their shingles elsewhere; "
        f"{dup['exact_duplicate_documents']} exact duplicate documents"
    )

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        jsonl, index_dir = workdir / "corpus.jsonl", workdir / "index"
        if index_dir.exists():
            raise SystemExit(f"{index_dir}: already exists; remove it or choose another --workdir")
        write_jsonl(docs, jsonl)

        t = time.perf_counter()
        summary = build_index([jsonl], index_dir, workers=args.workers)
        build_s = time.perf_counter() - t
        build = {
            "seconds": round(build_s, 1),
            "mb_per_s": round(summary.corpus_bytes / 1e6 / build_s, 2),
            "workers": args.workers,
            "shards": summary.shards,
            "documents": summary.documents,
            "texts": summary.texts,
            "load_average": round(os.getloadavg()[0], 1),
        }
        t = time.perf_counter()
        index = AttributionIndex.open(index_dir)
        open_ms = (time.perf_counter() - t) * 1e3
        index_bytes = sum(p.stat().st_size for p in index_dir.rglob("*") if p.is_file())
        index_fraction = index_bytes / summary.corpus_bytes

        queries = make_queries(docs, per_kind, args.query_bytes, rng)
        corpus = Corpus(docs)
        del docs
        index.check(queries[0].text)  # page cache, lazy imports
        latencies: list[float] = []
        found = collections.Counter()
        renamed_only = collections.Counter()
        causes: dict[str, collections.Counter] = {kind: collections.Counter() for kind in KINDS}
        rescued: dict[str, collections.Counter] = {kind: collections.Counter() for kind in KINDS}
        wrong: collections.Counter = collections.Counter()
        widths: list[float] = []
        reported = confirmed = 0
        examples: list[dict] = []
        for q in queries:
            t = time.perf_counter()
            report = index.check(q.text)
            latencies.append(time.perf_counter() - t)
            verdict = judge(q, report, corpus)
            reported += len(report.matches)
            confirmed += verdict.confirmed
            wrong.update(verdict.wrong)
            widths.extend(verdict.widths)
            if q.kind == "negative":
                continue
            if verdict.found:
                found[q.kind] += 1
                renamed_only[q.kind] += verdict.renamed_only
                continue
            cause = cause_of(q, verdict, index, corpus)
            causes[q.kind][cause] += 1
            rescued[q.kind][cause] += judge(q, index.check(q.text, max_verified=recheck), corpus).found
            if sum(e["cause"] == cause for e in examples) < 5:
                examples.append(
                    {
                        "kind": q.kind,
                        "cause": cause,
                        "repo": q.repo,
                        "path": q.path,
                        "source_lines": list(q.source_lines),
                        "query_lines": list(q.query_lines),
                        "tokens": q.tokens,
                        "cover": round(verdict.cover, 3),
                        "planted": q.planted,
                        "matches": [m.as_dict() for m in verdict.touching[:3]],
                    }
                )

    recall = {kind: found[kind] / per_kind for kind in KINDS}
    precision = confirmed / reported if reported else 1.0
    p50, p95 = percentile(latencies, 50) * 1e3, percentile(latencies, 95) * 1e3
    planted_bytes = [len(q.text) for q in queries]
    results = {
        "corpus": {
            "size_mb_asked": size_mb,
            "mb": round(corpus_bytes / 1e6, 1),
            "documents": summary.documents,
            "repos": {r: round(b / 1e6, 2) for r, b in repos.most_common()},
            "skipped_by_reader": dict(pool_report.skipped),
            "generated_put_back": kept_generated,
            "duplication": dup,
        },
        "build": build,
        "index": {
            "mb": round(index_bytes / 1e6, 1),
            "fraction": round(index_fraction, 4),
            "open_ms": round(open_ms, 1),
        },
        "queries": {
            "per_kind": per_kind,
            "negatives": per_kind,
            "mean_bytes": round(sum(planted_bytes) / len(planted_bytes)),
            "span_tokens": list(SPAN_TOKENS),
            "min_cover": MIN_COVER,
        },
        "recall": {kind: round(r, 4) for kind, r in recall.items()},
        "found_only_as_renamed": dict(renamed_only),
        "misses": {kind: dict(causes[kind]) for kind in KINDS},
        "max_verified": {"default": default_budget, "recheck": recheck},
        "found_with_larger_max_verified": {kind: dict(rescued[kind]) for kind in KINDS},
        "precision": round(precision, 4),
        "reported": reported,
        "confirmed": confirmed,
        "wrong": dict(wrong),
        "source_width": {
            "p50": round(percentile(widths, 50), 3) if widths else None,
            "p95": round(percentile(widths, 95), 3) if widths else None,
            "max": round(max(widths), 3) if widths else None,
            "over_1_5": sum(w > 1.5 for w in widths),
        },
        "latency_ms": {"p50": round(p50, 2), "p95": round(p95, 2), "max": round(max(latencies) * 1e3, 2)},
        "goals": GOALS,
        "load_average": {"start": round(load_start, 1), "end": round(os.getloadavg()[0], 1)},
        "cpus": os.cpu_count(),
        "seconds": round(time.perf_counter() - started, 1),
        "miss_examples": examples,
    }

    print(
        f"build: {summary.documents:,} documents ({summary.texts:,} distinct), "
        f"{summary.corpus_bytes / 1e6:.1f} MB in {build_s:.1f} s = {build['mb_per_s']:.2f} MB/s wall with "
        f"{args.workers} workers   goal >= {GOALS['build_mb_per_s']:g} MB/s  {mark(build['mb_per_s'] >= 5)}"
        f"   (load average {build['load_average']} on {os.cpu_count()} CPUs)"
    )
    print(
        f"index: {index_bytes / 1e6:.1f} MB = {index_fraction:.1%} of the corpus   goal <= 25%  "
        f"{mark(index_fraction <= GOALS['index_fraction'])}; opened (checksums verified) in {open_ms:.0f} ms"
    )
    for kind in KINDS:
        miss = ", ".join(f"{c} {causes[kind][c]}" for c in CAUSES if causes[kind][c]) or "none"
        rescue = sum(rescued[kind].values())
        print(
            f"recall {kind:<11} {recall[kind]:.3f} ({found[kind]}/{per_kind})   goal >= {GOALS['recall_' + kind]:g}  "
            f"{mark(recall[kind] >= GOALS['recall_' + kind])}   misses: {miss}"
            + (f"; {rescue} found with max_verified={recheck} (default {default_budget})" if rescue else "")
            + (
                f"; {renamed_only[kind]} found only as renamed copies"
                if kind != "renamed" and renamed_only[kind]
                else ""
            )
        )
    print(
        f"precision {precision:.4f} ({confirmed}/{reported} reported matches confirmed)   goal >= "
        f"{GOALS['precision']:g}  {mark(precision >= GOALS['precision'])}   wrong: "
        + (", ".join(f"{why} {n}" for why, n in wrong.most_common()) or "none")
    )
    if widths:
        print(
            f"extent: confirmed matches' source lines hold {percentile(widths, 50):.2f} (p50), "
            f"{percentile(widths, 95):.2f} (p95), {max(widths):.2f} (max) tokens per planted token they cover; "
            f"{results['source_width']['over_1_5']} hold more than 1.5"
        )
    print(
        f"check latency ({results['queries']['mean_bytes']} B mean query): p50 {p50:.1f} ms   goal < 20 ms  "
        f"{mark(p50 < GOALS['p50_ms'])};  p95 {p95:.1f} ms   goal < 100 ms  {mark(p95 < GOALS['p95_ms'])};  "
        f"max {results['latency_ms']['max']:.0f} ms"
    )
    print(
        f"{per_kind} plants per kind of {SPAN_TOKENS[0]}-{SPAN_TOKENS[1]} tokens and {per_kind} negatives; "
        f"run took {results['seconds']:.0f} s (load average {results['load_average']['start']} -> "
        f"{results['load_average']['end']})"
    )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
