"""Exact verification: which aligned spans count as real copies."""

from __future__ import annotations

import random
import re

from codeinstruct.attribution.align import aligned_runs, is_varied
from codeinstruct.attribution.fingerprint import previous_same
from codeinstruct.attribution.normalize import scanner_for, view_of

from .conftest import HULL, lines_of

PY = scanner_for("Python")


def runs(query: str, source: str, min_tokens: int = 30):
    """Runs with the query's first token facing the source's first token."""
    q, s = view_of(PY.scan(query)), view_of(PY.scan(source))
    return q, aligned_runs(q, previous_same(q), s, previous_same(s), 0, min_tokens)


def test_identical_code_is_one_verbatim_run():
    code = lines_of(HULL, 10, 25)
    q, [run] = runs(code, code)
    assert (run.q_start, run.q_end, run.verbatim) == (0, len(q), True)


def test_consistent_renaming_is_a_renamed_run():
    code = lines_of(HULL, 10, 25)
    renamed = code.replace("lower", "low").replace("upper", "high").replace("pts", "ordered")
    q, [run] = runs(renamed, code)
    assert (run.tokens, run.verbatim) == (len(q), False)


def test_inconsistent_renaming_breaks_the_run():
    code = lines_of(HULL, 10, 25)
    # `upper` becomes `lower` as well: two names of the source map onto one; not a renaming.
    merged = code.replace("upper", "lower")
    _, found = runs(merged, code, min_tokens=80)
    assert found == []


def test_changed_operator_breaks_the_run():
    code = lines_of(HULL, 28, 35)
    changed = code.replace("(index + 1) % count", "(index - 1) % count")  # splits it into 31 + 29 tokens
    assert [r.tokens for r in runs(code, code, min_tokens=50)[1]] == [61]
    assert runs(changed, code, min_tokens=50)[1] == []


def test_renamed_boilerplate_is_not_evidence_of_copying():
    imports = "".join(f"import module_{i}\n" for i in range(40))
    other_imports = "".join(f"import package_{i}\n" for i in range(40))
    assert runs(other_imports, imports)[1] == []
    assert [r.verbatim for r in runs(imports, imports)[1]] == [True]  # copied verbatim, it is a copy
    fields = "abcdefghijkl"
    constructor = "def __init__(self, " + ", ".join(fields) + "):\n" + "".join(f"    self.{x} = {x}\n" for x in fields)
    renamed = constructor
    for x in fields:
        renamed = renamed.replace(f"{x},", f"{x}{x},").replace(f"= {x}\n", f"= {x}{x}\n").replace(f"{x}):", f"{x}{x}):")
    assert runs(renamed, constructor)[1] == []


def test_renamed_table_is_a_copy_only_with_the_same_entries():
    table = "CODES = {\n" + "".join(f'    "code-{i}": (BASE + {i}, "label number {i}"),\n' for i in range(10)) + "}\n"
    [run] = runs(table.replace("BASE", "ORIGIN"), table)[1]
    assert not run.verbatim
    relabelled = table.replace("BASE", "ORIGIN").replace("label number", "entry").replace('"code-', '"key-')
    assert runs(relabelled, table)[1] == []


def test_run_stops_at_the_end_of_the_copy():
    """A following line of the same shape (another def with one parameter) is not part of the copy."""
    source = lines_of(HULL, 10, 25) + "\n\ndef polygon_area(vertices):\n    total = 0.0\n"
    query = lines_of(HULL, 10, 25) + "\n\ndef describe(sensor):\n    return sensor.name\n"
    q, [run] = runs(query, source)
    assert run.verbatim
    assert q.lines[run.q_end - 1] == 16


SETTINGS = """class Settings:
    vocab_size: int = 128000
    hidden_size: int = 4096
    intermediate_size: int | None = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = 8
    hidden_act: str = "silu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-05
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int = 1
    eos_token_id: int | list[int] = 2
    tie_word_embeddings: bool = False
    rope_theta: float = 500000.0
    attention_bias: bool = False
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    head_dim: int | None = 128
"""


def test_a_long_renamed_table_is_reported_whole_where_its_parts_are_varied():
    # A settings table copied under other names: every 40 tokens of it hold several line shapes,
    # but the whole repeats them too often to be varied as a whole. A near-copy holding only part
    # of it would be reported, so the copy of all of it must be (with all its lines).
    table = SETTINGS + "".join(f"    size_{i}: int = {1000 + 37 * i}\n" for i in range(30))
    renamed = table
    for i, name in enumerate(re.findall(r"^    (\w+):", table, re.M)):
        renamed = re.sub(rf"^    {name}:", f"    field_{i}:", renamed, flags=re.M)
    q, found = runs(renamed, table, min_tokens=40)
    assert [(r.q_start, r.q_end, r.verbatim) for r in found] == [(0, len(q), False)]
    assert not is_varied(q, 0, len(q)) and is_varied(q, 0, len(q), 40)


def test_a_range_is_varied_where_any_of_its_windows_is():
    q = view_of(PY.scan(SETTINGS + "".join(f"    x_{i}: int = {i}\n" for i in range(60))))
    rng = random.Random(0)
    for _ in range(200):
        a = rng.randrange(0, len(q) - 45)
        b = min(len(q), a + rng.randrange(40, 300))
        windows = any(is_varied(q, s, s + 40) for s in range(a, b - 39))
        assert is_varied(q, a, b, 40) == (is_varied(q, a, b) or windows)


def test_a_stretch_aligned_from_its_keys_gives_what_aligning_its_tokens_gives():
    # IndexShard aligns a stretch from the stored keys it already read (stretch_runs) instead of
    # decoding the text again (aligned_runs): same runs, for copies renamed or not, in any window.
    from codeinstruct.attribution.align import next_same, stretch_runs
    from codeinstruct.attribution.fingerprint import previous_of, roles_of
    from codeinstruct.attribution.normalize import StoredView, encode_view

    def keys(tokens):
        return StoredView(encode_view(tokens).encode("utf-8", "surrogatepass")).keys

    code = lines_of(HULL, 5, 40)
    renamed = code.replace("lower", "low").replace("upper", "high").replace("pts", "ordered")
    partly = code.replace("lower", "low", 2)  # an inconsistent renaming: runs break
    checked = 0
    for source_code in (code, renamed, partly):
        q_tokens, s_tokens = PY.scan(code), PY.scan(source_code)
        q, s = view_of(q_tokens), view_of(s_tokens)
        if len(q) != len(s):
            continue
        q_prev, q_keys, s_keys = previous_same(q), keys(q_tokens), keys(s_tokens)
        for a, b in [(0, len(q)), (3, len(q) - 7), (40, len(q))]:
            window = s.slice(a, b)
            expected = aligned_runs(q, q_prev, window, previous_same(window), -a, 30)
            got = stretch_runs(
                q, q_prev, a, b, s_keys[a:b] == q_keys[a:b],
                previous_of(q.kinds[a:b], s_keys[a:b], roles_of(q.slice(a, b))), 30, next_same(q_prev),
            )  # fmt: skip
            assert [(r.q_start, r.q_end, r.verbatim) for r in got] == [
                (r.q_start, r.q_end, r.verbatim) for r in expected
            ]
            checked += bool(expected)
    assert checked >= 6
