"""Generation from the Alpaca prompt on top of transformers' generate().

The prompt is exactly the one training used (codeinstruct.prompts); decoding stops at EOS
or when the model starts a new `### Instruction:` turn, and only the response is returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from codeinstruct.errors import CodeinstructError
from codeinstruct.prompts import STOP_STRINGS, FimTokens, extract_response, fim_prompt_ids, format_prompt


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0


def load_for_inference(model_dir: str | Path, device: str = "auto"):
    """(model, tokenizer) from a Hugging Face directory such as a run's final/."""
    from transformers import AutoModelForCausalLM

    from codeinstruct.tokenizer import load_tokenizer

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise CodeinstructError(f"{path}: not a model directory (no config.json)")
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise CodeinstructError(f"{path}: cannot load model ({str(e).splitlines()[0]})") from None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


@torch.inference_mode()
def generate_text(model, tokenizer, prompt: str, settings: SamplingSettings = SamplingSettings()) -> str:
    """The raw continuation of `prompt` (special tokens removed), stopped at EOS or a stop string."""
    ids = tokenizer(prompt, add_special_tokens=False, split_special_tokens=True, return_tensors="pt")["input_ids"]
    return decode_continuation(model, tokenizer, ids, settings, stop_strings=STOP_STRINGS)


@torch.inference_mode()
def decode_continuation(model, tokenizer, ids: torch.Tensor, settings: SamplingSettings, stop_strings=(), stop_ids=()) -> str:
    """Decode after prompt ids [1, T] until EOS, a stop id or a stop string; the new text without special tokens."""
    ids = ids.to(model.device)
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    max_new = settings.max_new_tokens
    if limit is not None:
        if ids.shape[1] >= limit:
            raise CodeinstructError(f"the prompt has {ids.shape[1]} tokens; the model's context is {limit}")
        max_new = min(max_new, limit - ids.shape[1])
    sampling = settings.temperature > 0
    kwargs = dict(do_sample=True, temperature=settings.temperature, top_p=settings.top_p) if sampling else dict(do_sample=False)
    if sampling:
        torch.manual_seed(settings.seed)
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new,
        eos_token_id=[tokenizer.eos_token_id, *stop_ids],
        pad_token_id=tokenizer.eos_token_id,
        stop_strings=list(stop_strings) or None,
        tokenizer=tokenizer,
        **kwargs,
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def generate_response(model, tokenizer, instruction: str, input: str = "", settings: SamplingSettings = SamplingSettings()) -> str:
    """The answer to one instruction, as the user sees it."""
    return extract_response(generate_text(model, tokenizer, format_prompt(instruction, input), settings))


def complete_middle(model, tokenizer, prefix: str, suffix: str, spm: bool = False,
                    settings: SamplingSettings = SamplingSettings()) -> str:
    """Fill-in-the-Middle: the code between `prefix` and `suffix`, stopped at EOS or any FIM token."""
    tokens = FimTokens.from_tokenizer(tokenizer)
    ids = torch.tensor([fim_prompt_ids(tokenizer, prefix, suffix, spm, tokens)])
    return decode_continuation(model, tokenizer, ids, settings, stop_ids=tokens.all)
