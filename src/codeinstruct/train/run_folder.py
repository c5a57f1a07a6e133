"""The run folder a training run writes: config.yaml, metrics.jsonl, held_out.jsonl, loss.png.

checkpoints/ (train.checkpoint) and final/ (the loop) live in it too; this module names them and
decides when a folder may be started, continued, or removed again. Whole files are written
atomically (codeinstruct.files); metrics.jsonl is appended a line per logged step, so a killed run
keeps what it logged, and is cut back to the resumed checkpoint's step when a run continues.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from codeinstruct.config import Recipe
from codeinstruct.data.records import InstructionRecord
from codeinstruct.errors import CodeinstructError
from codeinstruct.files import atomic_writer, iter_jsonl, write_jsonl, write_text
from codeinstruct.train.checkpoint import list_checkpoints


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    def check_can_start(self, resume: bool) -> None:
        """A new run needs an empty or missing folder; a resumed one, a folder not yet finished."""
        if self.path.exists() and not resume and any(self.path.iterdir()):
            raise CodeinstructError(
                f"{self.path}: run folder already exists; pass --resume to continue it, or set run_dir=..."
            )
        if resume and self.final.exists():
            raise CodeinstructError(f"{self.path}: this run already finished (final/ exists); nothing to resume")

    def start(self, recipe: Recipe, held_out: list[InstructionRecord], resumed_step: int) -> None:
        """config.yaml and held_out.jsonl, and metrics.jsonl without the steps after `resumed_step`."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / "config.yaml", recipe.to_yaml())
        # Metrics past the resumed checkpoint describe steps that will be redone.
        write_jsonl(self.metrics, [m for m in read_metrics(self.metrics) if m["step"] <= resumed_step])
        if held_out:
            write_jsonl(
                self.path / "held_out.jsonl",
                ({"instruction": r.instruction, "input": r.input, "response": r.response} for r in held_out),
            )

    def log_metrics(self, metrics: dict) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(metrics) + "\n")

    def plot_loss(self) -> None:
        plot_loss(self.metrics, self.loss_plot)

    def remove_unless_resumable(self) -> None:
        """A run that never reached a checkpoint holds nothing to resume: leave no half-made folder."""
        if not list_checkpoints(self.checkpoints):
            shutil.rmtree(self.path, ignore_errors=True)


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [row for _, row in iter_jsonl(path)]


def plot_loss(metrics_path: Path, out_png: Path) -> None:
    """Loss per optimizer step, from metrics.jsonl (nothing while it has no rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per target token)")
    ax.set_title(out_png.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        with atomic_writer(out_png, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
