"""Fingerprints: the winnowing guarantee, rename invariance, and the O(n) hashing against its definition."""

from __future__ import annotations

import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from codeinstruct.attribution import fingerprint as fp
from codeinstruct.attribution.fingerprint import (
    BloomFilter,
    abstract_codes,
    keys_of,
    kgram_hashes,
    previous_same,
    sliding_minima,
    window_params,
    winnow,
)
from codeinstruct.attribution.normalize import LITERAL, NAME, TokenView, scanner_for, view_of

U64 = np.uint64


def make_view(kinds: list[int], hashes: list[int]) -> TokenView:
    n = len(kinds)
    lines = np.arange(1, n + 1, dtype=np.int32)
    return TokenView(
        np.array(kinds, dtype=np.uint8),
        np.array(hashes, dtype=np.uint64),
        lines,
        lines.copy(),
        np.ones(n, dtype=np.int32),
    )


def reference_kgrams(view: TokenView, k: int) -> np.ndarray:
    """Each k-gram hashed on its own, straight from the definition in fingerprint's docstring."""
    prev = previous_same(view)
    codes = abstract_codes(view)
    exact = fp._mix(view.hashes ^ U64(0x3C6EF372FE94F82B))
    literal = fp._mix(view.hashes ^ fp._LITERAL_SALT)
    out = []
    with np.errstate(over="ignore"):
        out = _reference_loop(view, k, prev, codes, exact, literal)
    return fp._mix(np.array(out, dtype=np.uint64))


def _reference_loop(view, k, prev, codes, exact, literal) -> list:
    out = []
    for s in range(len(view) - k + 1):
        block = codes[s : s + k]
        periodic = any(all(block[j] == block[j + p] for j in range(k - p)) for p in range(1, min(10, k - 1) + 1))
        h = U64(0)
        for j in range(k):
            if periodic:
                h = h * fp._EXACT_BASE + exact[s + j]
            else:
                back = int(prev[s + j])
                code = literal[s + j] if view.kinds[s + j] == LITERAL else codes[s + j]
                h = h * fp._BASE + code + (U64(back) * fp._REPEAT if 0 < back <= j else U64(0))
        out.append(h)
    return out


# Few distinct texts, so that repeats, back-references and periodic stretches all occur.
tokens = st.lists(st.tuples(st.integers(0, 2), st.integers(1, 6)), min_size=0, max_size=80)


@settings(max_examples=150, deadline=None)
@given(tokens, st.integers(5, 12))
def test_fast_hashing_equals_the_definition(seq, k):
    view = make_view([kind for kind, _ in seq], [h * 1000 + kind for kind, h in seq])
    assert np.array_equal(kgram_hashes(view, k), reference_kgrams(view, k))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 2**63), min_size=1, max_size=200), st.integers(1, 12))
def test_winnow_keeps_every_window_minimum(values, w):
    hashes = np.array(values, dtype=np.uint64)
    kept_values, kept = winnow(hashes, w)
    expected = set()
    for s in range(len(values) - w + 1):
        window = hashes[s : s + w]
        expected.update((s + np.flatnonzero(window == window.min())).tolist())
    assert set(kept.tolist()) == expected
    assert np.array_equal(kept_values, hashes[kept])
    minima = [int(hashes[s : s + w].min()) for s in range(len(values) - w + 1)]
    assert sliding_minima(hashes, w).tolist() == minima


def random_tokens(draw_rng: np.random.Generator, n: int) -> tuple[list[int], list[int]]:
    kinds = draw_rng.integers(0, 3, n).tolist()
    return kinds, (draw_rng.integers(1, 40, n) * 4 + np.array(kinds)).tolist()


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2**32),
    st.integers(0, 60),
    st.integers(0, 60),
    st.integers(0, 60),
    st.integers(0, 60),
    st.booleans(),
    st.sampled_from([20, 50]),
)
def test_every_shared_span_of_min_tokens_is_found(seed, a, b, c, d, renamed, min_tokens):
    """The winnowing guarantee: a span of min_tokens tokens shared by a document and a query (in any
    context, and its names renamed consistently) leaves a fingerprint of the document among the
    query's k-grams."""
    rng = np.random.default_rng(seed)
    k, w = window_params(min_tokens)
    shared_kinds, shared = random_tokens(rng, min_tokens)
    doc_kinds, doc = [], []
    for part in (random_tokens(rng, a), (shared_kinds, shared), random_tokens(rng, b)):
        doc_kinds += part[0]
        doc += part[1]
    copy = shared
    if renamed:  # a bijection on the names of the span
        names = sorted({h for kind, h in zip(shared_kinds, shared) if kind == NAME})
        fresh = dict(zip(names, (10_000 + 4 * i + h % 4 for i, h in enumerate(names))))
        copy = [fresh.get(h, h) for h in shared]
    query_kinds, query = [], []
    for part in (random_tokens(rng, c), (shared_kinds, copy), random_tokens(rng, d)):
        query_kinds += part[0]
        query += part[1]
    span = make_view(shared_kinds, shared)
    # A renamed span can be found only through its non-repetitive k-grams (see fingerprint's docstring).
    assume(not renamed or not fp._periodic(abstract_codes(span), k, min_tokens - k + 1).any())
    indexed, _ = winnow(kgram_hashes(make_view(doc_kinds, doc), k), w)
    assert set(keys_of(indexed).tolist()) & set(keys_of(kgram_hashes(make_view(query_kinds, query), k)).tolist())


PY = scanner_for("Python")
CODE = """
def merge(left, right):
    out, i, j = [], 0, 0
    while i < len(left) and j < len(right):
        if left[i] <= right[j]:
            out.append(left[i]); i += 1
        else:
            out.append(right[j]); j += 1
    return out + left[i:] + right[j:]
"""


def hashes_of(code: str, k: int = 20) -> np.ndarray:
    return kgram_hashes(view_of(PY.scan(code)), k)


def test_consistent_renaming_keeps_the_hashes_and_merging_names_does_not():
    renamed = CODE.replace("left", "xs").replace("right", "ys").replace("out", "acc").replace("merge", "combine")
    assert np.array_equal(hashes_of(CODE), hashes_of(renamed))
    merged = CODE.replace("right", "left2").replace("j", "i")  # two counters become one: not a renaming
    assert not np.array_equal(hashes_of(CODE), hashes_of(merged))


GETTER = """
    @property
    def {name}(self):
        \"\"\"Gets the {name} of this {cls}.
        :return: The {name} of this {cls}.
        :rtype: {type}
        \"\"\"
        return self._{name}

    @{name}.setter
    def {name}(self, {name}):
        \"\"\"Sets the {name} of this {cls}.
        :param {name}: The {name} of this {cls}.
        :type: {type}
        \"\"\"
        self._{name} = {name}
"""


def test_literals_are_fingerprinted_as_they_are():
    # Generated code: one template, other names and docstrings. Its files share the abstract shape
    # but not their literals, so they share no fingerprint; a copy under other names whose
    # literals are kept has every k-gram of the original.
    model = "".join(GETTER.format(name=n, cls="Summary", type=t) for n, t in [("id", "str"), ("size", "int")])
    sibling = "".join(GETTER.format(name=n, cls="Details", type=t) for n, t in [("key", "str"), ("count", "int")])
    names_renamed = model.replace("size", "length").replace("id", "ident").replace("_ident", "_id")
    names_renamed = names_renamed.replace("The length", "The size").replace("the length", "the size")
    names_renamed = names_renamed.replace("The ident", "The id").replace("the ident", "the id")
    names_renamed = names_renamed.replace(":param ident", ":param id").replace(":param length", ":param size")
    assert names_renamed != model
    assert np.array_equal(hashes_of(model), hashes_of(names_renamed))
    assert not set(hashes_of(model).tolist()) & set(hashes_of(sibling).tolist())


def test_attributes_and_keyword_arguments_are_names_of_their_own():
    code = "def setup(self, size, mode=None):\n    self.size = size\n    self.mode = open(path, mode=mode)\n"
    local_renamed = "def setup(self, n, m=None):\n    self.size = n\n    self.mode = open(path, mode=m)\n"
    assert np.array_equal(hashes_of(code), hashes_of(local_renamed))


def test_repetitive_code_is_fingerprinted_by_its_exact_tokens():
    table = "".join(f"    {i}: {i * 7},\n" for i in range(12))
    other = "".join(f"    {i + 100}: {i * 7 + 100},\n" for i in range(12))
    assert np.array_equal(hashes_of(table), hashes_of(table))
    assert not set(hashes_of(table).tolist()) & set(hashes_of(other).tolist())


def test_bloom_filter_has_no_false_negatives_and_few_false_positives():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**40, 20_000, dtype=np.uint64)
    bloom = BloomFilter.build(keys)
    assert bloom.contains(keys).all()
    others = rng.integers(0, 2**40, 200_000, dtype=np.uint64)
    assert bloom.contains(others).mean() < 0.002  # designed for about 0.05%
