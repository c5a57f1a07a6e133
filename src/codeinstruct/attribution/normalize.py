"""Normalised views of code: the token stream that matching sees, with each token's lines.

A document becomes a sequence of tokens without whitespace and comments (so re-indented,
re-flowed or re-commented copies look the same), each token one of three kinds:

- NAME: identifiers (variables, functions, attributes, builtins): abstracted when hashing,
  so that a consistently renamed copy matches;
- LITERAL: strings and numbers (adjacent string pieces merged): abstracted the same way;
- OTHER: keywords, operators, punctuation: compared by their text.

Every token keeps the hash of its text (literals with light normalisation: '...' and "..."
are the same string) and the first and last line it occupies in the original, which is the
offset map that reports source and query line ranges.

Lexers. Pygments knows hundreds of languages and is used for all but the commonest, but its
Python lexer tokenizes about 1 MB/s on one core (measured), too slow to index a large corpus
in minutes. Python-like and C-like languages, which dominate code corpora, are cut by one
compiled regular expression each (``re.findall`` does the scanning in C; with the
classification about 15 MB/s); the token classes are the ones Pygments gives, up to details
such as soft keywords. Whichever lexer a language uses, a document and a query in that
language are cut by the same one, which is all that matching needs.

The index stores each document's view as a compact text (``encode_view``/``decode_view``):
one line per source line, tokens separated by U+001F, names and literals marked by a control
character; long or multi-line literals (docstrings) are replaced by their hash and the
newlines they span. In chunks of 2048 tokens it compresses to about 14% of the source, and
it decodes without a lexer, so verifying a candidate costs the same for every language.
"""

from __future__ import annotations

import functools
import itertools
import keyword
import re
from dataclasses import dataclass, field

import numpy as np
import xxhash

__all__ = [
    "LITERAL",
    "NAME",
    "OTHER",
    "Scanner",
    "StoredView",
    "TokenView",
    "Tokens",
    "decode_view",
    "encode_view",
    "scanner_for",
    "view_of",
]

OTHER, NAME, LITERAL = 0, 1, 2
_SKIP, _NEWLINE = 3, 4  # scanner-internal classes of dropped text

# The stored form: OTHER tokens as they are, NAME and LITERAL behind a control character,
# tokens separated by U+001F, lines by "\n". Scanners drop control characters, so none of
# these can begin a token; text that would be ambiguous is stored as its hash.
_SEP = "\x1f"
_PREFIXES = ("", "\x01", "\x02")  # by kind: OTHER, NAME, LITERAL
_HASHED = "\x03"  # then the kind digit, the hash in hex, "+" and the newlines the token spans
_KIND_OF_PREFIX = {"\x01": NAME, "\x02": LITERAL}
_AMBIGUOUS = ("\x01", "\x02", "\x03")  # first characters an OTHER token must not have when stored as text
_MAX_STORED_LITERAL = 24


def text_hash(text: str) -> int:
    """A stable 64-bit hash of a token's text (Python's hash() is salted per process)."""
    return xxhash.xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))


_HASH_CACHE: dict[str, int] = {}


def _hashes(texts: list[str]) -> np.ndarray:
    """text_hash of each text; frequent texts (names, keywords) come from a per-process cache."""
    cache = _HASH_CACHE
    if len(cache) > 1_000_000:
        cache.clear()
    get = cache.get
    out = [get(t) for t in texts]
    for i, h in enumerate(out):
        if h is None:
            t = texts[i]
            out[i] = h = text_hash(t)
            if len(t) <= 24:
                cache[t] = h
    return np.array(out, dtype=np.uint64)


def normalize_literal(text: str) -> str:
    """One spelling for literals that differ only in quote style ('a' and "a")."""
    if "'" in text and '"' not in text:
        return text.replace("'", '"')
    return text


@dataclass
class Tokens:
    """The kept tokens of a text as parallel lists: kind, (normalised) text, first line;
    ``multiline`` maps the index of each token that spans lines to its newline count."""

    kinds: list[int]
    texts: list[str]
    lines: list[int]
    multiline: dict[int, int] = field(default_factory=dict)
    # Tokens whose text holds the stored form's separator; None when not known (then every
    # token is looked at when storing). The regex scanners drop control characters outside
    # literals, so they only need to look at literals.
    unsafe: set[int] | None = None

    def __len__(self) -> int:
        return len(self.kinds)

    def slice(self, start: int, end: int) -> Tokens:
        """Tokens [start, end), lines renumbered so that the first one is on line 1."""
        shift = self.lines[start] - 1 if start < len(self.lines) else 0
        lines = [line - shift for line in self.lines[start:end]] if shift else self.lines[start:end]
        multiline = {i - start: n for i, n in self.multiline.items() if start <= i < end}
        unsafe = None if self.unsafe is None else {i - start for i in self.unsafe if start <= i < end}
        return Tokens(self.kinds[start:end], self.texts[start:end], lines, multiline, unsafe)


@dataclass(frozen=True)
class TokenView:
    """Tokens as arrays, ready for hashing and alignment."""

    kinds: np.ndarray  # uint8: OTHER, NAME, LITERAL
    hashes: np.ndarray  # uint64: text_hash of the (normalised) text
    lines: np.ndarray  # int32: first line of the token (1-based)
    end_lines: np.ndarray  # int32: last line of the token
    sizes: np.ndarray  # int32: characters of the token's text (0 for a stored view's hashed tokens)

    def __len__(self) -> int:
        return len(self.kinds)

    def slice(self, start: int, end: int) -> TokenView:
        return TokenView(
            self.kinds[start:end],
            self.hashes[start:end],
            self.lines[start:end],
            self.end_lines[start:end],
            self.sizes[start:end],
        )

    def shifted(self, lines: int) -> TokenView:
        return TokenView(self.kinds, self.hashes, self.lines + lines, self.end_lines + lines, self.sizes)

    @staticmethod
    def concatenate(views: list[TokenView]) -> TokenView:
        if len(views) == 1:
            return views[0]
        return TokenView(
            *(
                np.concatenate([getattr(v, f) for v in views])
                for f in ("kinds", "hashes", "lines", "end_lines", "sizes")
            )
        )


def view_of(tokens: Tokens) -> TokenView:
    """Hash the tokens' texts and lay them out as arrays."""
    lines = np.asarray(tokens.lines, dtype=np.int32)
    end_lines = lines.copy()
    for i, newlines in tokens.multiline.items():
        end_lines[i] += newlines
    sizes = np.fromiter(map(len, tokens.texts), dtype=np.int32, count=len(tokens.texts))
    return TokenView(np.asarray(tokens.kinds, dtype=np.uint8), _hashes(tokens.texts), lines, end_lines, sizes)


# ---------------------------------------------------------------- stored form


def encode_view(tokens: Tokens) -> str:
    """The tokens as the index stores them (see the module docstring)."""
    kinds, texts, lines = tokens.kinds, tokens.texts, tokens.lines
    if not kinds:
        return ""
    out = [_PREFIXES[kind] + text for kind, text in zip(kinds, texts)]
    hashed = set(tokens.multiline)
    hashed.update(
        i
        for i in np.flatnonzero(
            np.fromiter(map(len, out), dtype=np.int64, count=len(out)) > _MAX_STORED_LITERAL + 1
        ).tolist()
        if kinds[i] == LITERAL
    )
    if tokens.unsafe is None:
        hashed.update(i for i, text in enumerate(texts) if _SEP in text or text[:1] in _AMBIGUOUS)
    else:
        hashed.update(tokens.unsafe)
    for i in hashed:
        out[i] = f"{_HASHED}{kinds[i]}{text_hash(texts[i]):016x}+{tokens.multiline.get(i, 0)}"
    separators = [_SEP if a == b else "\n" * (b - a) for a, b in itertools.pairwise(lines)]
    return "\n" * (lines[0] - 1) + "".join(itertools.chain.from_iterable(zip(out, separators))) + out[-1]


def decode_view(stored: str) -> TokenView:
    """The TokenView of a stored view; equal to view_of() of the tokens it was encoded from."""
    kinds: list[int] = []
    texts: list[str] = []
    lines: list[int] = []
    hashed: list[tuple[int, int, int]] = []  # index, hash, newlines
    for lineno, row in enumerate(stored.split("\n"), start=1):
        if not row:
            continue
        for token in row.split(_SEP):
            first = token[0]
            if first == _HASHED:
                h, _, newlines = token[2:].partition("+")
                hashed.append((len(kinds), int(h, 16), int(newlines)))
                kinds.append(int(token[1]))
                texts.append("")
            elif first in _KIND_OF_PREFIX:
                kinds.append(_KIND_OF_PREFIX[first])
                texts.append(token[1:])
            else:
                kinds.append(OTHER)
                texts.append(token)
            lines.append(lineno)
    view = view_of(Tokens(kinds, texts, lines))
    for i, h, newlines in hashed:
        view.hashes[i] = h
        view.end_lines[i] += newlines
    return view


_BYTES_HASH_CACHE: dict[bytes, int] = {}
_B = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2**64
_POWERS: tuple[np.ndarray, np.ndarray] = (np.ones(1, np.uint64), np.ones(1, np.uint64))


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """_B**i and _B**-i modulo 2**64 for i < n (tables grown on demand, replaced together)."""
    global _POWERS
    up, down = _POWERS
    if len(up) < n:
        size = max(n, 2 * len(up), 1 << 16)
        one = np.ones(1, np.uint64)
        inverse = np.uint64(pow(int(_B), -1, 1 << 64))
        up = np.concatenate((one, np.cumprod(np.full(size - 1, _B, np.uint64), dtype=np.uint64)))
        down = np.concatenate((one, np.cumprod(np.full(size - 1, inverse, np.uint64), dtype=np.uint64)))
        _POWERS = (up, down)
    return up[:n], down[:n]


class StoredView:
    """A stored view (the UTF-8 bytes of ``encode_view``) with its tokens located but none decoded.

    Verifying a match reads a few hundred tokens of a large stored text, so tokens are decoded
    for a range at a time: ``view(a, b)`` equals ``decode_view(text).slice(a, b)``. ``kinds`` and
    ``keys`` give each token's kind and a 64-bit hash of its stored form (a polynomial hash,
    computed for all tokens at once with numpy, when first asked for): the stored form is a
    function of kind and text, so equal keys are equal tokens, and copies are compared as arrays.
    A token is a run of bytes other than U+001F and newline (a stored token holds neither); its
    line is ``first_line`` plus the newlines before it. Shared between threads: what is computed
    lazily is the same whoever computes it.
    """

    __slots__ = ("data", "raw", "starts", "ends", "first_line", "_kinds", "_keys", "_kinds_part", "_keys_part")
    # data: the stored bytes, raw: the same as uint8; starts, ends: each token's byte range (int32);
    # _kinds, _keys: those of every token once asked for; _*_part: (start, end, those of tokens
    # [start, end)) as kinds_between and keys_between last computed them

    def __init__(self, data: bytes, first_line: int = 1):
        self.data = data
        self.raw = raw = np.frombuffer(data, dtype=np.uint8)
        separator = np.empty(len(raw) + 2, dtype=bool)  # with one before and one after
        separator[0] = separator[-1] = True
        np.logical_or(raw == 0x1F, raw == 0x0A, out=separator[1:-1])
        edges = np.flatnonzero(separator[1:] != separator[:-1]).astype(np.int32)  # a token's start, its end, ...
        self.starts, self.ends = edges[::2], edges[1::2]
        self.first_line = first_line
        self._kinds: np.ndarray | None = None
        self._keys: np.ndarray | None = None
        self._kinds_part: tuple[int, int, np.ndarray] | None = None
        self._keys_part: tuple[int, int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def kinds(self) -> np.ndarray:
        """OTHER, NAME or LITERAL for each token (uint8)."""
        if self._kinds is None:
            self._kinds = self._kinds_of(0, len(self))
        return self._kinds

    @property
    def keys(self) -> np.ndarray:
        """A hash of each token's stored form (uint64), the same wherever the token is."""
        if self._keys is None:
            self._keys = self._keys_of(0, len(self))
        return self._keys

    def kinds_between(self, start: int, end: int) -> np.ndarray:
        """``kinds[start:end]``, computed for those tokens only while the whole is not known (a check
        reads a few hundred tokens of a chunk of thousands); what was computed is kept."""
        if self._kinds is not None:
            return self._kinds[start:end]
        return self._part("_kinds_part", self._kinds_of, start, end)

    def keys_between(self, start: int, end: int) -> np.ndarray:
        """``keys[start:end]``, computed as kinds_between is."""
        if self._keys is not None:
            return self._keys[start:end]
        return self._part("_keys_part", self._keys_of, start, end)

    def _part(self, slot: str, compute, start: int, end: int) -> np.ndarray:
        """compute(start, end), or a slice of what an earlier call computed; the part kept grows to
        cover both (one tuple: a thread reading it sees the old part or the new)."""
        low, high = start, end
        part = getattr(self, slot)
        if part is not None:
            known_low, known_high, known = part
            if known_low <= start and end <= known_high:
                return known[start - known_low : end - known_low]
            low, high = min(start, known_low), max(end, known_high)
        values = compute(low, high)
        setattr(self, slot, (low, high, values))
        return values[start - low : end - low]

    def _kinds_of(self, start: int, end: int) -> np.ndarray:
        starts = self.starts[start:end]
        first = self.raw[starts]
        kinds = np.where(first < 3, first, 0).astype(np.uint8)  # the prefix of NAME and LITERAL is their kind
        hashed = np.flatnonzero(first == ord(_HASHED))
        kinds[hashed] = self.raw[starts[hashed] + 1] - ord("0")  # then the kind digit
        return kinds

    def _keys_of(self, start: int, end: int) -> np.ndarray:
        """A polynomial hash of each token's bytes, over the bytes of tokens [start, end) only: the
        sums of a range are differences of prefix sums whatever byte the prefixes start at."""
        starts, ends = self.starts[start:end], self.ends[start:end]
        if not len(starts):
            return np.zeros(0, dtype=np.uint64)
        first, last = int(starts[0]), int(ends[-1])
        up, down = _powers(last + 1)
        weighted = (self.raw[first:last].astype(np.uint64) + np.uint64(1)) * up[first:last]
        prefix = np.concatenate((np.zeros(1, np.uint64), np.cumsum(weighted, dtype=np.uint64)))
        return (prefix[ends - first] - prefix[starts - first]) * down[starts] ^ (ends - starts).astype(np.uint64)

    def token_lines(self, i: int) -> tuple[int, int]:
        """The first and last line of token i (``lines(i, i + 1)``, as ints)."""
        at = int(self.starts[i])
        line = self.first_line + self.data.count(b"\n", 0, at)
        if self.data[at] != ord(_HASHED):
            return line, line
        token = self.data[at : int(self.ends[i])]  # "+" and the newlines it spans
        return line, line + int(token[token.rindex(b"+") + 1 :])

    def lines(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """The first and last line of each of tokens [start, end) (int32)."""
        if end <= start:
            return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32)
        first = int(self.starts[start])
        before = self.first_line + int(np.count_nonzero(self.raw[:first] == 0x0A))
        newlines = np.concatenate(([0], np.cumsum(self.raw[first : int(self.starts[end - 1])] == 0x0A)))
        lines = (newlines[self.starts[start:end] - first] + before).astype(np.int32)
        end_lines = lines.copy()
        for i in np.flatnonzero(self.raw[self.starts[start:end]] == ord(_HASHED)).tolist():
            token = self.data[self.starts[start + i] : self.ends[start + i]]  # "+" and the newlines it spans
            end_lines[i] += int(token[token.rindex(b"+") + 1 :])
        return lines, end_lines

    def view(self, start: int, end: int) -> TokenView:
        """Tokens [start, end) as a TokenView (``sizes`` in characters, 0 for hashed tokens, as decode_view)."""
        starts, ends = self.starts[start:end], self.ends[start:end]
        first = self.raw[starts]
        texts = starts + (first < 3)  # a NAME or LITERAL token's text follows its prefix
        data = self.data
        tokens = [data[a:b] for a, b in zip(texts.tolist(), ends.tolist())]
        cache = _BYTES_HASH_CACHE
        if len(cache) > 1_000_000:
            cache.clear()
        hashes = list(map(cache.get, tokens))
        hashed = np.flatnonzero(first == ord(_HASHED)).tolist()
        for i in hashed:  # the kind digit, then 16 hex digits
            hashes[i] = int(tokens[i][2:18], 16)
        for i in [i for i, h in enumerate(hashes) if h is None]:
            token = tokens[i]
            hashes[i] = h = xxhash.xxh3_64_intdigest(token)
            if len(token) <= 24:
                cache[token] = h
        if len(starts) and int(self.raw[int(starts[0]) : int(ends[-1])].max()) < 0x80:  # ASCII: a byte a character
            sizes = (ends - texts).astype(np.int32)
            sizes[hashed] = 0
        else:
            sizes = np.array(
                [len(token) if token.isascii() else len(token.decode("utf-8", "surrogatepass")) for token in tokens],
                dtype=np.int32,
            )
            sizes[hashed] = 0
        lines, end_lines = self.lines(start, end)
        return TokenView(self.kinds_between(start, end), np.array(hashes, dtype=np.uint64), lines, end_lines, sizes)


# ---------------------------------------------------------------- scanners


class Scanner:
    """Cuts a text into Tokens; one per lexer, shared by documents and queries of its languages."""

    name: str

    def scan(self, text: str) -> Tokens:  # pragma: no cover - interface
        raise NotImplementedError


class _RegexScanner(Scanner):
    """A language family cut by one regular expression whose matches tile the text."""

    def __init__(self, name: str, pattern: str, keywords: frozenset[str], comments: tuple[str, ...], quotes: str):
        self.name = name
        self.pattern = re.compile(pattern, re.VERBOSE | re.DOTALL)
        self.keywords = keywords
        self.comments = comments
        self.quotes = quotes
        self._kinds: dict[str, int] = {}

    def classify(self, token: str) -> int:
        c = token[0]
        if token == "\n":
            return _NEWLINE
        if c.isspace() or c < " " or (c == "\\" and token[1:2] in ("\n", "\r")) or token.startswith(self.comments):
            return _SKIP
        if c in self.quotes or (c.isalpha() and any(q in token[:3] for q in self.quotes)):
            return LITERAL  # a string, with its prefix (r"", b'', f"", L"", u8"")
        if c.isdigit() or (c == "." and token[1:2].isdigit()):
            return LITERAL
        if c.isalnum() or c in "_$":
            return OTHER if token in self.keywords else NAME
        return OTHER

    def scan(self, text: str) -> Tokens:
        kinds: list[int] = []
        texts: list[str] = []
        lines: list[int] = []
        multiline: dict[int, int] = {}
        unsafe: set[int] = set()
        known = self._kinds
        classify = self.classify
        line = 1
        for token in self.pattern.findall(text):
            kind = known.get(token)
            if kind is None:
                kind = classify(token)
                if len(token) <= 32 and len(known) < 500_000:
                    known[token] = kind  # thread-safe enough: a dict store is atomic under the GIL
            if kind < _SKIP:
                if kind == LITERAL:
                    token = normalize_literal(token)
                    if _SEP in token:
                        unsafe.add(len(kinds))
                    if "\n" in token:
                        multiline[len(kinds)] = newlines = token.count("\n")
                        kinds.append(kind)
                        texts.append(token)
                        lines.append(line)
                        line += newlines
                        continue
                kinds.append(kind)
                texts.append(token)
                lines.append(line)
            elif kind == _NEWLINE:
                line += 1
            elif "\n" in token:
                line += token.count("\n")
        return Tokens(kinds, texts, lines, multiline, unsafe)


# One alternative per token class; the last, any single character, makes the matches tile the text.
_PYTHON_PATTERN = r"""
  [ \t\f\r\v]+ | \\\r?\n | \n
| \#[^\n]*
| (?:[rRbBuUfF]{1,2})?(?:
      \"\"\"[^"\\]*(?:(?:\\.|"(?!""))[^"\\]*)*(?:\"\"\"|\Z)
    | '''[^'\\]*(?:(?:\\.|'(?!''))[^'\\]*)*(?:'''|\Z)
    | "[^"\\\n]*(?:\\.[^"\\\n]*)*"?
    | '[^'\\\n]*(?:\\.[^'\\\n]*)*'?
  )
| 0[xXoObB]\w+ | (?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d[\d_]*)?[jJ]?
| \w+
| ->|\*\*=?|//=?|<<=?|>>=?|:=|[-+*/%@&|^=<>!]=
| .
"""

_C_FAMILY_PATTERN = r"""
  [ \t\f\r\v]+ | \\\r?\n | \n
| //[^\n]*
| /\*[^*]*\*+(?:[^/*][^*]*\*+)*/ | /\*.*
| (?:[LuUR]|u8)?"[^"\\\n]*(?:\\.[^"\\\n]*)*"?
| '[^'\\\n]*(?:\\.[^'\\\n]*)*'?
| `[^`\\]*(?:\\.[^`\\]*)*`?
| 0[xXbBoO][\w']+ | (?:\d[\w']*\.?[\w']*|\.\d[\w']*)(?:(?<=[eEpP])[+-]\d\w*)?
| [\w$]+
| >>>=?|<<=|>>=|\.\.\.|->|\+\+|--|&&|\|\||::|=>|\?\?=?|\?\.|===|!==|[-+*/%&|^!=<>]=|<<|>>
| .
"""

# For languages without a lexer: words, numbers, quoted strings, punctuation; no comments.
_GENERIC_PATTERN = r"""
  [ \t\f\r\v]+ | \n
| "[^"\\\n]*(?:\\.[^"\\\n]*)*"?
| '[^'\\\n]*(?:\\.[^'\\\n]*)*'?
| \d[\w.]* | \w+
| .
"""

_C_FAMILY_KEYWORDS = frozenset(
    {
        "abstract",
        "alignas",
        "alignof",
        "and",
        "as",
        "asm",
        "assert",
        "async",
        "auto",
        "await",
        "bool",
        "break",
        "byte",
        "case",
        "catch",
        "char",
        "chan",
        "class",
        "const",
        "const_cast",
        "constexpr",
        "continue",
        "co_await",
        "co_return",
        "co_yield",
        "decltype",
        "default",
        "defer",
        "delete",
        "do",
        "double",
        "dynamic_cast",
        "else",
        "enum",
        "explicit",
        "export",
        "extends",
        "extern",
        "false",
        "final",
        "finally",
        "float",
        "for",
        "foreach",
        "friend",
        "fun",
        "func",
        "function",
        "go",
        "goto",
        "if",
        "implements",
        "import",
        "in",
        "inline",
        "instanceof",
        "int",
        "interface",
        "internal",
        "is",
        "let",
        "long",
        "map",
        "module",
        "mutable",
        "namespace",
        "native",
        "new",
        "noexcept",
        "null",
        "nullptr",
        "object",
        "operator",
        "out",
        "override",
        "package",
        "private",
        "protected",
        "public",
        "range",
        "readonly",
        "register",
        "reinterpret_cast",
        "return",
        "sealed",
        "select",
        "short",
        "signed",
        "sizeof",
        "static",
        "static_assert",
        "static_cast",
        "struct",
        "super",
        "switch",
        "synchronized",
        "template",
        "this",
        "throw",
        "throws",
        "transient",
        "true",
        "try",
        "type",
        "typedef",
        "typeid",
        "typename",
        "typeof",
        "union",
        "unsigned",
        "using",
        "val",
        "var",
        "virtual",
        "void",
        "volatile",
        "when",
        "where",
        "while",
        "with",
        "yield",
    }
)

_PYTHON = _RegexScanner("python", _PYTHON_PATTERN, frozenset(keyword.kwlist), ("#",), "\"'")
_C_FAMILY = _RegexScanner("c-family", _C_FAMILY_PATTERN, _C_FAMILY_KEYWORDS, ("//", "/*"), "\"'`")
_GENERIC = _RegexScanner("generic", _GENERIC_PATTERN, frozenset(), (), "\"'")

_PYTHON_LANGUAGES = frozenset({"python", "cython"})
_C_FAMILY_LANGUAGES = frozenset(
    {
        "c",
        "c++",
        "cuda",
        "c#",
        "objective-c",
        "objective-c++",
        "java",
        "kotlin",
        "scala",
        "groovy",
        "javascript",
        "typescript",
        "go",
        "swift",
        "dart",
    }
)
# corpus.py's language names that Pygments spells differently.
_PYGMENTS_ALIASES = {
    "shell": "bash",
    "batchfile": "batch",
    "protocol buffer": "protobuf",
    "visual basic": "vbnet",
    "makefile": "make",
    "f#": "fsharp",
    "assembly": "nasm",
    "vue": "html",
    "svelte": "html",
}


class _PygmentsScanner(Scanner):
    """Any language Pygments knows, at Pygments' speed."""

    def __init__(self, name: str, lexer):
        self.name = name
        self.lexer = lexer

    def scan(self, text: str) -> Tokens:
        from pygments.token import Comment, Literal, Name, String, Whitespace

        kinds: list[int] = []
        texts: list[str] = []
        lines: list[int] = []
        line = 1
        in_string = False
        for _, ttype, value in self.lexer.get_tokens_unprocessed(text):
            if in_string and ttype in String:
                # Pygments cuts a string into pieces (quotes, escapes, interpolations): one literal.
                texts[-1] += value
                line += value.count("\n")
                continue
            stripped = value.strip()
            in_string = False
            if not stripped or ttype in Comment or ttype in Whitespace:
                line += value.count("\n")
                continue
            lead = len(value) - len(value.lstrip())
            line += value.count("\n", 0, lead)
            if ttype in Literal:
                kind, in_string = LITERAL, ttype in String
            else:
                kind = NAME if ttype in Name else OTHER
            kinds.append(kind)
            texts.append(stripped)
            lines.append(line)
            line += value.count("\n", lead)
        multiline = {}
        for i, kind in enumerate(kinds):
            if kind == LITERAL:
                texts[i] = normalize_literal(texts[i])
            if "\n" in texts[i]:
                multiline[i] = texts[i].count("\n")
        return Tokens(kinds, texts, lines, multiline)


@functools.cache
def _pygments_scanner(alias: str) -> Scanner | None:
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_by_name(alias, stripnl=False, stripall=False, ensurenl=False)
    except ClassNotFound:
        return None
    return _PygmentsScanner(f"pygments:{alias}", lexer)


def scanner_for(language: str | None) -> Scanner:
    """The scanner for a language name (corpus.py's names, any case, or a Pygments alias).

    Unknown or missing languages get a generic scanner (words, numbers, quoted strings,
    punctuation), so every document can be indexed.
    """
    if not language:
        return _GENERIC
    name = language.strip().lower()
    if name in _PYTHON_LANGUAGES or name == "py":
        return _PYTHON
    if name in _C_FAMILY_LANGUAGES:
        return _C_FAMILY
    if name in ("generic", "text"):
        return _GENERIC
    return _pygments_scanner(_PYGMENTS_ALIASES.get(name, name)) or _GENERIC


def scanner_named(name: str) -> Scanner | None:
    """A scanner by its `name` attribute (as recorded in an index), or None if unknown here."""
    builtin = {s.name: s for s in (_PYTHON, _C_FAMILY, _GENERIC)}
    if name in builtin:
        return builtin[name]
    if name.startswith("pygments:"):
        return _pygments_scanner(name.removeprefix("pygments:"))
    return None
