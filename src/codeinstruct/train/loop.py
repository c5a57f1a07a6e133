"""Training: a short setup in named steps, then one fit loop a reader can follow top to bottom.

train() takes data already prepared (train.prepare), so bad input never leaves a half-made run
folder. It sets up this process's place in the job and its device, the model (sharded with FSDP
when several processes train it), the rows of the data, AdamW with warmup + decay, the resumed
position and the run folder; then _fit() runs the optimizer steps: gradient accumulation whose loss
is normalised by the target tokens of the whole accumulated batch (train.step), clipping, bf16
autocast where the device has it, metrics, and checkpoints that resume exactly. At the end final/
holds the model as a Hugging Face directory, beside loss.png and the model card.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from codeinstruct.card import FIM_MIX_FILE, write_model_card
from codeinstruct.config import Recipe, TrainSection
from codeinstruct.data.batches import EpochRows, epoch_steps, rank_micro_batches, steps_per_epoch
from codeinstruct.data.sft import TokenizedExample
from codeinstruct.devices import autocast_dtype
from codeinstruct.errors import CodeinstructError
from codeinstruct.files import write_json
from codeinstruct.modeling import context_length, load_model, save_hf_directory
from codeinstruct.train.checkpoint import load_latest_checkpoint, save_checkpoint
from codeinstruct.train.distributed import Distributed, full_state_dict, init_distributed, shard_model
from codeinstruct.train.lora import apply_lora, save_adapter_and_merged
from codeinstruct.train.prepare import PreparedData
from codeinstruct.train.run_folder import RunFolder
from codeinstruct.train.step import accumulate_gradients, clip_gradients

# Importable from here as before they moved to their own modules (code written against earlier versions).
from codeinstruct.data.batches import collate_rows, epoch_micro_batches, make_rows, row_target_counts  # noqa: F401
from codeinstruct.devices import pick_device  # noqa: F401
from codeinstruct.train.prepare import prepare_pretrain, prepare_sft  # noqa: F401
from codeinstruct.train.run_folder import plot_loss  # noqa: F401
from codeinstruct.train.step import batch_loss_sum, model_attention_mask  # noqa: F401


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


@dataclass(frozen=True)
class Position:
    """Where training stands after `step` steps: what a checkpoint stores to resume exactly there."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0  # the next step to run in `epoch`
    target_tokens: int = 0  # trained on so far


@dataclass
class _Setup:
    """What train()'s setup steps made, for _fit() to run."""

    recipe: Recipe
    data: PreparedData
    run: RunFolder
    dist: Distributed
    model: torch.nn.Module
    amp_dtype: torch.dtype | None
    first_rows: EpochRows  # epoch 0's, and every epoch's unless the data redraws them
    total_steps: int
    optimizer: torch.optim.Optimizer
    scheduler: object
    fingerprint: str
    start: Position
    resumed_from: int | None


def train(
    recipe: Recipe,
    data: PreparedData,
    *,
    resume: bool = False,
    observer: TrainingObserver | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train the recipe's model on prepared data into its run folder (continuing its latest checkpoint
    with `resume`); `should_stop` is asked after each step and, when true, checkpoints and stops."""
    run = RunFolder(recipe.resolved_run_dir())
    run.check_can_start(resume)
    created_run_dir = not run.path.exists()
    dist = init_distributed(recipe.train.device)
    dist.barrier()  # every rank has checked the folder before rank 0 writes to it
    try:
        setup = _setup(recipe, data, run, dist, resume)
        result = _fit(setup, observer or TrainingObserver(), should_stop)
        if not result.interrupted:
            _finish(setup)
            result = replace(result, final_dir=run.final)
    except BaseException:  # Ctrl-C included: a folder this call made, with nothing to resume, is removed
        if created_run_dir and dist.main:
            run.remove_unless_resumable()
        raise
    dist.close()
    return result


# ---------------------------------------------------------------------------------------------------
# setup


def _setup(recipe: Recipe, data: PreparedData, run: RunFolder, dist: Distributed, resume: bool) -> _Setup:
    cfg = recipe.train
    torch.manual_seed(recipe.seed)
    random.seed(recipe.seed)
    model, amp_dtype = _setup_model(recipe, data.tokenizer, dist)
    first_rows = EpochRows.build(data.examples, recipe.data.max_length, recipe.data.packing)
    total_steps = cfg.epochs * steps_per_epoch(len(first_rows.rows), cfg.batch_size, cfg.grad_accum)
    optimizer, scheduler = _setup_optimizer(cfg, model, total_steps)
    fingerprint = _fingerprint(recipe, data.examples)
    start = _setup_resume(run, model, optimizer, scheduler, dist, fingerprint) if resume else None
    if dist.main:
        run.start(recipe, data.held_out, resumed_step=start.step if start else 0)
        if data.fim_mix is not None:  # the card and `codeinstruct card` read what the mix added from here
            write_json(run.path / FIM_MIX_FILE, data.fim_mix.as_dict())
    return _Setup(
        recipe,
        data,
        run,
        dist,
        model,
        amp_dtype,
        first_rows,
        total_steps,
        optimizer,
        scheduler,
        fingerprint,
        start or Position(),
        start.step if start else None,
    )


def _setup_model(recipe: Recipe, tokenizer, dist: Distributed) -> tuple[torch.nn.Module, torch.dtype | None]:
    """The model on this process's device, ready to train, and the dtype to autocast to (None: fp32)."""
    amp_dtype = autocast_dtype(recipe.train.precision, dist.device)
    # sharded on GPUs, FSDP's mixed precision gathers bf16 parameters instead of autocasting
    fsdp_bf16 = dist.sharded and dist.device.type == "cuda" and amp_dtype == torch.bfloat16
    model = _build_model(recipe, tokenizer).to(dist.device)
    if len(tokenizer) > model.config.vocab_size:
        raise CodeinstructError(
            f"tokenizer has {len(tokenizer)} tokens but the model's vocabulary is {model.config.vocab_size}"
        )
    positions = context_length(model.config)
    if positions is not None and recipe.data.max_length > positions:
        raise CodeinstructError(f"data.max_length={recipe.data.max_length} exceeds the model's {positions} positions")
    if recipe.train.gradient_checkpointing:
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
    return model, amp_dtype


def _build_model(recipe: Recipe, tokenizer):
    """The recipe's model, with fresh LoRA adapters when it trains only those."""
    model = load_model(
        recipe.model.source,
        tokenizer=tokenizer,
        dropout=recipe.model.dropout,
        attn_implementation=recipe.model.attn_implementation,
    )
    if recipe.model.method == "lora":
        model = apply_lora(model, recipe.model.lora)
    return model


def _setup_optimizer(cfg: TrainSection, model, total_steps: int):
    """AdamW (no weight decay on biases and layer norms) and its warmup + decay schedule."""
    from transformers import get_scheduler

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "ln" in name else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    scheduler = get_scheduler(
        cfg.schedule if cfg.schedule != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=round(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    return optimizer, scheduler


def _fingerprint(recipe: Recipe, examples: list[TokenizedExample]) -> str:
    """Identifies the data order a checkpoint belongs to; resuming with other data is refused."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                recipe.seed,
                recipe.data.max_length,
                recipe.data.packing,
                recipe.train.batch_size,
                recipe.train.grad_accum,
                recipe.train.epochs,
            ]
        ).encode()
    )
    for e in examples:
        h.update(array("l", e.input_ids).tobytes())
        h.update(array("l", e.labels).tobytes())
    return h.hexdigest()[:16]


def _setup_resume(run: RunFolder, model, optimizer, scheduler, dist: Distributed, fingerprint: str) -> Position | None:
    """The latest checkpoint restored into model, optimizer, scheduler and RNGs; its position, or None."""
    state = load_latest_checkpoint(run.checkpoints, model, optimizer, scheduler, dist)
    if state is None:
        return None
    if state["fingerprint"] != fingerprint:
        raise CodeinstructError(
            f"{run.checkpoints}: the checkpoint was made with other data or batch settings; "
            "resume needs the same recipe"
        )
    return Position(state["step"], state["epoch"], state["step_in_epoch"], state["target_tokens"])


# ---------------------------------------------------------------------------------------------------
# fit


def _fit(s: _Setup, observer: TrainingObserver, should_stop: Callable[[], bool] | None) -> TrainResult:
    """The optimizer steps from s.start to the end (or to a stop request, which checkpoints first)."""
    cfg, dist, model = s.recipe.train, s.dist, s.model
    pad_id = s.data.tokenizer.eos_token_id  # never a target: padded positions carry IGNORE_INDEX
    position = s.start
    observer.start(s.total_steps, position.step)
    t_start = time.perf_counter()
    t_window, tokens_window = t_start, 0
    last_loss = float("nan")

    for epoch in range(s.start.epoch, cfg.epochs):
        rows = _epoch_rows(s, epoch)
        steps = epoch_steps(len(rows.rows), cfg.batch_size, cfg.grad_accum, s.recipe.seed, epoch)
        assert len(steps) * cfg.epochs == s.total_steps, "epochs must have equal steps"
        # here position is (epoch, step to resume at) or, past the resumed epoch, (epoch, 0)
        for step_in_epoch in range(position.step_in_epoch, len(steps)):
            step_rows = steps[step_in_epoch]
            n_targets = rows.n_targets(step_rows)  # over all processes
            batches = [
                (rows.collate(ids, pad_id), weight)
                for ids, weight in rank_micro_batches(step_rows, cfg.batch_size, dist.rank, dist.world)
            ]
            local_loss = accumulate_gradients(model, batches, dist.device, s.amp_dtype, n_targets, dist.world)
            last_loss = dist.sum(local_loss) / n_targets
            grad_norm = clip_gradients(model, cfg.max_grad_norm)
            lr = s.scheduler.get_last_lr()[0]
            s.optimizer.step()
            s.scheduler.step()
            s.optimizer.zero_grad(set_to_none=True)
            at_epoch_end = step_in_epoch + 1 == len(steps)
            position = Position(
                position.step + 1,
                epoch + 1 if at_epoch_end else epoch,
                0 if at_epoch_end else step_in_epoch + 1,
                position.target_tokens + n_targets,
            )
            tokens_window += n_targets

            now = time.perf_counter()
            metrics = dict(
                step=position.step,
                epoch=epoch + (step_in_epoch + 1) / len(steps),
                loss=round(last_loss, 6),
                lr=lr,
                grad_norm=round(grad_norm, 6),
                target_tokens=position.target_tokens,
                tokens_per_s=round(tokens_window / max(now - t_window, 1e-9), 1),
                elapsed_s=round(now - t_start, 3),
            )
            if dist.main and (position.step % cfg.log_every == 0 or position.step == s.total_steps):
                s.run.log_metrics(metrics)
                t_window, tokens_window = now, 0
            if dist.main:
                observer.step(metrics)

            unfinished = position.step < s.total_steps
            scheduled = bool(cfg.save_every) and position.step % cfg.save_every == 0
            if scheduled and unfinished:
                _save_checkpoint(s, position, observer)
            if should_stop is not None and dist.any(should_stop()) and unfinished:
                if not scheduled:
                    _save_checkpoint(s, position, observer)
                return TrainResult(
                    s.run.path,
                    None,
                    position.step,
                    last_loss,
                    position.target_tokens,
                    time.perf_counter() - t_start,
                    s.resumed_from,
                    interrupted=True,
                )
    seconds = time.perf_counter() - t_start  # the loop only, not the final save
    return TrainResult(s.run.path, None, position.step, last_loss, position.target_tokens, seconds, s.resumed_from)


def _epoch_rows(s: _Setup, epoch: int) -> EpochRows:
    """This epoch's rows: epoch 0's, unless the data redraws its examples each epoch (pretraining's FIM)."""
    if epoch == 0 or s.data.examples_for_epoch is None:
        return s.first_rows
    return EpochRows.build(s.data.epoch_examples(epoch), s.recipe.data.max_length, s.recipe.data.packing)


def _save_checkpoint(s: _Setup, position: Position, observer: TrainingObserver) -> None:
    state = {**asdict(position), "fingerprint": s.fingerprint, "total_steps": s.total_steps}
    path = save_checkpoint(
        s.run.checkpoints,
        position.step,
        s.model,
        s.optimizer,
        s.scheduler,
        state,
        s.recipe.train.keep_checkpoints,
        s.dist,
    )
    if s.dist.main:
        s.run.plot_loss()
        observer.checkpoint(path)


# ---------------------------------------------------------------------------------------------------
# finish


def _finish(s: _Setup) -> None:
    """final/, then (rank 0) the loss plot and the model card."""
    s.model.eval()
    _save_final(s.recipe, s.model, s.data.tokenizer, s.run, s.dist)
    if s.dist.main:
        s.run.plot_loss()
        write_model_card(s.run.path, kind=s.data.kind)


def _save_final(recipe: Recipe, model, tokenizer, run: RunFolder, dist: Distributed) -> None:
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
            save_adapter_and_merged(model, tokenizer, run.path / "adapter", run.final)
        else:
            save_hf_directory(model, tokenizer, run.final)
    dist.barrier()
