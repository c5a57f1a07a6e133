import pytest


@pytest.mark.slow
def test_demo_runs_the_whole_path_offline(tmp_path, cli):
    """`make demo`: pretrain with FIM -> instruction-tune -> answers, from nothing but the local stdlib (~3 min)."""
    code, out, err = cli("demo", "--run-dir", tmp_path / "demo", "--examples", 2)
    assert code == 0, err
    for stage in ("1/3 pretraining", "2/3 instruction fine-tuning", "3/3 using it", "model's answer", "Fill-in-the-Middle"):
        assert stage in out
    for part in ("pretrain", "finetune"):
        final = tmp_path / "demo" / part / "final"
        assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
        assert (tmp_path / "demo" / part / "loss.png").exists()
