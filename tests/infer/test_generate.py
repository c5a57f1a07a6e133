import pytest
import torch

from codeinstruct.infer.generate import SamplingSettings, generate_response, generate_text
from codeinstruct.modeling import load_model


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return load_model("preset:tiny", tokenizer=tokenizer).eval()


def test_sampling_is_reproducible_with_a_seed(model, tokenizer):
    s = SamplingSettings(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=3)
    a = generate_text(model, tokenizer, "def f(", s)
    assert a == generate_text(model, tokenizer, "def f(", s)
    others = {generate_text(model, tokenizer, "def f(", SamplingSettings(20, 1.0, 0.95, seed)) for seed in range(4, 8)}
    assert others != {a}


def test_greedy_respects_max_new_tokens(model, tokenizer):
    text = generate_text(model, tokenizer, "x = ", SamplingSettings(max_new_tokens=5))
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 5


def test_response_is_cut_at_a_new_instruction(monkeypatch, model, tokenizer):
    import codeinstruct.infer.generate as g

    monkeypatch.setattr(g, "generate_text", lambda *a, **k: "\nprint(1)\n\n### Instruction:\nnext")
    assert generate_response(model, tokenizer, "Print one.") == "print(1)"


def test_prompt_longer_than_the_context_is_refused(model, tokenizer):
    from codeinstruct.errors import CodeinstructError

    with pytest.raises(CodeinstructError, match="context is 1024"):
        generate_text(model, tokenizer, "1 " * 1100)
