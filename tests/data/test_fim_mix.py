"""data.fim_mix: FIM examples mixed into instruction fine-tuning (token fraction, labels, isolation, sources)."""

import json

import pytest
import torch

from codeinstruct.config import recipe_from_dict
from codeinstruct.data.batches import row_target_counts
from codeinstruct.data.fim_mix import code_blocks, fim_example, line_chunks, mix_fim_examples
from codeinstruct.data.packing import collate_packed
from codeinstruct.data.records import InstructionRecord
from codeinstruct.data.sft import IGNORE_INDEX, tokenize_records
from codeinstruct.errors import CodeinstructError
from codeinstruct.prompts import FimTokens
from tests.conftest import write_json

CORPUS = ["".join(f"def f{d}_{i}(x):\n    y = x * {i}\n    return y + {d}\n\n" for i in range(12)) for d in range(6)]


@pytest.fixture(scope="module")
def sft_examples(tokenizer, instruction_records):
    records = [InstructionRecord(r["instruction"], r["input"], r["response"]) for r in instruction_records]
    return tokenize_records(records, tokenizer, max_length=512)[0]


def _decode(tokenizer, ids):
    return tokenizer.decode(ids)


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.6])
def test_fim_examples_make_up_the_fraction_of_training_tokens(tokenizer, sft_examples, fraction):
    mixed, report = mix_fim_examples(sft_examples, tokenizer, corpus=CORPUS, fraction=fraction, max_length=128)
    assert mixed[: len(sft_examples)] == sft_examples  # the instruction examples are untouched, in order
    fim = mixed[len(sft_examples) :]
    fim_tokens = sum(len(e.input_ids) for e in fim)
    all_tokens = sum(len(e.input_ids) for e in mixed)
    assert report.examples == len(fim) and report.tokens == fim_tokens
    assert report.fraction == pytest.approx(fim_tokens / all_tokens)
    # the draw stops at the first example that reaches the share: it is off by less than one example
    largest = max(len(e.input_ids) for e in fim) / all_tokens
    assert fraction <= report.fraction < fraction + largest, report.as_dict()
    assert report.target_tokens == row_target_counts(fim, [list(range(len(fim)))])[0]  # what training counts


def test_a_small_corpus_is_drawn_again_at_new_split_points(tokenizer, sft_examples):
    mixed, report = mix_fim_examples(sft_examples, tokenizer, corpus=CORPUS[:1], fraction=0.5, max_length=128)
    fim = mixed[len(sft_examples) :]
    assert report.passes > 1 and report.fraction >= 0.5
    assert len({tuple(e.input_ids) for e in fim}) > 0.9 * len(fim)  # the same chunks, split elsewhere


def test_middle_loss_is_on_the_middle_and_eos_and_the_document_reassembles(tokenizer):
    t = FimTokens.from_tokenizer(tokenizer)
    import random

    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        text = CORPUS[0][:200]
        e = fim_example(text, tokenizer, rng, fim_rate=1.0, fim_spm_rate=0.5, loss="middle")
        ids, labels = e.input_ids, e.labels
        m = ids.index(t.middle)
        assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id
        first_target = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        middle_ids = ids[first_target:-1]
        if ids[1] == t.suffix:  # SPM: <fim_prefix><fim_suffix> suffix <fim_middle> prefix middle
            seen.add("spm")
            assert first_target > m
            suffix = _decode(tokenizer, ids[2:m])
            prefix = _decode(tokenizer, ids[m + 1 : first_target])
        else:  # PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle
            seen.add("psm")
            assert first_target == m + 1
            s = ids.index(t.suffix)
            prefix, suffix = _decode(tokenizer, ids[1:s]), _decode(tokenizer, ids[s + 1 : m])
        assert labels[first_target:] == ids[first_target:]  # every token after the context is a target
        assert prefix + _decode(tokenizer, middle_ids) + suffix == text
    assert seen == {"psm", "spm"}
    whole = fim_example(CORPUS[0][:200], tokenizer, random.Random(0), loss="all")
    assert whole.labels == whole.input_ids


def test_packed_fim_and_instruction_examples_stay_isolated(tokenizer, sft_examples):
    from transformers import AutoModelForCausalLM

    from codeinstruct.modeling import preset_config
    from codeinstruct.train.step import model_attention_mask

    mixed, report = mix_fim_examples(sft_examples[:6], tokenizer, corpus=CORPUS, fraction=0.5, max_length=128)
    row = [mixed[0], mixed[-1], mixed[1], mixed[-2]]  # instruction, FIM, instruction, FIM
    batch = collate_packed([row], pad_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(preset_config("tiny", vocab_size=len(tokenizer))).eval()
    with torch.no_grad():
        packed = model(
            input_ids=batch.input_ids,
            attention_mask=model_attention_mask(model, batch.attention_mask),
            position_ids=batch.position_ids,
        ).logits[0]
        start = 0
        for example in row:
            n = len(example.input_ids)
            alone = model(input_ids=torch.tensor([example.input_ids])).logits[0]
            torch.testing.assert_close(packed[start : start + n], alone, atol=1e-5, rtol=0)
            # a target never crosses into the next example: the last token of each predicts nothing
            assert batch.targets[0, start + n - 1] == IGNORE_INDEX
            assert batch.targets[0, start : start + n - 1].tolist() == example.labels[1:]
            start += n
    assert batch.n_targets == sum(e.n_targets for e in row)


def test_the_same_seed_draws_the_same_mix_and_another_seed_another(tokenizer, sft_examples):
    a = mix_fim_examples(sft_examples, tokenizer, corpus=CORPUS, fraction=0.3, max_length=128, seed=1)[0]
    b = mix_fim_examples(sft_examples, tokenizer, corpus=CORPUS, fraction=0.3, max_length=128, seed=1)[0]
    c = mix_fim_examples(sft_examples, tokenizer, corpus=CORPUS, fraction=0.3, max_length=128, seed=2)[0]
    assert a == b and a != c


def test_chunks_are_whole_lines_within_the_token_limit(tokenizer):
    chunks, skipped = line_chunks(CORPUS[1] + "x = '" + "a" * 3000 + "'\nz = 1\n", tokenizer, 40)
    assert skipped == 1 and chunks[-1] == "z = 1\n"
    assert "".join(chunks[:-1]) == CORPUS[1]
    from codeinstruct.tokenizer import encode_text

    assert all(len(encode_text(tokenizer, c)) <= 40 for c in chunks)
    mixed, report = mix_fim_examples([], tokenizer, corpus=CORPUS, fraction=0.3, max_length=64)
    assert not mixed and report.examples == 0  # nothing to mix into: no tokens to take a share of


def test_code_blocks_of_responses():
    assert code_blocks("Use this:\n```python\ndef f():\n    return 1\n```\nand ```js\nlet x = 1;\n```") == [
        "def f():\n    return 1\n"
    ]
    assert code_blocks("#include <stdio.h>\nint main() { return 0; }\n") == [
        "#include <stdio.h>\nint main() { return 0; }\n"
    ]
    assert code_blocks("The output of this code snippet will be six, since the loop runs twice.") == []


def _recipe(tmp_path, data, tokenizer_dir, **mix):
    tree = {
        "name": "mix",
        "seed": 3,
        "run_dir": str(tmp_path / "run"),
        "model": {"source": "preset:tiny", "tokenizer": str(tokenizer_dir)},
        "data": {"train": str(data), "max_length": 256, "held_out": 0.25},
        "train": {"epochs": 1, "batch_size": 4, "lr": 3e-3, "precision": "fp32"},
    }
    if mix:
        tree["data"]["fim_mix"] = mix
    return recipe_from_dict(tree)


def test_prepare_mixes_the_corpus_and_training_responses_only(tmp_path, tokenizer_dir, instruction_records):
    from codeinstruct.train.prepare import prepare_sft

    records = [dict(r, response=f"def unique_{i}(a):\n    return a + {i}\n") for i, r in enumerate(instruction_records)]
    data = write_json(tmp_path / "records.json", records)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(CORPUS):
        (corpus / f"m{i}.py").write_text(text)
    recipe = _recipe(tmp_path, data, tokenizer_dir, corpus=str(corpus), from_responses=True, fraction=0.4)
    prepared = prepare_sft(recipe)
    report = prepared.fim_mix
    assert report.from_corpus > 0 and report.from_responses > 0 and report.response_blocks == 48
    fim_text = "".join(prepared.tokenizer.decode(e.input_ids) for e in prepared.examples[report.instruction_examples :])
    held_out = {int(r.response.split("(")[0].split("_")[1]) for r in prepared.held_out}
    assert held_out and not any(f"unique_{i}(" in fim_text for i in held_out)  # never a held-out record's code
    plain = prepare_sft(_recipe(tmp_path, data, tokenizer_dir))
    assert plain.fim_mix is None and plain.examples == prepared.examples[: report.instruction_examples]


def test_training_with_the_mix_records_it_in_the_run_folder_and_card(tmp_path, tokenizer_dir, eight_records):
    from codeinstruct.train.loop import train
    from codeinstruct.train.prepare import prepare_sft

    data = write_json(tmp_path / "eight.json", eight_records)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"content": t, "path": f"m{i}.py"}) + "\n" for i, t in enumerate(CORPUS)))
    recipe = _recipe(tmp_path, data, tokenizer_dir, corpus=str(corpus), fraction=0.3)
    prepared = prepare_sft(recipe)
    train(recipe, prepared)
    saved = json.loads((tmp_path / "run" / "fim_mix.json").read_text())
    assert saved["examples"] == prepared.fim_mix.examples and saved["fraction"] >= 0.3
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert f"{saved['examples']:,} FIM examples, {saved['fraction'] * 100:.1f}% of the training tokens" in card
    assert f"the corpus `{corpus}`" in card and "loss on the middle and EOS" in card

    # retention measured afterwards goes into the run folder and the card
    from codeinstruct.card import write_model_card
    from codeinstruct.evaluate.fim_retention import line_infilling_tasks, measure_retention, write_retention

    tasks = line_infilling_tasks([(f"h{i}.py", CORPUS[i].replace("x", "z")) for i in range(4)], 4, seen=CORPUS)
    rows = measure_retention({"fine-tuned": tmp_path / "run" / "final"}, tasks, prepared.held_out, max_length=256)
    write_retention(tmp_path / "run", rows, "FIM exact-match on 4 lines")
    card = write_model_card(tmp_path / "run").read_text()
    r = rows[0]
    assert "## Fill-in-the-Middle retention" in card and "FIM exact-match on 4 lines." in card
    assert (
        f"| fine-tuned | {r.fim_exact_match * 100:.1f}% ({r.fim_correct}/4) | {r.fim_loss:.4f} | "
        f"{r.instruction_loss:.4f} |" in card
    )


@pytest.mark.parametrize(
    "mix,message",
    [
        ({"corpus": "c", "fraction": 1.0}, "data.fim_mix.fraction: Input should be less than 1"),
        ({"corpus": "c", "losss": "all"}, "data.fim_mix.losss: unknown key"),
        ({"corpus": "c", "loss": "prefix"}, "data.fim_mix.loss: Input should be 'middle' or 'all'"),
        ({"fraction": 0.2}, "data.fim_mix: needs a corpus, from_responses: true, or both"),
    ],
)
def test_bad_mix_settings_are_one_line_errors(tmp_path, tokenizer_dir, mix, message):
    with pytest.raises(CodeinstructError, match=message) as e:
        _recipe(tmp_path, "d.json", tokenizer_dir, **mix)
    assert "\n" not in str(e.value)


def test_bad_corpus_and_overlong_chunks_stop_before_training(tmp_path, tokenizer_dir, eight_records):
    from codeinstruct.train.prepare import prepare_pretrain, prepare_sft

    data = write_json(tmp_path / "eight.json", eight_records)
    with pytest.raises(CodeinstructError, match="no such file or directory"):
        prepare_sft(_recipe(tmp_path, data, tokenizer_dir, corpus=str(tmp_path / "missing")))
    with pytest.raises(CodeinstructError, match="chunk_tokens=300: must be between 16 and data.max_length - 8"):
        prepare_sft(_recipe(tmp_path, data, tokenizer_dir, corpus=str(data), chunk_tokens=300))
    recipe = _recipe(tmp_path, data, tokenizer_dir, corpus=str(data))
    with pytest.raises(CodeinstructError, match="data.fim_mix: mixes FIM into fine-tuning"):
        prepare_pretrain(recipe)
    assert not (tmp_path / "run").exists()
