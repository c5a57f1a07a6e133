"""Incremental text: whole characters only, and stop strings never shown, for any token boundaries."""

from hypothesis import given, settings
from hypothesis import strategies as st

from codeinstruct.infer.streaming import Detokenizer, TextStream

TEXT = st.text(alphabet=st.sampled_from(list("ab \n\t#(){}é你🙂") + ["\u00a0", "\U0001f600"]), max_size=80)


@settings(max_examples=60, deadline=None)
@given(TEXT)
def test_detokenizer_emits_whole_characters_and_reproduces_the_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    d = Detokenizer(tokenizer)
    pieces = [d.push(t) for t in ids] + [d.flush()]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)


def test_special_tokens_are_skipped_unless_asked(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids("<fim_middle>"), *tokenizer("x", add_special_tokens=False)["input_ids"]]
    assert "".join(Detokenizer(tokenizer).push(t) for t in ids) == "x"
    assert "".join(Detokenizer(tokenizer, skip_special_tokens=False).push(t) for t in ids) == "<fim_middle>x"


def stream(text, sizes, stops):
    s, out, pieces = TextStream(stops), [], []
    for n in sizes:
        pieces.append(text[:n])
        text = text[n:]
    pieces.append(text)
    for i, p in enumerate(pieces):
        delta, stopped = s.feed(p, final=i == len(pieces) - 1)
        out.append(delta)
        if stopped:
            break
    return out, s


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="ab#\n", max_size=40),
    st.lists(st.integers(0, 6), max_size=20),
    st.lists(st.text(alphabet="ab#\n", min_size=1, max_size=5), max_size=3),
)
def test_stop_strings_are_cut_exactly_for_any_chunking(text, sizes, stops):
    out, s = stream(text, sizes, tuple(stops))
    # generation stops when the text received so far first contains a stop string; the cut is at
    # the earliest stop string in that text
    ends, at = [], 0
    for n in sizes:
        at = min(at + n, len(text))
        ends.append(at)
    ends.append(len(text))
    received = next((text[:e] for e in ends if any(x in text[:e] for x in stops)), text)
    cuts = [received.find(x) for x in stops if x in received]
    expected = text[: min(cuts)] if cuts else text
    assert "".join(out) == expected == s.visible
    assert s.stopped == bool(cuts)
    # nothing emitted ever contained or continued past a stop string
    emitted = ""
    for d in out:
        emitted += d
        assert not any(x in emitted for x in stops)
