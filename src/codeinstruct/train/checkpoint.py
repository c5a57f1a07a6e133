"""Resumable training checkpoints, written atomically.

`checkpoints/step-N/` holds the model weights (safetensors), optimizer, scheduler and RNG
states and `state.json` (step, data position, data fingerprint). It is written as
`step-N.tmp/` and renamed only when complete, so a crash mid-write leaves the previous
checkpoint as the latest good one; stale `.tmp` directories are removed on resume.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from codeinstruct.errors import CodeinstructError

_STEP_DIR = re.compile(r"^step-(\d+)$")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_root: Path, step: int, model, optimizer, scheduler, state: dict, keep: int) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f"step-{step}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def load_latest_checkpoint(ckpt_root: Path, model, optimizer, scheduler) -> dict | None:
    """Restore the newest complete checkpoint into the given objects; its state dict, or None."""
    for stale in ckpt_root.glob("step-*.tmp") if ckpt_root.is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)
    checkpoints = list_checkpoints(ckpt_root)
    if not checkpoints:
        return None
    path = checkpoints[-1]
    try:
        state = json.loads((path / "state.json").read_text())
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
        if unexpected or [m for m in missing if not m.endswith("lm_head.weight")]:
            raise CodeinstructError(f"{path}: checkpoint weights do not match the recipe's model")
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        _set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CodeinstructError(f"{path}: cannot resume from this checkpoint ({str(e).splitlines()[0]})") from None
    return state
