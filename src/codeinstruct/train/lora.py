"""LoRA through peft: adapters on a frozen base, saved alone and merged into a full model.

GPTBigCode's projections are `c_attn` (fused q/k/v, or q only with `q_attn` in cross-attention
models), `c_proj` (attention output and MLP output) and `c_fc` (MLP input); adapting all of them is
the default. The merged model is an ordinary transformers directory, so everything that loads a
full fine-tune (the engine, vLLM, TGI) loads it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from codeinstruct.config import LoraSection
from codeinstruct.errors import CodeinstructError
from codeinstruct.modeling import save_hf_directory

GPTBIGCODE_TARGETS = ("c_attn", "c_proj", "c_fc", "q_attn")


def lora_config(model, settings: LoraSection):
    from peft import LoraConfig

    targets = settings.target_modules
    if targets is None and model.config.model_type == "gpt_bigcode":
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        targets = [t for t in GPTBIGCODE_TARGETS if t in present]
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )


def apply_lora(model, settings: LoraSection):
    """The model wrapped with fresh adapters; only adapter weights require gradients."""
    from peft import get_peft_model

    try:
        return get_peft_model(model, lora_config(model, settings))
    except ValueError as e:
        raise CodeinstructError(f"model.lora: {str(e).splitlines()[0]}") from None


def save_adapter_and_merged(peft_model, tokenizer, adapter_dir: Path, merged_dir: Path) -> None:
    """Write the adapter alone (peft format, atomically) and the merged full model."""
    tmp = adapter_dir.with_name(adapter_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    peft_model.save_pretrained(str(tmp))
    if adapter_dir.exists():
        shutil.rmtree(adapter_dir)
    tmp.rename(adapter_dir)
    save_hf_directory(peft_model.merge_and_unload(), tokenizer, merged_dir)
