"""Fingerprints of token views: rename-invariant k-gram hashes, winnowing, a Bloom filter.

k-grams. A k-gram of a view is hashed from its tokens' abstract form: OTHER and LITERAL tokens
by their text (a literal's quote style aside), NAME tokens by their kind and, for a repeated
one, the distance back to its previous occurrence inside the same k-gram (Baker's
parameterized strings). Two spans that are equal up to a consistent renaming of names
therefore have equal k-gram hashes, while ``a = a + b`` and ``a = b + c`` do not. Names after
``.`` (attributes) are a namespace of their own and keyword arguments (``(`` or ``,``, name,
``=``) are free, so that ``self.size = size`` renamed to ``self.size = n`` is still a
consistent renaming.

Literals are kept in the hash because generated code (thousands of files of one template, a
getter and a setter per field under other names and docstrings) is one abstract shape: with
literals abstracted, a query from one such file fingerprints alike with every file of its
template, and each had to be read to learn that it holds no span (verification asks a renamed
span to keep at least half of its literals). With them, a span whose names are renamed and
whose literals are kept is found as before, and one with other values is found wherever
``w + k - 1`` tokens of it keep theirs (then verified over its whole stretch).

A k-gram whose abstract form repeats with a period of at most 10 tokens (a column of
imports, a table of numbers, ``self.x = x`` lines) says nothing in abstract form: it is
hashed by its exact tokens instead, so such code is found only where it is copied verbatim.

Winnowing (Schleimer, Wilkerson and Aiken, 2003). A document keeps the minimum hash of every
window of ``w`` consecutive k-grams. Any span of ``t = w + k - 1`` tokens shared with a query
contains a whole window, whose minimum both sides compute: checking all of a query's k-grams
against a document's winnowed set finds every shared span of ``t`` tokens or more, while the
index keeps only about ``2 / (w + 1)`` of the k-grams.

Bloom filter. A bit array with 11 probes per key, about 0.05% false positives at 16 bits a
key (a query of 500 k-grams is cleared outright four times in five when none is indexed),
answers "could any of these k-grams be indexed?" for a whole query in one vectorised pass.
It is written with numpy rather than taken from a Bloom-filter package: those hash one
Python object per call and load the whole filter into memory, while here millions of keys
go in with a few array operations and the filter is used straight from a memory map.
"""

from __future__ import annotations

import numpy as np

from codeinstruct.attribution.normalize import LITERAL, NAME, OTHER, TokenView, text_hash

__all__ = [
    "KEY_BITS",
    "BloomFilter",
    "abstract_codes",
    "keys_of",
    "kgram_hashes",
    "previous_of",
    "previous_same",
    "roles_of",
    "sliding_minima",
    "window_params",
    "winnow",
]

_U64 = np.uint64
_BASE = _U64(0x9E3779B97F4A7C15)  # odd: the polynomial's multiplier
_EXACT_BASE = _U64(0xC2B2AE3D27D4EB4F)  # another one for exact k-grams, a hash space of their own
_REPEAT = _U64(0xD6E8FEB86659FD93)  # weight of a back-reference distance
_LITERAL_SALT = _U64(0x1B873593CC9E2D51)  # a literal's code: its text hash, salted and mixed
_KIND_CODE = np.array([0, 0x5851F42D4C957F2D, 0x14057B7EF767814F], dtype=np.uint64)  # OTHER unused, NAME, LITERAL
_ROLE_CODE = np.array(
    [0, 0x2545F4914F6CDD1D, 0x61C8864680B583EB], dtype=np.uint64
)  # plain, attribute, (keyword argument)
_MAX_PERIOD = 10
KEY_BITS = 40  # an indexed fingerprint is the top 40 bits of a k-gram hash


def _hashes_of(texts: tuple[str, ...]) -> np.ndarray:
    return np.array([text_hash(t) for t in texts], dtype=np.uint64)


_ATTRIBUTE_AFTER = _hashes_of((".", "->", "::", "?."))
_BEFORE_KEYWORD = _hashes_of(("(", ","))
_ASSIGN = _U64(text_hash("="))


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: spreads every input bit over the whole word."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


def window_params(min_tokens: int) -> tuple[int, int]:
    """(k, w) that guarantee every shared span of ``min_tokens`` tokens is found."""
    if min_tokens < 8:
        raise ValueError(f"min_tokens must be at least 8, got {min_tokens}")
    k = max(5, round(min_tokens * 0.4))
    return k, min_tokens - k + 1


def roles_of(view: TokenView) -> np.ndarray:
    """0 for a plain name, 1 for an attribute (after "." and the like), 2 for a keyword argument.

    Both are read off the neighbouring tokens only (a keyword argument is a name between "("
    or "," and "="), so a span gets the same roles wherever it is cut from.
    """
    n = len(view)
    roles = np.zeros(n, dtype=np.int64)
    if n < 2:
        return roles
    other = view.kinds == OTHER
    roles[1:][other[:-1] & _among(view.hashes[:-1], _ATTRIBUTE_AFTER)] = 1
    if n >= 3:
        keyword_argument = (
            (view.kinds[1:-1] == NAME)
            & other[2:]
            & (view.hashes[2:] == _ASSIGN)
            & other[:-2]
            & _among(view.hashes[:-2], _BEFORE_KEYWORD)
        )
        roles[1:-1][keyword_argument] = 2
    return roles


def _among(values: np.ndarray, few: np.ndarray) -> np.ndarray:
    """np.isin(values, few) for a few values (faster where a check aligns many short stretches)."""
    found = values == few[0]
    for value in few[1:]:
        found |= values == value
    return found


def previous_same(view: TokenView) -> np.ndarray:
    """For each NAME/LITERAL token, the distance back to the previous token of the same kind,
    role and text (0 if none); 0 for OTHER tokens and keyword arguments, which are free: a
    keyword argument's name belongs to the function called, and ``def f(mode=None)`` and a
    later ``open(path, mode=mode)`` should not tie ``mode`` to ``mode``."""
    return previous_of(view.kinds, view.hashes, roles_of(view))


def previous_of(kinds: np.ndarray, hashes: np.ndarray, roles: np.ndarray) -> np.ndarray:
    """previous_same from each token's kind, role and any hash that is equal exactly where the
    tokens' texts are (a stored view's keys will do)."""
    n = len(kinds)
    prev = np.zeros(n, dtype=np.int64)
    where = np.flatnonzero((kinds != OTHER) & (roles != 2))
    if len(where) < 2:
        return prev
    keys = hashes[where] ^ _KIND_CODE[kinds[where]] ^ _ROLE_CODE[roles[where]]
    order = np.lexsort((where, keys))  # by text, then position
    sorted_keys, sorted_pos = keys[order], where[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    prev[sorted_pos[1:][same]] = (sorted_pos[1:] - sorted_pos[:-1])[same]
    return prev


def abstract_codes(view: TokenView) -> np.ndarray:
    """A token's abstract form without back-references: its text for OTHER, else its kind."""
    return np.where(view.kinds == OTHER, _mix(view.hashes), _KIND_CODE[view.kinds])


def _fingerprint_codes(view: TokenView, codes: np.ndarray) -> np.ndarray:
    """The codes k-grams are hashed from: abstract_codes, with each LITERAL by its text."""
    return np.where(view.kinds == LITERAL, _mix(view.hashes ^ _LITERAL_SALT), codes)


def _periodic(codes: np.ndarray, k: int, count: int) -> np.ndarray:
    """For each k-gram, whether its abstract form repeats with a period of at most _MAX_PERIOD."""
    out = np.zeros(count, dtype=bool)
    for p in range(1, min(_MAX_PERIOD, k - 1) + 1):
        differs = np.concatenate(([0], np.cumsum(codes[:-p] != codes[p:])))
        out |= differs[k - p : k - p + count] == differs[:count]
    return out


class _Powers:
    """B**i and B**-i modulo 2**64 for i < n, grown on demand (B odd, so B is invertible).

    Both tables are replaced together, so concurrent readers never see one grown without the other.
    """

    def __init__(self, base: np.uint64):
        self.base = int(base)
        self.inverse = pow(self.base, -1, 1 << 64)
        self.tables = (np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64))

    def get(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        up, down = self.tables
        if len(up) < n:
            size = max(n, 2 * len(up))
            one = np.ones(1, dtype=np.uint64)
            up = np.concatenate((one, np.cumprod(np.full(size - 1, self.base, dtype=np.uint64), dtype=np.uint64)))
            down = np.concatenate((one, np.cumprod(np.full(size - 1, self.inverse, dtype=np.uint64), dtype=np.uint64)))
            self.tables = (up, down)
        return up[:n], down[:n]


_ABSTRACT_POWERS = _Powers(_BASE)
_EXACT_POWERS = _Powers(_EXACT_BASE)


def _window_sums(values: np.ndarray, k: int, powers: _Powers) -> tuple[np.ndarray, np.ndarray]:
    """sum_j values[s + j] * B**(k - 1 - j) for every s, as (sums * B**-(s + k - 1)) and B**(s + k - 1).

    A polynomial hash of every window from one prefix sum: values[i] * B**-i summed over the
    window, scaled back by B**(s + k - 1). Everything wraps modulo 2**64, as the hash does.
    """
    n = len(values)
    up, down = powers.get(n)
    prefix = np.concatenate((np.zeros(1, dtype=np.uint64), np.cumsum(values * down, dtype=np.uint64)))
    return prefix[k:] - prefix[: n - k + 1], up[k - 1 :]


def kgram_hashes(view: TokenView, k: int, prev: np.ndarray | None = None) -> np.ndarray:
    """The 64-bit hash of every k-gram (len(view) - k + 1 of them, or none); see the module docstring.

    Equal to hashing each k-gram on its own as h = h * B + code (+ back-reference * R when it
    points inside the k-gram), computed for all k-grams at once in O(n).
    """
    n = len(view)
    count = n - k + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    if prev is None:
        prev = previous_same(view)
    codes = abstract_codes(view)
    sums, scale = _window_sums(_fingerprint_codes(view, codes), k, _ABSTRACT_POWERS)
    # Back-references: token i, pointing b back, counts in the k-grams that start in
    # [i - k + 1, i - b] (those holding both ends); add b * R * B**-i over that range.
    i = np.flatnonzero((prev > 0) & (prev < k))
    if len(i):
        _, down = _ABSTRACT_POWERS.get(n)
        weight = prev[i].astype(np.uint64) * _REPEAT * down[i]
        delta = np.zeros(n + 1, dtype=np.uint64)
        np.add.at(delta, np.maximum(i - k + 1, 0), weight)
        np.subtract.at(delta, i - prev[i] + 1, weight)
        sums = sums + np.cumsum(delta, dtype=np.uint64)[:count]
    abstract = sums * scale
    exact_sums, exact_scale = _window_sums(_mix(view.hashes ^ _U64(0x3C6EF372FE94F82B)), k, _EXACT_POWERS)
    return _mix(np.where(_periodic(codes, k, count), exact_sums * exact_scale, abstract))


def keys_of(hashes: np.ndarray) -> np.ndarray:
    """The indexed form of k-gram hashes (their top KEY_BITS bits)."""
    return hashes >> _U64(64 - KEY_BITS)


def _van_herk(values: np.ndarray, w: int, reduce: np.ufunc, pad) -> np.ndarray:
    """reduce() of every window of w consecutive values (van Herk / Gil-Werman, O(n))."""
    n = len(values)
    blocks = -(-n // w)
    padded = np.full(blocks * w, pad, dtype=values.dtype)
    padded[:n] = values
    padded = padded.reshape(blocks, w)
    prefix = reduce.accumulate(padded, axis=1).ravel()
    suffix = reduce.accumulate(padded[:, ::-1], axis=1)[:, ::-1].ravel()
    return reduce(suffix[: n - w + 1], prefix[w - 1 : n])


def winnow(hashes: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The k-grams a document keeps: (hashes, positions) of every window's minimum.

    A position is kept when its hash is the minimum of some window holding it, that is when
    it equals the largest of the minima of the windows holding it. None if the document has
    no whole window.
    """
    if len(hashes) < w:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int64)
    minima = _van_herk(hashes, w, np.minimum, np.iinfo(np.uint64).max)
    edge = np.zeros(w - 1, dtype=np.uint64)
    holding = _van_herk(np.concatenate((edge, minima, edge)), w, np.maximum, 0)
    positions = np.flatnonzero(hashes == holding)
    return hashes[positions], positions


def sliding_minima(hashes: np.ndarray, w: int) -> np.ndarray:
    """The minimum of each window of w consecutive k-gram hashes (len(hashes) - w + 1 of them, or none)."""
    if len(hashes) < w:
        return np.zeros(0, dtype=np.uint64)
    return _van_herk(hashes, w, np.minimum, np.iinfo(np.uint64).max)


PROBES = 11


def _probe_positions(keys: np.ndarray, size: np.uint64, probes: int):
    # Double hashing (Kirsch and Mitzenmacher): probe i is h1 + i * h2.
    keys = np.asarray(keys, dtype=np.uint64)
    h1 = _mix(keys ^ _U64(0x243F6A8885A308D3))
    h2 = _mix(keys ^ _U64(0x13198A2E03707344)) | _U64(1)
    for i in range(probes):
        yield (h1 + _U64(i) * h2) % size


class BloomFilter:
    """A Bloom filter over 64-bit keys, stored as a little-endian bit array of uint8."""

    BITS_PER_KEY = 16

    def __init__(self, bits: np.ndarray, probes: int = PROBES):
        self.bits = bits
        self.probes = probes
        self.size = _U64(len(bits) * 8)

    @classmethod
    def build(cls, keys: np.ndarray) -> BloomFilter:
        n_bytes = max(64, -(-len(keys) * cls.BITS_PER_KEY // 8))
        flags = np.zeros(n_bytes * 8, dtype=bool)
        for positions in _probe_positions(keys, _U64(n_bytes * 8), PROBES):
            flags[positions] = True
        return cls(np.packbits(flags, bitorder="little"))

    def contains(self, keys: np.ndarray) -> np.ndarray:
        """A bool per key: False means certainly absent."""
        found = np.ones(len(keys), dtype=bool)
        for positions in _probe_positions(keys, self.size, self.probes):
            found &= ((self.bits[positions >> _U64(3)] >> (positions & _U64(7)).astype(np.uint8)) & 1).astype(bool)
        return found
