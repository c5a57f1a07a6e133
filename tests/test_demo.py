import json

import pytest


@pytest.mark.slow
def test_demo_runs_the_whole_path_offline(tmp_path, cli):
    """`make demo`: pretrain with FIM -> instruction-tune with FIM mixed in -> answers and FIM retention, from
    nothing but the local stdlib (~4 min)."""
    code, out, err = cli("demo", "--run-dir", tmp_path / "demo", "--examples", 2, "--allow-code-execution")
    assert code == 0, err
    for stage in (
        "1/4 pretraining",
        "2/4 instruction fine-tuning",
        "3/4 using it",
        "model's answer",
        "Fill-in-the-Middle",
        "4/4 trusting and evaluating it",
        "attribution index:",
        "HumanEval (first 5 problems",
    ):
        assert stage in out
    assert "answer 1" in out and "isolation:" in out
    # FIM retention: the base and the FIM-aware instruction model scored on the same held-out lines
    assert "FIM mix:" in out and "Fill-in-the-Middle kept through instruction tuning" in out
    for model in ("base (pretrained)", "FIM-aware instruction model"):
        assert any(line.startswith(model) and "FIM exact-match" in line for line in out.splitlines()), out
    retention = json.loads((tmp_path / "demo" / "finetune" / "fim_retention.json").read_text())
    assert [m["name"] for m in retention["models"]] == ["base (pretrained)", "FIM-aware instruction model"]
    assert retention["models"][0]["fim_tasks"] == 60
    card = (tmp_path / "demo" / "finetune" / "MODEL_CARD.md").read_text()
    assert "Fill-in-the-Middle mixed in" in card and "## Fill-in-the-Middle retention" in card
    for part in ("pretrain", "finetune"):
        final = tmp_path / "demo" / part / "final"
        assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
        assert (tmp_path / "demo" / part / "loss.png").exists()
