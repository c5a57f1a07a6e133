"""torchrun with 2 processes on CPU (gloo, FSDP2) against one process: same losses, and resumes
across world sizes after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from codeinstruct.config import load_recipe
from codeinstruct.train.distributed import rank_micro_batches
from codeinstruct.train.loop import train
from codeinstruct.train.prepare import prepare_sft

# fp32 on CPU; the processes see other micro-batch shapes and sum in another order
LOSS_TOLERANCE = 1e-4


def test_rows_of_a_step_are_shared_out_and_collectives_stay_matched():
    rows = list(range(7))
    plans = [rank_micro_batches(rows, 2, r, 2) for r in range(2)]
    assert [ids for ids, w in plans[0] if w] == [[0, 2], [4, 6]]
    assert [ids for ids, w in plans[1] if w] == [[1, 3], [5]]
    assert len(plans[0]) == len(plans[1])  # every rank runs as many forward passes
    four = [rank_micro_batches(rows[:3], 4, r, 4) for r in range(4)]
    assert [len(p) for p in four] == [1, 1, 1, 1] and four[3][0][1] == 0.0  # rank 3 has no row: a filler
    # with one process the step's rows are the micro-batches of single-process training
    assert [ids for ids, _ in rank_micro_batches(rows, 3, 0, 1)] == [[0, 1, 2], [3, 4, 5], [6]]


def _recipe_file(tmp_path, data, tokenizer_dir, name, epochs=2):
    recipe = {
        "name": name,
        "seed": 3,
        "run_dir": str(tmp_path / name),
        "model": {"source": "preset:tiny", "tokenizer": str(tokenizer_dir)},
        "data": {"train": str(data), "max_length": 256, "packing": False, "limit": 48},
        "train": {
            "epochs": epochs,
            "batch_size": 2,
            "grad_accum": 2,
            "lr": 1e-3,
            "warmup_ratio": 0.0,
            "precision": "fp32",
            "device": "cpu",
            "log_every": 1,
            "save_every": 2,
            "keep_checkpoints": 2,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(recipe))
    return path


def _torchrun(recipe, nproc, *extra, wait_for=None):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "codeinstruct",
        "finetune",
        str(recipe),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    if wait_for is None:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
        return out
    deadline = time.time() + 600
    while not wait_for.exists():  # the checkpoint directory appears whole (renamed from .tmp)
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return None


def _losses(run_dir):
    return {m["step"]: m["loss"] for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_two_processes_match_one_and_resume_across_world_sizes(tmp_path, tokenizer_dir, instruction_records):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(instruction_records[:48]))

    one = load_recipe(_recipe_file(tmp_path, data, tokenizer_dir, "one"))
    result = train(one, prepare_sft(one))
    reference = _losses(result.run_dir)
    assert len(reference) == result.steps >= 12  # 4 rows per step, 2 epochs

    out = _torchrun(_recipe_file(tmp_path, data, tokenizer_dir, "two"), 2)
    assert out.count(f"done: {result.steps} steps") == 1  # rank 0 alone reports
    two = _losses(tmp_path / "two")
    assert two.keys() == reference.keys()
    worst = max(abs(two[s] - reference[s]) for s in reference)
    assert worst < LOSS_TOLERANCE, f"largest per-step loss difference {worst:.2e}"
    assert (tmp_path / "two" / "final" / "model.safetensors").exists()

    # killed twice, resumed at world size 2 then at world size 1; the losses still follow the reference
    recipe = _recipe_file(tmp_path, data, tokenizer_dir, "killed")
    run = tmp_path / "killed"
    _torchrun(recipe, 2, wait_for=run / "checkpoints" / "step-4")
    assert not (run / "final").exists()
    _torchrun(recipe, 2, "--resume", wait_for=run / "checkpoints" / "step-8")
    resumed = load_recipe(recipe)
    total = result.steps
    result = train(resumed, prepare_sft(resumed), resume=True)
    assert result.resumed_from is not None and 8 <= result.resumed_from < total and result.steps == total
    killed = _losses(run)
    assert killed.keys() == reference.keys()
    worst = max(abs(killed[s] - reference[s]) for s in reference)
    assert worst < LOSS_TOLERANCE, f"largest per-step loss difference after resuming {worst:.2e}"


@pytest.mark.slow
def test_lora_under_fsdp_matches_one_process_and_writes_adapter_and_merged_model(
    tmp_path, tokenizer_dir, instruction_records
):
    from transformers import AutoModelForCausalLM

    data = tmp_path / "data.json"
    data.write_text(json.dumps(instruction_records[:24]))

    def lora_recipe(name):
        path = _recipe_file(tmp_path, data, tokenizer_dir, name, epochs=1)
        recipe = json.loads(path.read_text())
        recipe["model"].update({"method": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}})
        recipe["train"]["save_every"] = 0
        path.write_text(json.dumps(recipe))
        return path

    one = load_recipe(lora_recipe("lora-one"))
    result = train(one, prepare_sft(one))
    _torchrun(lora_recipe("lora-two"), 2)
    reference, two = _losses(result.run_dir), _losses(tmp_path / "lora-two")
    assert two.keys() == reference.keys() and len(reference) >= 4
    worst = max(abs(two[s] - reference[s]) for s in reference)
    assert worst < LOSS_TOLERANCE, f"largest per-step loss difference {worst:.2e}"
    run = tmp_path / "lora-two"
    assert (run / "adapter" / "adapter_model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(run / "final")
    single = AutoModelForCausalLM.from_pretrained(result.final_dir)
    for (name, a), (_, b) in zip(merged.state_dict().items(), single.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-4), name
