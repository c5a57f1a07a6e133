"""The arithmetic of one optimizer step: the loss, gradients accumulated over micro-batches, clipping.

The loss is next-token cross-entropy summed over target tokens and divided by the target count of
the *whole* accumulated step, so every target token weighs the same whatever micro-batch (or
process) it fell in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from codeinstruct.data.packing import Batch
from codeinstruct.data.sft import IGNORE_INDEX


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
        logits.float().reshape(-1, logits.size(-1)),
        batch.targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def accumulate_gradients(
    model, batches: list[tuple[Batch, float]], device, amp_dtype, n_targets: int, world: int = 1
) -> float:
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


def clip_gradients(model, max_norm: float | None) -> float:
    """Clip to max_norm (None: only measure); the total norm over all processes' shards."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP
        norm = norm.full_tensor()
    return float(norm)
