import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from codeinstruct.infer.engine import Engine
from codeinstruct.infer.generate import generate_response, generate_text, response_deltas, stream_response
from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.modeling import load_model
from codeinstruct.prompts import extract_response


@pytest.fixture(scope="module")
def engine(tokenizer):
    torch.manual_seed(0)
    return Engine(load_model("preset:tiny", tokenizer=tokenizer), tokenizer, max_batch_size=2)


def test_sampling_is_reproducible_with_a_seed(engine):
    s = SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=3)
    a = generate_text(engine, "def f(", s)
    assert a == generate_text(engine, "def f(", s)
    others = {generate_text(engine, "def f(", SamplingParams(20, 1.0, top_p=0.95, seed=seed)) for seed in range(4, 8)}
    assert others != {a}


def test_greedy_respects_max_new_tokens(engine, tokenizer):
    text = generate_text(engine, "x = ", SamplingParams(max_new_tokens=5))
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 5


def test_response_is_cut_at_a_new_instruction(monkeypatch, engine):
    import codeinstruct.infer.generate as g

    monkeypatch.setattr(g, "generate_text", lambda *a, **k: "\nprint(1)\n\n### Instruction:\nnext")
    assert generate_response(engine, "Print one.") == "print(1)"


def test_streamed_response_is_the_response(engine):
    params = SamplingParams(max_new_tokens=40, temperature=1.0, seed=5, ignore_eos=True)
    pieces = list(stream_response(engine, "Write a function.", "", params))
    assert len(pieces) > 1
    assert "".join(pieces) == generate_response(engine, "Write a function.", "", params)


@given(
    st.lists(st.sampled_from(["a", "b", " ", "\n", "#", "\n\n", "  x"]), max_size=30).map("".join),
    st.lists(st.integers(1, 7), max_size=30),
)
def test_response_deltas_equal_extract_response_for_any_chunking(text, sizes):
    pieces = []
    for n in sizes:
        pieces.append(text[:n])
        text = text[n:]
    pieces.append(text)
    assert "".join(response_deltas(pieces)) == extract_response("".join(pieces))


def test_prompt_longer_than_the_context_is_refused(engine):
    from codeinstruct.errors import CodeinstructError

    with pytest.raises(CodeinstructError, match="context is 1024"):
        generate_text(engine, "1 " * 1100)
