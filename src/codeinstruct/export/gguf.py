"""GGUF export: a codeinstruct model directory as one file that llama.cpp, Ollama and LM Studio run.

The file follows llama.cpp's `starcoder` architecture, as its converter writes GPTBigCode:

    token_embd, position_embd                   wte, wpe
    blk.N.attn_norm / attn_qkv / attn_output    h.N.ln_1 / attn.c_attn / attn.c_proj
    blk.N.ffn_norm / ffn_up / ffn_down          h.N.ln_2 / mlp.c_fc / mlp.c_proj
    output_norm, output                         ln_f, lm_head (only when untied: llama.cpp
                                                 falls back to token_embd when output is absent)

Two things differ from llama.cpp's converter, both where its output would be wrong:
feed_forward_length is the real width (n_inner when set, not always 4 * n_embd), and a
multi-head (multi_query: false) model keeps n_head K/V heads, with c_attn's per-head
[q, k, v] rows regrouped into the [Q | K | V] blocks that llama.cpp splits.

The tokenizer is written as llama.cpp's "gpt2" BPE with the "starcoder" pre-tokenizer (digits
split one by one, then GPT-2's regex), exactly what codeinstruct's tokenizers do, and a chat
template that yields the Alpaca prompt of codeinstruct.prompts token for token.

Tensors are read one at a time from safetensors and written as they are converted, so memory
stays at one tensor, and the file appears under its name only when complete.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from codeinstruct.errors import CodeinstructError
from codeinstruct.prompts import PROMPT_NO_INPUT, RESPONSE_SEPARATOR

ARCH = "starcoder"
EXPORT_TYPES = ("f32", "f16", "q8_0")

# The Alpaca no-input prompt, split around the instruction: "<preamble>\n\n### Instruction:\n" + "\n\n### Response:".
_BEFORE, _AFTER = PROMPT_NO_INPUT.split("{instruction}")
PREAMBLE, _, _rest = _BEFORE.partition("\n\n")
TURN_HEAD = "\n\n" + _rest  # "\n\n### Instruction:\n"
RESPONSE_HEAD = _AFTER  # "\n\n### Response:"
assert PREAMBLE + TURN_HEAD + "{instruction}" + RESPONSE_HEAD == PROMPT_NO_INPUT


@dataclass(frozen=True)
class GGUFExport:
    path: Path
    modelfile: Path | None
    type: str
    n_bytes: int
    n_tensors: int
    n_params: int
    n_vocab: int
    n_ctx: int


# ------------------------------------------------------------------ prompt templates


def _jinja_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid Jinja (and llama.cpp Jinja) string literal


def chat_template() -> str:
    """Jinja chat template: one user message renders to exactly prompts.format_prompt(message).

    A leading system message replaces the Alpaca preamble; later turns repeat the
    Instruction/Response pair, each answer being RESPONSE_SEPARATOR + answer + EOS as trained.
    """
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{{- messages[0]['content'] -}}"
        "{%- else -%}"
        "{{- " + _jinja_str(PREAMBLE) + " -}}"
        "{%- endif -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{- " + _jinja_str(TURN_HEAD) + " + message['content'] + " + _jinja_str(RESPONSE_HEAD) + " -}}"
        "{%- elif message['role'] == 'assistant' -%}"
        "{{- " + _jinja_str(RESPONSE_SEPARATOR) + " + message['content'] + eos_token -}}"
        "{%- endif -%}"
        "{%- endfor -%}"
    )


def modelfile_text(gguf_path: Path, modelfile_path: Path, n_ctx: int, eos_token: str) -> str:
    """An Ollama Modelfile: FROM the gguf (relative to the Modelfile), the Alpaca TEMPLATE, stops."""
    rel = os.path.relpath(Path(gguf_path).resolve(), Path(modelfile_path).resolve().parent)
    source = rel if rel.startswith("..") or os.path.isabs(rel) else "./" + rel
    template = (
        "{{ if .System }}{{ .System }}\n\n{{ end }}"
        + TURN_HEAD.lstrip("\n")
        + "{{ .Prompt }}"
        + RESPONSE_HEAD
        + "{{ .Response }}"
    )
    stops = ["### Instruction:", eos_token]
    lines = [
        "# Ollama Modelfile written by `codeinstruct export gguf`: ollama create NAME -f Modelfile",
        f"FROM {source}",
        f'SYSTEM """{PREAMBLE}"""',
        f'TEMPLATE """{template}"""',
        *(f"PARAMETER stop {json.dumps(s)}" for s in dict.fromkeys(stops)),
        f"PARAMETER num_ctx {n_ctx}",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ reading the model directory


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CodeinstructError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def _read_config(model_dir: Path) -> dict:
    if not model_dir.is_dir():
        raise CodeinstructError(f"{model_dir}: model directory not found")
    if not (model_dir / "config.json").is_file():
        raise CodeinstructError(f"{model_dir}: not a model directory (no config.json)")
    config = _read_json(model_dir / "config.json")
    model_type = config.get("model_type")
    if model_type != "gpt_bigcode":
        raise CodeinstructError(
            f"{model_dir}: model_type is {model_type!r}; GGUF export supports gpt_bigcode (StarCoder) models"
        )
    if not config.get("scale_attn_weights", True):
        raise CodeinstructError(
            f"{model_dir}: scale_attn_weights is false; llama.cpp's starcoder always scales attention"
        )
    act = config.get("activation_function", "gelu_pytorch_tanh")
    if not str(act).startswith("gelu"):
        raise CodeinstructError(f"{model_dir}: activation {act!r} is not GELU; llama.cpp's starcoder uses GELU")
    if config.get("add_cross_attention"):
        raise CodeinstructError(f"{model_dir}: cross-attention models cannot be exported to llama.cpp")
    return config


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(_read_json(index).get("weight_map", {}).values()))
        missing = [s for s in shards if not (model_dir / s).is_file()]
        if missing:
            raise CodeinstructError(f"{model_dir}: safetensors shard {missing[0]} is missing")
        return [model_dir / s for s in shards]
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    raise CodeinstructError(f"{model_dir}: no model.safetensors (GGUF export reads safetensors weights)")


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _pre_tokenizer_name(pre) -> str | None:
    """llama.cpp's name for a tokenizer.json pre-tokenizer, or None when llama.cpp has no match."""

    def byte_level(p) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False)

    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        parts = pre.get("pretokenizers") or []
        if (
            len(parts) == 2
            and parts[0].get("type") == "Digits"
            and parts[0].get("individual_digits")
            and byte_level(parts[1])
        ):
            return "starcoder"
        if len(parts) == 1 and byte_level(parts[0]):
            return "gpt-2"
        return None
    if isinstance(pre, dict) and byte_level(pre):
        return "gpt-2"
    return None


@dataclass
class _Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    bos: int | None
    eos: int
    unk: int | None
    pad: int | None
    eos_text: str


def _read_vocab(model_dir: Path, config: dict, n_vocab: int) -> _Vocab:
    import gguf

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise CodeinstructError(f"{model_dir}: no tokenizer.json (GGUF export needs the fast tokenizer file)")
    tok = _read_json(path)
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise CodeinstructError(
            f"{path}: tokenizer model is {model.get('type')!r}; GGUF export supports byte-level BPE"
        )
    pre = _pre_tokenizer_name(tok.get("pre_tokenizer"))
    if pre is None:
        raise CodeinstructError(
            f"{path}: pre-tokenizer is neither StarCoder's nor GPT-2's; llama.cpp would split text differently"
        )
    id_to_token: dict[int, str] = {int(i): t for t, i in model.get("vocab", {}).items()}
    special: dict[int, bool] = {}
    for added in tok.get("added_tokens", []):
        id_to_token[int(added["id"])] = added["content"]
        special[int(added["id"])] = bool(added.get("special"))
    if id_to_token and max(id_to_token) >= n_vocab:
        raise CodeinstructError(
            f"{model_dir}: the tokenizer has token id {max(id_to_token)} "
            f"but the model has only {n_vocab} embedding rows"
        )
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in id_to_token:  # holes and rows past the tokenizer: llama.cpp's converter pads the same way
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(id_to_token[i])
            if i in special:
                types.append(gguf.TokenType.CONTROL if special[i] else gguf.TokenType.USER_DEFINED)
            else:
                types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    tok_config = (
        _read_json(model_dir / "tokenizer_config.json") if (model_dir / "tokenizer_config.json").is_file() else {}
    )
    token_to_id = {t: i for i, t in id_to_token.items()}

    def special_id(name: str) -> int | None:
        text = _token_text(tok_config.get(f"{name}_token"))
        if text is not None and text in token_to_id:
            return token_to_id[text]
        fallback = config.get(f"{name}_token_id")
        return fallback if isinstance(fallback, int) and 0 <= fallback < n_vocab else None

    eos = special_id("eos")
    if eos is None:
        raise CodeinstructError(f"{model_dir}: no EOS token in tokenizer_config.json or config.json")
    return _Vocab(tokens, types, merges, pre, special_id("bos"), eos, special_id("unk"), special_id("pad"), tokens[eos])


# ------------------------------------------------------------------ tensors


@dataclass
class _Tensor:
    name: str  # GGUF name
    source: str  # safetensors key
    file: Path
    shape: tuple[int, ...]
    qtype: int = 0  # gguf.GGMLQuantizationType
    nbytes: int = 0


_LAYER_MAP = {
    "ln_1.weight": "attn_norm.weight",
    "ln_1.bias": "attn_norm.bias",
    "attn.c_attn.weight": "attn_qkv.weight",
    "attn.c_attn.bias": "attn_qkv.bias",
    "attn.c_proj.weight": "attn_output.weight",
    "attn.c_proj.bias": "attn_output.bias",
    "ln_2.weight": "ffn_norm.weight",
    "ln_2.bias": "ffn_norm.bias",
    "mlp.c_fc.weight": "ffn_up.weight",
    "mlp.c_fc.bias": "ffn_up.bias",
    "mlp.c_proj.weight": "ffn_down.weight",
    "mlp.c_proj.bias": "ffn_down.bias",
}
_GLOBAL_MAP = {
    "wte.weight": "token_embd.weight",
    "wpe.weight": "position_embd.weight",
    "ln_f.weight": "output_norm.weight",
    "ln_f.bias": "output_norm.bias",
}
_SKIPPED = ("attn.bias", "attn.masked_bias")  # causal-mask buffers of old checkpoints


def _gguf_name(key: str, tied: bool) -> str | None:
    """The GGUF tensor name of a GPTBigCode safetensors key; None for keys that are not exported."""
    if key == "lm_head.weight":
        return None if tied else "output.weight"
    name = key.removeprefix("transformer.")
    if name in _GLOBAL_MAP:
        return _GLOBAL_MAP[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "h" and parts[1].isdigit():
        if parts[2] in _SKIPPED:
            return None
        if parts[2] in _LAYER_MAP:
            return f"blk.{int(parts[1])}.{_LAYER_MAP[parts[2]]}"
    raise CodeinstructError(f"unexpected tensor {key!r} in a gpt_bigcode checkpoint")


def _plan_tensors(model_dir: Path, config: dict, qtype_name: str) -> list[_Tensor]:
    import gguf
    from safetensors import safe_open

    tied = config.get("tie_word_embeddings", True)
    found: dict[str, _Tensor] = {}
    for file in _safetensors_files(model_dir):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    name = _gguf_name(key, tied)
                    if name is not None:
                        found[name] = _Tensor(name, key, file, tuple(f.get_slice(key).get_shape()))
        except CodeinstructError as e:
            raise CodeinstructError(f"{file}: {e}") from None
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CodeinstructError(f"{file}: cannot read safetensors ({str(e).splitlines()[0]})") from None

    n_layer = int(config["n_layer"])
    required = [*_GLOBAL_MAP.values()] + [f"blk.{i}.{n}" for i in range(n_layer) for n in _LAYER_MAP.values()]
    if not tied:
        required.append("output.weight")
    missing = [n for n in required if n not in found]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CodeinstructError(f"{model_dir}: the checkpoint lacks {missing[0]}{more}")
    extra = [n for n in found if n not in required]
    if extra:
        raise CodeinstructError(f"{model_dir}: unexpected tensor {extra[0]} for n_layer={n_layer}")

    wanted = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[qtype_name]
    plan = []
    for name in required:  # embeddings and output norm, the blocks in order, then an untied output
        t = found[name]
        if len(t.shape) <= 1 or name.endswith("_norm.weight") or name == "position_embd.weight":
            t.qtype = gguf.GGMLQuantizationType.F32  # as llama.cpp: 1-D tensors, norms and positions stay f32
        elif wanted == gguf.GGMLQuantizationType.Q8_0 and t.shape[-1] % gguf.GGML_QUANT_SIZES[wanted][0] != 0:
            t.qtype = gguf.GGMLQuantizationType.F16  # q8_0 needs rows in blocks of 32; llama.cpp falls back to f16
        else:
            t.qtype = wanted
        block, type_size = gguf.GGML_QUANT_SIZES[t.qtype]
        t.nbytes = math.prod(t.shape) // block * type_size
        plan.append(t)
    return plan


def _load(t: _Tensor, n_embd: int, n_head: int, multi_query: bool):
    import numpy as np
    from safetensors import safe_open

    with safe_open(str(t.file), framework="pt") as f:
        data = f.get_tensor(t.source).float().numpy()
    if not multi_query and t.name.endswith((".attn_qkv.weight", ".attn_qkv.bias")):
        # HF multi-head c_attn rows are per head [q_h, k_h, v_h]; llama.cpp splits [Q | K | V].
        head_dim = n_embd // n_head
        data = data.reshape(n_head, 3, head_dim, *data.shape[1:]).swapaxes(0, 1).reshape(data.shape)
    return np.ascontiguousarray(data, dtype=np.float32)


def _convert(data, qtype: int):
    import gguf
    import numpy as np

    if qtype == gguf.GGMLQuantizationType.F32:
        return data
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType(qtype))


# ------------------------------------------------------------------ export


def _model_name(model_dir: Path) -> str:
    resolved = model_dir.resolve()
    return resolved.parent.name if resolved.name == "final" and resolved.parent.name else resolved.name


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def export_gguf(
    model_dir: str | Path,
    out: str | Path,
    type: str = "f16",
    modelfile: str | Path | None = None,
    write_modelfile: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> GGUFExport:
    """Write MODEL_DIR (a GPTBigCode HF directory) as a llama.cpp `starcoder` GGUF at `out`.

    `type`: f32, f16 or q8_0 for the 2-D weight matrices (norms, biases and positions stay f32).
    An Ollama Modelfile is written to `modelfile` (default: `Modelfile` beside the gguf).
    `progress(done_bytes, total_bytes)` is called after each tensor is written.
    """
    import gguf

    if type not in EXPORT_TYPES:
        raise CodeinstructError(f"unknown GGUF type {type!r} (known: {', '.join(EXPORT_TYPES)})")
    model_dir, out = Path(model_dir), Path(out)
    config = _read_config(model_dir)
    plan = _plan_tensors(model_dir, config, type)
    shapes = {t.name: t.shape for t in plan}
    n_vocab, n_embd = shapes["token_embd.weight"]
    n_ctx = shapes["position_embd.weight"][0]
    n_ff = shapes["blk.0.ffn_up.weight"][0]
    n_head, n_layer = int(config["n_head"]), int(config["n_layer"])
    multi_query = bool(config.get("multi_query", True))
    n_head_kv = 1 if multi_query else n_head
    if n_embd % n_head:
        raise CodeinstructError(f"{model_dir}: n_embd {n_embd} is not divisible by n_head {n_head}")
    if shapes["blk.0.attn_qkv.weight"][0] != n_embd + 2 * (n_embd // n_head) * n_head_kv:
        raise CodeinstructError(f"{model_dir}: c_attn's shape does not match multi_query={multi_query}")
    vocab = _read_vocab(model_dir, config, n_vocab)

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.is_dir():
        raise CodeinstructError(f"{out}: is a directory; give the .gguf file to write")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[type]
    writer = gguf.GGUFWriter(str(tmp), ARCH)
    try:
        writer.add_name(_model_name(model_dir))
        writer.add_context_length(n_ctx)
        writer.add_embedding_length(n_embd)
        writer.add_feed_forward_length(n_ff)
        writer.add_block_count(n_layer)
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_layer_norm_eps(float(config.get("layer_norm_epsilon", 1e-5)))
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(vocab.pre)
        writer.add_token_list(vocab.tokens)
        writer.add_token_types([int(t) for t in vocab.types])
        writer.add_token_merges(vocab.merges)
        if vocab.bos is not None:
            writer.add_bos_token_id(vocab.bos)
        writer.add_eos_token_id(vocab.eos)
        if vocab.unk is not None:
            writer.add_unk_token_id(vocab.unk)
        if vocab.pad is not None:
            writer.add_pad_token_id(vocab.pad)
        writer.add_add_bos_token(False)
        writer.add_add_eos_token(False)
        writer.add_chat_template(chat_template())

        import numpy as np

        for t in plan:
            writer.add_tensor_info(
                t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=gguf.GGMLQuantizationType(t.qtype)
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        total, done = sum(t.nbytes for t in plan), 0
        for t in plan:
            data = _convert(_load(t, n_embd, n_head, multi_query), t.qtype)
            writer.write_tensor_data(data)
            done += t.nbytes
            if progress is not None:
                progress(done, total)
        writer.close()
        os.replace(tmp, out)
    except OSError as e:
        raise CodeinstructError(f"{out}: cannot write ({e.strerror or e})") from None
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)

    modelfile_path = None
    if write_modelfile:
        modelfile_path = Path(modelfile) if modelfile is not None else out.parent / "Modelfile"
        modelfile_path.parent.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(modelfile_path, modelfile_text(out, modelfile_path, n_ctx, vocab.eos_text))
    n_params = sum(math.prod(t.shape) for t in plan)
    return GGUFExport(out, modelfile_path, type, out.stat().st_size, len(plan), n_params, n_vocab, n_ctx)
