"""Supervised fine-tuning: one loop a reader can follow top to bottom.

prepare_sft() reads, validates and tokenizes everything before anything is written, so bad
input never leaves a half-made run folder. train() then runs AdamW with warmup + decay,
gradient accumulation whose loss is normalised by the target tokens of the *whole*
accumulated batch (so every target token weighs the same, whatever micro-batch it fell in),
clipping, bf16 autocast where the device has it, checkpoints that resume exactly, and writes
the run folder: config.yaml, metrics.jsonl, loss.png, checkpoints/, final/.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from codeinstruct.config import Recipe
from codeinstruct.data.packing import Batch, collate_packed, collate_padded, pack_examples
from codeinstruct.data.records import InstructionRecord, load_instruction_data, split_held_out
from codeinstruct.data.sft import IGNORE_INDEX, TokenizedExample, tokenize_records
from codeinstruct.errors import CodeinstructError
from codeinstruct.modeling import load_model, save_hf_directory
from codeinstruct.devices import autocast_dtype, pick_device  # noqa: F401  (pick_device: public here before devices.py)
from codeinstruct.tokenizer import resolve_tokenizer
from codeinstruct.train.checkpoint import load_latest_checkpoint, save_checkpoint
from codeinstruct.train.distributed import full_state_dict, init_distributed, rank_micro_batches, shard_model


@dataclass
class PreparedData:
    tokenizer: object
    examples: list[TokenizedExample]  # epoch 0's (every epoch's, unless examples_for_epoch is set)
    report: object  # TokenizeReport (finetune) or CorpusReport (pretrain), for the CLI to show
    held_out: list[InstructionRecord] = field(default_factory=list)
    # Pretraining redraws FIM each epoch; the row count must stay that of epoch 0.
    examples_for_epoch: Callable[[int], list[TokenizedExample]] | None = None
    kind: str = "finetune"  # or "pretrain": what the model card says was done

    def epoch_examples(self, epoch: int) -> list[TokenizedExample]:
        return self.examples if self.examples_for_epoch is None or epoch == 0 else self.examples_for_epoch(epoch)


def prepare_sft(recipe: Recipe) -> PreparedData:
    """Everything that can fail on the user's input, done before the run folder exists."""
    tokenizer_spec = recipe.model.tokenizer or recipe.model.source
    if tokenizer_spec.startswith("preset:"):
        raise CodeinstructError("model.tokenizer is required when model.source is a preset")
    if not isinstance(recipe.data.train, str):
        raise CodeinstructError("data.train: fine-tuning reads one instruction file")
    tokenizer = resolve_tokenizer(tokenizer_spec)
    records = load_instruction_data(recipe.data.train)
    if recipe.data.limit:
        records = records[: recipe.data.limit]
    train_records, held_out = split_held_out(records, recipe.data.held_out, recipe.seed)
    examples, report = tokenize_records(
        train_records, tokenizer, recipe.data.max_length, recipe.data.overlong, source=recipe.data.train
    )
    return PreparedData(tokenizer, examples, report, held_out)


def prepare_pretrain(recipe: Recipe) -> PreparedData:
    """Corpus -> tokens with FIM -> blocks of data.max_length, all before the run folder exists."""
    from codeinstruct.data.corpus import read_corpus
    from codeinstruct.data.pretrain import pretraining_blocks

    if not recipe.model.tokenizer:
        raise CodeinstructError("model.tokenizer is required for pretraining (train one with `codeinstruct tokenizer train`)")
    tokenizer = resolve_tokenizer(recipe.model.tokenizer)
    sources = [recipe.data.train] if isinstance(recipe.data.train, str) else recipe.data.train
    documents, report = read_corpus(sources, include=recipe.data.include)
    if recipe.data.limit:
        documents = documents[: recipe.data.limit]
    if not documents:
        raise CodeinstructError(f"data.train: no documents found in {', '.join(sources)}")
    texts = [d.content for d in documents]
    d = recipe.data

    def blocks(epoch: int, n_blocks: int | None = None) -> list[TokenizedExample]:
        return pretraining_blocks(texts, tokenizer, d.max_length, fim_rate=d.fim_rate, fim_spm_rate=d.fim_spm_rate,
                                  seed=recipe.seed, epoch=epoch, n_blocks=n_blocks)

    first = blocks(0)
    return PreparedData(tokenizer, first, report, examples_for_epoch=lambda epoch: blocks(epoch, len(first)), kind="pretrain")


def model_attention_mask(model, mask: torch.Tensor) -> torch.Tensor:
    """The packed 4-D bool mask in the form the model's attention takes it."""
    if mask.dim() == 4 and model.config._attn_implementation == "eager":
        # eager attention adds the mask to the scores instead of selecting with it
        return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill(
            ~mask, torch.finfo(torch.float32).min
        )
    return mask


def batch_loss_sum(model, batch: Batch, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """Sum of next-token cross-entropy over the batch's target tokens (fp32)."""
    mask = model_attention_mask(model, batch.attention_mask)
    with torch.autocast(batch.input_ids.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids).logits
    return F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), batch.targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def accumulate_gradients(model, batches: list[tuple[Batch, float]], device, amp_dtype, n_targets: int,
                         world: int = 1) -> float:
    """Backward over this process's micro-batches of one optimizer step; returns their summed loss.

    Each micro-batch's summed loss is divided by the target count of the whole step (over all
    processes), so the gradient is that of one big batch: a mean of per-micro-batch means would
    overweight the tokens of short micro-batches. FSDP averages gradients over the processes,
    hence the factor `world`. A micro-batch of weight 0 only keeps the processes' collectives in step.
    """
    total = 0.0
    for batch, weight in batches:
        loss_sum = batch_loss_sum(model, batch.to(device), amp_dtype)
        (loss_sum * (weight * world / n_targets)).backward()
        total += weight * loss_sum.item()
    return total


def row_target_counts(examples: list[TokenizedExample], rows: list[list[int]]) -> list[int]:
    """Target tokens of each row (what a Batch of it would count), without collating."""
    per_example = [sum(1 for label in e.labels[1:] if label != IGNORE_INDEX) for e in examples]
    return [sum(per_example[i] for i in row) for row in rows]


def make_rows(examples: list[TokenizedExample], max_length: int, packing: bool) -> list[list[int]]:
    if packing:
        return pack_examples([len(e.input_ids) for e in examples], max_length)
    return [[i] for i in range(len(examples))]


def epoch_micro_batches(n_rows: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Row indices of each micro-batch of one epoch: a shuffle fixed by (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_rows, generator=generator).tolist()
    return [order[i : i + batch_size] for i in range(0, n_rows, batch_size)]


def collate_rows(examples: list[TokenizedExample], rows: list[list[int]], row_ids: list[int], packing: bool, pad_id: int) -> Batch:
    if packing:
        return collate_packed([[examples[i] for i in rows[r]] for r in row_ids], pad_id)
    return collate_padded([examples[rows[r][0]] for r in row_ids], pad_id)


def _fingerprint(recipe: Recipe, examples: list[TokenizedExample]) -> str:
    """Identifies the data order a checkpoint belongs to; resuming with other data is refused."""
    h = hashlib.sha256()
    h.update(json.dumps([recipe.seed, recipe.data.max_length, recipe.data.packing, recipe.train.batch_size,
                         recipe.train.grad_accum, recipe.train.epochs]).encode())
    for e in examples:
        h.update(array("l", e.input_ids).tobytes())
        h.update(array("l", e.labels).tobytes())
    return h.hexdigest()[:16]


class TrainingObserver:
    """What the loop reports while it runs; the CLI draws progress from it. Methods are no-ops here."""

    def start(self, total_steps: int, first_step: int) -> None: ...

    def step(self, metrics: dict) -> None: ...

    def checkpoint(self, path: Path) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    final_dir: Path | None  # None when interrupted
    steps: int
    final_loss: float
    target_tokens: int
    seconds: float  # the training loop (this process), without writing final/
    resumed_from: int | None
    interrupted: bool = False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss(metrics_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_metrics(metrics_path)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per target token)")
    ax.set_title(out_png.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = out_png.with_name(out_png.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)


def train(
    recipe: Recipe,
    data: PreparedData,
    *,
    resume: bool = False,
    observer: TrainingObserver | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    observer = observer or TrainingObserver()
    cfg = recipe.train
    run_dir = recipe.resolved_run_dir()
    ckpt_root = run_dir / "checkpoints"
    final_dir = run_dir / "final"
    metrics_path = run_dir / "metrics.jsonl"

    if run_dir.exists() and not resume and any(run_dir.iterdir()):
        raise CodeinstructError(f"{run_dir}: run folder already exists; pass --resume to continue it, or set run_dir=...")
    if resume and final_dir.exists():
        raise CodeinstructError(f"{run_dir}: this run already finished (final/ exists); nothing to resume")
    created_run_dir = not run_dir.exists()
    dist = init_distributed(cfg.device)
    dist.barrier()  # every rank has checked the folder before rank 0 writes to it

    device = dist.device
    amp_dtype = autocast_dtype(cfg.precision, device)
    # sharded on GPUs, FSDP's mixed precision gathers bf16 parameters instead of autocasting
    fsdp_bf16 = dist.sharded and device.type == "cuda" and amp_dtype == torch.bfloat16
    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)
    model = _build_model(recipe, data.tokenizer).to(device)
    if len(data.tokenizer) > model.config.vocab_size:
        raise CodeinstructError(
            f"tokenizer has {len(data.tokenizer)} tokens but the model's vocabulary is {model.config.vocab_size}"
        )
    positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if positions is not None and recipe.data.max_length > positions:
        raise CodeinstructError(f"data.max_length={recipe.data.max_length} exceeds the model's {positions} positions")
    if cfg.gradient_checkpointing:
        # renamed in transformers 5; the old name warns
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        model.config.use_cache = False
        if recipe.model.method == "lora":
            model.enable_input_require_grads()  # frozen embeddings would cut the recomputed graph
    if dist.sharded:
        model = shard_model(model, dist, bf16=fsdp_bf16, cpu_offload=recipe.distributed.cpu_offload)
        if fsdp_bf16:
            amp_dtype = None
    model.train()

    examples = data.examples
    pad_id = data.tokenizer.eos_token_id  # never a target: padded positions carry IGNORE_INDEX
    rows = make_rows(examples, recipe.data.max_length, recipe.data.packing)
    row_targets = row_target_counts(examples, rows)
    micro_per_epoch = math.ceil(len(rows) / cfg.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total_steps = cfg.epochs * steps_per_epoch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "ln" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    from transformers import get_scheduler

    scheduler = get_scheduler(
        cfg.schedule if cfg.schedule != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=round(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )

    fingerprint = _fingerprint(recipe, examples)
    step, start_epoch, start_step_in_epoch, tokens_seen = 0, 0, 0, 0
    resumed_from = None
    if resume:
        state = load_latest_checkpoint(ckpt_root, model, optimizer, scheduler, dist)
        if state is not None:
            if state["fingerprint"] != fingerprint:
                raise CodeinstructError(
                    f"{ckpt_root}: the checkpoint was made with other data or batch settings; resume needs the same recipe"
                )
            step, start_epoch, start_step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
            tokens_seen = state["target_tokens"]
            resumed_from = step
    if dist.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(run_dir / "config.yaml", recipe.to_yaml())
        # Metrics past the resumed checkpoint describe steps that will be redone.
        kept = [m for m in _read_metrics(metrics_path) if m["step"] <= step]
        _write_atomic(metrics_path, "".join(json.dumps(m) + "\n" for m in kept))
    if data.held_out and dist.main:
        _write_atomic(run_dir / "held_out.jsonl", "".join(
            json.dumps({"instruction": r.instruction, "input": r.input, "response": r.response}) + "\n"
            for r in data.held_out
        ))

    observer.start(total_steps, step)
    t_start = time.perf_counter()
    t_window, tokens_window = t_start, 0
    last_loss = float("nan")
    checkpoint_written = resumed_from is not None

    def write_checkpoint(epoch: int, step_in_epoch: int) -> None:
        nonlocal checkpoint_written
        state = dict(step=step, epoch=epoch, step_in_epoch=step_in_epoch, target_tokens=tokens_seen,
                     fingerprint=fingerprint, total_steps=total_steps)
        path = save_checkpoint(ckpt_root, step, model, optimizer, scheduler, state, cfg.keep_checkpoints, dist)
        checkpoint_written = True
        if dist.main:
            plot_loss(metrics_path, run_dir / "loss.png")
            observer.checkpoint(path)

    try:
        with (metrics_path.open("a") if dist.main else open(os.devnull, "w")) as metrics_file:
            for epoch in range(start_epoch, cfg.epochs):
                if epoch > 0 and data.examples_for_epoch is not None:
                    examples = data.epoch_examples(epoch)
                    rows = make_rows(examples, recipe.data.max_length, recipe.data.packing)
                    row_targets = row_target_counts(examples, rows)
                    assert math.ceil(len(rows) / cfg.batch_size) == micro_per_epoch, "epochs must have equal steps"
                micro = epoch_micro_batches(len(rows), cfg.batch_size, recipe.seed, epoch)
                steps = [micro[i : i + cfg.grad_accum] for i in range(0, len(micro), cfg.grad_accum)]
                first = start_step_in_epoch if epoch == start_epoch else 0
                for step_in_epoch in range(first, len(steps)):
                    step_rows = [r for ids in steps[step_in_epoch] for r in ids]
                    n_targets = sum(row_targets[r] for r in step_rows)  # over all processes
                    batches = [(collate_rows(examples, rows, ids, recipe.data.packing, pad_id), weight)
                               for ids, weight in rank_micro_batches(step_rows, cfg.batch_size, dist.rank, dist.world)]
                    local_loss = accumulate_gradients(model, batches, device, amp_dtype, n_targets, dist.world)
                    last_loss = dist.sum(local_loss) / n_targets
                    grad_norm = _clip_gradients(model, cfg.max_grad_norm)
                    lr = scheduler.get_last_lr()[0]
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    tokens_seen += n_targets
                    tokens_window += n_targets

                    now = time.perf_counter()
                    metrics = dict(step=step, epoch=epoch + (step_in_epoch + 1) / len(steps), loss=round(last_loss, 6),
                                   lr=lr, grad_norm=round(grad_norm, 6), target_tokens=tokens_seen,
                                   tokens_per_s=round(tokens_window / max(now - t_window, 1e-9), 1),
                                   elapsed_s=round(now - t_start, 3))
                    if dist.main and (step % cfg.log_every == 0 or step == total_steps):
                        metrics_file.write(json.dumps(metrics) + "\n")
                        metrics_file.flush()
                        t_window, tokens_window = now, 0
                    if dist.main:
                        observer.step(metrics)
                    at_epoch_end = step_in_epoch + 1 == len(steps)
                    if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                        write_checkpoint(epoch + 1 if at_epoch_end else epoch, 0 if at_epoch_end else step_in_epoch + 1)
                    if should_stop is not None and dist.any(should_stop()) and step < total_steps:
                        if not (cfg.save_every and step % cfg.save_every == 0):
                            write_checkpoint(epoch + 1 if at_epoch_end else epoch, 0 if at_epoch_end else step_in_epoch + 1)
                        dist.close()
                        return TrainResult(run_dir, None, step, last_loss, tokens_seen,
                                           time.perf_counter() - t_start, resumed_from, interrupted=True)
        train_seconds = time.perf_counter() - t_start  # the loop only, not the final save
        model.eval()
        _save_final(recipe, model, data.tokenizer, run_dir, dist)
        if dist.main:
            plot_loss(metrics_path, run_dir / "loss.png")
            from codeinstruct.card import write_model_card

            write_model_card(run_dir, kind=data.kind)
    except BaseException:
        # A run that never reached a checkpoint holds nothing to resume: leave no half-made folder.
        if created_run_dir and not checkpoint_written and dist.main:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    dist.close()
    return TrainResult(run_dir, final_dir, step, last_loss, tokens_seen, train_seconds, resumed_from)


def _build_model(recipe: Recipe, tokenizer):
    model = load_model(
        recipe.model.source,
        tokenizer=tokenizer,
        dropout=recipe.model.dropout,
        attn_implementation=recipe.model.attn_implementation,
    )
    if recipe.model.method == "lora":
        from codeinstruct.train.lora import apply_lora

        model = apply_lora(model, recipe.model.lora)
    return model


def _clip_gradients(model, max_norm: float | None) -> float:
    """Clip to max_norm (None: only measure); the total norm over all processes' shards."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(norm)


def _save_final(recipe: Recipe, model, tokenizer, run_dir: Path, dist) -> None:
    """final/ as a Hugging Face directory (merged, for LoRA, with the adapter in adapter/)."""
    state = full_state_dict(model) if dist.sharded else None  # a collective: every rank
    if dist.main:
        if dist.sharded:  # an unsharded copy to hold the gathered weights
            model = _build_model(recipe, tokenizer)
            missing, unexpected = model.load_state_dict(state, strict=False)
            if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:  # lm_head is tied to wte
                raise CodeinstructError(f"gathered weights do not fit the model: {(unexpected or missing)[:3]}")
            model.eval()
        if recipe.model.method == "lora":
            from codeinstruct.train.lora import save_adapter_and_merged

            save_adapter_and_merged(model, tokenizer, run_dir / "adapter", run_dir / "final")
        else:
            save_hf_directory(model, tokenizer, run_dir / "final")
    dist.barrier()
