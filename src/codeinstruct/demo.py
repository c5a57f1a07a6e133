"""The embedded default: the whole StarCoder path offline on a laptop, as library steps.

1. pretrain a small GPTBigCode with FIM on the local Python standard library (`tiny-pretrain-cpu`),
2. instruction-tune it on records derived from the stdlib's documented functions with FIM examples
   mixed in (`tiny-cpu`'s data.fim_mix), and optionally without them to compare,
3. answer held-out instructions, fill a gap with the instruction model (PSM), and measure how much
   FIM each model kept (held-out lines of stdlib files no training read),
4. check the answers against an attribution index of the pretraining corpus and, opt-in, score
   a few HumanEval completions in the sandbox.

Each step returns values; `codeinstruct demo` prints them and draws the training progress.
"""

from __future__ import annotations

import itertools
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from codeinstruct.attribution import AttributionIndex, build_index
from codeinstruct.card import write_model_card
from codeinstruct.config import Recipe, load_recipe, recipe_path
from codeinstruct.data.corpus import iter_documents, read_corpus
from codeinstruct.data.records import InstructionRecord, load_instruction_data, load_records
from codeinstruct.errors import CodeinstructError
from codeinstruct.evaluate.fim_retention import (
    FimTask,
    RetentionRow,
    line_infilling_tasks,
    measure_retention,
    write_retention,
)
from codeinstruct.evaluate.humaneval import GenerationConfig, generate_samples
from codeinstruct.evaluate.scoring import score_samples
from codeinstruct.infer.engine import Engine
from codeinstruct.infer.generate import complete_middle, generate_response
from codeinstruct.infer.sampling import SamplingParams

STAGE_DIRS = ("pretrain", "finetune", "finetune-plain")
ANSWER_TOKENS = 160
GAP_TOKENS = 60
HUMANEVAL_PROBLEMS = 5
FIM_TASKS = 60  # held-out lines the FIM retention is measured on


def start_fresh(run_dir: Path) -> None:
    """The demo always starts anew; a folder that is not an earlier demo's is never removed."""
    if run_dir.exists():
        entries = {p.name for p in run_dir.iterdir()}
        if entries and not set(STAGE_DIRS) & entries:
            raise CodeinstructError(f"{run_dir}: exists and is not a demo folder; choose another --run-dir")
        shutil.rmtree(run_dir)


def pretrain_recipe(run_dir: Path) -> Recipe:
    return load_recipe(recipe_path("tiny-pretrain-cpu"), [f"run_dir={run_dir / 'pretrain'}"])


def finetune_recipe(run_dir: Path, base: Path, fim_mix: bool = True) -> Recipe:
    """The embedded SFT recipe on the pretrained base and its tokenizer: with its FIM mix in
    `finetune/`, or plain (the mix off, all else equal) in `finetune-plain/`."""
    overrides = [f"model.source={base}", "model.tokenizer=null"]
    if fim_mix:
        overrides.append(f"run_dir={run_dir / 'finetune'}")
    else:
        overrides += [f"run_dir={run_dir / 'finetune-plain'}", "data.fim_mix=null"]
    return load_recipe(recipe_path("tiny-cpu"), overrides)


def held_out_fim_tasks(pretrain: Recipe, finetune: Recipe, count: int = FIM_TASKS) -> list[FimTask]:
    """One missing line in each of `count` corpus files that neither pretraining nor the FIM mix read,
    never a line whose surroundings occur in the code either trained on (instruction responses included)."""
    sources = [pretrain.data.train] if isinstance(pretrain.data.train, str) else pretrain.data.train
    documents, _ = read_corpus(sources, include=pretrain.data.include)
    seen = [d.content for d in documents[: pretrain.data.limit]]
    mix = finetune.data.fim_mix
    if mix is not None and mix.sources:
        seen += [d.content for d in itertools.islice(iter_documents(mix.sources, include=mix.include), mix.limit)]
    seen += [r.response for r in load_instruction_data(str(finetune.data.train))]
    seen_set = set(seen)
    unseen = [(f"{d.repo}/{d.path}", d.content) for d in documents if d.content not in seen_set]
    random.Random(f"fim-files:{pretrain.seed}").shuffle(unseen)
    return line_infilling_tasks(unseen, count, seed=pretrain.seed, seen=seen)


def fim_retention(run_dir: Path, models: dict[str, Path], tasks: list[FimTask]) -> list[RetentionRow]:
    """FIM exact-match of each model on the held-out lines and its loss on the held-out instructions;
    saved beside the FIM-aware fine-tune (finetune/fim_retention.json) and shown in its model card."""
    records = load_records(run_dir / "finetune" / "held_out.jsonl")
    rows = measure_retention(models, tasks, records, max_length=load_recipe(recipe_path("tiny-cpu")).data.max_length)
    finetune = run_dir / "finetune"
    write_retention(finetune, rows, retention_description(len(tasks)))
    write_model_card(finetune)
    return rows


def retention_description(tasks: int) -> str:
    return (
        f"FIM exact-match: one missing line in each of {tasks} standard-library files neither training read, "
        "filled greedily (PSM); FIM middle loss: mean loss per token of those lines (+ EOS) after their FIM "
        "prompt; instruction loss: mean loss per response token on the held-out records"
    )


@dataclass(frozen=True)
class Answer:
    record: InstructionRecord
    answer: str


def answer_held_out(model: Path, run_dir: Path, count: int) -> list[Answer]:
    """Greedy answers of the instruction-tuned model to the first `count` held-out records."""
    engine = Engine.from_pretrained(model, max_batch_size=1)
    held_out = load_records(run_dir / "finetune" / "held_out.jsonl")[:count]
    params = SamplingParams(max_new_tokens=ANSWER_TOKENS)
    return [Answer(r, generate_response(engine, r.instruction, r.input, params)) for r in held_out]


@dataclass(frozen=True)
class FilledGap:
    prefix: str
    middle: str
    suffix: str


def fill_gap(model: Path, code: str) -> FilledGap | None:
    """The model fills everything between the first and the last line of `code` (PSM);
    None when the code is too short to have a gap."""
    lines = code.splitlines(keepends=True)
    if len(lines) < 3:
        return None
    prefix, suffix = lines[0], lines[-1]
    middle = complete_middle(
        Engine.from_pretrained(model, max_batch_size=1),
        prefix,
        suffix,
        params=SamplingParams(max_new_tokens=GAP_TOKENS),
    )
    middle = "\n".join(line.rstrip() for line in middle.splitlines() if line.strip()) + "\n"  # a tiny model rambles
    return FilledGap(prefix, middle, suffix)


def attribute_answers(run_dir: Path, answers: list[str]):
    """Index the pretraining corpus, then check each answer: (index summary, one report per answer)."""
    summary = build_index(["builtin:stdlib"], run_dir / "index")
    with AttributionIndex.open(run_dir / "index") as index:
        reports = [index.check(answer, language="Python") for answer in answers]
    return summary, reports


def humaneval_in_sandbox(run_dir: Path, base: Path):
    """The base model completes the first HumanEval problems; their tests run in the sandbox."""
    samples = run_dir / "humaneval-samples.jsonl"
    generate_samples(
        GenerationConfig(model=str(base), mode="base", limit=HUMANEVAL_PROBLEMS, max_new_tokens=96), samples
    )
    return score_samples(samples, allow_code_execution=True)
