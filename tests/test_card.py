"""MODEL_CARD.md: written at the end of training from the run folder, rewritten with scores."""

import json

from codeinstruct.config import load_recipe
from codeinstruct.evaluate.benchmarks import load_humaneval
from codeinstruct.train.loop import train
from codeinstruct.train.prepare import prepare_sft
from tests.conftest import write_json


def test_training_writes_a_card_and_card_adds_scores(tmp_path, cli, tokenizer_dir, eight_records):
    data = write_json(tmp_path / "eight.json", eight_records)
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(
        json.dumps(
            {
                "name": "cardtest",
                "seed": 4,
                "run_dir": str(tmp_path / "run"),
                "model": {"source": "preset:tiny", "tokenizer": str(tokenizer_dir)},
                "data": {"train": str(data), "max_length": 256},
                "train": {"epochs": 2, "batch_size": 4, "lr": 3e-3, "precision": "fp32"},
            }
        )
    )
    recipe = load_recipe(recipe_file)
    result = train(recipe, prepare_sft(recipe))
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert card.splitlines()[1] == "# cardtest"
    assert "fine-tuned from `preset:tiny`" in card and "learning rate 0.003" in card and "seed 4" in card
    assert f"{result.steps} optimizer steps" in card and f"final loss {result.final_loss:.4f}" in card
    assert "### Response:" in card and "Not evaluated yet" in card
    params = sum(
        p.numel()
        for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(result.final_dir).parameters()
    )
    assert f"parameters: {params:,}" in card

    # a real HumanEval score file for two problems (canonical solutions, run in the sandbox)
    problems = load_humaneval().problems[:2]
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "".join(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n" for p in problems)
    )
    code, _, err = cli("eval", "score", samples, "--allow-code-execution", "--out", tmp_path / "scores.json")
    assert code == 0, err
    code, out, err = cli("card", tmp_path / "run", "--eval", tmp_path / "scores.json")
    assert code == 0, err
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert "pass@1 100.00" in card and "fine-tuned from" in card  # still the fine-tuning card

    code, _, err = cli("card", tmp_path)
    assert code == 1 and "not a finished run folder" in err
