"""The CLI as a user drives it: fine-tune on GPTeacher-style records, generate, and bad input handling."""

import json
import subprocess
import sys

import pytest

from tests.conftest import write_json


def _recipe(tmp_path, data_file, tokenizer_dir, **extra):
    recipe = {
        "name": "t",
        "seed": 0,
        "run_dir": str(tmp_path / "run"),
        "model": {"source": "preset:tiny", "tokenizer": str(tokenizer_dir)},
        "data": {"train": str(data_file), "max_length": 256, "packing": True},
        "train": {
            "epochs": 100,
            "batch_size": 4,
            "lr": 3e-3,
            "warmup_ratio": 0.05,
            "precision": "fp32",
            "log_every": 10,
        },
    }
    for key, value in extra.items():
        recipe[key].update(value)
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def test_finetune_then_generate_returns_each_training_response(tmp_path, cli, eight_records):
    data = write_json(tmp_path / "eight.json", eight_records)
    code, out, err = cli("tokenizer", "train", data, "-o", tmp_path / "tok", "--vocab-size", 600)
    assert code == 0, err
    code, out, err = cli("finetune", _recipe(tmp_path, data, tmp_path / "tok"))
    assert code == 0, err
    assert "8 training examples" in out
    final = tmp_path / "run" / "final"
    for i, record in enumerate(eight_records):
        args = ["generate", "--model", final, record["instruction"]]
        if record["input"].strip():
            if i == 0:
                (tmp_path / "input.txt").write_text(record["input"])
                args += ["--input-file", tmp_path / "input.txt"]
            else:
                args += ["--input", record["input"]]
        code, out, err = cli(*args)
        assert code == 0, err
        assert out == record["response"] + "\n", f"record {i}"
        code, streamed, err = cli(*args, "--stream")
        assert code == 0, err
        assert streamed == out, f"record {i} streamed"


def _assert_clean_error(code, out, err, *needles):
    assert code == 1
    assert err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1 or all(n in err for n in needles)
    assert "Traceback" not in err + out
    for needle in needles:
        assert needle in err.replace("\n", "")


@pytest.mark.parametrize(
    "bad,needle",
    [
        (
            '[{"instruction": "a", "response": "b"}, {"instruction": "c", "input": "", "response": ""}]',
            "record 2: field 'response' is empty",
        ),
        (
            '{"instruction": "a", "response": "b"}\n{"instruction": 1, "response": "b"}\n',
            "line 2: field 'instruction' must be a string",
        ),
        ('[{"instruction": "a", "response": "b"', "line 1: invalid JSON"),
    ],
)
def test_bad_data_stops_before_a_run_folder_exists(tmp_path, cli, tokenizer_dir, bad, needle):
    data = tmp_path / "bad.json"
    data.write_text(bad)
    code, out, err = cli("finetune", _recipe(tmp_path, data, tokenizer_dir))
    _assert_clean_error(code, out, err, "bad.json", needle)
    assert not (tmp_path / "run").exists()


def test_bad_recipe_and_missing_files(tmp_path, cli, tokenizer_dir, eight_records):
    data = write_json(tmp_path / "d.json", eight_records)
    recipe = _recipe(tmp_path, data, tokenizer_dir)
    _assert_clean_error(*cli("finetune", recipe, "train.lr=-1"), "train.lr: Input should be greater than 0")
    _assert_clean_error(
        *cli("finetune", recipe, "model.tokenizer=" + str(tmp_path / "nope")), "tokenizer directory not found"
    )
    _assert_clean_error(
        *cli("finetune", recipe, "model.source=" + str(tmp_path / "nomodel")), "model directory not found"
    )
    _assert_clean_error(
        *cli("finetune", recipe, "data.train=" + str(tmp_path / "missing.json")), "missing.json: no such file"
    )
    _assert_clean_error(*cli("generate", "--model", tmp_path, "hi"), "not a model directory")
    assert not (tmp_path / "run").exists()


def test_real_process_exit_code_and_one_line_error(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"instruction": "a", "response": "b"}\n{"instruction": "\xc3\x28", "response": "b"}\n')
    proc = subprocess.run(
        [sys.executable, "-m", "codeinstruct", "data", "stats", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {bad}: line 2: not valid UTF-8 (byte 17 of the line)"


def test_data_stats(tmp_path, cli, tokenizer_dir, eight_records):
    data = write_json(tmp_path / "d.json", eight_records)
    code, out, err = cli("data", "stats", data, "--tokenizer", tokenizer_dir, "--max-length", 140, "--json")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["records"] == 8 and stats["empty_input"] == 4
    assert stats["tokens"]["p50"] <= stats["tokens"]["p95"] <= stats["tokens"]["p100"]
    assert stats["over_max_length"] == 4  # the with-input records (148-174 tokens with the fixture tokenizer)
    code, out, _ = cli("data", "stats", data)
    assert code == 0 and "records" in out and "8" in out


def test_data_preview_marks_the_trained_tokens(tmp_path, cli, tokenizer_dir, eight_records):
    data = write_json(tmp_path / "d.json", eight_records)
    code, out, err = cli("data", "preview", data, "--tokenizer", tokenizer_dir, "--index", 5)
    assert code == 0, err
    record = eight_records[4]
    assert "### Response:«\n" + record["response"] + "<|endoftext|>»" in out
    assert "### Instruction:\n" + record["instruction"] in out
    _assert_clean_error(*cli("data", "preview", data, "--tokenizer", tokenizer_dir, "--index", 9), "out of range")
