"""llama.cpp parity: the exported GGUF tokenizes, scores and decodes greedily as codeinstruct does.

Slow, and skipped unless llama-cpp-python is installed (it builds llama.cpp from source: about
7 minutes on 2 cores):  CMAKE_ARGS="-DGGML_NATIVE=off" pip install llama-cpp-python
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codeinstruct.prompts import encode_text, format_prompt

pytestmark = pytest.mark.slow

PROMPTS = [
    format_prompt("Write a Python function that returns the 10th Fibonacci number."),
    format_prompt("Explain what   this does:\n\tx = [i**2 for i in range(100)]  # squares"),
    "def add(a, b):\n    return a + b\n\nprint(add(12345, 0.75))\n",
    "café = 'ünïcode ✓'\nif café:\n",
]
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install llama-cpp-python)")


def make_model_dir(tokenizer, out, multi_query: bool):
    from transformers import AutoModelForCausalLM

    from codeinstruct.modeling import preset_config, save_hf_directory

    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    config.multi_query = multi_query
    config.initializer_range = 0.1  # peaked logits: random-init greedy decoding without near-ties
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # non-trivial norms and biases, so a swapped or missing one changes the output
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if ".ln_" in name and name.endswith("weight") else 0.0))
    return save_hf_directory(model, tokenizer, out), model


def llama_greedy(llm, ids: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """Greedy ids by argmax of llama.cpp's logits (no sampler in the way), and the prompt's logits."""
    llm.reset()
    llm.eval(ids)
    prompt_logits = np.array(llm.scores[: len(ids)])
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return out, prompt_logits


@pytest.mark.parametrize("multi_query", [True, False], ids=["multi-query", "multi-head"])
def test_llama_cpp_matches_codeinstruct(llama_cpp, tokenizer, tmp_path, multi_query):
    from codeinstruct.export.gguf import export_gguf
    from codeinstruct.infer.engine import Engine
    from codeinstruct.infer.sampling import SamplingParams

    model_dir, model = make_model_dir(tokenizer, tmp_path / "model", multi_query)
    engine = Engine.from_pretrained(model_dir, device="cpu")
    ours = [
        o.choices[0].token_ids
        for o in engine.generate(PROMPTS, SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True))
    ]

    for kind in ("f32", "f16", "q8_0"):
        path = export_gguf(model_dir, tmp_path / f"{kind}.gguf", type=kind, write_modelfile=False).path
        llm = llama_cpp.Llama(
            str(path),
            n_ctx=512,
            n_threads=2,
            logits_all=True,
            verbose=False,
            type_k=llama_cpp.GGML_TYPE_F32,
            type_v=llama_cpp.GGML_TYPE_F32,
        )  # f32 KV cache
        try:
            assert llm.n_vocab() == len(tokenizer)
            for prompt, expected in zip(PROMPTS, ours):
                ids = encode_text(tokenizer, prompt)
                assert llm.tokenize(prompt.encode(), add_bos=False, special=False) == ids, (kind, prompt)
                greedy, logits = llama_greedy(llm, ids, NEW_TOKENS)
                with torch.no_grad():
                    reference = model(torch.tensor([ids])).logits[0].numpy()
                diff = np.abs(logits - reference).max()
                agree = (logits.argmax(-1) == reference.argmax(-1)).mean()
                print(
                    f"{kind} {'mq' if multi_query else 'mh'}: max |logit diff| {diff:.2e}, "
                    f"top-1 agreement {agree:.0%}, "
                    f"greedy equal {greedy == expected}"
                )
                if kind == "f32":
                    # what remains is ggml's fp16 GELU table; a misplaced tensor would be off by O(1)
                    assert diff < 2e-3 * np.abs(reference).max(), (diff, np.abs(reference).max())
                    assert greedy == expected, prompt
                else:
                    assert diff < (0.05 if kind == "f16" else 0.2) * reference.std() + 1e-3, (kind, prompt)
                    assert agree >= (0.9 if kind == "f16" else 0.85), (kind, prompt)
        finally:
            llm.close()


def test_llama_cpp_renders_the_chat_template_as_the_alpaca_prompt(llama_cpp, tokenizer, tmp_path):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from codeinstruct.export.gguf import export_gguf

    model_dir, _ = make_model_dir(tokenizer, tmp_path / "model", multi_query=True)
    llm = llama_cpp.Llama(str(export_gguf(model_dir, tmp_path / "m.gguf", type="q8_0").path), n_ctx=256, verbose=False)
    try:
        template = llm.metadata["tokenizer.chat_template"]
        formatter = Jinja2ChatFormatter(template, eos_token=tokenizer.eos_token, bos_token=tokenizer.eos_token)
        instruction = "Reverse a string in Python.\nKeep it short."
        assert formatter(messages=[{"role": "user", "content": instruction}]).prompt == format_prompt(instruction)
    finally:
        llm.close()


def test_llama_cpp_tokenizes_the_real_starcoder_vocabulary_as_codeinstruct(llama_cpp, tmp_path):
    """The exported tokenizer metadata (pre-tokenizer "starcoder", merges, control tokens) makes
    llama.cpp give StarCoder's ground-truth ids, on a tiny model carrying the real 49k vocabulary."""
    from tests.test_starcoder_tokenizer import STARCODER, ground_truth, real_dir

    from codeinstruct.export.gguf import export_gguf
    from codeinstruct.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(real_dir(STARCODER))
    model_dir, _ = make_model_dir(tokenizer, tmp_path / "model", multi_query=True)
    llm = llama_cpp.Llama(
        str(export_gguf(model_dir, tmp_path / "m.gguf", type="q8_0").path), n_ctx=256, vocab_only=True, verbose=False
    )
    try:
        cases = ground_truth(STARCODER)
        wrong = [t for t, ids in cases if llm.tokenize(t.encode(), add_bos=False, special=False) != ids]
        assert not wrong, f"{len(wrong)} of {len(cases)} differ: {wrong[:3]}"
        fim = "<fim_prefix>def f():\n    return <fim_suffix>\n<fim_middle>"
        assert llm.tokenize(fim.encode(), add_bos=False, special=True)[0] == 1
    finally:
        llm.close()
