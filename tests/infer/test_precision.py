"""--dtype: weights converted as they load (bf16 without a bf16 checkpoint), and the int8 weight path."""

import pytest
import torch

from codeinstruct.errors import CodeinstructError
from codeinstruct.infer.engine import Engine
from codeinstruct.infer.runners import GPTBigCodeRunner
from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.modeling import load_for_inference, preset_config, save_hf_directory

PROMPTS = ["def add(a, b):\n", "import os\nprint(", "x = [1, 2, 3]\nfor", "Write a Python function that sorts a list."]


def tiny_model(tokenizer, seed=3):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = preset_config("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture(scope="module")
def fp32_dir(tokenizer, tmp_path_factory):
    return save_hf_directory(tiny_model(tokenizer), tokenizer, tmp_path_factory.mktemp("fp32") / "final")


def test_bfloat16_from_a_float32_checkpoint_computes_what_transformers_does_in_bfloat16(fp32_dir, tokenizer):
    engine = Engine.from_pretrained(fp32_dir, dtype="bfloat16", max_batch_size=4)
    assert {p.dtype for p in engine.model.parameters()} == {torch.bfloat16}
    assert engine.runner.k[0].dtype == torch.bfloat16  # the cache too: half the bytes per token
    reference, _ = load_for_inference(fp32_dir, dtype="bfloat16")
    exact, _ = load_for_inference(fp32_dir, dtype="float32")
    ids = tokenizer(PROMPTS[3], add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        ours = engine.runner.extend(0, 0, ids)
        theirs = reference(torch.tensor([ids])).logits[0, -1].float()
        truth = exact(torch.tensor([ids])).logits[0, -1]
    # both round to bf16 along different paths: as close to each other as each is to float32
    assert (ours - theirs).abs().max() <= 2 * (theirs - truth).abs().max() + 1e-3
    outputs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=24, ignore_eos=True))
    assert [len(o.choices[0].token_ids) for o in outputs] == [24] * 4


def test_auto_keeps_the_checkpoint_dtype_and_float32_converts_back(tokenizer, tmp_path):
    model = tiny_model(tokenizer).to(torch.bfloat16)
    bf16_dir = save_hf_directory(model, tokenizer, tmp_path / "final")
    auto, _ = load_for_inference(bf16_dir)
    assert next(auto.parameters()).dtype == torch.bfloat16
    fp32, _ = load_for_inference(bf16_dir, dtype="float32")
    assert next(fp32.parameters()).dtype == torch.float32


def test_unknown_dtype_is_a_one_line_error(fp32_dir):
    with pytest.raises(CodeinstructError, match="--dtype: unknown dtype 'fp8'"):
        load_for_inference(fp32_dir, dtype="fp8")


def test_int8_logits_follow_float32_and_do_not_depend_on_the_batch(fp32_dir, tokenizer):
    model, _ = load_for_inference(fp32_dir, dtype="float32")
    dense = GPTBigCodeRunner(model, 4, 64)
    int8 = GPTBigCodeRunner(model, 4, 64, weights="int8")
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    with torch.inference_mode():
        for runner in (dense, int8):
            for slot, ids in enumerate(prompts):
                runner.extend(slot, 0, ids)
        positions = [len(ids) for ids in prompts]
        tokens = [ids[-1] for ids in prompts]
        exact = dense.decode([0, 1, 2, 3], tokens, positions)
        together = int8.decode([0, 1, 2, 3], tokens, positions)
        alone = torch.cat([int8.decode([i], [tokens[i]], [positions[i]]) for i in range(4)])
    assert torch.equal(together, alone)  # per-token scales: a row never sees its neighbours
    error = (together - exact).abs().max() / exact.std()
    assert 0 < error < 0.1


def test_int8_engine_from_a_directory(fp32_dir):
    engine = Engine.from_pretrained(fp32_dir, dtype="int8", max_batch_size=2)
    assert engine.runner.weights == "int8"
    outputs = engine.generate(PROMPTS[:2], SamplingParams(max_new_tokens=8, ignore_eos=True))
    assert [len(o.choices[0].token_ids) for o in outputs] == [8, 8]


def test_generate_command_takes_dtype(cli, fp32_dir):
    code, out, _ = cli(
        "generate", "Write hello world.", "--model", fp32_dir, "--dtype", "bfloat16", "--max-new-tokens", "4"
    )
    assert code == 0 and out.endswith("\n")
    code, _, err = cli("generate", "Write hello world.", "--model", fp32_dir, "--dtype", "fp8")
    assert code != 0 and "fp8" in err


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_onednn_matrices_agree_with_f_linear_and_rows_do_not_depend_on_the_batch(dtype):
    from codeinstruct.infer.runners import _OneDNN

    if not _OneDNN.usable(torch.zeros(1, dtype=dtype)):
        pytest.skip("oneDNN does not run this dtype here")
    torch.manual_seed(0)
    weight, bias = torch.randn(96, 64).to(dtype), torch.randn(96).to(dtype)
    x = torch.randn(33, 64).to(dtype)
    reference = torch.nn.functional.linear(x.double(), weight.double(), bias.double())
    tolerance = 1e-4 if dtype == torch.float32 else 0.25
    for pack in (True, False):
        layer = _OneDNN(weight, bias, pack=pack, batch=8)
        out = layer(x)
        assert out.dtype == dtype
        assert (out.double() - reference).abs().max() < tolerance
    packed = _OneDNN(weight, bias, pack=True, batch=8)
    whole = packed(x)
    for rows in (1, 2, 5, 8, 16):  # a row's result is the same whatever the batch beside it
        assert torch.equal(packed(x[:rows]), whole[:rows])


@pytest.mark.parametrize("onednn", [True, False])
def test_int8_products_agree_whichever_kernel_runs_them(onednn):
    # oneDNN's int8 matmul (per-tensor activation scales) is fed each row at scale 1 and scaled after
    # the exact int32 product, so it gives what torch._int_mm with per-row scales gives, row by row.
    from codeinstruct.infer.runners import _Int8

    if onednn and not _Int8.onednn_usable():
        pytest.skip("this torch has no usable oneDNN int8 matmul")
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(96, 64, generator=g), torch.randn(96, generator=g)
    x = torch.randn(9, 64, generator=g) * torch.logspace(-2, 2, 9)[:, None]  # rows of very different scales
    layer, reference = _Int8(w, b, onednn=onednn), _Int8(w, b, onednn=False)
    out = layer(x)
    assert torch.allclose(out, reference(x), rtol=1e-5, atol=1e-5)
    assert torch.equal(torch.cat([layer(x[i : i + 1]) for i in range(9)]), out)
    exact = torch.nn.functional.linear(x, w, b)
    assert ((out - exact).abs().amax(1) / exact.abs().amax(1)).max() < 0.05


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_long_prefill_attends_as_transformers_does_whole_or_after_a_reused_prefix(tokenizer, monkeypatch, dtype):
    """Prompts of 64 tokens or more attend through blocked matrix products (multi-query): the logits are
    transformers' for the prompt fed at once and for its end fed after a prefix already in the cache."""
    exact = tiny_model(tokenizer)
    model = tiny_model(tokenizer).to(dtype)
    assert model.config.multi_query
    runner = GPTBigCodeRunner(model, 2, 512)
    calls = []
    blocked = GPTBigCodeRunner._multi_query_prefill
    monkeypatch.setattr(
        GPTBigCodeRunner, "_multi_query_prefill", lambda self, *a: calls.append(a[0].shape[0]) or blocked(self, *a)
    )
    ids = (tokenizer(" ".join(PROMPTS * 8), add_special_tokens=False)["input_ids"] * 4)[:203]
    with torch.inference_mode():
        truth = model(torch.tensor([ids])).logits[0].float()
        error = (truth[-1] - exact(torch.tensor([ids])).logits[0, -1]).abs().max().item()
        whole = runner.extend(0, 0, ids)
        runner.extend(1, 0, ids[:70])
        rest = runner.extend(1, 70, ids[70:])
        followed = runner.decode([0, 1], [ids[5], ids[6]], [203, 203])
        truth_next = [model(torch.tensor([ids + [t]])).logits[0, -1].float() for t in (ids[5], ids[6])]
    assert calls == [203] * 2 + [70] * 2 + [133] * 2  # both layers, each prefill long enough to be blocked
    # bfloat16: as close to transformers' as transformers' is to float32 (both round, along different paths)
    tolerance = 1e-4 if dtype == torch.float32 else 2 * error + 1e-3
    assert (whole - truth[-1]).abs().max() < tolerance
    assert (rest - truth[-1]).abs().max() < tolerance
    assert max((f - t).abs().max() for f, t in zip(followed, truth_next)) < tolerance
