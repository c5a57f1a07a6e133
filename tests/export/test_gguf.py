"""GGUF export: llama.cpp's starcoder layout, exact weights, the tokenizer, the Alpaca chat template, the Modelfile."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from codeinstruct.errors import CodeinstructError  # noqa: E402
from codeinstruct.export.gguf import export_gguf  # noqa: E402
from codeinstruct.prompts import format_prompt  # noqa: E402

EXTRA_ROWS = 3  # embedding rows past the tokenizer's vocab, as a resized model may have
INSTRUCTION = 'Write a function "f" that returns {x: 1}.\nUse {{ no templating }} and a \\n escape.'


def build_model_dir(tokenizer, out: Path, multi_query: bool = True, seed: int = 0) -> tuple[Path, dict]:
    from transformers import AutoModelForCausalLM

    from codeinstruct.modeling import preset_config, save_hf_directory

    torch.manual_seed(seed)
    config = preset_config("tiny", vocab_size=len(tokenizer) + EXTRA_ROWS, eos_token_id=tokenizer.eos_token_id)
    config.multi_query = multi_query
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped or missing tensor shows
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if ".ln_" in name and name.endswith("weight") else 0.0))
    save_hf_directory(model, tokenizer, out)
    return out, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def expected_tensors(sd: dict, n_layer: int, multi_query: bool = True, n_head: int = 4) -> dict[str, np.ndarray]:
    """llama.cpp's names for each GPTBigCode weight (lm_head is tied to wte, so there is no output.weight)."""
    t = {
        "token_embd.weight": sd["transformer.wte.weight"],
        "position_embd.weight": sd["transformer.wpe.weight"],
        "output_norm.weight": sd["transformer.ln_f.weight"],
        "output_norm.bias": sd["transformer.ln_f.bias"],
    }
    parts = {
        "attn_norm": "ln_1",
        "attn_qkv": "attn.c_attn",
        "attn_output": "attn.c_proj",
        "ffn_norm": "ln_2",
        "ffn_up": "mlp.c_fc",
        "ffn_down": "mlp.c_proj",
    }
    for i in range(n_layer):
        for ours, hf in parts.items():
            for kind in ("weight", "bias"):
                value = sd[f"transformer.h.{i}.{hf}.{kind}"]
                if ours == "attn_qkv" and not multi_query:
                    # HF rows are per head [q_h, k_h, v_h]; llama.cpp wants [all q | all k | all v]
                    per_head = value.reshape(n_head, 3, -1, *value.shape[1:])
                    value = np.concatenate([per_head[:, j].reshape(-1, *value.shape[1:]) for j in range(3)])
                t[f"blk.{i}.{ours}.{kind}"] = value
    return t


def read(path: Path):
    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items()}
    return reader, fields


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory):
    return build_model_dir(tokenizer, tmp_path_factory.mktemp("gguf") / "run" / "final")


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return {t: export_gguf(model_dir[0], out / t / "model.gguf", type=t) for t in ("f32", "f16", "q8_0")}


def test_metadata_is_llama_cpp_starcoder(exported, tokenizer):
    _, f = read(exported["f32"].path)
    assert f["general.architecture"] == "starcoder"
    assert f["general.name"] == "run"  # RUN/final is named after the run
    assert f["starcoder.context_length"] == 1024
    assert f["starcoder.embedding_length"] == 64
    assert f["starcoder.feed_forward_length"] == 256
    assert f["starcoder.block_count"] == 2
    assert f["starcoder.attention.head_count"] == 4
    assert f["starcoder.attention.head_count_kv"] == 1
    assert f["starcoder.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert [read(exported[t].path)[1]["general.file_type"] for t in ("f32", "f16", "q8_0")] == [0, 1, 7]


def test_f32_tensors_equal_the_model_weights(exported, model_dir):
    reader, _ = read(exported["f32"].path)
    expected = expected_tensors(model_dir[1], n_layer=2)
    assert sorted(t.name for t in reader.tensors) == sorted(expected)
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        assert list(t.shape) == list(reversed(expected[t.name].shape)), t.name  # ggml order: innermost first
        assert np.array_equal(np.asarray(t.data).reshape(expected[t.name].shape), expected[t.name]), t.name


def test_f16_and_q8_0_quantize_only_the_matrices(exported, model_dir):
    expected = expected_tensors(model_dir[1], n_layer=2)
    for kind in ("f16", "q8_0"):
        reader, _ = read(exported[kind].path)
        assert sorted(t.name for t in reader.tensors) == sorted(expected)
        for t in reader.tensors:
            want = expected[t.name]
            if want.ndim == 1 or t.name == "position_embd.weight":
                assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
                assert np.array_equal(np.asarray(t.data).reshape(want.shape), want), t.name
            elif kind == "f16":
                assert t.tensor_type == gguf.GGMLQuantizationType.F16, t.name
                assert np.array_equal(np.asarray(t.data).reshape(want.shape), want.astype(np.float16)), t.name
            else:
                assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0, t.name
                got = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(want.shape)
                blocks, err = want.reshape(-1, 32), np.abs(got - want).reshape(-1, 32)
                # q8_0: one fp16 scale amax/127 per 32 values; rounding error at most half a step
                # (plus the scale's rounding)
                assert (err <= np.abs(blocks).max(axis=1, keepdims=True) / 127 * 0.6 + 1e-12).all(), t.name
    sizes = [exported[t].n_bytes for t in ("f32", "f16", "q8_0")]
    assert sizes[0] > sizes[1] > sizes[2]


def test_tokenizer_is_gpt2_bpe_with_starcoder_pre_tokenizer(exported, model_dir, tokenizer):
    _, f = read(exported["f16"].path)
    n = len(tokenizer)
    assert f["tokenizer.ggml.model"] == "gpt2"
    assert f["tokenizer.ggml.pre"] == "starcoder"
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == n + EXTRA_ROWS  # n_vocab = embedding rows
    assert tokens[:n] == tokenizer.convert_ids_to_tokens(list(range(n)))
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, n + EXTRA_ROWS)]
    special = set(tokenizer.all_special_ids)
    assert types[:n] == [gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL for i in range(n)]
    assert types[n:] == [gguf.TokenType.UNUSED] * EXTRA_ROWS
    merges = json.loads((model_dir[0] / "tokenizer.json").read_text())["model"]["merges"]
    assert len(f["tokenizer.ggml.merges"]) == len(merges) and f["tokenizer.ggml.merges"][0] == " ".join(merges[0])
    assert f["tokenizer.ggml.bos_token_id"] == f["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert f["tokenizer.ggml.add_bos_token"] is False


def test_chat_template_renders_the_alpaca_prompt(exported, tokenizer):
    import jinja2

    _, f = read(exported["q8_0"].path)
    template = jinja2.Environment().from_string(f["tokenizer.chat_template"])
    eos = tokenizer.eos_token
    render = lambda messages: template.render(messages=messages, add_generation_prompt=True, eos_token=eos)  # noqa: E731
    assert render([{"role": "user", "content": INSTRUCTION}]) == format_prompt(INSTRUCTION)
    two_turns = render(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    )
    assert two_turns == format_prompt("a") + "\nb" + eos + "\n\n### Instruction:\nc\n\n### Response:"
    with_system = render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"}])
    assert with_system == "Be brief." + format_prompt("a")[format_prompt("a").index("\n\n### Instruction:") :]


def render_go_template(template: str, system: str, prompt: str) -> str:
    """The subset of Go's text/template the Modelfile uses."""
    text = re.sub(
        r"\{\{ if \.System \}\}(.*?)\{\{ end \}\}", lambda m: m.group(1) if system else "", template, flags=re.S
    )
    return text.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt).replace("{{ .Response }}", "")


def test_modelfile_runs_the_gguf_with_the_alpaca_prompt(exported):
    result = exported["f16"]
    assert result.modelfile == result.path.parent / "Modelfile"
    text = result.modelfile.read_text()
    assert "FROM ./model.gguf\n" in text
    assert 'PARAMETER stop "### Instruction:"\n' in text and 'PARAMETER stop "<|endoftext|>"\n' in text
    assert "PARAMETER num_ctx 1024\n" in text
    system = re.search(r'^SYSTEM """(.*?)"""$', text, re.S | re.M).group(1)
    template = re.search(r'^TEMPLATE """(.*?)"""$', text, re.S | re.M).group(1)
    assert render_go_template(template, system, INSTRUCTION) == format_prompt(INSTRUCTION)


def test_multi_head_qkv_rows_are_regrouped_for_llama_cpp(tokenizer, tmp_path):
    model_dir, sd = build_model_dir(tokenizer, tmp_path / "mha", multi_query=False, seed=1)
    reader, f = read(export_gguf(model_dir, tmp_path / "mha.gguf", type="f32", write_modelfile=False).path)
    assert f["starcoder.attention.head_count_kv"] == 4
    expected = expected_tensors(sd, n_layer=2, multi_query=False)
    for t in reader.tensors:
        assert np.array_equal(np.asarray(t.data).reshape(expected[t.name].shape), expected[t.name]), t.name


def test_vocab_holes_become_unused_pad_tokens(model_dir, tmp_path):
    src = tmp_path / "holes"
    shutil.copytree(model_dir[0], src)
    tok = json.loads((src / "tokenizer.json").read_text())
    hole = max(tok["model"]["vocab"].values()) - 5
    tok["model"]["vocab"] = {t: i for t, i in tok["model"]["vocab"].items() if i != hole}
    (src / "tokenizer.json").write_text(json.dumps(tok))
    _, f = read(export_gguf(src, tmp_path / "holes.gguf", type="f32", write_modelfile=False).path)
    assert f["tokenizer.ggml.tokens"][hole] == f"[PAD{hole}]"
    assert f["tokenizer.ggml.token_type"][hole] == gguf.TokenType.UNUSED


def test_cli_writes_gguf_and_modelfile_elsewhere(cli, model_dir, tmp_path):
    out = tmp_path / "out" / "model.gguf"
    code, stdout, stderr = cli(
        "export", "gguf", model_dir[0], "-o", out, "--type", "q8_0", "--modelfile", tmp_path / "ollama" / "Modelfile"
    )
    assert code == 0, stderr
    assert str(out) in stdout and "q8_0" in stdout and "kB" in stdout
    assert read(out)[1]["general.file_type"] == 7
    assert "FROM ../out/model.gguf\n" in (tmp_path / "ollama" / "Modelfile").read_text()
    assert not (out.parent / "Modelfile").exists()


@pytest.mark.parametrize("case", ["not-gpt-bigcode", "missing-dir", "no-tokenizer", "bad-type"])
def test_cli_bad_input_is_one_line_error(cli, model_dir, tmp_path, case):
    src = tmp_path / "model"
    args = []
    if case == "not-gpt-bigcode":
        src.mkdir()
        (src / "config.json").write_text(json.dumps({"model_type": "llama"}))
        expected = "gpt_bigcode"
    elif case == "missing-dir":
        expected = "not found"
    elif case == "no-tokenizer":
        shutil.copytree(model_dir[0], src)
        (src / "tokenizer.json").unlink()
        expected = "tokenizer.json"
    else:
        shutil.copytree(model_dir[0], src)
        args = ["--type", "q4_0"]
        expected = "q4_0"
    code, _, stderr = cli("export", "gguf", src, "-o", tmp_path / "out" / "model.gguf", *args)
    assert code == 1
    assert stderr.startswith("error: ") and expected in stderr and len(stderr.strip().splitlines()) == 1
    assert not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True


def test_failure_while_writing_leaves_nothing(model_dir, tmp_path, monkeypatch):
    import codeinstruct.export.gguf as mod

    calls = []
    real = mod._convert

    def failing(data, qtype):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(data, qtype)

    monkeypatch.setattr(mod, "_convert", failing)
    out = tmp_path / "model.gguf"
    with pytest.raises(CodeinstructError, match="No space left"):
        export_gguf(model_dir[0], out)
    assert list(tmp_path.iterdir()) == []
