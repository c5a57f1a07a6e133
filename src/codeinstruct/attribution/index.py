"""Reading an attribution index: open it memory-mapped, verify it, check code against it.

The files are those of ``attribution.format`` (``build`` writes them): ``IndexShard`` reads one
shard, ``AttributionIndex`` an index of one shard or several (see "Shards" below). Numbers live in
``.npy`` files opened with ``numpy.load(mmap_mode="r")``: opening reads the manifest and
checksums the files, and nothing is decoded until a query needs it. Readers share nothing
mutable but a cache of read chunks (``_ChunkCache``, behind a lock) and keep a zstd
decompressor per thread, so one index serves concurrent requests.

A check finds every span of ``min_tokens`` tokens or more that the code shares with an indexed
text (verbatim, re-laid-out or consistently renamed), however many texts hold it:

1. Places. A shared span of t = w + k - 1 tokens or more contains whole windows of w k-grams,
   and the minimum of each is a fingerprint of the query and of the text, on one diagonal
   (text position minus query position). So every (query position, posting) pair with the same
   key is taken, each query window whose minimum a text holds on a diagonal is marked, and
   consecutive marked windows make a place: (text, diagonal, query range). Every span lies in
   one place; a place with fewer windows than a span of min_tokens has holds none. Nothing is
   dropped for want of specificity: a fragment held by thousands of files is a place in each.
2. Stretches. The text is read over each place (``StoredView``: chunks located, not decoded),
   as far as its tokens can face the query's (same kinds, same keywords and punctuation: tokens
   compared by hashes of their stored form). Only such a stretch of min_tokens can hold a span.
   Every place of a shard is worked on at once: the tokens of each text around its places are
   read once (only the tokens needed, each chunk decompressed once) into one pool, and finding
   the stretches is a few array operations over all places, however many texts hold the code.
   Each place is first cut to its runs of the query's kinds (no key read): a stretch lies in one.
   A run, then a stretch, goes on only if it can hold a span verification would report: some
   min_tokens of it with fewer than three of the query's literals, or a range of min_tokens where
   the text keeps at least as many of them as it changes (_may_hold; verification asks a renamed
   span for half its literals). Files of one template under other names that share the query's
   literals where they fingerprint alike (fingerprints keep literals) are dropped here unaligned.
3. Verification. Where the text holds the query's tokens as they are over one stretch of
   min_tokens and nothing around it could align but parts of lines, that identical stretch is
   the span (align.identical_run, the same for every text): a span held by thousands of files
   costs a comparison per file. Other stretches are aligned token by token (align.stretch_runs, from their keys);
   the result depends only on the stretch's tokens and where it faces the query, so a stretch
   repeated by near-copies is aligned once, and ``max_verified`` bounds the distinct alignments.
   Read chunks are kept in a cache with random eviction (``_ChunkCache``), which a query reading
   a few more chunks than it holds does not flush as least-recently-used eviction would.

Every holder is a verified span with its own lines; report.assemble groups, counts and lists them.

Shards. An index of several shards is checked by lexing the code once and finding its spans in
every shard with one ``_Query`` (so the caches and the bound on alignments are shared, as in one
shard), then merging: a text is named by its content hash, the spans of a content held by several
shards are taken from the first shard holding it and its documents listed from every one, in shard
order, and contents are numbered by their first holder (shard, text), which is the order one shard
built over the same documents numbers its texts in. So the report equals that of one shard over
the same corpus: same matches, copies, sources and license summary. (It can differ only where
the bounds on work bind, ``max_verified`` and ``_MAX_PAIRS``, which one shard applies to all
places ranked together and shards apply shard by shard.)
"""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import random
import re
import threading
from pathlib import Path
from typing import NamedTuple, Self

import numpy as np
import zstandard

from codeinstruct.attribution.align import Run, identical_run, next_same, stretch_runs
from codeinstruct.attribution.fingerprint import (
    BloomFilter,
    keys_of,
    kgram_hashes,
    previous_of,
    previous_same,
    roles_of,
    sliding_minima,
    window_params,
)
from codeinstruct.attribution.format import (
    ARRAYS,
    CHUNK_TOKENS,
    DICTIONARY_FILE,
    FILES,
    FORMAT,
    MANIFEST_FILE,
    MANIFEST_KEYS,
    PATHS_FILE,
    SHARDS_MANIFEST_KEYS,
    SHARDS_VERSION,
    STRINGS_FILE,
    VERSION,
    VIEWS_FILE,
    file_checksum,
)
from codeinstruct.attribution.normalize import (
    LITERAL,
    OTHER,
    StoredView,
    TokenView,
    encode_view,
    scanner_for,
    scanner_named,
    view_of,
)
from codeinstruct.attribution.report import AttributionReport, SourceSpan, assemble
from codeinstruct.errors import CodeinstructError
from codeinstruct.files import read_bytes

__all__ = ["AttributionIndex", "IndexShard"]

# Read chunks kept per shard (about 20 KB each with what checks computed of them): enough for the
# ~1500 texts a fragment held by very many files sits in, so that checking code like it again
# decompresses nothing.
_CACHED_CHUNKS = 4096
_MAX_PAIRS = 2_000_000  # (query position, posting) pairs per query; see _clusters
_MAX_VERIFIED = 256  # distinct stretches aligned per query and lexer, at most (check's max_verified)
_REACH = 8  # tokens read beyond a place on each side (a span's first token may fingerprint otherwise there)
_GROW = 64  # tokens read at a time where a stretch goes on past what was read


class _Stretches(NamedTuple):
    """The stretches of a shard's places (IndexShard._stretches), one element each."""

    texts: np.ndarray
    diagonals: np.ndarray
    places: np.ndarray  # which place it is around (the places that have stretches, numbered in order)
    starts: np.ndarray  # first query token
    ends: np.ndarray
    same_starts: np.ndarray  # the one identical run of min_tokens in it, -1 if not exactly one
    same_ends: np.ndarray
    keys: np.ndarray  # the texts' token keys, of every stretch end to end
    key_starts: np.ndarray  # where its keys start in keys
    identical: np.ndarray  # how many of its tokens the text holds as the query has them


class _Query:
    """Code lexed by one scanner, as every shard checks it: its token view, the keys of its tokens'
    stored form, k-gram hashes and line bounds, and what verifying it has learnt so far (alignments
    of stretches, identical runs: both depend only on the query and the stretch, not the shard)."""

    def __init__(self, tokens, k: int, max_verified: int):
        self.view = view_of(tokens)
        self.keys = StoredView(encode_view(tokens).encode("utf-8", "surrogatepass")).keys
        self.prev = previous_same(self.view)
        self.following = next_same(self.prev)
        self.roles: dict[tuple[int, int], np.ndarray] = {}  # roles of the tokens of a window alone
        self.hashes = kgram_hashes(self.view, k, self.prev)
        self.line_starts, self.line_ends = _line_bounds(self.view)
        self.lines, self.end_lines = self.view.lines.tolist(), self.view.end_lines.tolist()
        self.literal_positions = np.flatnonzero(self.view.kinds == LITERAL)
        self.outcomes: dict[bytes, list[tuple[int, int, bool]]] = {}
        self.identical: dict[tuple[int, int], Run] = {}
        self.aligned = 0  # distinct stretches aligned, at most max_verified
        self.max_verified = max_verified


class _ChunkCache:
    """Read chunks by number, at most ``size`` of them kept; when full, a chunk chosen at random
    makes room. A query over a fragment held by thousands of texts reads one chunk per text, in
    the same order each time: with least-recently-used eviction a query reading a few more
    chunks than the cache holds would evict each before it is read again and never hit, while
    random eviction keeps about size / read of them. Thread-safe (a chunk read twice at once is
    decoded twice; both are equal)."""

    def __init__(self, read, size: int):
        self._read = read
        self._size = size
        self._kept: dict[int, StoredView] = {}
        self._order: list[int] = []  # the kept chunk numbers, for choosing one at random
        self._lock = threading.Lock()
        self._random = random.Random(0)

    def __call__(self, chunk: int) -> StoredView:
        view = self._kept.get(chunk)
        if view is not None:
            return view
        view = self._read(chunk)
        with self._lock:
            if chunk in self._kept:
                return self._kept[chunk]
            if len(self._order) < self._size:
                self._order.append(chunk)
            else:
                slot = self._random.randrange(self._size)
                del self._kept[self._order[slot]]
                self._order[slot] = chunk
            self._kept[chunk] = view
        return view

    def cache_clear(self) -> None:
        with self._lock:
            self._kept.clear()
            self._order.clear()


class IndexShard:
    """One shard (a directory of ``attribution.format``) opened for reading; see the module docstring.
    ``AttributionIndex.open(path)`` opens an index, whatever its shards."""

    def __init__(
        self,
        path: Path,
        manifest: dict,
        arrays: dict[str, np.ndarray],
        views: mmap.mmap | None,
        paths: mmap.mmap | None,
        strings: dict[str, list],
        dictionary: bytes,
    ):
        self.path = path
        self.manifest = manifest
        self.min_tokens: int = manifest["min_tokens"]
        self.k: int = manifest["k"]
        self.w: int = manifest["window"]
        self.bloom = BloomFilter(arrays["bloom"], manifest["bloom_probes"])
        self.keys_hi = arrays["keys_hi"]
        self.keys_lo = arrays["keys_lo"]
        self.postings = arrays["postings"]
        self.texts = arrays["texts"]
        self._first_tokens = np.ascontiguousarray(self.texts["first_token"])
        self._text_tokens = np.asarray(self.texts["tokens"], dtype=np.int64)
        self._first_chunks = np.asarray(self.texts["first_chunk"], dtype=np.int64)
        self.chunks = arrays["chunks"]
        self.documents = arrays["documents"]
        self.text_documents = arrays["text_documents"]
        self._views = views
        self._paths = paths
        self.strings = strings
        self.dictionary = dictionary
        self._local = threading.local()
        self._chunk = _ChunkCache(self._read_chunk, _CACHED_CHUNKS)
        self._scanners = _scanners_of(manifest)

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True, manifest: dict | None = None) -> IndexShard:
        """Open a shard memory-mapped; checks the manifest, file sizes and (with verify) checksums."""
        path = Path(path)
        if manifest is None:
            manifest = _read_manifest(path)
        cls._check_manifest(path, manifest, verify)
        arrays = {}
        for name in ARRAYS:
            try:
                arrays[name] = np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise CodeinstructError(f"{path / (name + '.npy')}: unreadable ({e}); rebuild the index") from None
        try:
            strings = json.loads((path / STRINGS_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CodeinstructError(f"{path / STRINGS_FILE}: unreadable ({e}); rebuild the index") from None
        dictionary = read_bytes(path / DICTIONARY_FILE)
        index = cls(path, manifest, arrays, _map(path / VIEWS_FILE), _map(path / PATHS_FILE), strings, dictionary)
        index._check_shapes()
        return index

    @staticmethod
    def _check_manifest(path: Path, manifest: object, verify: bool) -> None:
        where = path / MANIFEST_FILE
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CodeinstructError(f"{where}: not a codeinstruct attribution index manifest")
        version = manifest.get("version")
        if version != VERSION:
            raise CodeinstructError(
                f"{where}: index format version {version!r}; this codeinstruct reads versions "
                f"{VERSION} (one shard) and {SHARDS_VERSION} (shards), rebuild the index"
            )
        missing = [key for key in MANIFEST_KEYS if key not in manifest]
        if missing:
            raise CodeinstructError(f"{where}: missing {', '.join(missing)}; rebuild the index")
        try:
            params = window_params(manifest["min_tokens"])
        except (TypeError, ValueError):
            params = None
        probes = manifest["bloom_probes"]
        if (
            params != (manifest["k"], manifest["window"])
            or manifest["chunk_tokens"] != CHUNK_TOKENS
            or not isinstance(probes, int)
            or not 1 <= probes <= 64
        ):
            raise CodeinstructError(
                f"{where}: parameters (min_tokens {manifest['min_tokens']}, k {manifest['k']}, "
                f"window {manifest['window']}, chunks of {manifest['chunk_tokens']}, "
                f"{probes!r} Bloom probes) are not ones this codeinstruct writes; "
                "rebuild the index"
            )
        files = manifest["files"]
        if not isinstance(files, dict) or not FILES <= files.keys():
            raise CodeinstructError(f"{where}: file list incomplete; rebuild the index")
        for name, meta in sorted(files.items()):
            file = path / name
            try:
                size = file.stat().st_size
            except OSError:
                raise CodeinstructError(f"{file}: missing; the index is incomplete, rebuild it") from None
            if not isinstance(meta, dict) or size != meta.get("bytes"):
                expected_size = meta.get("bytes") if isinstance(meta, dict) else None
                raise CodeinstructError(
                    f"{file}: {size} bytes, the manifest says {expected_size}; the index is "
                    "corrupted or mixed with another one, rebuild it"
                )
            if verify and file_checksum(file) != meta.get("xxh3_64"):
                raise CodeinstructError(
                    f"{file}: checksum does not match the manifest; the index is corrupted, rebuild it"
                )

    def _check_shapes(self) -> None:
        m = self.manifest
        problems = []
        if len(self.documents) != m["documents"] or len(self.text_documents) != m["documents"]:
            problems.append("document table")
        if len(self.texts) != m["texts"]:
            problems.append("text table")
        if not len(self.keys_hi) == len(self.keys_lo) == len(self.postings) == m["postings"]:
            problems.append("locator")
        views = len(self._views) if self._views is not None else 0
        if (int(self.chunks["end"][-1]) if len(self.chunks) else 0) != views:
            problems.append("stored views")
        if problems:
            raise CodeinstructError(
                f"{self.path}: sizes of {', '.join(problems)} disagree with the manifest; rebuild the index"
            )

    def close(self) -> None:
        """Release the memory maps (optional: they also go when the index is garbage-collected)."""
        self._chunk.cache_clear()
        for data in (self._views, self._paths):
            if data is not None:
                try:
                    data.close()
                except BufferError:
                    pass  # a view of it is still alive; the map goes with it

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ metadata

    @property
    def paths(self) -> bytes | mmap.mmap:
        return self._paths if self._paths is not None else b""

    def __len__(self) -> int:
        return len(self.documents)

    def content_hash(self, text: int) -> bytes:
        """The xxh3-128 digest of a text's content: the same content has the same in every shard."""
        return bytes(self.texts[text]["content_hash"])

    def documents_of(self, text: int) -> list[tuple[str, str, str | None]]:
        """(repo, path, license) of every document holding this text, in index order."""
        row = self.texts[text]
        first, count = int(row["first_document"]), int(row["documents"])
        out = []
        for doc in self.text_documents[first : first + count].tolist():
            d = self.documents[doc]
            path = self.paths[int(d["path_start"]) : int(d["path_end"])].decode("utf-8", "surrogatepass")
            out.append((self.strings["repos"][int(d["repo"])], path, self.strings["licenses"][int(d["license"])]))
        return out

    # ------------------------------------------------------------ queries

    def check(
        self,
        code: str,
        min_tokens: int | None = None,
        language: str | None = None,
        max_verified: int = _MAX_VERIFIED,
    ) -> AttributionReport:
        """Every verified span of ``min_tokens`` or more tokens that ``code`` shares with the corpus.

        ``language`` picks the lexer for the code (a corpus language name such as "Python");
        by default the code is read with the lexer of every language in the index.
        ``max_verified`` bounds the distinct stretches aligned token by token per lexer (see the
        module docstring): stretches that hold the code as it is, and stretches equal to one
        already aligned, do not count, so it binds only where very many different texts share
        different renamed variants of the code.
        """
        min_tokens = self._min_tokens(min_tokens)
        spans: list[SourceSpan] = []
        for scanner in self._scanners_for(language):
            tokens = scanner.scan(code)
            if len(tokens) >= min_tokens:
                spans.extend(self._find(_Query(tokens, self.k, max_verified), min_tokens))
        return assemble(spans, self.documents_of, min_tokens)

    def may_contain(self, code: str, language: str | None = None) -> bool:
        """Whether any k-gram of ``code`` is an indexed fingerprint: the Bloom filter, then the locator
        for the few keys it lets through. False means no span of min_tokens tokens is in the corpus."""
        for scanner in self._scanners_for(language):
            query = view_of(scanner.scan(code))
            if len(query) >= self.min_tokens and len(self._lookup(keys_of(kgram_hashes(query, self.k)))[0]):
                return True
        return False

    def _min_tokens(self, min_tokens: int | None) -> int:
        return _at_least(self.path, self.min_tokens, min_tokens)

    def _scanners_for(self, language: str | None):
        if language is not None:
            return [scanner_for(language)]
        return self._scanners

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(posting rows, their keys, postings per key) of every indexed fingerprint among keys."""
        empty = np.zeros(0, dtype=np.int64)
        keys = np.unique(keys)
        keys = keys[self.bloom.contains(keys)]
        if not len(keys):
            return empty, keys, empty
        hi = (keys >> np.uint64(8)).astype(np.uint32)
        lo = (keys & np.uint64(0xFF)).astype(np.uint8)
        left = np.searchsorted(self.keys_hi, hi, "left")
        counts = np.searchsorted(self.keys_hi, hi, "right") - left
        found = counts > 0
        left, counts, keys, lo = left[found], counts[found], keys[found], lo[found]
        # Every posting of every found key, as flat index arrays.
        rows = np.repeat(left - np.concatenate(([0], np.cumsum(counts)[:-1])), counts) + np.arange(counts.sum())
        same = self.keys_lo[rows] == np.repeat(lo, counts)
        return rows[same], np.repeat(keys, counts)[same], np.repeat(counts, counts)[same]

    def _clusters(self, hashes: np.ndarray, min_tokens: int) -> tuple[np.ndarray, ...]:
        """(texts, diagonals, first query tokens, ends) of every place that can hold a shared span of
        ``min_tokens`` tokens or more, most evidence first, as arrays; see the module docstring."""
        k, w = self.k, self.w
        keys = keys_of(hashes)
        rows, hit_keys, _ = self._lookup(keys)
        minima = sliding_minima(hashes, w)
        if not len(rows) or not len(minima):
            return _NO_PLACES
        # Every (query position, posting) pair with the same key.
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        left = np.searchsorted(sorted_keys, hit_keys, "left")
        counts = np.searchsorted(sorted_keys, hit_keys, "right") - left
        if counts.sum() > _MAX_PAIRS:
            # Only where one k-gram repeats very often in the query and the corpus (runs of one
            # token): the most repeated keys go first.
            kept = np.argsort(counts, kind="stable")
            kept = np.sort(kept[np.cumsum(counts[kept]) <= _MAX_PAIRS])
            rows, left, counts = rows[kept], left[kept], counts[kept]
        total = int(counts.sum())
        firsts = np.cumsum(counts) - counts
        query_positions = order[np.repeat(left - firsts, counts) + np.arange(total)]
        global_positions = np.repeat(np.asarray(self.postings[rows], dtype=np.int64), counts)
        texts = np.searchsorted(self._first_tokens, global_positions, "right") - 1
        diagonals = global_positions - self._first_tokens[texts].astype(np.int64) - query_positions
        # The windows each position is the minimum of (a contiguous range, possibly empty).
        positions = np.unique(query_positions)
        starts = positions[:, None] - np.arange(w)[None, :]
        is_minimum = (starts >= 0) & (starts < len(minima))
        is_minimum &= minima[np.clip(starts, 0, len(minima) - 1)] == hashes[positions][:, None]
        first_window = np.where(is_minimum, starts, len(minima)).min(axis=1)
        last_window = np.where(is_minimum, starts, -1).max(axis=1)
        at = np.searchsorted(positions, query_positions)
        useful = last_window[at] >= 0
        texts, diagonals, lo, hi = texts[useful], diagonals[useful], first_window[at][useful], last_window[at][useful]
        if not len(texts):
            return _NO_PLACES
        # Windows whose minimum a text holds on one diagonal, merged into runs of consecutive windows.
        order = np.lexsort((lo, diagonals, texts))
        texts, diagonals, lo, hi = texts[order], diagonals[order], lo[order], hi[order]
        group = np.concatenate(([0], np.cumsum((texts[1:] != texts[:-1]) | (diagonals[1:] != diagonals[:-1]))))
        scale = np.int64(len(minima) + 2)
        reach = np.maximum.accumulate(group * scale + hi) - group * scale  # furthest window so far, per group
        new = np.ones(len(lo), dtype=bool)
        new[1:] = (group[1:] != group[:-1]) | (lo[1:] > reach[:-1] + 1)
        firsts = np.flatnonzero(new)
        first, last = lo[firsts], np.maximum.reduceat(hi, firsts)
        windows = last - first + 1
        # A span of min_tokens tokens holds min_tokens - (w + k - 1) + 1 consecutive windows.
        enough = windows >= min_tokens - (w + k - 1) + 1
        texts, diagonals, windows = texts[firsts][enough], diagonals[firsts][enough], windows[enough]
        first, last = first[enough], last[enough]
        ranked = np.lexsort((diagonals, texts, -windows))
        return texts[ranked], diagonals[ranked], first[ranked], last[ranked] + (w + k - 1)

    def _find(self, q: _Query, min_tokens: int) -> list[SourceSpan]:
        """Every verified span of the query in this shard, one per holder (see the module docstring)."""
        query, query_prev, outcomes, identical = q.view, q.prev, q.outcomes, q.identical
        found = self._stretches(q, *self._clusters(q.hashes, min_tokens), min_tokens)
        if found is None:
            return []
        texts, diagonals, places, starts, ends, same_starts, same_ends, keys, key_starts, identical_tokens = found
        # Another place on the same stretch: the stretch is taken once, where first reached.
        order = np.lexsort((ends, starts, diagonals, texts))  # stable: the first of equals first
        repeated = np.zeros(len(starts), dtype=bool)
        repeated[order[1:]] = (
            (texts[order[1:]] == texts[order[:-1]])
            & (diagonals[order[1:]] == diagonals[order[:-1]])
            & (starts[order[1:]] == starts[order[:-1]])
            & (ends[order[1:]] == ends[order[:-1]])
        )
        # Where the text holds the code as it is, that is the match: one identical stretch with no
        # whole line around it that could also align (renamed) gives the run aligned_runs would,
        # and depends on nothing but where it is. So a span held by thousands of files costs a
        # comparison per file (and these few array operations over them all).
        last = len(query) - 1
        same = (
            (same_starts >= 0)
            & ((same_starts == starts) | (starts > q.line_starts[np.clip(same_starts - 1, 0, last)]))
            & ((same_ends == ends) | (ends < q.line_ends[np.clip(same_ends, 0, last)]))
        )
        run_starts, run_ends = same_starts.copy(), same_ends.copy()
        for v_start, v_end in set(zip(same_starts[same].tolist(), same_ends[same].tolist())):
            run = identical.get((v_start, v_end))
            if run is None:
                run = identical[(v_start, v_end)] = identical_run(
                    query, query_prev, v_start, v_end, min_tokens, q.following
                )
            chosen = same & (same_starts == v_start) & (same_ends == v_end)
            run_starts[chosen], run_ends[chosen] = run.q_start, run.q_end
        # Otherwise align (max_verified bounds the distinct alignments), most tokens held as they are
        # first: a renamed copy keeps its source's literals and the names it did not rename, which
        # near-copies of the source under other names do not. The result depends only on the
        # stretch's tokens and where it faces the query, so near-copies that repeat one stretch are
        # aligned once.
        aligned: dict[int, list[Run]] = {}
        pending = np.flatnonzero(~same & ~repeated)
        for i in pending[np.argsort(-identical_tokens[pending], kind="stable")].tolist():
            a, b, diagonal = int(starts[i]), int(ends[i]), int(diagonals[i])
            at = int(key_starts[i])
            key = (a, b, keys[at : at + b - a].tobytes())
            outcome = outcomes.get(key)
            if outcome is None:
                if q.aligned >= q.max_verified:
                    continue
                q.aligned += 1
                # The stretch's tokens all face compatible ones: its keys say which it holds as they
                # are and where its names repeat; nothing more of the text is read.
                source_keys = keys[at : at + b - a]
                roles = q.roles.get((a, b))
                if roles is None:
                    roles = q.roles[(a, b)] = roles_of(query.slice(a, b))
                outcome = outcomes[key] = [
                    (r.q_start, r.q_end, r.verbatim)
                    for r in stretch_runs(
                        query,
                        query_prev,
                        a,
                        b,
                        source_keys == q.keys[a:b],
                        previous_of(query.kinds[a:b], source_keys, roles),
                        min_tokens,
                        q.following,
                    )
                ]
            aligned.setdefault(int(places[i]), []).extend(
                Run(qs, qe, qs + diagonal, qe + diagonal, verbatim) for qs, qe, verbatim in outcome
            )
        # Each place's runs, without near-duplicates; a span per run, with its own lines.
        spans: list[SourceSpan] = []
        lines, end_lines = q.lines, q.end_lines
        kept = (same & ~repeated).tolist()
        places_, texts_, diagonals_ = places.tolist(), texts.tolist(), diagonals.tolist()
        run_starts_, run_ends_ = run_starts.tolist(), run_ends.tolist()
        i, count = 0, len(places_)
        while i < count:
            place, text, diagonal = places_[i], texts_[i], diagonals_[i]
            j = i + 1
            while j < count and places_[j] == place:
                j += 1
            if j == i + 1 and kept[i] and place not in aligned:  # most places: one identical stretch
                qs, qe = run_starts_[i], run_ends_[i]
                source_lines = self._lines(text, qs + diagonal, qe + diagonal)
                spans.append(SourceSpan(text, qe - qs, True, (lines[qs], end_lines[qe - 1]), source_lines))
            else:
                runs = [
                    Run(run_starts_[k], run_ends_[k], run_starts_[k] + diagonal, run_ends_[k] + diagonal, True)
                    for k in range(i, j)
                    if kept[k]
                ]
                runs.extend(aligned.get(place, ()))
                for run in _distinct(runs):
                    query_lines = (lines[run.q_start], end_lines[run.q_end - 1])
                    source_lines = self._lines(text, run.d_start, run.d_end)
                    spans.append(SourceSpan(text, run.tokens, run.verbatim, query_lines, source_lines))
            i = j
        return spans

    def _stretches(
        self,
        q: _Query,
        texts: np.ndarray,
        diagonals: np.ndarray,
        q_starts: np.ndarray,
        q_ends: np.ndarray,
        min_tokens: int,
    ) -> _Stretches | None:
        """Each maximal stretch of min_tokens or more, around a place (text, diagonal, query range),
        where the text's tokens can face the query's: same kinds, same keywords, operators and
        punctuation. Only there can a span be; a stretch is read as far as it goes (_GROW tokens at
        a time), so that it is the same wherever it was reached from. In place order; None if none.

        All places are worked on at once, as arrays: the tokens of every text around its places
        are gathered once into one pool, and each step (the place's kinds, growing, the stretches,
        the identical runs in them) is a few array operations over every place."""
        n_query = len(q.view)
        floor = np.maximum(0, -diagonals)
        ceiling = np.minimum(n_query, self._text_tokens[texts] - diagonals)
        lo = np.maximum(floor, q_starts - _REACH)
        hi = np.minimum(ceiling, q_ends + _REACH)
        kept = np.flatnonzero(hi - lo >= min_tokens)
        if not len(kept):
            return None
        texts, diagonals, floor, ceiling, lo, hi = (x[kept] for x in (texts, diagonals, floor, ceiling, lo, hi))
        # The tokens of each text that can face the query, in one pool; the pool index of query
        # position i of place p is at[p] + i.
        pool_kinds, origin, distinct, pieces = self._pool(texts, floor + diagonals, ceiling + diagonals)
        at = origin + diagonals
        query_kinds, query_keys = q.view.kinds, q.keys
        # A stretch lies in a run of min_tokens or more tokens of the query's kinds, seen from the
        # kinds alone before any key is read: most places have none (a k-gram of the same shape,
        # and no more). Each run is then worked on instead of its place's window, which is wider.
        positions, rows, bounds = _spans_of(lo, hi)
        same_kind = pool_kinds[positions + at[rows]] == query_kinds[positions]
        run_starts, run_ends = _runs_in(same_kind, bounds, min_tokens)
        if not len(run_starts):
            return None
        place = rows[run_starts]
        shift = positions[run_starts] - run_starts
        run_lo, run_hi = run_starts + shift, run_ends + shift
        texts, diagonals, floor, ceiling, at = (x[place] for x in (texts, diagonals, floor, ceiling, at))

        def same(where: np.ndarray) -> np.ndarray:
            return pool_kinds[at + where] == query_kinds[where]

        # Grow each run that reaches its window's end while the kinds go on (ends independently).
        growing = (run_lo == lo[place]) & (run_lo > floor)
        while growing.any():
            run_lo = np.where(growing, np.maximum(floor, run_lo - _GROW), run_lo)
            growing &= same(run_lo) & (run_lo > floor)
        growing = (run_hi == hi[place]) & (run_hi < ceiling)
        while growing.any():
            run_hi = np.where(growing, np.minimum(ceiling, run_hi + _GROW), run_hi)
            growing &= same(run_hi - 1) & (run_hi < ceiling)
        lo, hi = run_lo, run_hi
        pool_keys = self._pool_keys(
            len(pool_kinds), [piece for i in np.unique(distinct[place]).tolist() for piece in pieces[i]]
        )
        # Only runs that can hold a span that verification would report go on: one read over the
        # query's literals in each (see _may_hold). In generated code (thousands of files of one
        # template under other names) this leaves a handful.
        hopeful = _may_hold(q, lo, hi, at, pool_keys, min_tokens)
        if not hopeful.any():
            return None
        run_places, texts, diagonals, lo, hi, at = (x[hopeful] for x in (place, texts, diagonals, lo, hi, at))
        # The stretches: runs of min_tokens or more compatible tokens in each run.
        positions, rows, bounds = _spans_of(lo, hi)
        where = positions + at[rows]
        kinds, keys = pool_kinds[where], pool_keys[where]
        same_key = keys == query_keys[positions]
        compatible = (kinds == query_kinds[positions]) & ((kinds != OTHER) | same_key)
        starts, ends = _runs_in(compatible, bounds, min_tokens)
        if not len(starts):
            return None
        # The identical runs of min_tokens in each stretch; a stretch with exactly one gets it.
        inside = np.zeros(len(compatible) + 1, dtype=np.int8)
        inside[starts] += 1
        inside[ends] -= 1
        same_starts, same_ends = _runs_in(same_key & (np.cumsum(inside[:-1]) > 0), bounds, min_tokens)
        holder = np.searchsorted(starts, same_starts, "right") - 1
        count = np.bincount(holder, minlength=len(starts))
        shift = positions[starts] - starts  # query position minus pool index, for each stretch
        same_start = np.full(len(starts), -1, dtype=np.int64)
        same_end = np.full(len(starts), -1, dtype=np.int64)
        one = np.flatnonzero(count == 1)
        found = np.searchsorted(holder, one)  # the identical run of each stretch that has one
        same_start[one], same_end[one] = same_starts[found] + shift[one], same_ends[found] + shift[one]
        place = np.searchsorted(bounds, starts, "right")
        # The same test over each stretch, which is narrower than its run: only these are aligned.
        hopeful = np.flatnonzero(_may_hold(q, starts + shift, ends + shift, at[place], pool_keys, min_tokens))
        if not len(hopeful):
            return None
        place, starts, ends, shift = place[hopeful], starts[hopeful], ends[hopeful], shift[hopeful]
        same_before = np.concatenate(([0], np.cumsum(same_key)))
        return _Stretches(
            texts[place],
            diagonals[place],
            run_places[place],
            starts + shift,
            ends + shift,
            same_start[hopeful],
            same_end[hopeful],
            keys,
            starts,
            same_before[ends] - same_before[starts],  # identical tokens in each
        )

    def _pool(
        self, texts: np.ndarray, starts: np.ndarray, ends: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[tuple[StoredView, int, int, int]]]]:
        """StoredView.kinds of tokens [start, end) of each text (of the union of its ranges, for a text
        named several times) laid end to end; for each text named, the pool index of its token 0 and
        which distinct text it is; and for each distinct text, the (chunk, first token, end, pool
        index) of its pieces, to read keys from (_pool_keys)."""
        order = np.argsort(texts, kind="stable")
        ordered = texts[order]
        firsts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        lows = np.minimum.reduceat(starts[order], firsts).tolist()
        highs = np.maximum.reduceat(ends[order], firsts).tolist()
        kinds: list[np.ndarray] = []
        offsets = []
        pieces = []
        total = 0
        for text, low, high in zip(ordered[firsts].tolist(), lows, highs):
            offsets.append(total - low)
            own = []
            for chunk, a, b in self._segments(text, low, high):
                kinds.append(chunk.kinds_between(a, b))
                own.append((chunk, a, b, total))
                total += b - a
            pieces.append(own)
        distinct = np.empty(len(texts), dtype=np.int64)
        distinct[order] = np.repeat(np.arange(len(firsts)), np.diff(np.append(firsts, len(texts))))
        origin = np.asarray(offsets, dtype=np.int64)[distinct]
        return np.concatenate(kinds), origin, distinct, pieces

    @staticmethod
    def _pool_keys(size: int, pieces: list[tuple[StoredView, int, int, int]]) -> np.ndarray:
        """StoredView.keys of the pool's tokens in these pieces (0 elsewhere)."""
        keys = np.zeros(size, dtype=np.uint64)
        for chunk, a, b, at in pieces:
            keys[at : at + b - a] = chunk.keys_between(a, b)
        return keys

    # ------------------------------------------------------------ stored views

    def _segments(self, text: int, start: int, end: int) -> list[tuple[StoredView, int, int]]:
        """(chunk, first token, end) of the chunks holding tokens [start, end) of a stored text."""
        first = int(self._first_chunks[text])
        out = []
        for c in range(start // CHUNK_TOKENS, (end - 1) // CHUNK_TOKENS + 1):
            offset = c * CHUNK_TOKENS
            out.append((self._chunk(first + c), max(start - offset, 0), min(end - offset, CHUNK_TOKENS)))
        return out

    def _lines(self, text: int, start: int, end: int) -> tuple[int, int]:
        """The first and last line of tokens [start, end) of a text."""
        first = int(self._first_chunks[text])
        line = self._chunk(first + start // CHUNK_TOKENS).token_lines(start % CHUNK_TOKENS)[0]
        return line, self._chunk(first + (end - 1) // CHUNK_TOKENS).token_lines((end - 1) % CHUNK_TOKENS)[1]

    def _read_chunk(self, chunk: int) -> StoredView:
        row = self.chunks[chunk]
        blob = self._views[int(row["start"]) : int(row["end"])] if self._views is not None else b""
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            data = zstandard.ZstdCompressionDict(self.dictionary) if self.dictionary else None
            decompressor = self._local.decompressor = zstandard.ZstdDecompressor(dict_data=data)
        try:
            return StoredView(decompressor.decompress(blob), int(row["first_line"]))
        except (zstandard.ZstdError, ValueError, IndexError) as e:
            raise CodeinstructError(
                f"{self.path}: stored chunk {chunk} is unreadable ({e}); rebuild the index"
            ) from None


class AttributionIndex:
    """An index opened for reading: one shard or several, checked as one (see the module docstring).

    ``AttributionIndex.open(path)``; ``check(code)`` reports where code came from. One opened
    index serves concurrent readers."""

    def __init__(self, path: Path, manifest: dict, shards: list[IndexShard]):
        self.path = path
        self.manifest = manifest
        self.shards = shards
        self.min_tokens: int = manifest["min_tokens"]
        self.k: int = manifest["k"]
        self.w: int = manifest["window"]
        self._scanners = _scanners_of(manifest)

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True) -> AttributionIndex:
        """Open an index memory-mapped: every shard's manifest, file sizes and (with verify) checksums
        are checked, and nothing else is read until a query needs it."""
        path = Path(path)
        manifest = _read_manifest(path)
        if not (isinstance(manifest, dict) and manifest.get("version") == SHARDS_VERSION):
            shard = IndexShard.open(path, verify, manifest)  # an index of one shard
            return cls(path, shard.manifest, [shard])
        where = path / MANIFEST_FILE
        if manifest.get("format") != FORMAT:
            raise CodeinstructError(f"{where}: not a codeinstruct attribution index manifest")
        missing = [key for key in SHARDS_MANIFEST_KEYS if key not in manifest]
        entries = manifest.get("shards")
        if missing or not isinstance(entries, list) or not entries:
            raise CodeinstructError(f"{where}: missing {', '.join(missing) or 'shards'}; rebuild the index")
        shards: list[IndexShard] = []
        try:
            for entry in entries:
                name = entry.get("name") if isinstance(entry, dict) else None
                if not isinstance(name, str) or not re.fullmatch(r"shard-\d{5,}", name):
                    raise CodeinstructError(f"{where}: a shard entry is malformed ({entry!r}); rebuild the index")
                shard_manifest = path / name / MANIFEST_FILE
                if not shard_manifest.is_file():
                    raise CodeinstructError(f"{path / name}: shard missing; the index is incomplete, rebuild it")
                if file_checksum(shard_manifest) != entry.get("manifest_xxh3"):
                    raise CodeinstructError(
                        f"{shard_manifest}: not the shard the index lists; the index is mixed with another one, "
                        "rebuild it"
                    )
                shard = IndexShard.open(path / name, verify)
                shards.append(shard)
                if shard.min_tokens != manifest["min_tokens"] or len(shard) != entry.get("documents"):
                    raise CodeinstructError(
                        f"{path / name}: parameters or documents disagree with {where}; rebuild the index"
                    )
        except BaseException:
            for shard in shards:
                shard.close()
            raise
        if (manifest["k"], manifest["window"]) != (shards[0].k, shards[0].w):
            raise CodeinstructError(f"{where}: parameters disagree with the shards'; rebuild the index")
        return cls(path, manifest, shards)

    def close(self) -> None:
        """Release the memory maps (optional: they also go when the index is garbage-collected)."""
        for shard in self.shards:
            shard.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def check(
        self,
        code: str,
        min_tokens: int | None = None,
        language: str | None = None,
        max_verified: int = _MAX_VERIFIED,
    ) -> AttributionReport:
        """Every verified span of ``min_tokens`` or more tokens that ``code`` shares with the corpus.

        ``language`` picks the lexer for the code (a corpus language name such as "Python");
        by default the code is read with the lexer of every language in the index.
        ``max_verified`` bounds the distinct stretches aligned token by token per lexer (see the
        module docstring): stretches that hold the code as it is, and stretches equal to one
        already aligned, do not count, so it binds only where very many different texts share
        different renamed variants of the code.
        """
        if len(self.shards) == 1:
            return self.shards[0].check(code, min_tokens, language, max_verified)
        min_tokens = _at_least(self.path, self.min_tokens, min_tokens)
        found: list[tuple[int, SourceSpan]] = []
        for scanner in [scanner_for(language)] if language is not None else self._scanners:
            tokens = scanner.scan(code)
            if len(tokens) >= min_tokens:
                query = _Query(tokens, self.k, max_verified)
                for number, shard in enumerate(self.shards):
                    found.extend((number, span) for span in shard._find(query, min_tokens))
        spans, documents_of = self._merged(found)
        return assemble(spans, documents_of, min_tokens)

    def _merged(self, found: list[tuple[int, SourceSpan]]):
        """The spans of several shards as one shard over their documents would give them, and its
        documents_of (see the module docstring)."""
        holders: dict[bytes, dict[int, int]] = {}  # content hash -> {shard: its text of that content}
        content: dict[tuple[int, int], bytes] = {}
        for number, span in found:
            for text in (span.text, *span.copies):
                if (number, text) not in content:
                    digest = content[(number, text)] = self.shards[number].content_hash(text)
                    holders.setdefault(digest, {})[number] = text
        # Contents numbered by their first holder: one shard numbers texts by first document, and
        # the documents of a shard all come before those of the next.
        firsts = sorted((min(by_shard.items()), digest) for digest, by_shard in holders.items())
        numbered = {digest: i for i, (_, digest) in enumerate(firsts)}
        texts = [sorted(holders[digest].items()) for _, digest in firsts]
        spans = [
            dataclasses.replace(
                span,
                text=numbered[content[(number, span.text)]],
                copies=tuple(numbered[content[(number, t)]] for t in span.copies),
            )
            for number, span in found
            if number == min(holders[content[(number, span.text)]])
        ]

        def documents_of(text: int) -> list[tuple[str, str, str | None]]:
            return [doc for number, local in texts[text] for doc in self.shards[number].documents_of(local)]

        return spans, documents_of

    def may_contain(self, code: str, language: str | None = None) -> bool:
        """Whether any k-gram of ``code`` is an indexed fingerprint: the Bloom filters, then the locators
        for the few keys they let through. False means no span of min_tokens tokens is in the corpus."""
        for scanner in [scanner_for(language)] if language is not None else self._scanners:
            query = view_of(scanner.scan(code))
            if len(query) >= self.min_tokens:
                keys = keys_of(kgram_hashes(query, self.k))
                if any(len(shard._lookup(keys)[0]) for shard in self.shards):
                    return True
        return False


def _read_manifest(path: Path) -> object:
    if not path.is_dir():
        raise CodeinstructError(f"{path}: no attribution index here (not a directory)")
    manifest_path = path / MANIFEST_FILE
    try:
        return json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CodeinstructError(f"{path}: not an attribution index (no manifest.json)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CodeinstructError(f"{manifest_path}: unreadable manifest ({e})") from None


def _scanners_of(manifest: dict) -> list:
    """The lexers of the languages indexed, most documents first."""
    names = sorted(manifest["scanners"].items(), key=lambda kv: (-kv[1], kv[0]))
    return [s for s in (scanner_named(name) for name, _ in names) if s is not None]


def _at_least(path: Path, index_min_tokens: int, min_tokens: int | None) -> int:
    """The min_tokens of a check: the index's, or more."""
    if min_tokens is None:
        return index_min_tokens
    if min_tokens < index_min_tokens:
        raise CodeinstructError(
            f"{path}: this index finds spans of {index_min_tokens} tokens or more "
            f"(--min-tokens {min_tokens} asked); rebuild it with --min-tokens {min_tokens}"
        )
    return min_tokens


def _line_bounds(view: TokenView) -> tuple[np.ndarray, np.ndarray]:
    """For each token, the first token of its line and one past the last."""
    lines = view.lines
    starts = np.flatnonzero(np.concatenate(([True], lines[1:] != lines[:-1])))
    ends = np.concatenate((starts[1:], [len(lines)]))
    which = np.searchsorted(starts, np.arange(len(lines)), "right") - 1
    return starts[which], ends[which]


def _may_hold(
    q: _Query, lo: np.ndarray, hi: np.ndarray, at: np.ndarray, pool_keys: np.ndarray, min_tokens: int
) -> np.ndarray:
    """Whether each window [lo, hi) of query positions (pool index at + i) can hold a span that
    verification reports; False only where it provably cannot.

    A reported span is min_tokens or more tokens inside the window. A verbatim span keeps every
    literal, and a renamed one with three or more literals keeps at least half of them
    (align._copied). So the window must have min_tokens or more tokens holding fewer than three
    of the query's literals, or a range of min_tokens or more where kept literals are at least
    as many as changed ones (kept: the text has the same literal facing it; tokens equal as text
    have equal keys, so this never counts fewer kept than verification does). Both are read
    over the query's literals only: a range holding literals j..k reaches from literal j - 1 to
    literal k + 1 (the window's ends standing in beyond its first and last)."""
    literals = q.literal_positions
    first = np.searchsorted(literals, lo)
    count = np.searchsorted(literals, hi) - first
    hopeful = count < 3  # the whole window (min_tokens or more) holds fewer than three
    rows = np.flatnonzero(~hopeful)
    if not len(rows):
        return hopeful
    # Each row's literal positions with its ends: E_0 = lo - 1, E_1..E_L, E_L+1 = hi.
    n = count[rows]
    positions, which, bounds = _spans_of(first[rows] - 1, first[rows] + n + 1)
    edges = literals[np.clip(positions, 0, len(literals) - 1)]
    row_starts = bounds - (n + 2)
    edges[row_starts] = lo[rows] - 1
    edges[bounds - 1] = hi[rows]
    # Fewer than three literals: between E_j and E_j+3.
    same_row = which[3:] == which[:-3]
    widest = np.zeros(len(rows), dtype=np.int64)
    np.maximum.at(widest, which[:-3][same_row], (edges[3:] - edges[:-3] - 1)[same_row])
    wide = widest >= min_tokens
    hopeful[rows[wide]] = True
    keep = ~wide
    if not keep.any():
        return hopeful
    rows, n, edges_of = rows[keep], n[keep], np.repeat(keep, n + 2)
    edges, which = edges[edges_of], np.repeat(np.arange(len(rows)), n + 2)
    bounds = np.cumsum(n + 2)
    row_starts = bounds - (n + 2)
    # +1 for a kept literal, -1 for a changed one; P_i = their sum over literals 1..i (P_0 = 0).
    inner = np.ones(len(edges), dtype=bool)
    inner[row_starts] = inner[bounds - 1] = False
    where = edges[inner]
    kept = pool_keys[at[rows][which[inner]] + where] == q.keys[where]
    value = np.zeros(len(edges), dtype=np.int64)
    value[inner] = np.where(kept, 1, -1)
    prefix = np.cumsum(value)
    prefix -= np.repeat(prefix[row_starts], n + 2)  # P_i at row index i (and P_L again at L + 1)
    # Range over literals i+1..k (0 <= i < k <= L) holds min_tokens when E_k+1 - E_i - 1 >= min_tokens,
    # i.e. i <= B(k); it has kept >= changed when P_i <= P_k. So: min(P_0..P_min(k-1, B(k))) <= P_k.
    span = np.int64(len(q.view) + 3)
    shifted = edges + which * span  # increasing over all rows
    big = np.int64(2 * int(n.max()) + 3)
    running_min = np.minimum.accumulate(prefix - which * big) + which * big
    index = np.arange(len(edges))
    k = index[inner]  # each literal k of each row, as an index in the arrays
    limit = np.searchsorted(shifted, shifted[k + 1] - 1 - min_tokens, "right") - 1
    limit = np.minimum(limit, k - 1)
    valid = limit >= row_starts[which[k]]
    ok = valid & (running_min[np.maximum(limit, 0)] <= prefix[k])
    hopeful[rows[np.unique(which[k][ok])]] = True
    return hopeful


def _spans_of(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranges [lo, hi) (none empty) laid end to end: each element's position in its range, its
    range, and where each range ends in the whole."""
    lengths = hi - lo
    bounds = np.cumsum(lengths)
    rows = np.repeat(np.arange(len(lo)), lengths)
    return np.arange(int(bounds[-1])) + (lo - (bounds - lengths))[rows], rows, bounds


def _runs_in(ok: np.ndarray, bounds: np.ndarray, min_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of every run of True of min_tokens or more in ok, cut where ranges end (bounds,
    as _spans_of gives them)."""
    edges = np.zeros(len(ok) + 1, dtype=bool)  # where ok changes, and at every range's end
    edges[0] = ok[0]
    np.not_equal(ok[1:], ok[:-1], out=edges[1:-1])
    edges[-1] = ok[-1]
    inner = bounds[:-1]
    edges[inner] = ok[inner] | ok[inner - 1]
    changes = np.flatnonzero(edges)
    # Walking the change points: a run starts at a change point that is True, and ends at the next.
    is_start = ok[np.minimum(changes, len(ok) - 1)] & (changes < len(ok))
    starts = changes[is_start]
    ends = changes[np.flatnonzero(is_start) + 1]
    long = ends - starts >= min_tokens
    return starts[long], ends[long]


_NO_PLACES = tuple(np.zeros(0, dtype=np.int64) for _ in range(4))


def _distinct(runs: list[Run]) -> list[Run]:
    """Runs of one source without near-duplicates: verbatim first, then longest; a run mostly
    inside one already kept goes."""
    kept: list[Run] = []
    for run in sorted(runs, key=lambda r: (not r.verbatim, -r.tokens, r.q_start, r.d_start)):
        if all(2 * max(0, min(run.q_end, k.q_end) - max(run.q_start, k.q_start)) < run.tokens for k in kept):
            kept.append(run)
    return kept


def _map(path: Path) -> mmap.mmap | None:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
