"""Building an attribution index: read a corpus, fingerprint and store it in shards, write the files.

Each document is lexed (normalize), its k-grams hashed and winnowed (fingerprint), and its
token view stored in compressed chunks; the tables go to disk in the layout of
``attribution.format``, one shard at a time. A shard's first batch of documents trains the zstd
dictionary every chunk of it shares.

Shards. The corpus is read once to learn its size (and drop documents that repeat one already
read or indexed: same content, repo and path), then again to cut it into contiguous ranges of
about equal bytes, in corpus order. One shard is built in this process; several are built as
tasks of Ray, on a local cluster or a real one: Ray because a shard is a plain Python function
of its documents, which Ray schedules on the cores of one machine or many with nothing to
install beyond a wheel, where Dask's or Spark's strength (dataframes, shuffles) goes unused.

Writes are atomic: a shard is built in a temporary directory beside its place and renamed into
it; an index of several is assembled in a temporary directory, its manifest written last, and
renamed into place; ``--add`` builds the new shards beside the existing ones (which it does not
touch) and rewrites only the top manifest, so readers of the old index keep their memory maps.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import logging
import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Iterator
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
    SHARDS_VERSION,
    STRINGS_FILE,
    TEXT_ROW,
    VERSION,
    VIEWS_FILE,
    file_checksum,
    shard_name,
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
# By default a shard per worker, but none smaller than this: starting Ray takes seconds, in which
# one process indexes some 30 MB.
_SHARD_BYTES = 32 << 20


@dataclass(frozen=True)
class IndexSummary:
    path: Path
    documents: int  # all documents in the index
    added: int  # documents added by this build
    texts: int  # distinct document contents (in each shard)
    corpus_bytes: int  # UTF-8 bytes of all indexed documents
    index_bytes: int
    tokens: int
    fingerprints: int
    min_tokens: int
    shards: int = 1
    skipped: dict[str, int] = field(default_factory=dict)  # by the corpus reader, by reason

    @property
    def size_ratio(self) -> float:
        return self.index_bytes / max(self.corpus_bytes, 1)


# One document processed: its stored chunks, their first lines, fingerprint keys, their positions, its tokens.
_Processed = tuple[list[bytes], list[int], np.ndarray, np.ndarray, int]


class _BatchProcessor:
    """Documents -> stored chunks and fingerprints."""

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
    """The tables of a shard being built."""

    def __init__(self, min_tokens: int, views_file):
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
    shards: int | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> IndexSummary:
    """Index the documents of ``sources`` (corpus.iter_documents) into the directory ``out``.

    The corpus is cut into ``shards`` contiguous ranges of about equal bytes (default: one per
    worker, none under 32 MB). One shard is built in this process; several are built as Ray tasks,
    on a local cluster of ``workers`` CPUs (default: one per CPU) or on the cluster at
    ``ray_address`` (the index must then be on a filesystem every node shares). With ``add``,
    ``out`` must be an index: the new documents become new shards and the shards already there
    are left as they are (a document already indexed with the same repo, path and content is
    skipped). ``min_tokens`` is the shortest span the index guarantees to find (default 50).
    ``progress(what, bytes_done, bytes_total or None)`` is called as it goes.
    """
    out = Path(out)
    sources = [os.fspath(s) for s in sources]
    if not sources:
        raise CodeinstructError("no sources given")
    if shards is not None and shards < 1:
        raise CodeinstructError(f"--shards must be at least 1, got {shards}")
    if ray_address is not None:
        _check_reachable(ray_address)  # before reading the corpus, and before Ray retries for minutes
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

    try:
        plan = _Plan(sources, include, max_file_bytes, progress)
        plan.survey(_known(base) if base is not None else set())
        if not plan.documents and base is None:
            raise CodeinstructError("no documents found in the given sources" + _skipped_note(plan.report))
        if plan.documents:
            if ray_address is None and (shards or min(workers, plan.bytes // _SHARD_BYTES)) <= 1:
                _build(base, out, 1, functools.partial(_build_here, plan, min_tokens))
            else:
                if progress is not None:
                    progress("starting Ray" if ray_address is None else "connecting to Ray", 0, plan.bytes)
                with _ray_session(ray_address, workers) as ray:
                    slots = max(1, int(ray.cluster_resources().get("CPU", workers)))
                    count = min(shards or max(1, min(slots, plan.bytes // _SHARD_BYTES)), plan.documents)
                    _build(base, out, count, functools.partial(_build_on_ray, ray, plan, min_tokens, count, slots))
    finally:
        if base is not None:
            base.close()
    manifest = _read_json(out / MANIFEST_FILE)
    return IndexSummary(
        path=out,
        documents=manifest["documents"],
        added=plan.documents,
        texts=manifest["texts"],
        corpus_bytes=manifest["corpus_bytes"],
        index_bytes=sum(p.stat().st_size for p in out.rglob("*") if p.is_file()),
        tokens=manifest.get("tokens", 0),
        fingerprints=manifest.get("fingerprints", 0),
        min_tokens=manifest["min_tokens"],
        shards=len(manifest.get("shards", [None])),
        skipped=dict(plan.report.skipped),
    )


# ---------------------------------------------------------------- reading the corpus


def _document_key(content_hash: bytes, repo: str, path: bytes) -> bytes:
    """What makes a document a repeat of one already indexed: the same content, repo and path."""
    return xxhash.xxh3_128_digest(content_hash + repo.encode("utf-8", "surrogatepass") + b"\0" + path)


def _known(index: AttributionIndex) -> set[bytes]:
    """The _document_key of every document of an index."""
    known = set()
    for shard in index.shards:
        hashes = [bytes(h) for h in shard.texts["content_hash"].tolist()]
        repos, paths = shard.strings["repos"], bytes(shard.paths)
        for text, repo, _, _, start, end in shard.documents.tolist():
            known.add(_document_key(hashes[text], repos[repo], paths[start:end]))
    return known


class _Plan:
    """The corpus, read twice: first to learn its size and which documents repeat one already
    read (survey), then to hand out the documents to index (documents_to_index)."""

    def __init__(self, sources, include, max_file_bytes, progress):
        self.sources, self.include, self.max_file_bytes, self.progress = sources, include, max_file_bytes, progress
        self.report = CorpusReport()
        self.keep = bytearray()  # per document read: 1 to index it, 0 for a repeat
        self.documents = 0  # to index
        self.bytes = 0  # UTF-8 bytes of the documents to index

    def survey(self, known: set[bytes]) -> None:
        for doc in iter_documents(self.sources, self.include, self.max_file_bytes, self.report):
            data = doc.content.encode("utf-8", "surrogatepass")
            key = _document_key(xxhash.xxh3_128_digest(data), doc.repo, doc.path.encode("utf-8", "surrogatepass"))
            new = key not in known
            self.keep.append(new)
            if new:
                known.add(key)
                self.documents += 1
                self.bytes += len(data)
            if self.progress is not None and len(self.keep) % 256 == 0:
                self.progress("reading", self.report.bytes, None)

    def documents_to_index(self) -> Iterator[tuple[Document, int]]:
        """The documents to index in corpus order, each with its UTF-8 size."""
        read = 0
        for read, doc in enumerate(iter_documents(self.sources, self.include, self.max_file_bytes), 1):
            if read > len(self.keep):
                break
            if self.keep[read - 1]:
                yield doc, len(doc.content.encode("utf-8", "surrogatepass"))
        if read != len(self.keep):
            raise CodeinstructError(f"{self.sources[0]}: the sources changed while being indexed; index them again")


# ---------------------------------------------------------------- building shards

# build(directory_of, first): builds shards numbered from first into directory_of(number), returns their entries.
_ShardBuilder = Callable[[Callable[[int], Path], int], list[dict]]


def _build(base: AttributionIndex | None, out: Path, count: int, build: _ShardBuilder) -> None:
    """Write the index: one shard is the index's directory, several go into a top directory with
    their manifest (written last, then renamed into place), an added shard goes beside those of
    the index (whose manifest is rewritten last). A failure leaves no part of it behind."""
    if base is None and count == 1:
        build(lambda number: out, 0)  # written beside and renamed into place
        return
    if base is not None and base.manifest.get("version") == SHARDS_VERSION:
        _add_shards(base, out, build)
        return
    tmp = out.parent / f".{out.name}.building-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    moved = False
    try:
        entries = build(lambda number: tmp / shard_name(number), 0 if base is None else 1)
        if base is not None:
            # An index of one shard (its directory) becomes the first shard of the new one.
            base.close()
            os.rename(out, tmp / shard_name(0))
            moved = True
            entries.insert(0, _entry_of(tmp / shard_name(0)))
        write_json(tmp / MANIFEST_FILE, _top_manifest(entries))
        os.rename(tmp, out)
    except BaseException:
        if moved and not out.exists():
            os.rename(tmp / shard_name(0), out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _add_shards(base: AttributionIndex, out: Path, build: _ShardBuilder) -> None:
    """New shards beside those of a sharded index, then its manifest rewritten; nothing else is touched."""
    old = base.manifest["shards"]
    made: list[Path] = []

    def directory_of(number: int) -> Path:
        path = out / shard_name(number)
        if path not in made:
            if path.exists():
                shutil.rmtree(path)  # left by an add that failed before listing it: no reader opens it
            made.append(path)
        return path

    try:
        entries = build(directory_of, 1 + max(int(entry["name"].split("-")[1]) for entry in old))
        write_json(out / MANIFEST_FILE, _top_manifest([*old, *entries]))
    except BaseException:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)
            for leftover in out.glob(f".{path.name}.building-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        raise


def _top_manifest(entries: list[dict]) -> dict:
    """The manifest of an index of several shards: parameters, totals, and the shards in order."""
    languages: collections.Counter[str] = collections.Counter()
    scanners: collections.Counter[str] = collections.Counter()
    for entry in entries:
        languages.update(entry["languages"])
        scanners.update(entry["scanners"])
    min_tokens = entries[0]["min_tokens"]
    k, w = window_params(min_tokens)
    return {
        "format": FORMAT,
        "version": SHARDS_VERSION,
        "min_tokens": min_tokens,
        "k": k,
        "window": w,
        **{key: sum(e[key] for e in entries) for key in _TOTALS},
        "languages": dict(languages.most_common()),
        "scanners": dict(scanners.most_common()),
        "shards": entries,
    }


_TOTALS = ("documents", "texts", "tokens", "postings", "fingerprints", "corpus_bytes", "index_bytes")


def _entry_of(directory: Path) -> dict:
    """A shard's entry in the top manifest: its name, parameters and totals, and its manifest's checksum."""
    m = _read_json(directory / MANIFEST_FILE)
    return {
        "name": directory.name,
        "min_tokens": m["min_tokens"],
        **{key: m.get(key, 0) for key in _TOTALS if key != "index_bytes"},  # tokens, fingerprints: not in all
        "index_bytes": sum(meta["bytes"] for meta in m["files"].values()),
        "languages": m["languages"],
        "scanners": m["scanners"],
        "manifest_xxh3": file_checksum(directory / MANIFEST_FILE),
    }


def _build_here(plan: _Plan, min_tokens: int, directory_of: Callable[[int], Path], first: int) -> list[dict]:
    """One shard, built in this process."""
    progress = plan.progress
    report = (lambda done: progress("indexing", done, plan.bytes)) if progress is not None else None
    directory = directory_of(first)
    _write_shard((doc for doc, _ in plan.documents_to_index()), directory, min_tokens, report)
    return [_entry_of(directory)]


def _build_on_ray(
    ray, plan: _Plan, min_tokens: int, count: int, slots: int, directory_of: Callable[[int], Path], first: int
) -> list[dict]:
    """``count`` shards of about equal bytes built as Ray tasks, slots + 1 at most handed out at a
    time (so that the driver holds no more of the corpus than the workers are busy with)."""
    remote = ray.remote(num_cpus=1)(_shard_task)
    progress = plan.progress
    what = f"indexing {count} shards"
    pending: dict = {}  # task -> (shard number, its directory, bytes)
    entries: dict[int, dict] = {}
    done = 0
    if progress is not None:
        progress(what, 0, plan.bytes)

    def finish_one() -> None:
        nonlocal done
        [ready], _ = ray.wait(list(pending), num_returns=1)
        number, directory, size = pending.pop(ready)
        entries[number] = _shard_result(ray, ready, directory)
        done += size
        if progress is not None:
            progress(what, done, plan.bytes)

    def submit(number: int, documents: list[Document], size: int) -> None:
        while len(pending) > slots:
            finish_one()
        directory = directory_of(number)
        pending[remote.remote(documents, os.fspath(directory), min_tokens)] = (number, directory, size)

    try:
        part, batch, size, before = 0, [], 0, 0
        for doc, doc_bytes in plan.documents_to_index():
            # Contiguous ranges of about plan.bytes / count: a document goes where its middle falls.
            at = min(count - 1, (2 * before + doc_bytes) * count // (2 * plan.bytes))
            if at != part and batch:
                submit(first + part, batch, size)
                batch, size = [], 0
            part = at
            batch.append(doc)
            size += doc_bytes
            before += doc_bytes
        if batch:
            submit(first + part, batch, size)
        while pending:
            finish_one()
    except BaseException:
        for task in pending:
            ray.cancel(task, force=True)
        for task in pending:
            try:
                ray.get(task)
            except Exception:
                pass  # cancelled; what it wrote goes with the build's temporary directories
        raise
    # Numbered in corpus order; a range left empty by one large document is no shard.
    return [entries[n] for n in sorted(entries)]


def _shard_task(documents: list[Document], directory: str, min_tokens: int) -> dict:
    """A Ray task: one shard written, its entry for the top manifest returned."""
    _write_shard(documents, Path(directory), min_tokens)
    return _entry_of(Path(directory))


def _shard_result(ray, task, directory: Path) -> dict:
    """The entry a shard task returned; its failure as the error it was."""
    try:
        entry = ray.get(task)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, CodeinstructError):
            raise CodeinstructError(str(e.cause)) from None
        raise
    except ray.exceptions.RayError as e:
        raise CodeinstructError(
            f"{directory}: the Ray worker building this shard failed ({type(e).__name__})"
        ) from None
    if not (directory / MANIFEST_FILE).is_file():
        raise CodeinstructError(
            f"{directory}: the shard a Ray node wrote is not here; with --ray-address, put the index on a "
            "filesystem every node shares"
        )
    return entry


def _check_reachable(address: str) -> None:
    """A clear error when nothing answers at a Ray cluster's address (HOST:PORT or ray://HOST:PORT;
    "auto" finds the cluster this machine belongs to)."""
    if address == "auto":
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise CodeinstructError(f"--ray-address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise CodeinstructError(f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e})") from None


@contextlib.contextmanager
def _ray_session(address: str | None, workers: int):
    """Ray, started as a local cluster of ``workers`` CPUs (no dashboard, quiet) or connected to the
    cluster at ``address``, and shut down after; a Ray already started in this process is used as it is."""
    try:
        import ray
    except ImportError:
        raise CodeinstructError("building an index of several shards needs Ray: pip install 'ray>=2.40'") from None
    if ray.is_initialized():
        yield ray
        return
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address is not None:
            ray.init(address=address, **quiet)
        else:
            # "local": a new cluster of our own, even where `ray start` left one running.
            ray.init(address="local", num_cpus=workers, include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"--ray-address {address}" if address else "a local Ray cluster"
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CodeinstructError(f"{where}: cannot start ({first_line})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _write_shard(
    documents: Iterable[Document], directory: Path, min_tokens: int, progress: Callable[[int], None] | None = None
) -> None:
    """Build one shard of ``documents`` (no two with the same content, repo and path) into
    ``directory``: written in a temporary directory beside it, then renamed into place.
    ``progress(bytes_done)`` is called after each batch."""
    tmp = directory.parent / f".{directory.name}.building-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        with atomic_writer(tmp / VIEWS_FILE, "wb") as views_file:
            builder = _Builder(min_tokens, views_file)
            processor: _BatchProcessor | None = None

            def process() -> None:
                nonlocal processor
                texts, batch = builder.take_batch()
                if processor is None:
                    # The first batch trains the dictionary that every stored view is compressed with.
                    raw = _BatchProcessor(builder.k, builder.w, None)(batch)
                    builder.dictionary = _train_dictionary([blob for blobs, *_ in raw for blob in blobs])
                    processor = _BatchProcessor(builder.k, builder.w, builder.dictionary)
                    compress = processor.compressor.compress
                    builder.store(texts, [([compress(b) for b in blobs], *rest) for blobs, *rest in raw])
                else:
                    builder.store(texts, processor(batch))
                if progress is not None:
                    progress(builder.corpus_bytes)

            for doc in documents:
                builder.add(doc)
                if builder.pending_bytes >= _BATCH_BYTES or len(builder.pending) >= _BATCH_DOCUMENTS:
                    process()
            if builder.pending:
                process()
        manifest = builder.write(tmp)
        manifest["files"] = {
            p.name: {"bytes": p.stat().st_size, "xxh3_64": file_checksum(p)} for p in sorted(tmp.iterdir())
        }
        write_json(tmp / MANIFEST_FILE, manifest)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


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
