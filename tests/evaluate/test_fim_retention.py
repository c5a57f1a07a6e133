"""FIM retention: held-out line infilling, scored the same way for every model; and the claim of issue 15,
measured: instruction tuning with data.fim_mix keeps the base's FIM, plain instruction tuning loses it."""

import json
import random
from dataclasses import dataclass

import pytest

from codeinstruct.config import recipe_from_dict
from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.fim_retention import FimTask, fim_exact_match, line_infilling_tasks
from codeinstruct.prompts import FimTokens
from tests.conftest import write_json

DOC = (
    "import os\n\n\ndef main(path):\n    name = os.path.basename(path)\n    size = os.path.getsize(path)\n"
    "    return name, size\n"
)


def test_one_missing_line_per_file_chosen_the_same_way_every_time():
    docs = [(f"f{i}.py", DOC.replace("main", f"main{i}")) for i in range(5)]
    tasks = line_infilling_tasks(docs, 3, seed=0)
    assert [t.source for t in tasks] == ["f0.py", "f1.py", "f2.py"]
    assert tasks == line_infilling_tasks(docs, 3, seed=0)
    for task in tasks:
        text = dict(docs)[task.source]
        assert task.prefix + task.middle + task.suffix in text and task.middle.endswith("\n")
        assert text.splitlines()[task.line - 1] + "\n" == task.middle
        assert len(task.middle.strip()) >= 6 and not task.middle.strip().startswith("#")
    assert len({t.line for t in line_infilling_tasks(docs * 1, 5, seed=1)}) >= 1


def test_lines_whose_surroundings_were_trained_on_are_never_tasks():
    lines = DOC.splitlines(keepends=True)
    seen = ["".join(lines[3:6])]  # the window around `name = ...`
    for seed in range(20):
        for task in line_infilling_tasks([("a.py", DOC)], 1, seed=seed, seen=seen):
            assert task.middle != lines[4]
    with pytest.raises(CodeinstructError, match="no held-out line to fill"):
        line_infilling_tasks([("a.py", DOC)], 1, seen=[DOC])


@dataclass
class _Output:
    text: str


class _Handle:
    def __init__(self, text):
        self._text = text

    def result(self):
        return _Output(self._text)


class _ScriptedEngine:
    """Answers each FIM prompt with a scripted middle, so the scoring alone is under test."""

    def __init__(self, tokenizer, answers):
        self.tokenizer, self.answers, self.prompts = tokenizer, answers, []

    def submit(self, ids, params):
        assert params.stop == ("\n",) and set(FimTokens.from_tokenizer(self.tokenizer).all) <= set(
            params.stop_token_ids
        )
        self.prompts.append(ids)
        return _Handle(self.answers[len(self.prompts) - 1])


def test_exact_match_is_the_first_generated_line_against_the_missing_line(tokenizer):
    tasks = [FimTask(f"f{i}", 2, "def f():\n", "    return 1\n", "\n") for i in range(4)]
    answers = ["    return 1", "    return 1   ", "return 1", "    return 2"]
    score = fim_exact_match(_ScriptedEngine(tokenizer, answers), tasks)
    assert (score.correct, score.tasks, score.exact_match) == (2, 4, 0.5)  # indentation counts, trailing space not
    assert score.outputs == ("    return 1", "    return 1", "return 1", "    return 2")


# --------------------------------------------------------------------------------------------------
# the measured claim


NAMES = ["vals", "items", "nums", "xs", "data", "seq", "row", "cells", "parts", "keys", "ys", "arr"]
OPS = [("*", "scale"), ("+", "shift"), ("-", "drop"), ("//", "div"), ("%", "mod")]


def _program(rng: random.Random) -> str:
    """A small function whose every line follows from the lines around it (names and numbers drawn anew)."""
    k, (op, name) = rng.randint(2, 99), rng.choice(OPS)
    a, x, r = rng.choice(NAMES), rng.choice(["v", "x", "n", "e", "k", "t", "q"]), rng.choice(["out", "res", "acc"])
    return (
        f"def {name}_{k}({a}):\n    {r} = []\n    for {x} in {a}:\n        {r}.append({x} {op} {k})\n    return {r}\n"
    )


def _finetune(tmp_path, base, records, name, mix):
    tree = {
        "name": name,
        "seed": 5,
        "run_dir": str(tmp_path / name),
        "model": {"source": str(base)},
        "data": {"train": str(records), "max_length": 256, "held_out": 0.2},
        "train": {"epochs": 6, "batch_size": 4, "lr": 3e-3, "precision": "fp32", "warmup_ratio": 0.05},
    }
    if mix:
        tree["data"]["fim_mix"] = mix
    return recipe_from_dict(tree)


@pytest.mark.slow
def test_fim_mix_keeps_the_base_fim_that_plain_instruction_tuning_loses(tmp_path, instruction_records):
    """A small GPTBigCode pretrained with FIM on generated functions, then instruction-tuned on the same records
    and seed, plainly and with the mix (30% of tokens), scored on one missing line in each of 40 generated files
    it never saw. Measured on this project's shared 2-core machine (7.7 min under load from other work): base
    FIM middle loss 1.888, plain SFT 5.549 (2.9x), FIM-aware SFT 2.160 (1.14x); held-out instruction loss
    6.248 plain, 6.306 with the mix (+0.9%). Whole-line exact match is 0/40 for all three at this scale (the
    base does not yet write whole lines), so the FIM side is asserted on the middle loss, and the exact-match
    figures are in every message."""
    from codeinstruct.data.records import load_records
    from codeinstruct.evaluate.fim_retention import measure_retention
    from codeinstruct.infer.engine import Engine
    from codeinstruct.tokenizer import save_tokenizer, train_tokenizer
    from codeinstruct.train.loop import train
    from codeinstruct.train.prepare import prepare_pretrain, prepare_sft

    rng = random.Random(0)
    corpus = [_program(rng) for _ in range(800)]
    held_out_files = [(f"held_out_{i}.py", _program(rng)) for i in range(40)]
    corpus_file = tmp_path / "corpus.jsonl"
    corpus_file.write_text("".join(json.dumps({"content": c, "path": f"f{i}.py"}) + "\n" for i, c in enumerate(corpus)))
    texts = [r["instruction"] + "\n" + r["input"] + "\n" + r["response"] for r in instruction_records] + corpus[:200]
    save_tokenizer(train_tokenizer(texts, vocab_size=800), tmp_path / "tokenizer")

    pretrain = recipe_from_dict(
        {
            "name": "base",
            "seed": 5,
            "run_dir": str(tmp_path / "base"),
            "model": {"source": "preset:small", "tokenizer": str(tmp_path / "tokenizer")},
            # four passes as one epoch, each drawn with its own FIM splits (epochs > 1 can come out a
            # block short when FIM is redrawn, which the loop refuses)
            "data": {"train": [str(corpus_file)] * 4, "max_length": 128, "packing": False, "fim_rate": 0.9},
            "train": {"epochs": 1, "batch_size": 8, "lr": 3e-3, "precision": "fp32", "warmup_ratio": 0.05},
        }
    )
    base = train(pretrain, prepare_pretrain(pretrain)).final_dir

    records_file = write_json(tmp_path / "records.json", instruction_records)
    plain_recipe = _finetune(tmp_path, base, records_file, "plain", None)
    mixed_recipe = _finetune(tmp_path, base, records_file, "mixed", {"corpus": str(corpus_file), "fraction": 0.3})
    plain = train(plain_recipe, prepare_sft(plain_recipe)).final_dir
    mixed_data = prepare_sft(mixed_recipe)
    mixed = train(mixed_recipe, mixed_data).final_dir
    assert mixed_data.fim_mix.fraction >= 0.3

    tasks = line_infilling_tasks(held_out_files, 40, seed=0, seen=corpus)
    held_out = load_records(tmp_path / "plain" / "held_out.jsonl")
    assert len(tasks) == 40 and held_out == load_records(tmp_path / "mixed" / "held_out.jsonl")
    models = {"base": base, "plain": plain, "mixed": mixed}
    rows = {r.name: r for r in measure_retention(models, tasks, held_out, max_length=256)}
    figures = "; ".join(
        f"{n}: FIM middle loss {r.fim_loss:.3f}, exact-match {r.fim_correct}/{r.fim_tasks}, "
        f"instruction loss {r.instruction_loss:.4f}"
        for n, r in rows.items()
    )
    print(figures)  # shown with -s; the assertion messages carry them too
    base, plain, mixed = rows["base"], rows["plain"], rows["mixed"]
    KEPT = 1.35  # the mix may raise the base's FIM middle loss by at most 35% (measured: 14%)
    LOST = 2.0  # plain SFT at least doubles it (measured: 2.9x)
    assert mixed.fim_loss <= KEPT * base.fim_loss, f"the mix did not keep FIM: {figures}"
    assert plain.fim_loss >= LOST * base.fim_loss, f"plain SFT kept FIM, so the test shows nothing: {figures}"
    assert mixed.fim_correct >= plain.fim_correct, f"the mix fills fewer lines than plain SFT: {figures}"
    assert mixed.instruction_loss <= 1.02 * plain.instruction_loss, f"the mix cost instructions: {figures}"

    # `/v1/completions` with `suffix` on the instruction model writes what the engine wrote when it was measured
    import httpx

    from codeinstruct.serve.app import ServerSettings, build_app
    from tests.serve.conftest import running

    measured = fim_exact_match(Engine.from_pretrained(models["mixed"], device="cpu"), tasks)
    with running(build_app(ServerSettings(), model=models["mixed"])) as server:
        served = tuple(
            httpx.post(
                server.url + "/v1/completions",
                json={"prompt": t.prefix, "suffix": t.suffix, "max_tokens": 40, "temperature": 0, "stop": ["\n"]},
                timeout=60,
            )
            .json()["choices"][0]["text"]
            .rstrip()
            for t in tasks
        )
    assert served == measured.outputs and measured.correct == mixed.fim_correct
