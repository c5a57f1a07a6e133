"""StarCoder's tokenizer layout: byte-level BPE with 19 special tokens at ids 0-18.

bos = eos = unk = `<|endoftext|>` and there is no pad token, as in bigcode/starcoder. Tokenizers
trained here are saved as Hugging Face tokenizer files, so `AutoTokenizer.from_pretrained(dir)`
loads them, and the same loader opens a real StarCoder tokenizer directory.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from codeinstruct.errors import CodeinstructError

EOS = "<|endoftext|>"
SPECIAL_TOKENS = [
    EOS,
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<fim_pad>",
    "<filename>",
    "<gh_stars>",
    "<issue_start>",
    "<issue_comment>",
    "<issue_closed>",
    "<jupyter_start>",
    "<jupyter_text>",
    "<jupyter_code>",
    "<jupyter_output>",
    "<empty_output>",
    "<commit_before>",
    "<commit_msg>",
    "<commit_after>",
    "<reponame>",
]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """A byte-level BPE tokenizer with StarCoder's pre-tokenizer (digits split) and special tokens.

    Returns a transformers fast tokenizer; save it with `save_tokenizer`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise CodeinstructError(f"vocab size {vocab_size} is too small: byte-level BPE needs at least {len(SPECIAL_TOKENS) + 256}")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        additional_special_tokens=SPECIAL_TOKENS[1:],
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
    )


def save_tokenizer(tokenizer, out_dir: str | Path) -> None:
    tokenizer.save_pretrained(str(out_dir))


def load_tokenizer(path: str | Path):
    """Load a tokenizer directory (ours or StarCoder's) and check what training depends on."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise CodeinstructError(f"{path}: tokenizer directory not found")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise CodeinstructError(f"{path}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
    if tokenizer.eos_token_id is None:
        raise CodeinstructError(f"{path}: tokenizer has no EOS token; codeinstruct needs one to end responses")
    # Exact round trips matter more than pretty spacing for code.
    tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


BUILTIN_STDLIB = "builtin:stdlib"
BUILTIN_VOCAB_SIZE = 4096


def resolve_tokenizer(spec: str):
    """A tokenizer directory, or `builtin:stdlib`: BPE trained now on the local standard library's source."""
    if spec == BUILTIN_STDLIB:
        from codeinstruct.data.builtin import stdlib_source_texts

        return train_tokenizer(stdlib_source_texts(), vocab_size=BUILTIN_VOCAB_SIZE)
    if spec.startswith("builtin:"):
        raise CodeinstructError(f"unknown built-in tokenizer '{spec}' (known: {BUILTIN_STDLIB})")
    return load_tokenizer(spec)
