"""Pretrain a small model with FIM on a handful of files, then `complete` fills the gap exactly."""

import json

import pytest

FILES = {
    "double.py": "def double(x):\n    return x * 2\n",
    "loop.py": "for i in range(3):\n    print(i)\n",
}


@pytest.mark.slow
def test_pretrained_model_completes_the_missing_middle_in_psm_and_spm(tmp_path, cli):
    src = tmp_path / "src"
    src.mkdir()
    for name, text in FILES.items():
        (src / name).write_text(text)
    # a byte-level vocabulary (no merges): the split points of FIM never fall inside a token
    code, _, err = cli("tokenizer", "train", src, "-o", tmp_path / "tok", "--vocab-size", 275)
    assert code == 0, err
    recipe = tmp_path / "fim.yaml"
    recipe.write_text(
        json.dumps(
            {
                "name": "fim",
                "seed": 0,
                "run_dir": str(tmp_path / "run"),
                "model": {"source": "preset:small", "tokenizer": str(tmp_path / "tok")},
                # each file 32 times per epoch, each copy with its own FIM draw (StarCoder's SPM rate 0.5)
                "data": {
                    "train": [str(src)] * 32,
                    "max_length": 128,
                    "packing": False,
                    "fim_rate": 0.9,
                    "fim_spm_rate": 0.5,
                },
                "train": {
                    "epochs": 1000,
                    "batch_size": 8,
                    "lr": 1e-3,
                    "warmup_ratio": 0.03,
                    "precision": "fp32",
                    "log_every": 50,
                },
            }
        )
    )
    code, out, err = cli("pretrain", recipe)
    assert code == 0, err
    final = tmp_path / "run" / "final"
    checked = 0
    for text in FILES.values():
        lines = text.splitlines(keepends=True)
        for i in range(len(lines)):  # each line in turn is the missing middle
            prefix, middle, suffix = "".join(lines[:i]), lines[i], "".join(lines[i + 1 :])
            (tmp_path / "prefix.py").write_text(prefix)
            (tmp_path / "suffix.py").write_text(suffix)
            for mode in ([], ["--spm"]):
                code, out, err = cli(
                    "complete",
                    "--model",
                    final,
                    "--prefix-file",
                    tmp_path / "prefix.py",
                    "--suffix-file",
                    tmp_path / "suffix.py",
                    "--max-new-tokens",
                    60,
                    *mode,
                )
                assert code == 0, err
                assert out == middle, f"{'SPM' if mode else 'PSM'}: {prefix!r} + ? + {suffix!r}"
                checked += 1
    assert checked == 8
