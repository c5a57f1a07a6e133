import json

import pytest

from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate import humaneval
from codeinstruct.evaluate.humaneval import GenerationConfig, generate_samples
from codeinstruct.evaluate.postprocess import BASE_STOP_WORDS


def test_samples_file_records_prompt_output_completion_and_config(tiny_model_dir, tmp_path):
    out = tmp_path / "samples.jsonl"
    config = GenerationConfig(model=str(tiny_model_dir), n=2, temperature=1.0, max_new_tokens=8, seed=5, limit=2)
    seen = []
    report = generate_samples(config, out, on_progress=lambda done, total: seen.append((done, total)))
    assert (report.problems, report.samples) == (2, 4) and seen == [(1, 2), (2, 2)]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["task_id"], r["sample"], r["seed"]) for r in rows] == [
        ("HumanEval/0", 0, 5),
        ("HumanEval/0", 1, 5),
        ("HumanEval/1", 0, 6),
        ("HumanEval/1", 1, 6),
    ]
    first = rows[0]
    assert first["prompt"].endswith('"""') and first["prompt"].startswith("from typing import List")
    assert not any(stop in first["raw_output"] for stop in BASE_STOP_WORDS)
    config_seen = first["config"]
    assert config_seen["model"] == str(tiny_model_dir.resolve())
    assert (config_seen["dtype"], config_seen["mode"], config_seen["n"], config_seen["temperature"]) == (
        "float32",
        "base",
        2,
        1.0,
    )
    assert config_seen["stop_words"] == list(BASE_STOP_WORDS) and config_seen["benchmark"] == "humaneval"
    assert config_seen["seed"] == 5 and config_seen["max_new_tokens"] == 8 and config_seen["top_p"] == 0.95
    # The same seed gives the same samples.
    again = tmp_path / "again.jsonl"
    generate_samples(config, again)
    assert again.read_text() == out.read_text()


def test_instruct_mode_sends_the_alpaca_prompt(tiny_model_dir, tmp_path):
    out = tmp_path / "samples.jsonl"
    generate_samples(GenerationConfig(model=str(tiny_model_dir), mode="instruct", max_new_tokens=4, limit=1), out)
    row = json.loads(out.read_text())
    assert row["prompt"].endswith("### Response:") and "### Input:\nfrom typing import List" in row["prompt"]
    assert row["config"]["stop_words"] == ["### Instruction:"] and "instruction" in row["config"]


def test_samples_are_fixed_by_seed_and_index_however_they_are_batched(tiny_model_dir, tokenizer):
    from codeinstruct.infer.engine import Engine

    engine = Engine.from_pretrained(tiny_model_dir, max_batch_size=2)
    prompts = ["def f(x):\n", "def g(y):\n"]
    three = list(humaneval._sample(engine, prompts, 3, 1.0, 1.0, 12, list(BASE_STOP_WORDS), seed=10))
    assert len(three) == 2 and all(len(s) == 3 for s in three)  # 3 samples over slots of 2: split in two requests
    wide = Engine.from_pretrained(tiny_model_dir, max_batch_size=8)
    assert list(humaneval._sample(wide, prompts, 3, 1.0, 1.0, 12, list(BASE_STOP_WORDS), seed=10)) == three
    assert len(set(three[0])) > 1
    assert not any(stop in text for samples in three for text in samples for stop in BASE_STOP_WORDS)


def test_greedy_samples_are_decoded_once(tiny_model_dir, monkeypatch):
    from codeinstruct.infer.engine import Engine

    engine = Engine.from_pretrained(tiny_model_dir)
    submitted = []
    submit = engine.submit
    monkeypatch.setattr(engine, "submit", lambda prompt, params: submitted.append(params.n) or submit(prompt, params))
    [samples] = humaneval._sample(engine, ["def f(x):\n"], 4, 0.0, 1.0, 12, list(BASE_STOP_WORDS), seed=0)
    assert submitted == [1] and len(samples) == 4 and len(set(samples)) == 1


def test_a_failed_generation_leaves_no_samples_file(monkeypatch, tiny_model_dir, tmp_path):
    def broken(*args, **kwargs):
        raise CodeinstructError("the prompt has 2000 tokens; the model's context is 1024")

    monkeypatch.setattr(humaneval, "_sample", broken)
    out = tmp_path / "samples.jsonl"
    with pytest.raises(CodeinstructError, match="context"):
        generate_samples(GenerationConfig(model=str(tiny_model_dir), limit=1), out)
    assert list(tmp_path.iterdir()) == []


def test_bad_settings_are_refused_before_loading_anything(tmp_path):
    with pytest.raises(CodeinstructError, match="unknown mode"):
        generate_samples(GenerationConfig(model="nowhere", mode="chat"), tmp_path / "s.jsonl")
    with pytest.raises(CodeinstructError, match="--n must be at least 1"):
        generate_samples(GenerationConfig(model="nowhere", n=0), tmp_path / "s.jsonl")
    with pytest.raises(CodeinstructError, match="not a model directory"):
        generate_samples(GenerationConfig(model=str(tmp_path)), tmp_path / "s.jsonl")
