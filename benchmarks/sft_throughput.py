"""SFT throughput: codeinstruct (packing / padding) vs Hugging Face TRL's SFTTrainer, same model and data.

The claim under test: "codeinstruct's packing trainer is >= 1.5x the throughput of TRL's SFTTrainer
(padding, response-only loss) with the same loss within 1%".

Three runs, each one epoch over the same records, from the same initial weights (same seed, same
preset, same tokenizer), fp32, AdamW, cosine schedule with the same number of warmup steps, gradient
clipping at 1.0, no gradient accumulation, on this machine's CPU with torch's default thread count:

  1. codeinstruct, packing=true   (several examples per row of max_length tokens, isolated by a mask)
  2. codeinstruct, packing=false  (one example per row, right-padded)
  3. TRL SFTTrainer                (prompt/completion dataset, completion_only_loss, right-padded)

What is counted
  * target tokens: tokens that carry loss, i.e. the response tokens plus the EOS after them. They are
    counted from the batches each trainer actually trained on (codeinstruct: its TrainResult; TRL: a
    wrapper around its data collator), and the script checks that the three totals are equal, that
    TRL's tokenization equals codeinstruct's token for token, and that TRL appended EOS exactly once.
  * padding fraction: padded positions / all positions the model computed (rows x width, summed).
  * seconds: wall time of the training loop only. codeinstruct: `elapsed_s` of its last metrics
    row, written right after the last optimizer step (TrainResult.seconds also includes writing the
    final model and drawing loss.png, which is not training). TRL: the wall time of trainer.train().
    Tokenizer training, tokenization and model building are outside both.

Why the loss comparison is fair
  Packing changes how many examples go into a step, so equal batch_size would give the packed run
  fewer, larger steps. The packed run's batch_size (rows of max_length tokens) is therefore chosen so
  that it takes about as many optimizer steps as the padded runs, i.e. about the same target tokens
  per step; the table prints tokens/step so a reader can check. All runs see every record once.
  Records that do not fit max_length are skipped beforehand (codeinstruct would drop them, TRL would
  truncate them), and so are the few whose text contains special-token text such as "<filename>"
  (codeinstruct tokenizes it as text, TRL as the control token), so all three train on exactly the
  same token sequences; the script checks it. Each trainer shuffles with its own
  generator; the script reports whether TRL's batches came out identical to codeinstruct's padded ones
  (with seed 0 they do: both take torch.randperm from a generator seeded with 0), in which case those
  two runs do the same arithmetic and any loss gap between them comes from the trainers themselves.
  The loss compared is the held-out loss: each final model is scored by ONE function (below,
  `heldout_loss`) on the same records that no run trained on: token-weighted mean cross-entropy
  over response + EOS tokens, one unpadded example at a time, eval mode. The last steps' training
  loss is shown too, but it is measured on different batches in each run. --noise-floor trains TRL
  once more with only its data order changed, to show how far the held-out loss moves from that alone.

Timings need an otherwise idle machine: torch's OpenMP threads slow down far more than proportionally
when another busy process shares the cores. The script measures the CPU other processes used during
each run (Linux /proc/stat) and warns when it is more than a few percent.

Run from the project root (TRL, datasets and accelerate come with `pip install -e ".[bench]"`):
    .venv/bin/python benchmarks/sft_throughput.py [--records N] [--preset small] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from codeinstruct.config import recipe_from_dict
from codeinstruct.data.records import records_from_dicts
from codeinstruct.data.sft import IGNORE_INDEX, TokenizedExample, tokenize_records
from codeinstruct.modeling import load_model
from codeinstruct.prompts import format_prompt, format_target
from codeinstruct.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from codeinstruct.train import loop as ci_loop

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "gpteacher-codegen" / "codegen-instruct.json"
WARMUP_RATIO = 0.03  # codeinstruct's default; TRL gets the same number of warmup steps
SEED = 0
MAX_OTHERS_CPU = 0.05


@dataclass
class RunResult:
    name: str
    batch_size: int  # rows per optimizer step
    steps: int
    target_tokens: int
    real_tokens: int  # non-pad tokens the model computed
    computed_tokens: int  # all positions the model computed, padding included
    seconds: float
    train_loss_last: float  # token-weighted over the last steps (see `last_steps`)
    last_steps: int
    heldout_loss: float = float("nan")
    init_fingerprint: float = float("nan")
    # Share of the machine's CPU time that *other* processes (or the hypervisor) used while this run
    # trained; see CpuWatch. Above a few percent the wall-clock numbers are not trustworthy.
    others_cpu: float = float("nan")
    notes: dict = field(default_factory=dict)

    @property
    def pad_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.computed_tokens

    @property
    def tokens_per_s(self) -> float:
        return self.target_tokens / self.seconds


# ---------------------------------------------------------------------------------------------------
# data


def load_raw_records(path: Path, n_train: int, n_eval: int) -> tuple[list[dict], str]:
    """The first records of the file (twice what is needed, so records too long for max_length can be
    skipped), and where they came from. The tokenizer is trained on all of them."""
    want = 2 * (n_train + n_eval)
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))[:want], str(path)
    # Imported lazily: the built-in data module is only needed (and may only exist) for the fallback.
    from codeinstruct.data.builtin import stdlib_instruction_records

    return stdlib_instruction_records(limit=want), f"builtin:stdlib (fallback: {path} not found)"


def full_text(record) -> str:
    return format_prompt(record.instruction, record.input) + format_target(record.response)


def split_usable(records, tokenizer, max_length: int, n_train: int, n_eval: int):
    """First n_train usable records, then the next n_eval; returns (train, held_out, skipped counts).

    Usable means that both trainers see exactly the same tokens:
      * it fits max_length with its EOS, by codeinstruct's own tokenization (codeinstruct would drop a
        longer one, TRL would truncate it);
      * its text holds no special-token text such as "<filename>" or "<|endoftext|>": codeinstruct keeps
        such text as text (split_special_tokens), TRL's prompt/completion tokenization turns it into
        the control token.
    """
    _, report = tokenize_records(records, tokenizer, max_length, "drop")
    specials = set(tokenizer.all_special_tokens)
    usable, too_long, special_text = [], 0, 0
    for record, n in zip(records, report.lengths):
        if len(usable) == n_train + n_eval:
            break
        if n > max_length:
            too_long += 1
        elif any(tok in field for tok in specials for field in (record.instruction, record.input, record.response)):
            special_text += 1
        else:
            usable.append(record)
    if len(usable) < n_train + n_eval:
        raise SystemExit(f"only {len(usable)} usable records (max_length={max_length}); need {n_train + n_eval}")
    return usable[:n_train], usable[n_train:], {"too_long": too_long, "special_token_text": special_text}


def record_dicts(records) -> list[dict]:
    return [{"instruction": r.instruction, "input": r.input, "response": r.response} for r in records]


# ---------------------------------------------------------------------------------------------------
# the shared yardsticks


@torch.no_grad()
def heldout_loss(model, examples: list[TokenizedExample]) -> float:
    """Token-weighted mean cross-entropy over response + EOS tokens; one unpadded example at a time.

    Used for every run, so differences in batching, masks or loss code of the trainers cannot leak in.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for example in examples:
        input_ids = torch.tensor([example.input_ids])
        targets = torch.tensor(example.labels[1:])
        logits = model(input_ids=input_ids).logits[0, :-1].float()
        total += F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum").item()
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    return total / count


def param_fingerprint(model) -> float:
    """A cheap checksum of the weights: equal initial weights give equal values."""
    with torch.no_grad():
        return float(sum((p.double() * (i + 1)).sum() for i, p in enumerate(model.parameters())))


def warm_up(preset: str, tokenizer, max_length: int) -> None:
    """One throwaway forward/backward, so first-call costs (kernel selection, allocator growth,
    lazy imports) are not charged to whichever run happens to go first."""
    torch.manual_seed(SEED)
    model = load_model(f"preset:{preset}", tokenizer=tokenizer)
    ids = torch.randint(0, len(tokenizer), (4, max_length))
    model(input_ids=ids, labels=ids).loss.backward()


class CpuWatch:
    """How much CPU other processes took while we trained (Linux /proc/stat; NaN elsewhere).

    torch's OpenMP threads slow down far more than proportionally when another busy process shares
    the cores, so a benchmark run next to, say, a test suite can be several times too slow.
    """

    def __enter__(self):
        self.busy, self.own, self.wall = self._machine_busy(), time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.wall
        others = (self._machine_busy() - self.busy) - (time.process_time() - self.own)
        self.others_share = max(0.0, others) / (wall * (os.cpu_count() or 1))

    @staticmethod
    def _machine_busy() -> float:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return float("nan")
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def weighted_tail(losses: list[float], tokens: list[int], k: int) -> float:
    lo, tok = losses[-k:], tokens[-k:]
    return sum(loss * t for loss, t in zip(lo, tok)) / sum(tok)


def warmup_steps(total_steps: int) -> int:
    # codeinstruct's rule (round); TRL's own ratio rule would be ceil, hence an explicit step count.
    return round(WARMUP_RATIO * total_steps)


# ---------------------------------------------------------------------------------------------------
# codeinstruct


def codeinstruct_recipe(tmp: Path, name: str, data_file: Path, tok_dir: Path, args, packing: bool, batch_size: int):
    return recipe_from_dict(
        {
            "name": name,
            "seed": SEED,
            "run_dir": str(tmp / name),
            "model": {"source": f"preset:{args.preset}", "tokenizer": str(tok_dir)},
            "data": {"train": str(data_file), "max_length": args.max_length, "packing": packing, "overlong": "drop"},
            "train": {
                "epochs": 1,
                "batch_size": batch_size,
                "grad_accum": 1,
                "lr": args.lr,
                "weight_decay": 0.0,
                "warmup_ratio": WARMUP_RATIO,
                "schedule": "cosine",
                "max_grad_norm": 1.0,
                "precision": "fp32",
                "device": "cpu",
                "save_every": 0,
                "log_every": 1,  # every step's loss, as TRL logs below
            },
        }
    )


def codeinstruct_padding_stats(recipe, examples) -> tuple[int, int, int]:
    """(real, computed, steps) of the epoch train() will run, replayed with the loop's own helpers."""
    rows = ci_loop.make_rows(examples, recipe.data.max_length, recipe.data.packing)
    pad_id = 0  # the value is irrelevant here: only the shapes are read
    real = computed = 0
    micro = ci_loop.epoch_micro_batches(len(rows), recipe.train.batch_size, recipe.seed, 0)
    for ids in micro:
        batch = ci_loop.collate_rows(examples, rows, ids, recipe.data.packing, pad_id)
        computed += batch.input_ids.numel()
        real += sum(len(examples[i].input_ids) for r in ids for i in rows[r])
    return real, computed, len(micro)


def packed_batch_size(examples, max_length: int, padded_batch_size: int) -> tuple[int, int]:
    """Rows per packed step giving the step count closest to the padded runs' (same tokens/step)."""
    n_rows = len(ci_loop.make_rows(examples, max_length, True))
    padded_steps = math.ceil(len(examples) / padded_batch_size)
    best = min(range(1, padded_batch_size + 1), key=lambda b: (abs(math.ceil(n_rows / b) - padded_steps), -b))
    return best, n_rows


def run_codeinstruct(label: str, recipe, eval_examples) -> RunResult:
    data = ci_loop.prepare_sft(recipe)
    assert data.report.dropped_overlong == 0 and data.report.truncated == 0
    real, computed, planned_steps = codeinstruct_padding_stats(recipe, data.examples)

    # Observe the freshly initialised model train() builds, to show all runs start from the same weights.
    seen = {}
    original_load_model = ci_loop.load_model

    def fingerprinting_load_model(*a, **kw):
        model = original_load_model(*a, **kw)
        seen["init"] = param_fingerprint(model)
        return model

    ci_loop.load_model = fingerprinting_load_model
    try:
        with CpuWatch() as watch:
            result = ci_loop.train(recipe, data)
    finally:
        ci_loop.load_model = original_load_model

    metrics = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == result.steps == planned_steps, (len(metrics), result.steps, planned_steps)
    losses = [m["loss"] for m in metrics]
    cumulative = [m["target_tokens"] for m in metrics]
    step_tokens = [b - a for a, b in zip([0] + cumulative, cumulative)]
    k = max(1, result.steps // 10)
    model = load_model(str(result.final_dir))
    return RunResult(
        name=label,
        batch_size=recipe.train.batch_size,
        steps=result.steps,
        target_tokens=result.target_tokens,
        real_tokens=real,
        computed_tokens=computed,
        seconds=metrics[-1]["elapsed_s"],
        train_loss_last=weighted_tail(losses, step_tokens, k),
        last_steps=k,
        heldout_loss=heldout_loss(model, eval_examples),
        init_fingerprint=seen["init"],
        others_cpu=watch.others_share,
        notes={"train_result_seconds_incl_save_and_plot": round(result.seconds, 3), "examples": len(data.examples)},
    )


# ---------------------------------------------------------------------------------------------------
# TRL


class LoopTimer(TrainerCallback):
    """Times TRL's loop the way codeinstruct's elapsed_s is timed: from just before the first step to
    the end of the last one, without the trainer's set-up and tear-down."""

    def __init__(self):
        self.start = self.end = None

    def on_train_begin(self, *args, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, *args, **kwargs):
        self.end = time.perf_counter()


class CountingCollator:
    """Wraps TRL's collator to count what the model is actually fed, batch by batch."""

    def __init__(self, inner, eos_id: int):
        self.inner, self.eos_id = inner, eos_id
        self.step_targets: list[int] = []
        self.batches: list[list[list[int]]] = []  # input ids of each batch, to compare the data order
        self.real = self.computed = self.rows = self.eos_labelled = 0

    def __call__(self, features):
        batch = self.inner(features)
        self.batches.append([list(f["input_ids"]) for f in features])
        labels, mask = batch["labels"], batch["attention_mask"]
        # The model shifts labels by one; position 0 is never a target.
        self.step_targets.append(int((labels[:, 1:] != IGNORE_INDEX).sum()))
        self.real += int(mask.sum())
        self.computed += mask.numel()
        last = mask.sum(dim=1) - 1  # right padding: the last real position of each row
        self.eos_labelled += int((labels[torch.arange(len(last)), last] == self.eos_id).sum())
        self.rows += len(last)
        return batch


def legacy_collator_masks_eos(tokenizer, examples: list[TokenizedExample]) -> tuple[int, int]:
    """How many EOS labels transformers' DataCollatorForLanguageModeling drops when pad == EOS.

    That collator (what older TRL recipes used) sets every label whose input is the pad id to -100,
    so with pad_token = eos_token the EOS that ends each response is removed from the loss.
    """
    from transformers import DataCollatorForLanguageModeling

    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    batch = collator([{"input_ids": e.input_ids} for e in examples])
    ends = torch.tensor([len(e.input_ids) - 1 for e in examples])
    kept = int((batch["labels"][torch.arange(len(examples)), ends] == tokenizer.eos_token_id).sum())
    return len(examples) - kept, len(examples)


def run_trl(
    label: str, tmp: Path, tokenizer, train_records, train_examples, eval_examples, args, data_seed: int = SEED
) -> RunResult:
    import datasets
    import transformers
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()

    # TRL insists on a pad token and sets it on the tokenizer it is given: use a copy, ours has none.
    trl_tokenizer = copy.deepcopy(tokenizer)
    trl_tokenizer.pad_token = trl_tokenizer.eos_token
    eos_id = trl_tokenizer.eos_token_id

    dataset = datasets.Dataset.from_list(
        [
            {"prompt": format_prompt(r.instruction, r.input), "completion": format_target(r.response)}
            for r in train_records
        ]
    )
    steps = math.ceil(len(train_records) / args.batch_size)
    config = SFTConfig(
        output_dir=str(tmp / f"trl-{data_seed}"),
        seed=SEED,
        data_seed=data_seed,  # the shuffle only; the weights are initialised below, from SEED
        num_train_epochs=1,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=warmup_steps(steps),
        optim="adamw_torch",
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        max_grad_norm=1.0,
        # TRL's own defaults are bf16=True and gradient_checkpointing=True; the comparison is fp32, no recompute.
        bf16=False,
        fp16=False,
        activation_checkpointing=False,  # the new name of gradient_checkpointing in transformers 5
        # TRL's CPU default: no rounding of the batch width, so slightly less padding than codeinstruct's
        # multiple-of-8 widths (the pad fraction column shows it).
        pad_to_multiple_of=None,
        max_length=args.max_length,
        packing=False,
        padding_free=False,
        completion_only_loss=True,
        use_cpu=True,
        dataloader_num_workers=0,
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    torch.manual_seed(SEED)
    model = load_model(f"preset:{args.preset}", tokenizer=tokenizer)
    init = param_fingerprint(model)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=trl_tokenizer)
    trainer.remove_callback(PrinterCallback)  # it prints every log dict; the table is the output
    assert not trainer.args.gradient_checkpointing and not trainer.args.bf16

    # What TRL will train on must be what codeinstruct trains on, token for token.
    prepared = trainer.train_dataset
    trl_ids, trl_labels = prepared["input_ids"], prepared["labels"]
    ours = [e.input_ids for e in train_examples]
    mismatched = sum(a != b for a, b in zip(trl_ids, ours)) + abs(len(trl_ids) - len(ours))
    eos_counts = [ids.count(eos_id) for ids in trl_ids]
    eos_last_labelled = sum(ids[-1] == eos_id and lab[-1] == eos_id for ids, lab in zip(trl_ids, trl_labels))
    dataset_targets = sum(sum(1 for x in lab[1:] if x != IGNORE_INDEX) for lab in trl_labels)

    counter = CountingCollator(trainer.data_collator, eos_id)
    trainer.data_collator = counter
    loop_timer = LoopTimer()
    trainer.add_callback(loop_timer)

    start = time.perf_counter()
    with CpuWatch() as watch:
        trainer.train()
    seconds = time.perf_counter() - start

    logged = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in logged]
    assert len(losses) == len(counter.step_targets) == trainer.state.global_step, (
        len(losses),
        len(counter.step_targets),
        trainer.state.global_step,
    )
    k = max(1, trainer.state.global_step // 10)
    # Did TRL see the examples in the same batches as codeinstruct's padded run? (Both draw a torch
    # randperm from a generator seeded with 0, so they may well coincide; this says whether they did.)
    index = {}
    for i, e in enumerate(train_examples):
        index.setdefault(tuple(e.input_ids), i)
    trl_order = [[index.get(tuple(ids)) for ids in batch] for batch in counter.batches]
    ci_order = ci_loop.epoch_micro_batches(len(train_examples), args.batch_size, SEED, 0)
    masked, total = legacy_collator_masks_eos(trl_tokenizer, train_examples[:64])
    return RunResult(
        name=label,
        batch_size=args.batch_size,
        steps=trainer.state.global_step,
        target_tokens=sum(counter.step_targets),
        real_tokens=counter.real,
        computed_tokens=counter.computed,
        seconds=seconds,
        train_loss_last=weighted_tail(losses, counter.step_targets, k),
        last_steps=k,
        heldout_loss=heldout_loss(trainer.model, eval_examples),
        init_fingerprint=init,
        others_cpu=watch.others_share,
        notes={
            "tokenization_mismatches_vs_codeinstruct": mismatched,
            "same_batches_as_codeinstruct_padding": trl_order == ci_order,
            "examples_with_eos_count": {str(c): eos_counts.count(c) for c in sorted(set(eos_counts))},
            "examples_ending_in_labelled_eos": eos_last_labelled,
            "rows_whose_last_real_label_is_eos_in_batches": f"{counter.eos_labelled}/{counter.rows}",
            "target_tokens_in_prepared_dataset": dataset_targets,
            "legacy_DataCollatorForLanguageModeling_masks_eos": f"{masked}/{total}",
            "train_loop_seconds_without_setup": round(loop_timer.end - loop_timer.start, 3),
            "pad_token": trl_tokenizer.pad_token,
            "pad_token_id": trl_tokenizer.pad_token_id,
            "eos_token_id": eos_id,
        },
    )


# ---------------------------------------------------------------------------------------------------
# report


def print_table(runs: list[RunResult], baseline: RunResult) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SFT throughput (one epoch, same records, same init)")
    for col in (
        "run",
        "rows/step",
        "steps",
        "target tokens",
        "target tok/step",
        "pad fraction",
        "seconds",
        "target tok/s",
        "speed-up vs TRL",
        "train loss (last steps)",
        "held-out loss",
        "loss vs TRL",
    ):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in runs:
        table.add_row(
            r.name,
            str(r.batch_size),
            str(r.steps),
            f"{r.target_tokens:,}",
            f"{r.target_tokens / r.steps:,.0f}",
            f"{r.pad_fraction:.1%}",
            f"{r.seconds:.1f}",
            f"{r.tokens_per_s:,.0f}",
            f"{r.tokens_per_s / baseline.tokens_per_s:.2f}x",
            f"{r.train_loss_last:.4f} ({r.last_steps})",
            f"{r.heldout_loss:.4f}",
            f"{(r.heldout_loss / baseline.heldout_loss - 1):+.2%}",
        )
    Console(width=200).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=1024, help="training records (the first that fit max_length)")
    parser.add_argument("--eval-records", type=int, default=64, help="held-out records, taken after the training ones")
    parser.add_argument("--preset", default="small", choices=["tiny", "small"], help="codeinstruct model preset")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step of the padded runs")
    parser.add_argument(
        "--packed-batch-size",
        type=int,
        default=None,
        help="rows per step of the packed run (default: matched to the padded runs' step count)",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument(
        "--noise-floor",
        action="store_true",
        help="train TRL once more with another data order (same init) to show how much the "
        "held-out loss moves with the order alone",
    )
    args = parser.parse_args()

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # model save/load bars would interleave with the report

    t_total = time.perf_counter()
    raw, source = load_raw_records(args.data, args.records, args.eval_records)
    records = records_from_dicts(raw, source)
    tokenizer = train_tokenizer([full_text(r) for r in records], vocab_size=args.vocab)
    train_records, eval_records, skipped = split_usable(
        records, tokenizer, args.max_length, args.records, args.eval_records
    )

    with tempfile.TemporaryDirectory(prefix="sft-bench-") as tmp_name:
        tmp = Path(tmp_name)
        tok_dir = tmp / "tokenizer"
        save_tokenizer(tokenizer, tok_dir)
        data_file = tmp / "train.json"
        data_file.write_text(json.dumps(record_dicts(train_records)))
        # The loop reloads the tokenizer from disk; everything else below uses the same files.
        tokenizer = load_tokenizer(tok_dir)
        train_examples, _ = tokenize_records(train_records, tokenizer, args.max_length)
        eval_examples, _ = tokenize_records(eval_records, tokenizer, args.max_length)

        packed_bs, n_rows = packed_batch_size(train_examples, args.max_length, args.batch_size)
        packed_bs = args.packed_batch_size or packed_bs
        print(
            f"data: {source}; {len(train_records)} train + {len(eval_records)} held-out records "
            f"(skipped on the way: {skipped['too_long']} longer than max_length={args.max_length}, "
            f"{skipped['special_token_text']} containing special-token text); tokenizer vocab {len(tokenizer)}"
        )
        print(
            f"model preset:{args.preset}; torch threads {torch.get_num_threads()}; lr {args.lr}; "
            f"padded batch {args.batch_size} examples; packed batch {packed_bs} rows of <= {args.max_length} "
            f"tokens ({n_rows} rows in all)"
        )

        warm_up(args.preset, tokenizer, args.max_length)
        runs = []
        for label, packing, bs in (
            ("codeinstruct packing", True, packed_bs),
            ("codeinstruct padding", False, args.batch_size),
        ):
            recipe = codeinstruct_recipe(tmp, label.replace(" ", "-"), data_file, tok_dir, args, packing, bs)
            runs.append(run_codeinstruct(label, recipe, eval_examples))
            print(f"  done: {label} ({runs[-1].seconds:.1f}s)", flush=True)
        runs.append(
            run_trl("TRL SFTTrainer padding", tmp, tokenizer, train_records, train_examples, eval_examples, args)
        )
        print(f"  done: {runs[-1].name} ({runs[-1].seconds:.1f}s)", flush=True)
        reshuffled = None
        if args.noise_floor:
            reshuffled = run_trl(
                "TRL, other data order",
                tmp,
                tokenizer,
                train_records,
                train_examples,
                eval_examples,
                args,
                data_seed=SEED + 1,
            )
            print(f"  done: {reshuffled.name} ({reshuffled.seconds:.1f}s)", flush=True)

    trl = runs[-1]
    print_table(runs, trl)

    ours_targets = sum(e.n_targets for e in train_examples)
    trl_prepared = trl.notes["target_tokens_in_prepared_dataset"]
    counts_equal = len({ours_targets, trl_prepared, *(r.target_tokens for r in runs)}) == 1
    same_init = len({r.init_fingerprint for r in runs}) == 1
    print(
        f"target tokens: codeinstruct's examples {ours_targets:,}; TRL's prepared dataset {trl_prepared:,}; trained: "
        + ", ".join(f"{r.name} {r.target_tokens:,}" for r in runs)
        + (" -> equal" if counts_equal else " -> DIFFERENT")
    )
    print(f"initial weights identical across runs: {same_init}")
    print(
        f"TRL seconds are trainer.train(); its step loop alone (as codeinstruct is timed) took "
        f"{trl.notes['train_loop_seconds_without_setup']:.1f}s; codeinstruct's TrainResult.seconds, which also "
        f"counts saving the model and plotting: "
        + ", ".join(f"{r.name} {r.notes['train_result_seconds_incl_save_and_plot']:.1f}s" for r in runs[:2])
    )
    timings_reliable = not any(r.others_cpu > MAX_OTHERS_CPU for r in runs)
    print(
        f"CPU used by other processes while each run trained (share of all {os.cpu_count()} cores): "
        + ", ".join(f"{r.name} {r.others_cpu:.1%}" for r in runs)
    )
    if not timings_reliable:
        print(
            "WARNING: other processes used the CPU during at least one run, so its timing is not reliable; "
            "run again on an idle machine."
        )
    print(
        f"TRL: pad_token={trl.notes['pad_token']!r} (id {trl.notes['pad_token_id']}) "
        f"= EOS (id {trl.notes['eos_token_id']}); "
        f"tokenization mismatches vs codeinstruct: {trl.notes['tokenization_mismatches_vs_codeinstruct']}; "
        f"EOS per example: {trl.notes['examples_with_eos_count']}; examples ending in a labelled EOS: "
        f"{trl.notes['examples_ending_in_labelled_eos']}/{len(train_examples)}; in the trained batches: "
        f"{trl.notes['rows_whose_last_real_label_is_eos_in_batches']}"
    )
    print(
        f"     same batches, in the same order, as codeinstruct padding: "
        f"{trl.notes['same_batches_as_codeinstruct_padding']}"
    )
    print(
        f"     transformers' DataCollatorForLanguageModeling with the same tokenizer would mask "
        f"{trl.notes['legacy_DataCollatorForLanguageModeling_masks_eos']} EOS labels (pad == EOS pitfall)"
    )

    packed = runs[0]
    speedup = packed.tokens_per_s / trl.tokens_per_s
    loss_gap = abs(packed.heldout_loss / trl.heldout_loss - 1)
    verdict = "holds" if speedup >= 1.5 and loss_gap <= 0.01 else "does NOT hold"
    print(
        f"claim (packing >= 1.5x TRL target tok/s, held-out loss within 1%): {verdict} here "
        f"({speedup:.2f}x, {loss_gap:.2%})"
    )
    if reshuffled is not None:
        order_noise = abs(reshuffled.heldout_loss / trl.heldout_loss - 1)
        print(
            f"noise floor: TRL with only the data order changed (data_seed {SEED + 1}) reaches held-out loss "
            f"{reshuffled.heldout_loss:.4f} ({reshuffled.heldout_loss / trl.heldout_loss - 1:+.2%} vs TRL), so the "
            f"packing run's {loss_gap:.2%} gap is {'within' if loss_gap <= order_noise else 'beyond'} what the "
            "data order alone moves"
        )
    elif loss_gap > 0.01:
        print("  (--noise-floor shows how much the held-out loss moves with the data order alone)")
    total = time.perf_counter() - t_total
    print(f"total benchmark time {total:.0f}s")

    if args.json:
        payload = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "data_source": source,
            "records_skipped": skipped,
            "packed_batch_size": packed_bs,
            "torch_threads": torch.get_num_threads(),
            "runs": [
                asdict(r)
                | {
                    "pad_fraction": r.pad_fraction,
                    "target_tokens_per_s": r.tokens_per_s,
                    "speedup_vs_trl": r.tokens_per_s / trl.tokens_per_s,
                    "heldout_loss_vs_trl": r.heldout_loss / trl.heldout_loss - 1,
                }
                for r in runs
            ],
            "same_initial_weights": same_init,
            "target_token_counts_equal": counts_equal,
            "claim_holds": verdict == "holds",
            "total_seconds": total,
            "timings_reliable": timings_reliable,
            "noise_floor_run": None
            if reshuffled is None
            else asdict(reshuffled) | {"heldout_loss_vs_trl": reshuffled.heldout_loss / trl.heldout_loss - 1},
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
