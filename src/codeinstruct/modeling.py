"""Model presets (GPTBigCode shapes), a config's context length, and loading/saving Hugging Face model
directories (for training, and for inference)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Literal, get_args

from codeinstruct.errors import CodeinstructError
from codeinstruct.tokenizer import load_tokenizer, save_tokenizer

# GPTBigCode = GPT-2 with multi-query attention (one shared K/V head) and learned absolute positions.
PRESETS: dict[str, dict] = {
    # For tests: trains in seconds on a laptop CPU.
    "tiny": dict(n_embd=64, n_layer=2, n_head=4, n_positions=1024),
    # For the offline demo: learns something useful in a few CPU minutes.
    "small": dict(n_embd=256, n_layer=4, n_head=8, n_positions=1024),
    # bigcode/starcoder's shape (15.5B parameters): for planning and for loading its checkpoint.
    "starcoder": dict(n_embd=6144, n_layer=40, n_head=48, n_inner=24576, n_positions=8192, vocab_size=49152),
}
PRESET_PREFIX = "preset:"


def preset_config(name: str, vocab_size: int | None = None, dropout: float | None = None, eos_token_id: int = 0):
    from transformers import GPTBigCodeConfig

    if name not in PRESETS:
        raise CodeinstructError(f"unknown model preset '{name}' (known: {', '.join(PRESETS)})")
    shape = dict(PRESETS[name])
    if vocab_size is not None:
        shape["vocab_size"] = vocab_size
    drop = 0.0 if dropout is None else dropout
    return GPTBigCodeConfig(
        **shape,
        multi_query=True,
        activation_function="gelu_pytorch_tanh",
        attn_pdrop=drop,
        embd_pdrop=drop,
        resid_pdrop=drop,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=None,
    )


def context_length(config) -> int | None:
    """Positions a model config can attend over (GPT-2 style `n_positions`, or `max_position_embeddings`);
    None when the config names neither."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def count_parameters(config) -> int:
    """Parameters of a config's model, counted on the meta device (nothing allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def load_model(source: str, *, tokenizer=None, dropout: float | None = None, attn_implementation: str = "sdpa"):
    """A causal LM from `preset:NAME` (random init, sized to the tokenizer) or a local HF directory.

    Hub ids resolve only from the local cache: nothing is downloaded.
    """
    from transformers import AutoModelForCausalLM

    if source.startswith(PRESET_PREFIX):
        if tokenizer is None:
            raise CodeinstructError(
                f"model '{source}' is built from scratch and needs a tokenizer directory in the recipe"
            )
        config = preset_config(
            source[len(PRESET_PREFIX) :],
            vocab_size=len(tokenizer),
            dropout=dropout,
            eos_token_id=tokenizer.eos_token_id,
        )
        config._attn_implementation = attn_implementation
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    path = Path(source)
    if not path.is_dir() and not _in_local_cache(source):
        raise CodeinstructError(
            f"{source}: model directory not found (and not in the local Hugging Face cache; nothing is downloaded)"
        )
    overrides = {}
    if dropout is not None:
        overrides = dict(attn_pdrop=dropout, embd_pdrop=dropout, resid_pdrop=dropout)
    try:
        return AutoModelForCausalLM.from_pretrained(
            source, local_files_only=True, attn_implementation=attn_implementation, dtype="float32", **overrides
        )
    except (OSError, ValueError) as e:
        raise CodeinstructError(f"{source}: cannot load model ({str(e).splitlines()[0]})") from None


# `--dtype` of the commands that run a model: the weights are converted to it as they load, whatever the
# checkpoint holds; `auto` keeps the checkpoint's own dtype (float32 when it names none). `int8` loads float32
# and the engine's GPTBigCode runner quantizes the matrices (int8 weights, per-token int8 activations).
InferenceDtype = Literal["auto", "float32", "bfloat16", "float16", "int8"]
INFERENCE_DTYPES: tuple[str, ...] = get_args(InferenceDtype)


def inference_dtype(name: str, setting: str = "--dtype"):
    """The torch dtype of a `--dtype` choice; None for `auto` (the checkpoint's)."""
    if name not in INFERENCE_DTYPES:
        raise CodeinstructError(f"{setting}: unknown dtype '{name}' (known: {', '.join(INFERENCE_DTYPES)})")
    import torch

    return None if name == "auto" else torch.float32 if name == "int8" else getattr(torch, name)


def load_for_inference(model_dir: str | Path, device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer) from a Hugging Face directory such as a run's final/, in eval mode on `device`.

    `dtype` (INFERENCE_DTYPES) converts the weights as they load: a float32 checkpoint runs in
    bfloat16 without a bfloat16 copy on disk; `auto` keeps the checkpoint's dtype.
    """
    from transformers import AutoModelForCausalLM

    from codeinstruct.devices import pick_device  # imports torch, which importing this module does not

    torch_dtype = inference_dtype(dtype)
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise CodeinstructError(f"{path}: not a model directory (no config.json)")
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), local_files_only=True, dtype="auto" if torch_dtype is None else torch_dtype
        )
    except (OSError, ValueError) as e:
        raise CodeinstructError(f"{path}: cannot load model ({str(e).splitlines()[0]})") from None
    return model.to(pick_device(device, "device")).eval(), tokenizer


def _in_local_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


def save_hf_directory(model, tokenizer, out_dir: str | Path) -> Path:
    """Write a complete HF model directory atomically: a temp dir beside it, then one rename."""
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp), safe_serialization=True)
    save_tokenizer(tokenizer, tmp)
    eos = tokenizer.eos_token_id
    # No pad token exists; generate() needs one for batching, and EOS is what it pads with anyway.
    GenerationConfig(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos).save_pretrained(str(tmp))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
