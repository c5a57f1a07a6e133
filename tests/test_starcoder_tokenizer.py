"""Tokenization identical to StarCoder's: every path that turns text into ids (training data,
prompts, FIM, the server's raw prompts) gives exactly the ids that the `tokenizers` library gives
on the directory's tokenizer.json, for real StarCoder/StarCoder2 directories and for ours.

The real directories and their ground-truth ids live in ../shared/data/starcoder-tokenizer (the
ids of bigcode/starcoder's own tokenizer, and llama.cpp's StarCoder2 vectors); those tests skip
without it. The rest build a directory in StarCoder's layout from a tokenizer trained here.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codeinstruct.data.records import InstructionRecord
from codeinstruct.data.sft import tokenize_records
from codeinstruct.infer.streaming import Detokenizer, TextStream
from codeinstruct.prompts import FimTokens, encode_text, fim_prompt_ids, format_prompt, format_target
from codeinstruct.serve.openai_compat import encode_raw_prompt
from codeinstruct.tokenizer import SPECIAL_TOKENS, encode_texts, load_tokenizer, restore_pipeline, save_tokenizer

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "starcoder-tokenizer"
STARCODER, STARCODER2 = REAL / "starcoder", REAL / "starcoder2"


def real_dir(d: Path) -> Path:
    if not (d / "tokenizer.json").exists():
        pytest.skip(f"real StarCoder tokenizer not found at {d} (shared test data, not in the repository)")
    return d


def ground_truth(d: Path) -> list[tuple[str, list[int]]]:
    """(text, ids) pairs: `text => id,id` lines, and llama.cpp's .inp/.out test files."""
    cases = []
    vectors = d / "hf-vectors.txt"
    if vectors.exists():
        for line in vectors.read_text(encoding="utf-8").split("\n"):
            if " => " in line:
                text, ids = line.rsplit(" => ", 1)
                cases.append((text, [int(i) for i in ids.split(",")]))
    for inp in sorted(d.glob("*.inp")):
        texts = inp.read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]  # each text ends with the marker
        outs = inp.with_suffix(".out").read_text(encoding="utf-8").split("\n")
        cases += [(t, [int(i) for i in o.split()]) for t, o in zip(texts, outs, strict=False)]
    return cases


@pytest.fixture(scope="module")
def starcoder():
    return load_tokenizer(real_dir(STARCODER))


@pytest.fixture(scope="module")
def starcoder2():
    return load_tokenizer(real_dir(STARCODER2))


@pytest.mark.parametrize("name, expected", [("starcoder", 260), ("starcoder2", 46)])
def test_ground_truth_vectors_encode_exactly(name, expected, request):
    tok = request.getfixturevalue(name)
    cases = ground_truth(STARCODER if name == "starcoder" else STARCODER2)
    assert len(cases) == expected
    wrong = [(text, encode_text(tok, text), ids) for text, ids in cases if encode_text(tok, text) != ids]
    assert not wrong, f"{len(wrong)} of {len(cases)} differ, e.g. {wrong[:3]}"
    # the batched path (training data) and decoding back
    assert encode_texts(tok, [t for t, _ in cases]) == [ids for _, ids in cases]
    assert all(tok.decode(ids) == text for text, ids in cases)


def test_indented_numbers_keep_starcoders_digit_split(starcoder):
    assert encode_text(starcoder, "    42") == [262, 38, 36]
    assert encode_text(starcoder, "\t\t1") == [294, 35]
    # what transformers' own GPT2Tokenizer class makes of the same directory (the bug worked around)
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(STARCODER))
    if auto("    42", add_special_tokens=False)["input_ids"] != [262, 38, 36]:
        assert "pre_tokenizer" in restore_pipeline(auto, STARCODER / "tokenizer.json")
        assert auto("    42", add_special_tokens=False)["input_ids"] == [262, 38, 36]


def test_training_examples_and_prompts_use_starcoders_ids(starcoder):
    """The SFT path (prompt prefix check, labels) on the real vocabulary, numbers indented in code."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(STARCODER / "tokenizer.json"))
    record = InstructionRecord("Return the answer.", "", "def f():\n    return  42\n\tx = [1,  2,   3]")
    examples, _ = tokenize_records([record], starcoder, max_length=1024)
    full = format_prompt(record.instruction) + format_target(record.response)
    assert examples[0].input_ids == raw.encode(full, add_special_tokens=False).ids + [starcoder.eos_token_id]


def test_fim_control_tokens_on_the_real_vocabulary(starcoder):
    fim = FimTokens.from_tokenizer(starcoder)
    assert (fim.prefix, fim.middle, fim.suffix, fim.pad) == (1, 2, 3, 4)
    prefix, suffix = "def f(x):\n    return ", "\n\nprint(f(  3))\n"
    psm = fim_prompt_ids(starcoder, prefix, suffix)
    assert psm == [1, *encode_text(starcoder, prefix), 3, *encode_text(starcoder, suffix), 2]
    spm = fim_prompt_ids(starcoder, prefix, suffix, spm=True)
    assert spm == [1, 3, *encode_text(starcoder, suffix), 2, *encode_text(starcoder, prefix)]
    # raw prompts with FIM strings (what editors send the server) become the same control tokens
    ids, is_fim = encode_raw_prompt(starcoder, f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>")
    assert is_fim and ids == psm
    # text that merely looks like a control token stays text, and decodes back to itself
    literal = encode_text(starcoder, 'tag = "<fim_middle>"')
    assert not set(literal) & set(range(19)) and starcoder.decode(literal) == 'tag = "<fim_middle>"'


def test_streaming_detokenization_and_stop_strings_on_the_real_vocabulary(starcoder):
    text = "def grüße():\n    return '你好🙂'  # 12½ ²\n### Instruction:\nmore"
    ids = [2, *encode_text(starcoder, text), 0]  # control tokens around it are not shown
    detok, stream, shown = Detokenizer(starcoder), TextStream(("### Instruction:",)), []
    for i in ids:
        piece = detok.push(i)
        assert "\ufffd" not in piece
        delta, stopped = stream.feed(piece)
        shown.append(delta)
        if stopped:
            break
    assert "".join(shown) == text[: text.index("### Instruction:")]


def _starcoder_layout_copy(tokenizer_dir: Path, out: Path) -> Path:
    """Our tokenizer's files with StarCoder's tokenizer_config.json (GPT2Tokenizer, cleanup on)."""
    out.mkdir()
    (out / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        "bos_token": SPECIAL_TOKENS[0],
        "eos_token": SPECIAL_TOKENS[0],
        "unk_token": SPECIAL_TOKENS[0],
        "additional_special_tokens": SPECIAL_TOKENS,
        "model_max_length": 10**30,
        "vocab_size": 800,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


CODE = st.lists(
    st.sampled_from(list(" \t\n0123456789½²³xy=_([,]).:'\"#<>ü你🙂") + ["<fim_middle>", "    ", "\r\n"]), max_size=60
).map("".join) | st.text(max_size=60)


@pytest.fixture(scope="module")
def gpt2_layout(tokenizer_dir, tmp_path_factory):
    """The same directory through load_tokenizer, and through transformers' AutoTokenizer (which
    builds a GPT2Tokenizer and rebuilds its pre-tokenizer) with restore_pipeline applied."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    d = _starcoder_layout_copy(tokenizer_dir, tmp_path_factory.mktemp("gpt2") / "tok")
    raw = Tokenizer.from_file(str(d / "tokenizer.json"))
    raw.encode_special_tokens = True
    auto = AutoTokenizer.from_pretrained(str(d))
    broken = auto("    42", add_special_tokens=False)["input_ids"] != raw.encode("    42").ids
    restored = restore_pipeline(auto, d / "tokenizer.json")
    assert not broken or "pre_tokenizer" in restored, restored
    auto.clean_up_tokenization_spaces = False
    return {"load_tokenizer": load_tokenizer(d), "AutoTokenizer+restore_pipeline": auto}, raw


@settings(max_examples=300, deadline=None)
@given(CODE)
def test_a_directory_in_starcoders_layout_encodes_as_its_tokenizer_json(gpt2_layout, text):
    """Runs from a clone: a GPT2Tokenizer-class directory (how StarCoder's says it) keeps its digit split."""
    loaded, raw = gpt2_layout
    expected = raw.encode(text, add_special_tokens=False).ids
    for how, tok in loaded.items():
        assert encode_text(tok, text) == expected, how
        assert tok.decode(expected) == text, how  # no clean-up of spaces before punctuation
    assert (
        loaded["AutoTokenizer+restore_pipeline"](text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        == expected
    )


@pytest.fixture(scope="module")
def starcoder_raw(starcoder):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(STARCODER / "tokenizer.json"))
    raw.encode_special_tokens = True
    return raw


@settings(max_examples=200, deadline=None)
@given(CODE)
def test_real_starcoder_encodes_as_the_tokenizers_library(starcoder, starcoder_raw, text):
    raw = starcoder_raw
    assert encode_text(starcoder, text) == raw.encode(text, add_special_tokens=False).ids


def test_saved_directory_loads_unchanged_everywhere(tokenizer, tmp_path):
    """What codeinstruct writes: the class every transformers version loads as the file says,
    cleanup off, StarCoder's special-token list, no post-processor, no special_tokens_map.json."""
    from transformers import AutoTokenizer

    save_tokenizer(tokenizer, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["clean_up_tokenization_spaces"] is False
    assert config["additional_special_tokens"] == SPECIAL_TOKENS
    assert config["eos_token"] == config["bos_token"] == config["unk_token"] == SPECIAL_TOKENS[0]
    assert "pad_token" not in config
    pipeline = json.loads((tmp_path / "tokenizer.json").read_text())
    assert pipeline["post_processor"] is None and pipeline["normalizer"] is None
    assert [p["type"] for p in pipeline["pre_tokenizer"]["pretokenizers"]] == ["Digits", "ByteLevel"]
    auto = AutoTokenizer.from_pretrained(str(tmp_path))
    text = "x =  5\n\t\t1 + <fim_prefix> ok ."
    assert auto(text)["input_ids"] == auto(text, add_special_tokens=False)["input_ids"]  # nothing added
    assert auto(text, split_special_tokens=True)["input_ids"] == encode_text(tokenizer, text)
    assert auto.decode(encode_text(tokenizer, text)) == text


def test_the_alphabet_holds_all_256_bytes(tokenizer):
    """Unlike StarCoder's vocabulary (14 byte symbols missing), any string round-trips."""
    text = "".join(chr(c) for c in (0x0, 0x7F, 0xA0, 0x40000, 0x7FFFF, 0x10FFFF))
    assert tokenizer.decode(encode_text(tokenizer, text)) == text


def test_encoding_is_safe_across_threads(tokenizer):
    """Server threads encode user text (control-token text kept as text) while others read raw
    control tokens; one must never change what the other gets."""
    literal = encode_text(tokenizer, "<fim_prefix>")
    assert literal != [1]
    failures = []

    def plain():
        for _ in range(300):
            if encode_text(tokenizer, "<fim_prefix>") != literal:
                failures.append("text")

    def control():
        for _ in range(300):
            if encode_raw_prompt(tokenizer, "<fim_prefix>")[0] != [1]:
                failures.append("control")
            if tokenizer("<fim_prefix>", add_special_tokens=False)["input_ids"] != [1]:
                failures.append("transformers")

    threads = [threading.Thread(target=f) for f in (plain, control, plain, control)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


def test_missing_directory_is_a_one_line_error(tmp_path):
    from codeinstruct.errors import CodeinstructError

    with pytest.raises(CodeinstructError, match="tokenizer directory not found"):
        load_tokenizer(tmp_path / "nope")
