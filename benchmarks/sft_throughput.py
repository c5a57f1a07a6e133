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
  Records that do not fit max_length are removed beforehand (codeinstruct would drop them, TRL would
  truncate them), so all three train on exactly the same examples. Each trainer shuffles with its own
  generator; the script reports whether TRL's batches came out identical to codeinstruct's padded ones
  (with seed 0 they do: both take torch.randperm from a generator seeded with 0), in which case those
  two runs do the same arithmetic and any loss gap between them comes from the trainers themselves.
  The loss compared is the held-out loss: each final model is scored by ONE function (below,
  `heldout_loss`) on the same records that no run trained on: token-weighted mean cross-entropy
  over response + EOS tokens, one unpadded example at a time, eval mode. The last steps' training
  loss is shown too, but it is measured on different batches in each run.

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

from codeinstruct.config import recipe_from_dict
from codeinstruct.data.records import records_from_dicts
from codeinstruct.data.sft import IGNORE_INDEX, SFTExample, tokenize_records
from codeinstruct.modeling import load_model
from codeinstruct.prompts import format_prompt, format_target
from codeinstruct.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer
from codeinstruct.train import loop as ci_loop

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = PROJECT_ROOT.parent / "shared" / "data" / "gpteacher-codegen" / "codegen-instruct.json"
WARMUP_RATIO = 0.03  # codeinstruct's default; TRL gets the same number of warmup steps
SEED = 0


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
    # CPU seconds this process used / (wall seconds x torch threads) while training: well below ~0.9
    # means other processes took cores away and the wall-clock numbers are not trustworthy.
    cpu_share: float = float("nan")
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
    """The first n_train + n_eval (plus slack for overlong ones) records, and where they came from."""
    want = 2 * (n_train + n_eval)
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))[:want], str(path)
    # Imported lazily: the built-in data module is only needed (and may only exist) for the fallback.
    from codeinstruct.data.builtin import stdlib_instruction_records

    return stdlib_instruction_records(limit=want), f"builtin:stdlib (fallback: {path} not found)"


def full_text(record) -> str:
    return format_prompt(record.instruction, record.input) + format_target(record.response)


def split_fitting(records, tokenizer, max_length: int, n_train: int, n_eval: int):
    """First n_train records that fit max_length (with EOS), then the next n_eval that fit.

    Fitting is decided by codeinstruct's own tokenization, so no trainer drops or truncates anything.
    Returns (train, held_out, how many records were skipped as too long on the way).
    """
    _, report = tokenize_records(records, tokenizer, max_length, "drop")
    fitting, skipped = [], 0
    for record, n in zip(records, report.lengths):
        if len(fitting) == n_train + n_eval:
            break
        if n <= max_length:
            fitting.append(record)
        else:
            skipped += 1
    if len(fitting) < n_train + n_eval:
        raise SystemExit(f"only {len(fitting)} records fit max_length={max_length}; need {n_train + n_eval}")
    return fitting[:n_train], fitting[n_train:], skipped


def record_dicts(records) -> list[dict]:
    return [{"instruction": r.instruction, "input": r.input, "response": r.response} for r in records]


# ---------------------------------------------------------------------------------------------------
# the shared yardsticks


@torch.no_grad()
def heldout_loss(model, examples: list[SFTExample]) -> float:
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


def weighted_tail(losses: list[float], tokens: list[int], k: int) -> float:
    lo, tok = losses[-k:], tokens[-k:]
    return sum(l * t for l, t in zip(lo, tok)) / sum(tok)


def warmup_steps(total_steps: int) -> int:
    # codeinstruct's rule (round); TRL's own ratio rule would be ceil, hence an explicit step count.
    return round(WARMUP_RATIO * total_steps)


# ---------------------------------------------------------------------------------------------------
# codeinstruct


def codeinstruct_recipe(tmp: Path, name: str, data_file: Path, tok_dir: Path, args, packing: bool, batch_size: int):
    return recipe_from_dict({
        "name": name,
        "seed": SEED,
        "run_dir": str(tmp / name),
        "model": {"source": f"preset:{args.preset}", "tokenizer": str(tok_dir)},
        "data": {"train": str(data_file), "max_length": args.max_length, "packing": packing, "overlong": "drop"},
        "train": {
            "epochs": 1, "batch_size": batch_size, "grad_accum": 1, "lr": args.lr, "weight_decay": 0.0,
            "warmup_ratio": WARMUP_RATIO, "schedule": "cosine", "max_grad_norm": 1.0, "precision": "fp32",
            "device": "cpu", "save_every": 0, "log_every": 1,  # every step's loss, as TRL logs below
        },
    })


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
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        result = ci_loop.train(recipe, data)
    finally:
        ci_loop.load_model = original_load_model
    share = (time.process_time() - cpu) / ((time.perf_counter() - wall) * torch.get_num_threads())

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
        cpu_share=share,
        notes={"train_result_seconds_incl_save_and_plot": round(result.seconds, 3),
               "examples": len(data.examples)},
    )


# ---------------------------------------------------------------------------------------------------
# TRL


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


def legacy_collator_masks_eos(tokenizer, examples: list[SFTExample]) -> tuple[int, int]:
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


def run_trl(label: str, tmp: Path, tokenizer, train_records, train_examples, eval_examples, args) -> RunResult:
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

    dataset = datasets.Dataset.from_list([
        {"prompt": format_prompt(r.instruction, r.input), "completion": format_target(r.response)}
        for r in train_records
    ])
    steps = math.ceil(len(train_records) / args.batch_size)
    config = SFTConfig(
        output_dir=str(tmp / "trl"),
        seed=SEED,
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
        # transformers pads to a multiple of 8 only when asked; TRL's default (no rounding) is kept, which
        # gives TRL slightly less padding than codeinstruct's multiple-of-8 widths.
        activation_checkpointing=False,  # the new name of gradient_checkpointing in transformers 5
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

    start, cpu = time.perf_counter(), time.process_time()
    trainer.train()
    seconds = time.perf_counter() - start
    share = (time.process_time() - cpu) / (seconds * torch.get_num_threads())

    logged = [h for h in trainer.state.log_history if "loss" in h]
    losses = [h["loss"] for h in logged]
    assert len(losses) == len(counter.step_targets) == trainer.state.global_step, (
        len(losses), len(counter.step_targets), trainer.state.global_step)
    k = max(1, trainer.state.global_step // 10)
    # Did TRL see the examples in the same batches as codeinstruct's padded run? (Both draw a torch
    # randperm from a generator seeded with 0, so they may well coincide; this says whether they did.)
    index = {}
    for i, e in enumerate(train_examples):
        index.setdefault(tuple(e.input_ids), i)
    trl_order = [[index[tuple(ids)] for ids in batch] for batch in counter.batches]
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
        cpu_share=share,
        notes={
            "tokenization_mismatches_vs_codeinstruct": mismatched,
            "same_batches_as_codeinstruct_padding": trl_order == ci_order,
            "examples_with_eos_count": {str(c): eos_counts.count(c) for c in sorted(set(eos_counts))},
            "examples_ending_in_labelled_eos": eos_last_labelled,
            "rows_whose_last_real_label_is_eos_in_batches": f"{counter.eos_labelled}/{counter.rows}",
            "target_tokens_in_prepared_dataset": dataset_targets,
            "legacy_DataCollatorForLanguageModeling_masks_eos": f"{masked}/{total}",
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
    for col in ("run", "rows/step", "steps", "target tokens", "target tok/step", "pad fraction", "seconds",
                "target tok/s", "speed-up vs TRL", f"train loss (last steps)", "held-out loss", "loss vs TRL"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for r in runs:
        table.add_row(
            r.name, str(r.batch_size), str(r.steps), f"{r.target_tokens:,}", f"{r.target_tokens / r.steps:,.0f}",
            f"{r.pad_fraction:.1%}", f"{r.seconds:.1f}", f"{r.tokens_per_s:,.0f}",
            f"{r.tokens_per_s / baseline.tokens_per_s:.2f}x", f"{r.train_loss_last:.4f} ({r.last_steps})",
            f"{r.heldout_loss:.4f}", f"{(r.heldout_loss / baseline.heldout_loss - 1):+.2%}",
        )
    Console(width=200).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=768, help="training records (the first that fit max_length)")
    parser.add_argument("--eval-records", type=int, default=64, help="held-out records, taken after the training ones")
    parser.add_argument("--preset", default="small", help="codeinstruct model preset (tiny, small)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8, help="examples per step of the padded runs")
    parser.add_argument("--packed-batch-size", type=int, default=None,
                        help="rows per step of the packed run (default: matched to the padded runs' step count)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--vocab", type=int, default=2048)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # model save/load bars would interleave with the report

    t_total = time.perf_counter()
    load_before = os.getloadavg()[0]
    raw, source = load_raw_records(args.data, args.records, args.eval_records)
    records = records_from_dicts(raw, source)
    tokenizer = train_tokenizer([full_text(r) for r in records], vocab_size=args.vocab)
    train_records, eval_records, skipped_overlong = split_fitting(
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
        print(f"data: {source}; {len(train_records)} train + {len(eval_records)} held-out records "
              f"({skipped_overlong} longer than max_length={args.max_length} skipped); tokenizer vocab {len(tokenizer)}")
        print(f"model preset:{args.preset}; torch threads {torch.get_num_threads()}; lr {args.lr}; "
              f"padded batch {args.batch_size} examples; packed batch {packed_bs} rows of <= {args.max_length} "
              f"tokens ({n_rows} rows in all)")

        warm_up(args.preset, tokenizer, args.max_length)
        runs = []
        for label, packing, bs in (("codeinstruct packing", True, packed_bs), ("codeinstruct padding", False, args.batch_size)):
            recipe = codeinstruct_recipe(tmp, label.replace(" ", "-"), data_file, tok_dir, args, packing, bs)
            runs.append(run_codeinstruct(label, recipe, eval_examples))
            print(f"  done: {label} ({runs[-1].seconds:.1f}s)", flush=True)
        runs.append(run_trl("TRL SFTTrainer padding", tmp, tokenizer, train_records, train_examples, eval_examples, args))
        print(f"  done: {runs[-1].name} ({runs[-1].seconds:.1f}s)", flush=True)

    trl = runs[-1]
    print_table(runs, trl)

    ours_targets = sum(e.n_targets for e in train_examples)
    same_init = len({r.init_fingerprint for r in runs}) == 1
    print(f"target tokens: codeinstruct examples {ours_targets:,}; "
          + "; ".join(f"{r.name} trained {r.target_tokens:,}" for r in runs)
          + f"; TRL prepared dataset {trl.notes['target_tokens_in_prepared_dataset']:,}"
          + (" -> equal" if len({ours_targets, trl.notes['target_tokens_in_prepared_dataset'], *(r.target_tokens for r in runs)}) == 1 else " -> DIFFERENT"))
    print(f"initial weights identical across runs: {same_init}")
    shares = ", ".join(f"{r.name} {r.cpu_share:.2f}" for r in runs)
    print(f"CPU share while training (this process's CPU time / wall time x {torch.get_num_threads()} threads): {shares}; "
          f"1-min load average before start {load_before:.1f}")
    if load_before > 0.5 or min(r.cpu_share for r in runs) < 0.75:
        print("WARNING: other processes were using the CPU; the timings above are not reliable, run again on an idle machine")
    print(f"TRL: pad_token={trl.notes['pad_token']!r} (id {trl.notes['pad_token_id']}) = EOS (id {trl.notes['eos_token_id']}); "
          f"tokenization mismatches vs codeinstruct: {trl.notes['tokenization_mismatches_vs_codeinstruct']}; "
          f"EOS per example: {trl.notes['examples_with_eos_count']}; examples ending in a labelled EOS: "
          f"{trl.notes['examples_ending_in_labelled_eos']}/{len(train_examples)}; in the trained batches: "
          f"{trl.notes['rows_whose_last_real_label_is_eos_in_batches']}")
    print(f"     same batches, in the same order, as codeinstruct padding: {trl.notes['same_batches_as_codeinstruct_padding']}")
    print(f"     transformers' DataCollatorForLanguageModeling with the same tokenizer would mask "
          f"{trl.notes['legacy_DataCollatorForLanguageModeling_masks_eos']} EOS labels (pad == EOS pitfall)")

    packed = runs[0]
    speedup = packed.tokens_per_s / trl.tokens_per_s
    loss_gap = abs(packed.heldout_loss / trl.heldout_loss - 1)
    verdict = "holds" if speedup >= 1.5 and loss_gap <= 0.01 else "does NOT hold"
    print(f"claim (packing >= 1.5x TRL target tok/s, held-out loss within 1%): {verdict} here "
          f"({speedup:.2f}x, {loss_gap:.2%})")
    total = time.perf_counter() - t_total
    print(f"total benchmark time {total:.0f}s")

    if args.json:
        payload = {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "data_source": source,
            "packed_batch_size": packed_bs,
            "torch_threads": torch.get_num_threads(),
            "runs": [asdict(r) | {"pad_fraction": r.pad_fraction, "target_tokens_per_s": r.tokens_per_s,
                                  "speedup_vs_trl": r.tokens_per_s / trl.tokens_per_s,
                                  "heldout_loss_vs_trl": r.heldout_loss / trl.heldout_loss - 1} for r in runs],
            "same_initial_weights": same_init,
            "claim_holds": verdict == "holds",
            "total_seconds": total,
            "load_average_before_start": load_before,
        }
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
