"""Where a model runs and in which precision: one choice for training, distributed training and
inference. `auto` means the GPU when there is one, else the CPU."""

from __future__ import annotations

import torch

from codeinstruct.errors import CodeinstructError


def pick_device(name: str = "auto", setting: str = "train.device") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N`; a GPU asked for where there is none is an error naming `setting`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CodeinstructError(f"{setting}: unknown device '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CodeinstructError(f"{setting}: CUDA requested but no GPU is available")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where it pays (or was asked for); None means plain fp32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise CodeinstructError("train.precision=bf16 but this GPU has no bf16 support")
        return torch.bfloat16
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
