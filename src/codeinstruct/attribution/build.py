"""Building an attribution index: read a corpus, fingerprint and store it, write the files.

Each document is lexed (normalize), its k-grams hashed and winnowed (fingerprint), and its
token view stored in compressed chunks; the tables go to disk in the layout of
``attribution.format``. Batches of documents are processed in worker processes once the corpus
proves larger than one batch; the first batch trains the zstd dictionary every chunk shares.

Writes are atomic: an index is built in a temporary directory beside the target and renamed
into place; ``--add`` opens the existing index, builds the merged one the same way and swaps
it in, while readers of the old one keep their memory maps.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xxhash
import zstandard

from codeinstruct.attribution.fingerprint import PROBES, BloomFilter, keys_of, kgram_hashes, window_params, winnow
from codeinstruct.attribution.format import (
    CHUNK_ROW,
    CHUNK_TOKENS,
    DICTIONARY_FILE,
    DOCUMENT_ROW,
    FORMAT,
    MANIFEST_FILE,
    PATHS_FILE,
    STRINGS_FILE,
    TEXT_ROW,
    VERSION,
    VIEWS_FILE,
    file_checksum,
)
from codeinstruct.attribution.index import AttributionIndex
from codeinstruct.attribution.normalize import encode_view, scanner_for, view_of
from codeinstruct.data.corpus import CorpusReport, Document, iter_documents
from codeinstruct.errors import CodeinstructError
from codeinstruct.files import atomic_writer, write_json, write_text

__all__ = ["DEFAULT_MIN_TOKENS", "IndexSummary", "build_index"]

DEFAULT_MIN_TOKENS = 50
_ZSTD_LEVEL = 9
_BATCH_BYTES = 1 << 20
_BATCH_DOCUMENTS = 512


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


# One document processed: its stored chunks, their first lines, fingerprint keys, their positions, its tokens.
_Processed = tuple[list[bytes], list[int], np.ndarray, np.ndarray, int]


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
        with open(base.path / VIEWS_FILE, "rb") as f:
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
        license, language = self._intern("licenses", doc.license), self._intern("languages", doc.language)
        self.documents.append((text, repo, license, language))
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
        _save_array(directory, "keys_hi", (keys >> np.uint64(8)).astype(np.uint32))
        _save_array(directory, "keys_lo", (keys & np.uint64(0xFF)).astype(np.uint8))
        # Four bytes a posting while the corpus has fewer than 2**32 tokens (some 30 GB of code).
        _save_array(directory, "postings", positions.astype(np.uint32 if self.total_tokens < 1 << 32 else np.uint64))
        _save_array(directory, "bloom", BloomFilter.build(distinct).bits)

        documents = np.zeros(len(self.documents), dtype=DOCUMENT_ROW)
        if self.documents:
            columns = np.array(self.documents, dtype=np.uint32)
            for i, name in enumerate(("text", "repo", "license", "language")):
                documents[name] = columns[:, i]
            lengths = np.fromiter(map(len, self.paths), dtype=np.uint64, count=len(self.paths))
            ends = np.cumsum(lengths, dtype=np.uint64)
            documents["path_end"] = ends
            documents["path_start"] = ends - lengths
        _write_bytes(directory / PATHS_FILE, b"".join(self.paths))
        by_text = np.argsort(documents["text"], kind="stable").astype(np.uint32)
        _save_array(directory, "documents", documents)
        _save_array(directory, "text_documents", by_text)

        table = np.zeros(len(self.text_rows), dtype=TEXT_ROW)
        if self.text_rows:
            for i, name in enumerate(("tokens", "first_chunk", "chunks")):
                table[name] = [r[i] for r in self.text_rows]
            table["first_token"] = np.concatenate(([0], np.cumsum(table["tokens"], dtype=np.uint64)[:-1]))
            table["content_hash"] = [r[3] for r in self.text_rows]
            counts = np.bincount(documents["text"], minlength=len(self.text_rows))
            table["documents"] = counts
            table["first_document"] = np.concatenate(([0], np.cumsum(counts)[:-1]))
        _save_array(directory, "texts", table)
        chunks = np.zeros(len(self.chunk_rows), dtype=CHUNK_ROW)
        if self.chunk_rows:
            for i, name in enumerate(("start", "end", "first_line")):
                chunks[name] = [r[i] for r in self.chunk_rows]
        _save_array(directory, "chunks", chunks)
        _write_bytes(directory / DICTIONARY_FILE, self.dictionary or b"")
        write_text(directory / STRINGS_FILE, json.dumps(self.strings, ensure_ascii=False))
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
            raise CodeinstructError(
                f"{out}: was built with --min-tokens {base.min_tokens}; cannot add with {min_tokens}"
            )
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
            p.name: {"bytes": p.stat().st_size, "xxh3_64": file_checksum(p)} for p in sorted(tmp.iterdir())
        }
        write_json(tmp / MANIFEST_FILE, manifest)
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
    report = CorpusReport()
    pool = None
    pending: collections.deque = collections.deque()
    with atomic_writer(tmp / VIEWS_FILE, "wb") as views_file:
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
                pool = context.Pool(
                    workers, initializer=_init_worker, initargs=(builder.k, builder.w, builder.dictionary)
                )
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
            documents = iter_documents(sources, include=include, max_file_bytes=max_file_bytes, report=report)
            for n_read, doc in enumerate(documents, 1):
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


def _save_array(directory: Path, name: str, array: np.ndarray) -> None:
    with atomic_writer(directory / f"{name}.npy", "wb") as f:
        np.save(f, array)


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path, "wb") as f:
        f.write(data)
