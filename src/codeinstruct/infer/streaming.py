"""Token ids in, text deltas out: whole UTF-8 characters only, stop strings never shown.

A byte-level BPE token (GPT-2, StarCoder) can end in the middle of a multi-byte character, so
decoding token by token would print replacement characters. `TextStream` keeps the bytes of
an unfinished character until the next token completes it. Stop strings may span tokens: text
that could still be the start of a stop string is held back until it is either completed (the
request stops, and neither the stop string nor anything after it is ever emitted) or ruled out.
"""

from __future__ import annotations

import codecs
from functools import lru_cache


def _byte_decoder() -> dict[str, int]:
    """Byte-level BPE's alphabet inverted: a byte that is a printable Latin-1 character stands for
    itself; the other 68 (controls, space, DEL, NBSP, soft hyphen) stand in order at chr(256)...chr(323)."""

    def printable(b: int) -> bool:
        return 0x21 <= b <= 0x7E or 0xA1 <= b <= 0xAC or 0xAE <= b <= 0xFF

    stand_ins = iter(range(256, 256 + 68))
    return {chr(b if printable(b) else next(stand_ins)): b for b in range(256)}


@lru_cache(maxsize=8)
def token_bytes_table(tokenizer) -> tuple[bytes | None, ...] | None:
    """Each token's bytes for a byte-level BPE tokenizer (None for special tokens); None otherwise."""
    try:
        decoder = tokenizer.backend_tokenizer.decoder
    except AttributeError:
        return None
    if decoder is None or type(decoder).__name__ != "ByteLevel":
        return None
    to_byte = _byte_decoder()
    special = set(tokenizer.all_special_ids)
    table: list[bytes | None] = [None] * len(tokenizer)
    for token, i in tokenizer.get_vocab().items():
        if i in special or i >= len(table):
            continue
        try:
            table[i] = bytes(to_byte[c] for c in token)
        except KeyError:  # an added non-special token stored as plain text
            table[i] = token.encode("utf-8")
    return tuple(table)


class Detokenizer:
    """Incremental decoding: `push(token_id)` returns the new text (possibly empty)."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.special = frozenset(tokenizer.all_special_ids)
        self.table = token_bytes_table(tokenizer)
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.ids: list[int] = []  # generic path: ids not yet fully emitted
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token_id: int) -> str:
        if token_id in self.special:
            if self.skip_special:
                return ""
            return self.flush() + self.tokenizer.convert_ids_to_tokens(token_id)
        if self.table is not None:
            piece = self.table[token_id] if token_id < len(self.table) else None
            return self.utf8.decode(piece or b"")
        # other tokenizers: decode a short window and emit once it no longer ends mid-character
        self.ids.append(token_id)
        before = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """What is still held at the end (an unfinished character becomes U+FFFD, as decode() gives)."""
        if self.table is not None:
            return self.utf8.decode(b"", final=True)
        before = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        after = self.tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        self.prefix_offset = self.read_offset = len(self.ids)
        return after[len(before) :]


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is a proper start of some stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


class TextStream:
    """The visible text of one sequence: `feed(piece)` -> (delta to emit, stopped)."""

    def __init__(self, stops: tuple[str, ...] = ()):
        self.stops = tuple(s for s in stops if s)
        self.text = ""  # everything decoded so far
        self.emitted = 0  # how much of it the reader has seen
        self.stopped = False

    def feed(self, piece: str, final: bool = False) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        start = max(0, self.emitted - max((len(s) for s in self.stops), default=0) + 1)
        self.text += piece
        cut = min((i for i in (self.text.find(s, start) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text = self.text[:cut]
            self.stopped = True
            end = cut
        else:
            end = len(self.text) if final else len(self.text) - _held_back(self.text, self.stops)
        delta = self.text[self.emitted : end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return delta, self.stopped

    @property
    def visible(self) -> str:
        """The text as finally reported (the stop string and what followed it removed)."""
        return self.text
