import pytest

from codeinstruct.data.records import InstructionRecord
from codeinstruct.data.sft import IGNORE_INDEX, percentiles, tokenize_records
from codeinstruct.errors import CodeinstructError
from codeinstruct.prompts import format_prompt


def _records(raw):
    return [InstructionRecord(r["instruction"], r["input"], r["response"]) for r in raw]


def test_labels_mask_exactly_the_prompt_and_train_response_plus_eos(tokenizer, eight_records):
    records = _records(eight_records)
    examples, report = tokenize_records(records, tokenizer, max_length=1024)
    assert report.kept == 8
    for record, ex in zip(records, examples):
        prompt_ids = tokenizer(format_prompt(record.instruction, record.input), add_special_tokens=False)["input_ids"]
        n_prompt = len(prompt_ids)
        # what inference feeds the model is exactly the masked prefix
        assert ex.input_ids[:n_prompt] == prompt_ids
        assert ex.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]
        # the trained part decodes to separator + response, then one real EOS
        assert ex.labels[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ex.labels[n_prompt:-1]) == "\n" + record.response
        assert ex.n_targets == len(ex.input_ids) - n_prompt


def test_special_token_text_in_a_record_is_text_and_the_final_eos_is_trained(tokenizer):
    # A response that mentions the EOS token as text must not teach the model to stop there.
    record = InstructionRecord("Print the end token.", "", "print('<|endoftext|>')")
    [ex], _ = tokenize_records([record], tokenizer, max_length=1024)
    eos = tokenizer.eos_token_id
    assert [i for i, token in enumerate(ex.input_ids) if token == eos] == [len(ex.input_ids) - 1]
    assert ex.labels[-1] == eos
    assert tokenizer.decode(ex.input_ids[:-1]).endswith("print('<|endoftext|>')")


def test_both_templates_are_used(tokenizer, eight_records):
    examples, _ = tokenize_records(_records(eight_records), tokenizer, max_length=1024)
    texts = [tokenizer.decode(e.input_ids) for e in examples]
    assert sum("### Input:" in t for t in texts) == 4


def test_overlong_drop_and_truncate(tokenizer):
    long = InstructionRecord("Repeat.", "", "x = 1\n" * 200)
    short = InstructionRecord("Say hi.", "", "print('hi')")
    examples, report = tokenize_records([long, short], tokenizer, max_length=128, overlong="drop")
    assert report.kept == 1 and report.dropped_overlong == 1 and report.truncated == 0
    examples, report = tokenize_records([long, short], tokenizer, max_length=128, overlong="truncate")
    assert report.kept == 2 and report.truncated == 1
    assert len(examples[0].input_ids) == 128
    assert examples[0].labels[-1] != tokenizer.eos_token_id  # cut responses do not pretend to end


def test_nothing_fits(tokenizer):
    with pytest.raises(CodeinstructError, match="no record fits"):
        tokenize_records([InstructionRecord("a" * 400, "", "b")], tokenizer, max_length=32, source="f.json")


def test_percentiles_nearest_rank():
    assert percentiles(list(range(1, 101)), (50, 95, 100)) == {"p50": 50, "p95": 95, "p100": 100}
