"""Resumable training checkpoints, written atomically, readable at any world size.

`checkpoints/step-N/` holds `weights/` (model and optimizer state in torch.distributed.checkpoint's
format: each rank writes its own shards, keyed by parameter name, so a checkpoint made by 2
processes resumes in 1 or 4 and the other way round), the scheduler and RNG states and
`state.json` (step, data position, data fingerprint). It is written as `step-N.tmp/` and renamed
by rank 0 only when every rank has finished, so a crash mid-write leaves the previous checkpoint as
the latest good one; stale `.tmp` directories are removed on resume.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import torch

from codeinstruct.errors import CodeinstructError
from codeinstruct.train.distributed import Distributed

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


def save_checkpoint(
    ckpt_root: Path, step: int, model, optimizer, scheduler, state: dict, keep: int, dist: Distributed = Distributed()
) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f"step-{step}.tmp"
    if dist.main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    with warnings.catch_warnings():  # one process: DCP says it assumes so
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(
            {"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "weights"), no_dist=not dist.sharded
        )
    if dist.main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "world_size": dist.world}, indent=2))
    dist.barrier()
    if dist.main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def load_latest_checkpoint(
    ckpt_root: Path, model, optimizer, scheduler, dist: Distributed = Distributed()
) -> dict | None:
    """Restore the newest complete checkpoint into the given objects; its state dict, or None."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    checkpoints = list_checkpoints(ckpt_root)
    dist.barrier()
    if dist.main:
        for stale in ckpt_root.glob("step-*.tmp") if ckpt_root.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)
    if not checkpoints:
        return None
    path = checkpoints[-1]
    try:
        state = json.loads((path / "state.json").read_text())
        model_state, optim_state = get_state_dict(model, optimizer)
        wanted = {"model": model_state, "optim": optim_state}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(wanted, checkpoint_id=str(path / "weights"), no_dist=not dist.sharded)
        set_state_dict(model, optimizer, model_state_dict=wanted["model"], optim_state_dict=wanted["optim"])
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
        _set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CodeinstructError(f"{path}: cannot resume from this checkpoint ({reason})") from None
    return state
