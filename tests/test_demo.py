import pytest


@pytest.mark.slow
def test_demo_runs_the_whole_path_offline(tmp_path, cli):
    """`make demo`: pretrain with FIM -> instruction-tune -> answers, from nothing but the local stdlib (~4 min)."""
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
    for part in ("pretrain", "finetune"):
        final = tmp_path / "demo" / part / "final"
        assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
        assert (tmp_path / "demo" / part / "loss.png").exists()
