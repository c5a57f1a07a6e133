"""The on-disk layout of an attribution index: what build writes and index reads, in one place.

An index is a set of shards. An index of one shard is that shard's directory (so every index
written before shards existed is a one-shard index); an index of several is a directory holding
``manifest.json`` (format, ``SHARDS_VERSION``, min_tokens/k/window, totals over the shards, and
each shard's name, documents, bytes and the xxh3 checksum of its own manifest) and the shards in
subdirectories ``shard-NNNNN``, in corpus order: the documents of shard i come before those of
shard i + 1, which is what lets a query merge their answers into those of one shard.

A shard is a directory:

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

The locator is plain numpy arrays rather than a bitmap library's posting lists: almost every
fingerprint sits in one document, where a Roaring bitmap would spend more on its header than
the list.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import xxhash

FORMAT = "codeinstruct-attribution-index"
# A shard's layout (and a one-shard index's), and the top manifest of an index of several shards.
# 3 and 4: literals hashed by their text in fingerprints (1 and 2 abstracted them).
VERSION = 3
SHARDS_VERSION = 4
CHUNK_TOKENS = 2048  # tokens of a stored view per compressed chunk

MANIFEST_FILE = "manifest.json"
VIEWS_FILE = "views.bin"
DICTIONARY_FILE = "views.dict"
PATHS_FILE = "paths.bin"
STRINGS_FILE = "strings.json"
ARRAYS = ("bloom", "keys_hi", "keys_lo", "postings", "texts", "chunks", "documents", "text_documents")  # each NAME.npy
FILES = frozenset({f"{name}.npy" for name in ARRAYS} | {VIEWS_FILE, DICTIONARY_FILE, PATHS_FILE, STRINGS_FILE})

# Keys every manifest has; "files" maps each name in FILES to {"bytes": size, "xxh3_64": file_checksum}.
MANIFEST_KEYS = (
    "min_tokens",
    "k",
    "window",
    "chunk_tokens",
    "bloom_probes",
    "documents",
    "texts",
    "postings",
    "corpus_bytes",
    "languages",
    "scanners",
    "files",
)

# Keys of the top manifest of a sharded index; "shards" lists {"name", "documents", "texts", "corpus_bytes",
# "index_bytes", "manifest_xxh3"} in corpus order.
SHARDS_MANIFEST_KEYS = ("min_tokens", "k", "window", "documents", "corpus_bytes", "languages", "scanners", "shards")


def shard_name(number: int) -> str:
    return f"shard-{number:05d}"


# Rows of documents.npy, texts.npy and chunks.npy.
DOCUMENT_ROW = np.dtype(
    [
        ("text", "<u4"),
        ("repo", "<u4"),
        ("license", "<u4"),
        ("language", "<u4"),
        ("path_start", "<u8"),
        ("path_end", "<u8"),
    ]
)
TEXT_ROW = np.dtype(
    [
        ("first_token", "<u8"),
        ("tokens", "<u4"),
        ("first_chunk", "<u4"),
        ("chunks", "<u4"),
        ("first_document", "<u4"),
        ("documents", "<u4"),
        ("content_hash", "V16"),
    ]
)
CHUNK_ROW = np.dtype([("start", "<u8"), ("end", "<u8"), ("first_line", "<u4")])


def file_checksum(path: Path) -> str:
    """The xxh3-64 hex digest the manifest records for a file, read through a memory map."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return xxhash.xxh3_64_hexdigest(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return xxhash.xxh3_64_hexdigest(data)
