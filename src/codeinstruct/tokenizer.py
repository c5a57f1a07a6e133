"""StarCoder's tokenizer layout: byte-level BPE with 19 special tokens at ids 0-18.

bos = eos = unk = `<|endoftext|>` and there is no pad token, as in bigcode/starcoder.

This module is the one place where tokenizer directories are read and written and where text
becomes token ids, because transformers does not always encode as the directory's
`tokenizer.json` says. Under transformers 5, `AutoTokenizer` on StarCoder's directory (which
names `GPT2Tokenizer`) rebuilds the pre-tokenizer as plain ByteLevel and loses StarCoder's
digit split: `"    42"` becomes `[264, 225, 38, 36]` instead of StarCoder's `[262, 38, 36]`.
So:

- `load_tokenizer` always builds a `PreTrainedTokenizerFast` from `tokenizer.json`, whatever
  class the directory names, then checks the pipeline it got against the file part by part
  (normalizer, pre-tokenizer, model, decoder, post-processor, added tokens) and puts back
  any part transformers changed;
- `encode_text` / `encode_texts` run that pipeline through the `tokenizers` library itself,
  with special-token text kept as text (a document that contains "<fim_middle>" must not
  become a control token), on a private copy of the backend: transformers'
  `split_special_tokens` flips a flag on the shared backend, which races between threads of
  a server;
- `save_tokenizer` writes directories that transformers 4 and 5, vLLM and lm-eval all load
  back unchanged (see its docstring for each choice).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from codeinstruct.errors import CodeinstructError
from codeinstruct.files import write_text

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


TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
# Loads tokenizer.json as it is in transformers 4 and 5 (and so in vLLM and lm-eval).
TOKENIZER_CLASS = "PreTrainedTokenizerFast"
# The parts of tokenizer.json that decide ids and text; transformers must leave them as written.
PIPELINE_PARTS = ("normalizer", "pre_tokenizer", "model", "decoder", "post_processor")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2):
    """A byte-level BPE tokenizer with StarCoder's pipeline (digits split, ByteLevel, no
    normalizer, no post-processor) and special tokens at StarCoder's ids.

    Unlike StarCoder's vocabulary, which lacks 14 of the 256 byte symbols, the alphabet holds all
    256: every string encodes to ids that decode back to it, never to a dropped byte.
    Returns a transformers fast tokenizer; save it with `save_tokenizer`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise CodeinstructError(
            f"vocab size {vocab_size} is too small: byte-level BPE needs at least {len(SPECIAL_TOKENS) + 256}"
        )
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    core.decoder = decoders.ByteLevel()
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
    """Write `tokenizer.json` (the encode pipeline exactly as it runs) and `tokenizer_config.json`.

    The choices, each so that any reader encodes as StarCoder did:
    - `tokenizer_class` is `PreTrainedTokenizerFast`, not StarCoder's `GPT2Tokenizer`: under
      transformers 5 the latter rebuilds the pre-tokenizer and drops the digit split, while
      `PreTrainedTokenizerFast` takes tokenizer.json as it is in transformers 4 and 5.
    - `clean_up_tokenization_spaces` is false (StarCoder's says true): the clean-up deletes the
      space before `.`, `,`, `!`, `?` and in `n't`-like contractions, so decoded code would differ
      from the code.
    - special tokens are listed as StarCoder lists them, EOS included, under
      `additional_special_tokens`, which transformers 4 and 5 both read; no
      `special_tokens_map.json`, which would only repeat the config.
    - no post-processor in tokenizer.json (StarCoder has none): codeinstruct never adds special
      tokens around text, and neither should a reader that calls the tokenizer with defaults.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipeline = json.loads(tokenizer.backend_tokenizer.to_str())
    if _adds_nothing(pipeline.get("post_processor")):
        pipeline["post_processor"] = None
    for key in ("truncation", "padding"):
        pipeline[key] = None
    write_text(out / TOKENIZER_FILE, json.dumps(pipeline, ensure_ascii=False, indent=2) + "\n")
    config = {
        "tokenizer_class": TOKENIZER_CLASS,
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "unk_token": tokenizer.unk_token,
        "additional_special_tokens": list(tokenizer.all_special_tokens),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(min(tokenizer.model_max_length, 2**63 - 1)),
    }
    if tokenizer.pad_token is not None:
        config["pad_token"] = tokenizer.pad_token
    write_text(out / CONFIG_FILE, json.dumps(config, ensure_ascii=False, indent=2) + "\n")
    stale = out / "special_tokens_map.json"
    if stale.exists():
        stale.unlink()


def load_tokenizer(path: str | Path):
    """Load a tokenizer directory (ours, StarCoder's, StarCoder2's, or a hub id already in the
    local cache) so that it encodes exactly as its tokenizer.json says."""
    path = _tokenizer_dir(path)
    file = path / TOKENIZER_FILE
    try:
        if file.is_file():
            from transformers import PreTrainedTokenizerFast

            # The class is chosen here, not by the directory's tokenizer_class (see the module docstring).
            tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path), clean_up_tokenization_spaces=False)
        else:  # vocab.json + merges.txt only: transformers converts; there is no file to hold it to
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(path), clean_up_tokenization_spaces=False)
    except (OSError, ValueError, TypeError) as e:
        raise CodeinstructError(f"{path}: cannot load tokenizer ({str(e).splitlines()[0]})") from None
    if file.is_file():
        restore_pipeline(tokenizer, file)
    if tokenizer.eos_token_id is None:
        raise CodeinstructError(f"{path}: tokenizer has no EOS token; codeinstruct needs one to end responses")
    # Exact round trips matter more than pretty spacing for code.
    tokenizer.clean_up_tokenization_spaces = False
    return tokenizer


def _tokenizer_dir(spec: str | Path) -> Path:
    path = Path(spec)
    if path.is_dir():
        return path
    if isinstance(spec, str) and spec.count("/") == 1 and not path.exists():
        try:  # a hub id already downloaded: its snapshot directory (nothing is fetched)
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(spec, local_files_only=True, allow_patterns=["*.json", "*.txt"]))
        except Exception:
            pass
    raise CodeinstructError(f"{path}: tokenizer directory not found")


def _adds_nothing(post_processor: dict | None) -> bool:
    """A post-processor that only passes ids through (transformers 5 installs such a template)."""
    if post_processor is None:
        return True
    if post_processor.get("type") == "ByteLevel":  # moves offsets only, never ids
        return True
    if post_processor.get("type") == "TemplateProcessing":
        pieces = post_processor.get("single", []) + post_processor.get("pair", [])
        return not post_processor.get("special_tokens") and all("SpecialToken" not in p for p in pieces)
    return False


def _pipeline_differences(backend, reference: dict) -> list[str]:
    loaded = json.loads(backend.to_str())
    parts = []
    for part in PIPELINE_PARTS:
        have, want = loaded.get(part), reference.get(part)
        if part == "post_processor" and _adds_nothing(have) and _adds_nothing(want):
            continue
        if have != want:
            parts.append(part)
    key = lambda t: (t["id"], t["content"], t["special"])  # noqa: E731
    if sorted(map(key, loaded.get("added_tokens", []))) != sorted(map(key, reference.get("added_tokens", []))):
        parts.append("added_tokens")
    return parts


def restore_pipeline(tokenizer, file: Path) -> list[str]:
    """Put back every part of `file`'s pipeline that transformers changed on loading.

    Returns the parts that had to be put back (empty when transformers kept the file as written).
    """
    from tokenizers import Tokenizer

    text = file.read_text(encoding="utf-8")
    reference = json.loads(text)
    backend = tokenizer.backend_tokenizer
    changed = _pipeline_differences(backend, reference)
    if not changed:
        return []
    original = Tokenizer.from_str(text)
    for part in changed:
        if part == "added_tokens":
            raise CodeinstructError(
                f"{file}: transformers loaded different special tokens than the file holds; "
                "codeinstruct cannot encode as the model was trained"
            )
        setattr(backend, part, getattr(original, part))
    still = _pipeline_differences(backend, reference)
    if still:
        raise CodeinstructError(
            f"{file}: cannot load its {', '.join(still)} as written; ids would differ from the model's"
        )
    return changed


_encoders_lock = threading.Lock()


def _text_encoder(tokenizer):
    """A private copy of the tokenizer's pipeline that treats special-token text as text."""
    encoder = getattr(tokenizer, "_codeinstruct_text_encoder", None)
    if encoder is None:
        from tokenizers import Tokenizer

        with _encoders_lock:
            encoder = getattr(tokenizer, "_codeinstruct_text_encoder", None)
            if encoder is None:
                encoder = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
                encoder.encode_special_tokens = True
                encoder.no_truncation()
                encoder.no_padding()
                tokenizer._codeinstruct_text_encoder = encoder
    return encoder


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of user/document text, exactly as tokenizer.json encodes it; text such as
    "<fim_middle>" stays text, never a control token."""
    return _text_encoder(tokenizer).encode(text, add_special_tokens=False).ids if text else []


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """`encode_text` for many texts at once (the tokenizers library spreads them over cores)."""
    if not texts:
        return []
    return [e.ids for e in _text_encoder(tokenizer).encode_batch(list(texts), add_special_tokens=False)]


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
