"""Token views: what matching sees of code, and how the index stores it."""

from __future__ import annotations

import numpy as np
import pytest

from codeinstruct.attribution.normalize import (
    LITERAL,
    NAME,
    OTHER,
    StoredView,
    TokenView,
    decode_view,
    encode_view,
    scanner_for,
    scanner_named,
    view_of,
)

from .conftest import C_SOURCE, HULL, SCHEDULER, TEXTKIT

PY = scanner_for("Python")


def same_view(a: TokenView, b: TokenView) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("kinds", "hashes", "lines", "end_lines"))


def test_python_tokens_drop_whitespace_and_comments_and_keep_lines():
    tokens = PY.scan("x = a // 2  # halve\ns = r\"raw\\n\" + f'{x}'\n")
    assert tokens.texts == ["x", "=", "a", "//", "2", "s", "=", 'r"raw\\n"', "+", 'f"{x}"']
    assert tokens.kinds == [NAME, OTHER, NAME, OTHER, LITERAL, NAME, OTHER, LITERAL, OTHER, LITERAL]
    assert tokens.lines == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]


def test_keywords_are_not_names():
    tokens = PY.scan("for item in items:\n    if item is None:\n        continue\n")
    assert [t for t, k in zip(tokens.texts, tokens.kinds) if k == NAME] == ["item", "items", "item"]


def test_multiline_docstring_spans_its_lines():
    view = view_of(PY.scan('def f():\n    """One.\n\n    Two.\n    """\n    return 1\n'))
    doc = int(np.flatnonzero(view.kinds == LITERAL)[0])
    assert (view.lines[doc], view.end_lines[doc]) == (2, 5)
    assert view.lines[-1] == 6


def test_reformatting_and_quote_style_do_not_change_the_view():
    a = view_of(PY.scan("result = compute(alpha, 'key', beta + 1)  # note\n"))
    b = view_of(PY.scan('result=compute(\n    alpha,\n    "key",\n    beta+1,\n)'.replace(",\n)", "\n)")))
    assert np.array_equal(a.kinds, b.kinds) and np.array_equal(a.hashes, b.hashes)


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("Python", HULL + TEXTKIT + SCHEDULER + 'x = """' + "long\n" * 3 + '"""\ny = "' + "z" * 40 + '"\nz = "\x1f"\n'),
        ("C", C_SOURCE + 'const char *s = "a string long enough to be stored as its hash";\n/* a\nblock */ int x;\n'),
        (
            "Lua",
            (
                'local function greet(name)\n  -- say hello\n  return "hello " .. name\nend\n'
                "print(greet([[multi\nline]]))\n"
            ),
        ),
        ("Shell", 'for f in *.txt; do\n  echo "$f" \x1f done\ndone\n'),
    ],
)
def test_stored_view_round_trips(language, code):
    tokens = scanner_for(language).scan(code)
    assert same_view(decode_view(encode_view(tokens)), view_of(tokens))


def test_stored_chunks_put_together_equal_the_whole():
    tokens = PY.scan(HULL + TEXTKIT)
    whole = view_of(tokens)
    parts = [
        decode_view(encode_view(tokens.slice(a, a + 100))).shifted(tokens.lines[a] - 1)
        for a in range(0, len(tokens), 100)
    ]
    assert same_view(TokenView.concatenate(parts), whole)


def test_a_range_of_a_stored_view_reads_as_the_decoded_view():
    code = HULL + '    s = """two\nlines"""\n    t = "\u00e9t\u00e9 " + "x" * 30\n' + SCHEDULER
    tokens = PY.scan(code)
    stored = StoredView(encode_view(tokens).encode("utf-8", "surrogatepass"), first_line=7)
    whole = decode_view(encode_view(tokens)).shifted(6)
    assert len(stored) == len(whole)
    for a, b in [(0, len(whole)), (0, 1), (17, 140), (len(whole) - 40, len(whole))]:
        part, expected = stored.view(a, b), whole.slice(a, b)
        assert same_view(part, expected) and np.array_equal(part.sizes, expected.sizes)
        assert np.array_equal(stored.kinds[a:b], expected.kinds)
        assert [tuple(x) for x in stored.lines(a, b)] == [tuple(whole.lines[a:b]), tuple(whole.end_lines[a:b])]


def test_stored_keys_are_equal_exactly_for_equal_tokens():
    tokens = PY.scan(HULL + TEXTKIT + SCHEDULER)
    keys = StoredView(encode_view(tokens).encode("utf-8", "surrogatepass")).keys
    assert len(keys) == len(tokens)
    pairs = set(zip(tokens.kinds, tokens.texts))
    assert len(set(keys.tolist())) == len(pairs)
    by_token = {pair: key for pair, key in zip(zip(tokens.kinds, tokens.texts), keys.tolist())}
    assert [by_token[pair] for pair in zip(tokens.kinds, tokens.texts)] == keys.tolist()
    # Where a token is stored does not change its key.
    again = StoredView(encode_view(tokens.slice(100, 300)).encode("utf-8", "surrogatepass")).keys
    assert again.tolist() == keys[100:300].tolist()


def test_parts_of_a_stored_view_read_as_the_whole_in_any_order():
    code = HULL + '    s = """two\nlines"""\n    t = "\u00e9t\u00e9 " + "x" * 30\n' + SCHEDULER
    data = encode_view(PY.scan(code)).encode("utf-8", "surrogatepass")
    whole = StoredView(data, first_line=3)
    n = len(whole)
    stored = StoredView(data, first_line=3)  # keys and kinds asked for by parts only
    for a, b in [(40, 90), (50, 60), (10, 45), (200, 260), (0, 1), (n - 5, n), (30, 300)]:
        assert np.array_equal(stored.keys_between(a, b), whole.keys[a:b])
        assert np.array_equal(stored.kinds_between(a, b), whole.kinds[a:b])
    assert [stored.token_lines(i) for i in range(n)] == [
        (int(first[0]), int(last[0])) for first, last in (whole.lines(i, i + 1) for i in range(n))
    ]
    assert any(last > first for first, last in map(stored.token_lines, range(n)))  # the two-line string


def test_languages_pick_their_lexers():
    assert scanner_for("python") is scanner_for("Python") is scanner_for("Cython")
    assert scanner_for("C++").name == scanner_for("Java").name == "c-family"
    assert scanner_for("Lua").name == "pygments:lua"
    assert scanner_for("Shell").name == "pygments:bash"
    assert scanner_for("no such language").name == scanner_for(None).name == "generic"
    for name in ("python", "c-family", "generic", "pygments:lua"):
        assert scanner_named(name).name == name
    assert scanner_named("pygments:no-such-lexer") is None


def test_c_comments_and_strings():
    tokens = scanner_for("C").scan('int x = 1; // one\n/* two\nlines */ char *s = "a // b";\n')
    assert tokens.texts == ["int", "x", "=", "1", ";", "char", "*", "s", "=", '"a // b"', ";"]
    assert tokens.lines[-1] == 3
