"""The native decode step (infer/native.py, _decode.c): its products, its whole step against the torch forward,
rows independent of their batch, and the fallback where it cannot run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPTBigCodeConfig

from codeinstruct.infer import native
from codeinstruct.infer.engine import Engine
from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.infer.runners import GPTBigCodeRunner, _Int8

pytestmark = pytest.mark.skipif(native.library() is None, reason="the native step is not built here (no AVX-512 or cc)")

FORMATS = {"float32": native.F32, "bfloat16": native.BF16, "int8": native.I8}


@pytest.fixture(params=["host", "avx2"], autouse=True)
def kernels(request, monkeypatch):
    """Every test twice: the library built for this CPU, and built for AVX2 only (-march=haswell: the kernels of
    CPUs without AVX-512, which this one runs too)."""
    if request.param == "avx2":
        lib = native.build("haswell")
        if lib is None or native.library().ci_features() & 8 == 0:
            pytest.skip("the host build is the AVX2 one already, or no AVX2 build here")
        assert lib.ci_features() & 8 == 0 and lib.ci_panel() == 32
        monkeypatch.setattr(native, "_LIB", lib)
    return request.param


def _int8_ready(name: str) -> None:
    if name == "int8" and not native.has_int8():
        pytest.skip("int8 needs AVX512-VNNI")


def _bf16_pairs() -> bool:
    return bool(native.library().ci_features() & 4)


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("gelu", [False, True])
def test_products_agree_with_a_float64_reference(name, gelu):
    """Every format, a width that is not a multiple of the 64-column panel (the masked edge), bias and GELU."""
    _int8_ready(name)
    g = torch.Generator().manual_seed(1)
    w, b, x = torch.randn(100, 48, generator=g), torch.randn(100, generator=g), torch.randn(5, 48, generator=g)
    out = native.PackedLinear(w, b, FORMATS[name])(x, gelu=gelu)
    if name == "int8":  # the torch path's arithmetic: exact int32 sums, the same scales
        ref = _Int8(w, b, onednn=False)(x).double()
    else:
        wr = w.bfloat16() if name == "bfloat16" else w
        xr = x.bfloat16() if name == "bfloat16" and _bf16_pairs() else x
        ref = F.linear(xr.double(), wr.double(), b.double())
    if gelu:
        ref = F.gelu(ref, approximate="tanh")
    assert out.shape == (5, 100)
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=1e-5), (out.double() - ref).abs().max()


@pytest.mark.parametrize("name", list(FORMATS))
def test_a_row_is_the_same_whatever_rows_are_beside_it(name):
    """1 to 9 rows (blocks of 4 and 6 rows and every remainder): each row equals that row multiplied alone."""
    _int8_ready(name)
    g = torch.Generator().manual_seed(2)
    layer = native.PackedLinear(torch.randn(192, 64, generator=g), torch.randn(192, generator=g), FORMATS[name])
    x = torch.randn(9, 64, generator=g)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(9)])
    for rows in range(1, 10):
        assert torch.equal(layer(x[:rows]), alone[:rows])


def _model(multi_query: bool, dtype: torch.dtype, activation: str = "gelu_pytorch_tanh"):
    torch.manual_seed(0)
    config = GPTBigCodeConfig(
        vocab_size=300,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=128,
        multi_query=multi_query,
        activation_function=activation,
    )
    return AutoModelForCausalLM.from_config(config).to(dtype).eval()


@pytest.mark.parametrize("multi_query", [True, False])
@pytest.mark.parametrize("name", list(FORMATS))
def test_decode_steps_match_the_torch_forward_and_rows_do_not_see_their_batch(name, multi_query):
    """Sequences of different lengths in slots out of order, several steps: logits as the torch forward gives them
    (same weights and cache), the cache written as it writes it, and each row the same when decoded alone."""
    _int8_ready(name)
    dtype = torch.bfloat16 if name == "bfloat16" else torch.float32
    weights = "int8" if name == "int8" else "dense"
    model = _model(multi_query, dtype)
    fast, alone = (GPTBigCodeRunner(model, 6, 128, weights=weights) for _ in range(2))
    slow = GPTBigCodeRunner(model, 6, 128, weights=weights, native=False)
    assert fast.native is not None and slow.native is None
    g = torch.Generator().manual_seed(3)
    prompts = {s: torch.randint(0, 300, (n,), generator=g).tolist() for s, n in ((4, 9), (1, 30), (2, 17))}
    slots, positions, tokens = list(prompts), [len(p) for p in prompts.values()], [7, 8, 9]
    tol = 0.05 if name == "bfloat16" else 1e-4  # bfloat16: the torch forward also rounds every activation
    with torch.inference_mode():
        for runner in (fast, alone, slow):
            for slot, ids in prompts.items():
                runner.extend(slot, 0, ids)
        for _ in range(4):
            a, b = fast.decode(slots, tokens, positions), slow.decode(slots, tokens, positions)
            assert torch.allclose(a, b, atol=tol * b.abs().max().item()), (a - b).abs().max()
            one_by_one = torch.cat([alone.decode([s], [t], [p]) for s, t, p in zip(slots, tokens, positions)])
            assert torch.equal(one_by_one, a)
            tokens, positions = a.argmax(1).tolist(), [p + 1 for p in positions]
        for i in range(len(fast.k)):
            for slot, p in zip(slots, positions):
                for mine, ref in ((fast.k[i], slow.k[i]), (fast.v[i], slow.v[i])):
                    mine, ref = mine[slot, :, :p].float(), ref[slot, :, :p].float()
                    assert torch.allclose(mine, ref, atol=tol * ref.abs().max().item())


def test_it_stays_off_where_it_cannot_run(monkeypatch, tokenizer):
    """Another activation, float16, or CODEINSTRUCT_NATIVE=0: the torch forward, unchanged; the engine says which."""
    assert GPTBigCodeRunner(_model(True, torch.float32, "gelu"), 2, 64).native is None  # erf GELU: not native
    assert GPTBigCodeRunner(_model(True, torch.float16), 2, 64).native is None
    model = _model(True, torch.float32)
    model.resize_token_embeddings(len(tokenizer))
    params = SamplingParams(max_new_tokens=12, ignore_eos=True)
    engine = Engine(model, tokenizer, max_batch_size=2)
    assert engine.decode_path == "native"
    fast = engine.generate(["def f(x):"], params)[0].choices[0].token_ids
    monkeypatch.setenv("CODEINSTRUCT_NATIVE", "0")
    monkeypatch.setattr(native, "_LIB", False)
    assert native.library() is None
    engine = Engine(model, tokenizer, max_batch_size=2)
    assert engine.decode_path == "torch"
    assert engine.generate(["def f(x):"], params)[0].choices[0].token_ids == fast  # greedy: the same tokens


def test_a_failed_build_leaves_the_torch_forward(monkeypatch, tmp_path):
    """A compiler that fails (or is missing): no library, no error, nothing half-written in the cache."""
    monkeypatch.setenv("CC", "false")
    monkeypatch.setenv("CODEINSTRUCT_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_LIB", False)
    assert native.library() is None
    assert GPTBigCodeRunner(_model(True, torch.float32), 2, 64).native is None
    assert list((tmp_path / "native").iterdir()) == []


def test_indices_out_of_range_are_refused():
    runner = GPTBigCodeRunner(_model(True, torch.float32), 2, 64)
    for slots, tokens, positions in (([2], [1], [0]), ([0], [300], [0]), ([0], [1], [64]), ([0], [-1], [0])):
        with pytest.raises(IndexError):
            runner.decode(slots, tokens, positions)
