"""The model shapes the serving and decoding benchmarks compare on, built as model directories.

    4m    the demo model's shape: GPTBigCode 256 wide, 4 layers, 8 heads, the stdlib BPE tokenizer (4,096)
    130m  a realistic CPU size: 768 wide, 20 layers, 12 heads, multi-query, 2,048 positions, the same
          tokenizer (123M parameters). Its vocabulary is the tokenizer's: with more embedding rows than
          tokens, a random model mostly samples ids without text, and servers stream nothing for those,
          which would distort time-per-token figures measured from the stream

Weights are random (seeded): speed does not depend on them, and greedy outputs can still be compared
token for token between engines. Directories are written with `modeling.save_hf_directory`, so they are
what `finetune` writes (`final/`), loadable by transformers, vLLM and `codeinstruct export gguf`.
"""

from __future__ import annotations

from pathlib import Path

SHAPES: dict[str, dict] = {
    "4m": dict(n_embd=256, n_layer=4, n_head=8, n_positions=1024, vocab_size=None),
    "130m": dict(n_embd=768, n_layer=20, n_head=12, n_positions=2048, vocab_size=None),
}


def build_model_dir(shape: str, out: Path, seed: int = 0) -> Path:
    """Write the model directory of `shape` to `out` (kept when it is already there)."""
    import torch
    from transformers import AutoModelForCausalLM, GPTBigCodeConfig

    from codeinstruct.modeling import save_hf_directory
    from codeinstruct.tokenizer import resolve_tokenizer

    if (out / "config.json").is_file():
        return out
    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape!r} (known: {', '.join(SHAPES)})")
    tokenizer = resolve_tokenizer("builtin:stdlib")
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = dims["vocab_size"] or len(tokenizer)
    config = GPTBigCodeConfig(
        **dims,
        multi_query=True,
        activation_function="gelu_pytorch_tanh",
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    return save_hf_directory(model, tokenizer, out)


def parameter_count(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            total += sum(_numel(st.get_slice(k)) for k in st.keys())
    return total


def _numel(tensor_slice) -> int:
    n = 1
    for d in tensor_slice.get_shape():
        n *= d
    return n
