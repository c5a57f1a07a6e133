"""Reading an attribution index: open it memory-mapped, verify it, check code against it.

The files are those of ``attribution.format`` (``build`` writes them). Numbers live in
``.npy`` files opened with ``numpy.load(mmap_mode="r")``: opening reads the manifest and
checksums the files, and nothing is decoded until a query needs it. Readers share nothing
mutable but a cache of decoded chunks (``functools.lru_cache`` is thread-safe) and keep a zstd
decompressor per thread, so one index serves concurrent requests.

A check verifies candidates, most specific evidence first, until every part of the query
that has evidence is covered by a verified span (or a budget runs out); the other candidates
are only counted: ``copies`` is the number of documents whose fingerprints include every
fingerprint of the reported span (the verified document among them).
"""

from __future__ import annotations

import collections
import functools
import json
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import numpy as np
import zstandard

from codeinstruct.attribution.align import Run, aligned_runs
from codeinstruct.attribution.fingerprint import (
    BloomFilter,
    keys_of,
    kgram_hashes,
    previous_same,
    window_minima,
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
    STRINGS_FILE,
    VERSION,
    VIEWS_FILE,
    file_checksum,
)
from codeinstruct.attribution.normalize import TokenView, decode_view, scanner_for, scanner_named, view_of
from codeinstruct.attribution.report import AttributionReport, SourceSpan, assemble
from codeinstruct.errors import CodeinstructError
from codeinstruct.files import read_bytes

__all__ = ["AttributionIndex"]

_MAX_SEED_PAIRS = 20_000  # (query, source) position pairs considered per source
_MAX_DIAGONALS = 16  # alignments tried per source, most seeded first
_RENAMED_RECHECKS = 8  # sources verified, at most, in hope of a verbatim match where a renamed one is known


@dataclass(frozen=True)
class _Candidate:
    text: int
    keys: np.ndarray  # the query's fingerprint keys found in this text (distinct)
    hit_keys: np.ndarray  # each posting hit: its key ...
    hit_positions: np.ndarray  # ... and its token position in the text
    score: float


class AttributionIndex:
    """An index opened for reading; see the module docstring. Use ``AttributionIndex.open(path)``."""

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
        self.chunks = arrays["chunks"]
        self.documents = arrays["documents"]
        self.text_documents = arrays["text_documents"]
        self._views = views
        self._paths = paths
        self.strings = strings
        self.dictionary = dictionary
        self._local = threading.local()
        self._chunk = functools.lru_cache(maxsize=1024)(self._decode_chunk)
        names = sorted(manifest["scanners"].items(), key=lambda kv: (-kv[1], kv[0]))
        self._scanners = [s for s in (scanner_named(name) for name, _ in names) if s is not None]

    # ------------------------------------------------------------ opening

    @classmethod
    def open(cls, path: str | os.PathLike[str], verify: bool = True) -> AttributionIndex:
        """Open an index memory-mapped; checks the manifest, file sizes and (with verify) checksums."""
        path = Path(path)
        if not path.is_dir():
            raise CodeinstructError(f"{path}: no attribution index here (not a directory)")
        manifest_path = path / MANIFEST_FILE
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CodeinstructError(f"{path}: not an attribution index (no manifest.json)") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CodeinstructError(f"{manifest_path}: unreadable manifest ({e})") from None
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
                f"{where}: index format version {version!r}; this codeinstruct reads version "
                f"{VERSION}, rebuild the index"
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
        self, code: str, min_tokens: int | None = None, language: str | None = None, max_verified: int = 32
    ) -> AttributionReport:
        """Every verified span of ``min_tokens`` or more tokens that ``code`` shares with the corpus.

        ``language`` picks the lexer for the code (a corpus language name such as "Python");
        by default the code is read with the lexer of every language in the index.
        ``max_verified`` bounds how many candidate sources are aligned per lexer; candidates
        are taken most specific first and only while they can attribute code not yet
        attributed, so the bound matters only for code with evidence in very many files.
        """
        min_tokens = self._min_tokens(min_tokens)
        spans: list[SourceSpan] = []
        for scanner in self._scanners_for(language):
            query = view_of(scanner.scan(code))
            if len(query) >= min_tokens:
                spans.extend(self._find(query, min_tokens, max_verified))
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
        if min_tokens is None:
            return self.min_tokens
        if min_tokens < self.min_tokens:
            raise CodeinstructError(
                f"{self.path}: this index finds spans of {self.min_tokens} tokens or more "
                f"(--min-tokens {min_tokens} asked); rebuild it with --min-tokens {min_tokens}"
            )
        return min_tokens

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

    def _candidates(self, keys: np.ndarray, positions: dict[int, list[int]]) -> list[_Candidate]:
        """Stored texts sharing fingerprints with the query, most specific evidence first.

        A text's score is the weight of its best alignment: hits that put the same source
        token against the same query token (one diagonal) add up, each weighing 1/(its
        fingerprint's postings). A copy shows as several rare hits on one diagonal; a text
        that only shares common fragments, as scattered ones.
        """
        rows, hit_keys, postings_per_key = self._lookup(keys)
        if not len(rows):
            return []
        global_positions = np.asarray(self.postings[rows], dtype=np.int64)
        first_tokens = self._first_tokens
        hit_texts = np.searchsorted(first_tokens, global_positions, "right") - 1
        hit_positions = global_positions - first_tokens[hit_texts].astype(np.int64)
        weights = 1.0 / postings_per_key
        order = np.argsort(hit_texts, kind="stable")
        bounds = np.flatnonzero(np.diff(hit_texts[order])) + 1
        candidates = []
        for ix in np.split(order, bounds):
            text_keys = hit_keys[ix].tolist()
            diagonals: collections.Counter[int] = collections.Counter()
            for key, position, weight in zip(text_keys, hit_positions[ix].tolist(), weights[ix].tolist()):
                for i in positions[key][:8]:
                    diagonals[position - i] += weight
            score = max(diagonals.values())
            text = int(hit_texts[ix[0]])
            candidates.append(_Candidate(text, np.unique(hit_keys[ix]), hit_keys[ix], hit_positions[ix], score))
        candidates.sort(key=lambda c: (-c.score, c.text))
        return candidates

    def _find(self, query: TokenView, min_tokens: int, max_verified: int) -> list[SourceSpan]:
        query_prev = previous_same(query)
        query_hashes = kgram_hashes(query, self.k, query_prev)
        query_keys = keys_of(query_hashes)
        positions: dict[int, list[int]] = collections.defaultdict(list)
        for i, key in enumerate(query_keys.tolist()):
            positions[key].append(i)
        candidates = self._candidates(query_keys, positions)
        if not candidates:
            return []
        covered_verbatim = np.zeros(len(query_keys), dtype=bool)  # by k-gram start
        covered = np.zeros(len(query_keys), dtype=bool)
        found: list[tuple[int, Run]] = []
        verified = 0
        for candidate in candidates:
            query_positions = np.fromiter(
                (i for key in candidate.keys.tolist() for i in positions[key]), dtype=np.int64
            )
            if covered_verbatim[query_positions].all() or (
                verified >= _RENAMED_RECHECKS and covered[query_positions].all()
            ):
                continue  # nothing here that verified spans do not already attribute
            if verified >= max_verified:
                break
            verified += 1
            for run in self._verify(query, query_prev, candidate, positions, min_tokens):
                found.append((candidate.text, run))
                covered[run.q_start : run.q_end - self.k + 1] = True
                if run.verbatim:
                    covered_verbatim[run.q_start : run.q_end - self.k + 1] = True
        spans = []
        for text, run in found:
            # Copies: every candidate holding all the span's fingerprints (winnowing picks the
            # same minima from the same span wherever it sits).
            minima = np.unique(keys_of(window_minima(query_hashes[run.q_start : run.q_end - self.k + 1], self.w)))
            copies = tuple(c.text for c in candidates if c.text == text or np.isin(minima, c.keys).all())
            spans.append(self._span(query, text, run, copies))
        return spans

    def _verify(
        self,
        query: TokenView,
        query_prev: np.ndarray,
        candidate: _Candidate,
        positions: dict[int, list[int]],
        min_tokens: int,
    ) -> list[Run]:
        """The verified runs between the query and one candidate text."""
        n_query, n_source = len(query), int(self.texts[candidate.text]["tokens"])
        seeds: collections.Counter[int] = collections.Counter()
        budget = _MAX_SEED_PAIRS
        for key, position in zip(candidate.hit_keys.tolist(), candidate.hit_positions.tolist()):
            here = positions[key]
            seeds.update(position - i for i in here[:budget])
            budget -= len(here)
            if budget <= 0:
                break
        runs: list[Run] = []
        for diagonal, _ in seeds.most_common(_MAX_DIAGONALS):
            # Source tokens [lo, hi) face the query on this diagonal.
            lo, hi = max(0, diagonal), min(n_source, diagonal + n_query)
            if hi - lo < min_tokens:
                continue
            window = self._window(candidate.text, lo, hi)
            for run in aligned_runs(query, query_prev, window, previous_same(window), diagonal - lo, min_tokens):
                runs.append(Run(run.q_start, run.q_end, run.d_start + lo, run.d_end + lo, run.verbatim))
        return _distinct(runs)

    def _span(self, query: TokenView, text: int, run: Run, copies: tuple[int, ...]) -> SourceSpan:
        source_first = self._window(text, run.d_start, run.d_start + 1)
        source_last = self._window(text, run.d_end - 1, run.d_end)
        return SourceSpan(
            text=text,
            tokens=run.tokens,
            verbatim=run.verbatim,
            query_lines=(int(query.lines[run.q_start]), int(query.end_lines[run.q_end - 1])),
            source_lines=(int(source_first.lines[0]), int(source_last.end_lines[0])),
            copies=copies,
        )

    def _window(self, text: int, start: int, end: int) -> TokenView:
        """Tokens [start, end) of a stored text, decoding only the chunks that hold them."""
        row = self.texts[text]
        first = int(row["first_chunk"])
        views = [self._chunk(first + c) for c in range(start // CHUNK_TOKENS, (end - 1) // CHUNK_TOKENS + 1)]
        offset = start - (start // CHUNK_TOKENS) * CHUNK_TOKENS
        return TokenView.concatenate(views).slice(offset, offset + end - start)

    def _decode_chunk(self, chunk: int) -> TokenView:
        row = self.chunks[chunk]
        blob = self._views[int(row["start"]) : int(row["end"])] if self._views is not None else b""
        decompressor = getattr(self._local, "decompressor", None)
        if decompressor is None:
            data = zstandard.ZstdCompressionDict(self.dictionary) if self.dictionary else None
            decompressor = self._local.decompressor = zstandard.ZstdDecompressor(dict_data=data)
        try:
            view = decode_view(decompressor.decompress(blob).decode("utf-8", "surrogatepass"))
        except (zstandard.ZstdError, UnicodeDecodeError, ValueError, KeyError, IndexError) as e:
            raise CodeinstructError(
                f"{self.path}: stored chunk {chunk} is unreadable ({e}); rebuild the index"
            ) from None
        return view.shifted(int(row["first_line"]) - 1)


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
