import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from codeinstruct.config import recipe_from_dict
from codeinstruct.data.packing import collate_padded
from codeinstruct.data.records import InstructionRecord
from codeinstruct.data.sft import tokenize_records
from codeinstruct.modeling import load_model
from codeinstruct.train.loop import train
from codeinstruct.train.prepare import prepare_sft
from codeinstruct.train.step import accumulate_gradients
from tests.conftest import write_json


def _recipe(tmp_path, data_file, tokenizer_dir, run="run", **train):
    cfg = dict(epochs=3, batch_size=2, lr=3e-3, precision="fp32", save_every=4, log_every=1)
    cfg.update(train)
    return recipe_from_dict(
        {
            "name": "t",
            "seed": 7,
            "run_dir": str(tmp_path / run),
            "model": {"source": "preset:tiny", "tokenizer": str(tokenizer_dir)},
            "data": {"train": str(data_file), "max_length": 256, "packing": False},
            "train": cfg,
        }
    )


def _weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_accumulated_gradient_equals_one_big_batch(tokenizer, eight_records):
    records = [InstructionRecord(r["instruction"], r["input"], r["response"]) for r in eight_records[:4]]
    examples, _ = tokenize_records(records, tokenizer, max_length=512)
    assert len({e.n_targets for e in examples}) > 1  # uneven micro-batches make the difference visible
    torch.manual_seed(0)
    model = load_model("preset:tiny", tokenizer=tokenizer)

    n_targets = sum(e.n_targets for e in examples)

    def grads(batches):
        model.zero_grad()
        loss_sum = accumulate_gradients(model, [(b, 1.0) for b in batches], "cpu", None, n_targets)
        return loss_sum / n_targets, [p.grad.clone() for p in model.parameters()]

    big_loss, big = grads([collate_padded(examples, 0)])
    acc_loss, acc = grads([collate_padded([e], 0) for e in examples])
    assert abs(big_loss - acc_loss) < 1e-5
    for a, b in zip(big, acc):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # the usual mean of per-micro-batch means is a different gradient
    model.zero_grad()
    for e in examples:
        b = collate_padded([e], 0)
        from codeinstruct.train.step import batch_loss_sum

        (batch_loss_sum(model, b, None) / b.n_targets / len(examples)).backward()
    assert not all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(model.parameters(), big))


def test_run_folder_and_determinism(tmp_path, tokenizer_dir, eight_records):
    data = write_json(tmp_path / "d.json", eight_records)
    r1 = _recipe(tmp_path, data, tokenizer_dir, "a")
    res = train(r1, prepare_sft(r1))
    run = tmp_path / "a"
    assert {"config.yaml", "metrics.jsonl", "loss.png", "checkpoints", "final"} <= {p.name for p in run.iterdir()}
    assert sorted(p.name for p in (run / "final").iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, res.steps + 1)) and res.steps == 12
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert sum(1 for _ in (run / "checkpoints").iterdir()) == 2  # keep_checkpoints

    r2 = _recipe(tmp_path, data, tokenizer_dir, "b")
    train(r2, prepare_sft(r2))
    w1, w2 = _weights(run), _weights(tmp_path / "b")
    assert all(torch.equal(w1[k], w2[k]) for k in w1)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(run / "final"))
    assert model.config.model_type == "gpt_bigcode" and model.config.multi_query


def test_existing_run_folder_is_not_overwritten(tmp_path, tokenizer_dir, eight_records):
    data = write_json(tmp_path / "d.json", eight_records)
    recipe = _recipe(tmp_path, data, tokenizer_dir, epochs=1)
    train(recipe, prepare_sft(recipe))
    from codeinstruct.errors import CodeinstructError

    with pytest.raises(CodeinstructError, match="already exists"):
        train(recipe, prepare_sft(recipe))
    with pytest.raises(CodeinstructError, match="already finished"):
        train(recipe, prepare_sft(recipe), resume=True)


def test_killed_run_resumes_to_the_same_weights(tmp_path, tokenizer_dir, eight_records):
    data = write_json(tmp_path / "d.json", eight_records)
    # batch 1, 8 steps an epoch: long enough to kill in the middle, checkpoint every 4 steps
    kw = dict(epochs=12, batch_size=1, save_every=4)
    reference = _recipe(tmp_path, data, tokenizer_dir, "ref", **kw)
    train(reference, prepare_sft(reference))

    killed = _recipe(tmp_path, data, tokenizer_dir, "killed", **kw)
    recipe_file = tmp_path / "killed.yaml"
    recipe_file.write_text(killed.to_yaml())
    proc = subprocess.Popen(
        [sys.executable, "-m", "codeinstruct", "finetune", str(recipe_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (ckpts.exists() and any(p.name == "step-8" for p in ckpts.iterdir())):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "final").exists(), "training finished before it could be killed"

    result = train(killed, prepare_sft(killed), resume=True)
    assert result.resumed_from is not None and 8 <= result.resumed_from < 96
    w_ref, w_resumed = _weights(tmp_path / "ref"), _weights(tmp_path / "killed")
    assert all(torch.equal(w_ref[k], w_resumed[k]) for k in w_ref)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 97))  # no step logged twice after the resume


def test_stale_partial_checkpoint_is_ignored(tmp_path, tokenizer_dir, eight_records):
    data = write_json(tmp_path / "d.json", eight_records)
    recipe = _recipe(tmp_path, data, tokenizer_dir, epochs=1, batch_size=1)
    train(recipe, prepare_sft(recipe))
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "step-99.tmp").mkdir()
    (ckpts / "step-99.tmp" / "model.safetensors").write_bytes(b"half written")
    import shutil

    shutil.rmtree(tmp_path / "run" / "final")
    result = train(recipe, prepare_sft(recipe), resume=True)
    assert result.resumed_from == 4 and not (ckpts / "step-99.tmp").exists()


def test_bf16_autocast_and_gradient_checkpointing_train(tmp_path, tokenizer_dir, eight_records):
    data = write_json(tmp_path / "d.json", eight_records)
    plain = _recipe(tmp_path, data, tokenizer_dir, "plain", epochs=2, save_every=0)
    ckpt = _recipe(tmp_path, data, tokenizer_dir, "ckpt", epochs=2, save_every=0, gradient_checkpointing=True)
    bf16 = _recipe(tmp_path, data, tokenizer_dir, "bf16", epochs=2, save_every=0, precision="bf16")
    results = {name: train(r, prepare_sft(r)) for name, r in [("plain", plain), ("ckpt", ckpt), ("bf16", bf16)]}
    # recomputing activations changes nothing in fp32; bf16 trains to a nearby loss
    assert abs(results["ckpt"].final_loss - results["plain"].final_loss) < 1e-4
    assert abs(results["bf16"].final_loss - results["plain"].final_loss) < 0.1 * results["plain"].final_loss
    assert results["bf16"].final_loss != results["plain"].final_loss


def test_ctrl_c_checkpoints_then_resume_finishes(tmp_path, tokenizer_dir, eight_records):
    data = write_json(tmp_path / "d.json", eight_records)
    recipe = _recipe(tmp_path, data, tokenizer_dir, "int", epochs=20, batch_size=1, save_every=0)
    recipe_file = tmp_path / "int.yaml"
    recipe_file.write_text(recipe.to_yaml())
    proc = subprocess.Popen(
        [sys.executable, "-m", "codeinstruct", "finetune", str(recipe_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = tmp_path / "int" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "--resume" in out and "Traceback" not in out
    checkpoints = list((tmp_path / "int" / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and not (tmp_path / "int" / "final").exists()
    result = train(recipe, prepare_sft(recipe), resume=True)
    assert result.resumed_from == int(checkpoints[0].name.split("-")[1]) and result.steps == 160
