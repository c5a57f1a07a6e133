"""The attribution index: build it from a corpus, open it memory-mapped, check code against it.

An index is a directory:

- ``manifest.json``: format and version, parameters (min_tokens, k, w), counts, languages,
  and the byte size and xxh3 checksum of every other file; opening checks all of them, so a
  truncated, corrupted or mixed-up index is an error, never a wrong answer;
- ``bloom.npy``: the membership sketch over every indexed fingerprint;
- ``keys_hi.npy``, ``keys_lo.npy``, ``postings.npy``: the locator, fingerprints (40 bits,
  split 32 + 8) sorted, each with the token position it came from, counted over all stored
  texts end to end (so one number says both which text and where); a lookup is a binary search;
- ``texts.npy``, ``chunks.npy``, ``views.bin``, ``views.dict``: one entry per distinct document
  content; its token view (normalize.encode_view) is stored in chunks of 2048 tokens, each
  compressed with zstd and a dictionary trained on the corpus, so verifying a match in a
  large file decodes only the chunks around it;
- ``documents.npy``, ``text_documents.npy``, ``paths.bin``, ``strings.json``: every document
  (repo, path, license, language) and the text it holds; byte-identical files share one text.

Numbers live in ``.npy`` files opened with ``numpy.load(mmap_mode="r")``: opening reads the
manifest and checksums the files, and nothing is decoded until a query needs it. Readers
share nothing mutable but a cache of decoded chunks (``functools.lru_cache`` is thread-safe)
and keep a zstd decompressor per thread, so one index serves concurrent requests.

A check verifies candidates, most specific evidence first, until every part of the query
that has evidence is covered by a verified span (or a budget runs out); the other candidates
are only counted: ``copies`` is the number of documents whose fingerprints include every
fingerprint of the reported span (the verified document among them).

Writes are atomic: an index is built in a temporary directory beside the target and renamed
into place; ``--add`` builds the merged index the same way and swaps it in. The locator is
plain numpy arrays rather than a bitmap library's posting lists: almost every fingerprint
sits in one document, where a Roaring bitmap would spend more on its header than the list.
"""

from __future__ import annotations

import collections
import functools
import json
import mmap
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import xxhash
import zstandard

from codeinstruct.attribution.align import Run, aligned_runs
from codeinstruct.attribution.fingerprint import (
    PROBES,
    BloomFilter,
    keys_of,
    kgram_hashes,
    previous_same,
    window_minima,
    window_params,
    winnow,
)
from codeinstruct.attribution.normalize import (
    TokenView,
    decode_view,
    encode_view,
    scanner_for,
    scanner_named,
    view_of,
)
from codeinstruct.attribution.report import AttributionReport, SourceSpan, assemble
from codeinstruct.data.corpus import CorpusReport, Document, iter_documents
from codeinstruct.errors import CodeinstructError

__all__ = ["DEFAULT_MIN_TOKENS", "AttributionIndex", "IndexSummary", "build_index"]

FORMAT = "codeinstruct-attribution-index"
VERSION = 1
DEFAULT_MIN_TOKENS = 50
_ZSTD_LEVEL = 9
_BATCH_BYTES = 1 << 20
_BATCH_DOCUMENTS = 512
_DOCUMENT = np.dtype([("text", "<u4"), ("repo", "<u4"), ("license", "<u4"), ("language", "<u4"),
                      ("path_start", "<u8"), ("path_end", "<u8")])
_TEXT = np.dtype([("first_token", "<u8"), ("tokens", "<u4"), ("first_chunk", "<u4"), ("chunks", "<u4"),
                  ("first_document", "<u4"), ("documents", "<u4"), ("content_hash", "V16")])
_CHUNK = np.dtype([("start", "<u8"), ("end", "<u8"), ("first_line", "<u4")])
CHUNK_TOKENS = 2048
_MAX_SEED_PAIRS = 20_000  # (query, source) position pairs considered per source
_MAX_DIAGONALS = 16  # alignments tried per source, most seeded first
_RENAMED_RECHECKS = 8  # sources verified, at most, in hope of a verbatim match where a renamed one is known
_ARRAYS = ("bloom", "keys_hi", "keys_lo", "postings", "texts", "chunks", "documents", "text_documents")


@dataclass(frozen=True)
class IndexSummary:
    path: Path
    documents: int  # all documents in the index
    added: int  # documents added by this build
    texts: int  # distinct document contents
    corpus_bytes: int  # UTF-8 bytes of all indexed documents
    index_bytes: int
    tokens: int
    fingerprints: int
    min_tokens: int
    skipped: dict[str, int] = field(default_factory=dict)  # by the corpus reader, by reason

    @property
    def size_ratio(self) -> float:
        return self.index_bytes / max(self.corpus_bytes, 1)


# ---------------------------------------------------------------- building


_Processed = tuple[list[bytes], list[int], np.ndarray, np.ndarray, int]  # chunks, their first lines, keys, positions, tokens


class _BatchProcessor:
    """Documents -> stored chunks and fingerprints; runs in worker processes."""

    def __init__(self, k: int, w: int, dictionary: bytes | None):
        self.k, self.w = k, w
        self.compressor = _compressor(dictionary) if dictionary is not None else None

    def __call__(self, batch: list[tuple[str, str | None]]) -> list[_Processed]:
        out = []
        for content, language in batch:
            tokens = scanner_for(language).scan(content)
            values, positions = winnow(kgram_hashes(view_of(tokens), self.k), self.w)
            blobs, first_lines = [], []
            for start in range(0, max(len(tokens), 1), CHUNK_TOKENS):
                stored = encode_view(tokens.slice(start, start + CHUNK_TOKENS)).encode("utf-8", "surrogatepass")
                blobs.append(self.compressor.compress(stored) if self.compressor else stored)
                first_lines.append(tokens.lines[start] if tokens.lines else 1)
            out.append((blobs, first_lines, keys_of(values), positions.astype(np.uint32), len(tokens)))
        return out


def _compressor(dictionary: bytes | None) -> zstandard.ZstdCompressor:
    data = zstandard.ZstdCompressionDict(dictionary) if dictionary else None
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL, dict_data=data)


_PROCESSOR: _BatchProcessor | None = None


def _init_worker(k: int, w: int, dictionary: bytes | None) -> None:
    global _PROCESSOR
    _PROCESSOR = _BatchProcessor(k, w, dictionary)


def _process_in_worker(batch: list[tuple[str, str | None]]) -> list[_Processed]:
    assert _PROCESSOR is not None
    return _PROCESSOR(batch)


class _Done:
    """A result computed in this process, with the same get() as a pool's AsyncResult."""

    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


def _train_dictionary(samples: list[bytes]) -> bytes:
    """A zstd dictionary from the first stored views, or b"" when there is too little to learn from."""
    total = sum(map(len, samples))
    if len(samples) < 16 or total < 128 * 1024:
        return b""
    try:
        return zstandard.train_dictionary(min(112 * 1024, total // 8), samples).as_bytes()
    except zstandard.ZstdError:
        return b""


class _Builder:
    """The tables of an index being built, starting from an existing one for --add."""

    def __init__(self, min_tokens: int, base: AttributionIndex | None, views_file):
        self.min_tokens = min_tokens
        self.k, self.w = window_params(min_tokens)
        self.views_file = views_file
        self.strings: dict[str, list] = {"repos": [], "licenses": [None], "languages": [None]}
        self.string_ids: dict[str, dict] = {kind: {v: i for i, v in enumerate(vs)} for kind, vs in self.strings.items()}
        self.documents: list[tuple[int, int, int, int]] = []  # text, repo, license, language
        self.paths: list[bytes] = []
        self.known: set[tuple[int, int, bytes]] = set()  # (text, repo, path) already indexed
        self.text_by_hash: dict[bytes, int] = {}
        self.text_rows: list[tuple[int, int, int, bytes]] = []  # tokens, first chunk, chunks, content hash
        self.chunk_rows: list[tuple[int, int, int]] = []  # start and end in views.bin, first line
        self.keys: list[np.ndarray] = []
        self.key_positions: list[np.ndarray] = []  # token positions over all texts end to end
        self.total_tokens = 0
        self.view_bytes = 0
        self.corpus_bytes = 0
        self.languages: collections.Counter[str] = collections.Counter()
        self.scanners: collections.Counter[str] = collections.Counter()
        self.dictionary: bytes | None = None
        self.pending: list[tuple[int, str, str | None]] = []  # new texts awaiting processing
        self.pending_bytes = 0
        if base is not None:
            self._load(base)

    def _load(self, base: AttributionIndex) -> None:
        m = base.manifest
        self.dictionary = base.dictionary
        self.strings = {kind: list(values) for kind, values in base.strings.items()}
        self.string_ids = {kind: {v: i for i, v in enumerate(vs)} for kind, vs in self.strings.items()}
        docs = base.documents
        paths = bytes(base.paths)
        for row in docs.tolist():
            text, repo, license, language, start, end = row
            path = paths[start:end]
            self.documents.append((text, repo, license, language))
            self.paths.append(path)
            self.known.add((text, repo, path))
        for row in base.texts.tolist():
            _, tokens, first_chunk, chunks, _, _, content_hash = row
            self.text_by_hash[bytes(content_hash)] = len(self.text_rows)
            self.text_rows.append((tokens, first_chunk, chunks, bytes(content_hash)))
            self.total_tokens += tokens
        self.chunk_rows = [tuple(row) for row in base.chunks.tolist()]
        with open(base.path / "views.bin", "rb") as f:
            shutil.copyfileobj(f, self.views_file)
        self.view_bytes = self.chunk_rows[-1][1] if self.chunk_rows else 0
        self.keys.append((base.keys_hi.astype(np.uint64) << np.uint64(8)) | base.keys_lo.astype(np.uint64))
        self.key_positions.append(np.array(base.postings, dtype=np.uint64))
        self.corpus_bytes = m["corpus_bytes"]
        self.languages.update(m["languages"])
        self.scanners.update(m["scanners"])

    def _intern(self, kind: str, value) -> int:
        ids = self.string_ids[kind]
        if value not in ids:
            ids[value] = len(self.strings[kind])
            self.strings[kind].append(value)
        return ids[value]

    def add(self, doc: Document) -> bool:
        """Record a document; queue its content for processing if it is new. False if already indexed."""
        data = doc.content.encode("utf-8", "surrogatepass")
        content_hash = xxhash.xxh3_128_digest(data)
        text = self.text_by_hash.get(content_hash)
        repo = self._intern("repos", doc.repo)
        path = doc.path.encode("utf-8", "surrogatepass")
        if text is not None and (text, repo, path) in self.known:
            return False
        if text is None:
            text = len(self.text_rows)
            self.text_by_hash[content_hash] = text
            self.text_rows.append((0, 0, 0, content_hash))  # filled in when processed
            self.pending.append((text, doc.content, doc.language))
            self.pending_bytes += len(data)
        self.known.add((text, repo, path))
        self.documents.append((text, repo, self._intern("licenses", doc.license), self._intern("languages", doc.language)))
        self.paths.append(path)
        self.corpus_bytes += len(data)
        self.languages[doc.language or "unknown"] += 1
        self.scanners[scanner_for(doc.language).name] += 1
        return True

    def take_batch(self) -> tuple[list[int], list[tuple[str, str | None]]]:
        texts = [t for t, _, _ in self.pending]
        batch = [(content, language) for _, content, language in self.pending]
        self.pending, self.pending_bytes = [], 0
        return texts, batch

    def store(self, texts: list[int], results: list[_Processed]) -> None:
        for text, (blobs, first_lines, keys, positions, tokens) in zip(texts, results):
            first_chunk = len(self.chunk_rows)
            for blob, first_line in zip(blobs, first_lines):
                start = self.view_bytes
                self.views_file.write(blob)
                self.view_bytes += len(blob)
                self.chunk_rows.append((start, self.view_bytes, first_line))
            self.text_rows[text] = (tokens, first_chunk, len(blobs), self.text_rows[text][3])
            if len(keys):
                self.keys.append(keys)
                self.key_positions.append(positions.astype(np.uint64) + np.uint64(self.total_tokens))
            self.total_tokens += tokens

    def write(self, directory: Path) -> dict:
        """Write every table and return the manifest (without the files section)."""
        keys = np.concatenate(self.keys) if self.keys else np.zeros(0, np.uint64)
        positions = np.concatenate(self.key_positions) if self.key_positions else np.zeros(0, np.uint64)
        order = np.lexsort((positions, keys))
        keys, positions = keys[order], positions[order]
        distinct = keys[np.concatenate(([True], keys[1:] != keys[:-1]))] if len(keys) else keys
        np.save(directory / "keys_hi.npy", (keys >> np.uint64(8)).astype(np.uint32))
        np.save(directory / "keys_lo.npy", (keys & np.uint64(0xFF)).astype(np.uint8))
        # Four bytes a posting while the corpus has fewer than 2**32 tokens (some 30 GB of code).
        np.save(directory / "postings.npy", positions.astype(np.uint32 if self.total_tokens < 1 << 32 else np.uint64))
        np.save(directory / "bloom.npy", BloomFilter.build(distinct).bits)

        documents = np.zeros(len(self.documents), dtype=_DOCUMENT)
        if self.documents:
            columns = np.array(self.documents, dtype=np.uint32)
            for i, name in enumerate(("text", "repo", "license", "language")):
                documents[name] = columns[:, i]
            lengths = np.fromiter(map(len, self.paths), dtype=np.uint64, count=len(self.paths))
            ends = np.cumsum(lengths, dtype=np.uint64)
            documents["path_end"] = ends
            documents["path_start"] = ends - lengths
        (directory / "paths.bin").write_bytes(b"".join(self.paths))
        by_text = np.argsort(documents["text"], kind="stable").astype(np.uint32)
        np.save(directory / "documents.npy", documents)
        np.save(directory / "text_documents.npy", by_text)

        table = np.zeros(len(self.text_rows), dtype=_TEXT)
        if self.text_rows:
            for i, name in enumerate(("tokens", "first_chunk", "chunks")):
                table[name] = [r[i] for r in self.text_rows]
            table["first_token"] = np.concatenate(([0], np.cumsum(table["tokens"], dtype=np.uint64)[:-1]))
            table["content_hash"] = [r[3] for r in self.text_rows]
            counts = np.bincount(documents["text"], minlength=len(self.text_rows))
            table["documents"] = counts
            table["first_document"] = np.concatenate(([0], np.cumsum(counts)[:-1]))
        np.save(directory / "texts.npy", table)
        chunks = np.zeros(len(self.chunk_rows), dtype=_CHUNK)
        if self.chunk_rows:
            for i, name in enumerate(("start", "end", "first_line")):
                chunks[name] = [r[i] for r in self.chunk_rows]
        np.save(directory / "chunks.npy", chunks)
        (directory / "views.dict").write_bytes(self.dictionary or b"")
        (directory / "strings.json").write_text(json.dumps(self.strings, ensure_ascii=False), encoding="utf-8")
        k, w = window_params(self.min_tokens)
        return {
            "format": FORMAT,
            "version": VERSION,
            "min_tokens": self.min_tokens,
            "k": k,
            "window": w,
            "chunk_tokens": CHUNK_TOKENS,
            "bloom_probes": PROBES,
            "documents": len(documents),
            "texts": len(table),
            "postings": len(keys),
            "fingerprints": len(distinct),
            "tokens": int(table["tokens"].sum()),
            "corpus_bytes": self.corpus_bytes,
            "languages": dict(self.languages.most_common()),
            "scanners": dict(self.scanners.most_common()),
        }


def _file_checksum(path: Path) -> str:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return xxhash.xxh3_64_hexdigest(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return xxhash.xxh3_64_hexdigest(data)


def build_index(
    sources: Iterable[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    add: bool = False,
    include: list[str] | None = None,
    max_file_bytes: int = 1_000_000,
    min_tokens: int | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IndexSummary:
    """Index the documents of ``sources`` (corpus.iter_documents) into the directory ``out``.

    With ``add``, ``out`` must be an index; its documents are kept and the new ones added
    (a document already indexed with the same repo, path and content is skipped).
    ``min_tokens`` is the shortest span the index guarantees to find (default 50).
    ``workers`` processes share the work once the corpus proves larger than one batch
    (default: one per CPU). ``progress(bytes_read, documents_read)`` is called as it goes.
    """
    out = Path(out)
    sources = [os.fspath(s) for s in sources]
    if not sources:
        raise CodeinstructError("no sources given")
    base = None
    if add:
        if not out.exists():
            raise CodeinstructError(f"{out}: no index to add to (leave out --add to create one)")
        base = AttributionIndex.open(out)
        if min_tokens is not None and min_tokens != base.min_tokens:
            raise CodeinstructError(f"{out}: was built with --min-tokens {base.min_tokens}; cannot add with {min_tokens}")
        min_tokens = base.min_tokens
    elif out.exists():
        raise CodeinstructError(f"{out}: already exists; add to it with --add, or choose another path")
    min_tokens = DEFAULT_MIN_TOKENS if min_tokens is None else min_tokens
    if min_tokens < 8:
        raise CodeinstructError(f"--min-tokens must be at least 8, got {min_tokens}")
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        summary = _build(sources, tmp, base, min_tokens, include, max_file_bytes, workers, progress)
        manifest = summary.pop("manifest")
        manifest["files"] = {
            p.name: {"bytes": p.stat().st_size, "xxh3_64": _file_checksum(p)} for p in sorted(tmp.iterdir())
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        index_bytes = sum(p.stat().st_size for p in tmp.iterdir())
        if base is not None:
            base.close()
            _swap(tmp, out)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return IndexSummary(
        path=out,
        documents=manifest["documents"],
        added=summary["added"],
        texts=manifest["texts"],
        corpus_bytes=manifest["corpus_bytes"],
        index_bytes=index_bytes,
        tokens=manifest["tokens"],
        fingerprints=manifest["fingerprints"],
        min_tokens=min_tokens,
        skipped=summary["skipped"],
    )


def _swap(new: Path, target: Path) -> None:
    """Replace the index directory ``target`` by ``new`` (readers of the old one keep their maps)."""
    old = target.parent / f".{target.name}.replaced-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _build(sources, tmp: Path, base, min_tokens, include, max_file_bytes, workers, progress) -> dict:
    import multiprocessing

    report = CorpusReport()
    pool = None
    pending: collections.deque = collections.deque()
    with open(tmp / "views.bin", "wb") as views_file:
        builder = _Builder(min_tokens, base, views_file)
        processor: _BatchProcessor | None = None
        added = 0

        def dispatch() -> None:
            nonlocal processor, pool
            texts, batch = builder.take_batch()
            if processor is None:
                # The first batch trains the dictionary that every stored view is compressed with.
                raw = _BatchProcessor(builder.k, builder.w, None)(batch)
                if builder.dictionary is None:
                    builder.dictionary = _train_dictionary([blob for blobs, *_ in raw for blob in blobs])
                processor = _BatchProcessor(builder.k, builder.w, builder.dictionary)
                compress = processor.compressor.compress
                pending.append((texts, _Done([([compress(b) for b in blobs], *rest) for blobs, *rest in raw])))
                return
            if pool is None and workers > 1:
                context = multiprocessing.get_context("spawn")
                pool = context.Pool(workers, initializer=_init_worker, initargs=(builder.k, builder.w, builder.dictionary))
            if pool is None:
                pending.append((texts, _Done(processor(batch))))
            else:
                pending.append((texts, pool.apply_async(_process_in_worker, (batch,))))
            while len(pending) > 2 * workers:
                drain_one()

        def drain_one() -> None:
            texts, result = pending.popleft()
            builder.store(texts, result.get())

        try:
            n_read = 0
            for n_read, doc in enumerate(iter_documents(sources, include=include, max_file_bytes=max_file_bytes, report=report), 1):
                added += builder.add(doc)
                if builder.pending_bytes >= _BATCH_BYTES or len(builder.pending) >= _BATCH_DOCUMENTS:
                    dispatch()
                    if progress is not None:
                        progress(report.bytes, n_read)
            if builder.pending:
                dispatch()
            while pending:
                drain_one()
            if progress is not None:
                progress(report.bytes, n_read)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    if not builder.documents:
        raise CodeinstructError("no documents found in the given sources" + _skipped_note(report))
    manifest = builder.write(tmp)
    return {"manifest": manifest, "added": added, "skipped": dict(report.skipped)}


def _skipped_note(report: CorpusReport) -> str:
    if not report.skipped:
        return ""
    return " (skipped: " + ", ".join(f"{reason} {n}" for reason, n in sorted(report.skipped.items())) + ")"


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Candidate:
    text: int
    keys: np.ndarray  # the query's fingerprint keys found in this text (distinct)
    hit_keys: np.ndarray  # each posting hit: its key ...
    hit_positions: np.ndarray  # ... and its token position in the text
    score: float


class AttributionIndex:
    """An index opened for reading; see the module docstring. Use ``AttributionIndex.open(path)``."""

    def __init__(self, path: Path, manifest: dict, arrays: dict[str, np.ndarray], views: mmap.mmap | None,
                 paths: mmap.mmap | None, strings: dict[str, list], dictionary: bytes):
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
        manifest_path = path / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CodeinstructError(f"{path}: not an attribution index (no manifest.json)") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CodeinstructError(f"{manifest_path}: unreadable manifest ({e})") from None
        cls._check_manifest(path, manifest, verify)
        arrays = {}
        for name in _ARRAYS:
            try:
                arrays[name] = np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise CodeinstructError(f"{path / (name + '.npy')}: unreadable ({e}); rebuild the index") from None
        try:
            strings = json.loads((path / "strings.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CodeinstructError(f"{path / 'strings.json'}: unreadable ({e}); rebuild the index") from None
        dictionary = (path / "views.dict").read_bytes()
        index = cls(path, manifest, arrays, _map(path / "views.bin"), _map(path / "paths.bin"), strings, dictionary)
        index._check_shapes()
        return index

    @staticmethod
    def _check_manifest(path: Path, manifest: object, verify: bool) -> None:
        where = path / "manifest.json"
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CodeinstructError(f"{where}: not a codeinstruct attribution index manifest")
        version = manifest.get("version")
        if version != VERSION:
            raise CodeinstructError(f"{where}: index format version {version!r}; this codeinstruct reads version {VERSION}, "
                                    "rebuild the index")
        required = ("min_tokens", "k", "window", "chunk_tokens", "bloom_probes", "documents", "texts", "postings",
                    "corpus_bytes", "languages", "scanners", "files")
        missing = [key for key in required if key not in manifest]
        if missing:
            raise CodeinstructError(f"{where}: missing {', '.join(missing)}; rebuild the index")
        try:
            params = window_params(manifest["min_tokens"])
        except (TypeError, ValueError):
            params = None
        probes = manifest["bloom_probes"]
        if (params != (manifest["k"], manifest["window"]) or manifest["chunk_tokens"] != CHUNK_TOKENS
                or not isinstance(probes, int) or not 1 <= probes <= 64):
            raise CodeinstructError(f"{where}: parameters (min_tokens {manifest['min_tokens']}, k {manifest['k']}, "
                                    f"window {manifest['window']}, chunks of {manifest['chunk_tokens']}, "
                                    f"{probes!r} Bloom probes) are not ones this codeinstruct writes; rebuild the index")
        files = manifest["files"]
        expected = {f"{name}.npy" for name in _ARRAYS} | {"views.bin", "views.dict", "paths.bin", "strings.json"}
        if not isinstance(files, dict) or not expected <= files.keys():
            raise CodeinstructError(f"{where}: file list incomplete; rebuild the index")
        for name, meta in sorted(files.items()):
            file = path / name
            try:
                size = file.stat().st_size
            except OSError:
                raise CodeinstructError(f"{file}: missing; the index is incomplete, rebuild it") from None
            if not isinstance(meta, dict) or size != meta.get("bytes"):
                expected_size = meta.get("bytes") if isinstance(meta, dict) else None
                raise CodeinstructError(f"{file}: {size} bytes, the manifest says {expected_size}; the index is "
                                        "corrupted or mixed with another one, rebuild it")
            if verify and _file_checksum(file) != meta.get("xxh3_64"):
                raise CodeinstructError(f"{file}: checksum does not match the manifest; the index is corrupted, rebuild it")

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
            raise CodeinstructError(f"{self.path}: sizes of {', '.join(problems)} disagree with the manifest; rebuild the index")

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

    def check(self, code: str, min_tokens: int | None = None, language: str | None = None,
              max_verified: int = 32) -> AttributionReport:
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
            raise CodeinstructError(f"{self.path}: this index finds spans of {self.min_tokens} tokens or more "
                                    f"(--min-tokens {min_tokens} asked); rebuild it with --min-tokens {min_tokens}")
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
            candidates.append(_Candidate(int(hit_texts[ix[0]]), np.unique(hit_keys[ix]), hit_keys[ix], hit_positions[ix], score))
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
            query_positions = np.fromiter((i for key in candidate.keys.tolist() for i in positions[key]), dtype=np.int64)
            if covered_verbatim[query_positions].all() or (verified >= _RENAMED_RECHECKS and covered[query_positions].all()):
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

    def _verify(self, query: TokenView, query_prev: np.ndarray, candidate: _Candidate,
                positions: dict[int, list[int]], min_tokens: int) -> list[Run]:
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
            raise CodeinstructError(f"{self.path}: stored chunk {chunk} is unreadable ({e}); rebuild the index") from None
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
