"""`codeinstruct finetune`, `pretrain`, `plan` and `card`: training with a progress bar,
and what it needs and writes.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from codeinstruct.cli.app import app, console, quiet_libraries, step_progress


# ---------------------------------------------------------------- finetune


class _ProgressObserver:
    """Draws the training progress bar (loss, target tokens/s, ETA) from the loop's reports."""

    def __init__(self, progress, what: str):
        self.progress = progress
        self.what = what
        self.task = None

    def start(self, total_steps: int, first_step: int) -> None:
        self.task = self.progress.add_task(
            self.what, total=total_steps, completed=first_step, loss=float("nan"), tps=0.0
        )

    def step(self, metrics: dict) -> None:
        self.progress.update(self.task, completed=metrics["step"], loss=metrics["loss"], tps=metrics["tokens_per_s"])

    def checkpoint(self, path: Path) -> None:
        self.progress.console.print(f"[dim]checkpoint {path}[/]")


def _progress(what: str):
    from rich.progress import TextColumn

    rate = "tok/s" if what == "pretrain" else "target tok/s"
    return step_progress(
        console, TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:,.0f} " + rate)
    )


def train_with_progress(recipe, data, resume: bool, what: str):
    """Train with a progress bar; Ctrl-C checkpoints and stops cleanly."""
    from codeinstruct.train.loop import train

    stop = {"requested": False}

    def on_sigint(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        console.print("[yellow]stopping after this step (Ctrl-C again to abort without a checkpoint)[/]")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with _progress(what) as progress:
            result = train(
                recipe,
                data,
                resume=resume,
                observer=_ProgressObserver(progress, what),
                should_stop=lambda: stop["requested"],
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.interrupted:
        console.print(f"stopped at step {result.steps}; continue with: codeinstruct {what} ... --resume")
        raise typer.Exit(130)
    console.print(
        f"done: {result.steps} steps, final loss {result.final_loss:.4f}, "
        f"{result.target_tokens / max(result.seconds, 1e-9):,.0f} target tokens/s; model in {result.final_dir}"
    )
    return result


def run_finetune(recipe, resume: bool):
    from codeinstruct.train.prepare import prepare_sft

    quiet_libraries()
    with console.status("reading and tokenizing data"):
        data = prepare_sft(recipe)
    rep = data.report
    console.print(
        f"{rep.kept} training examples from {recipe.data.train} "
        f"({rep.dropped_overlong} dropped and {rep.truncated} truncated at {recipe.data.max_length} tokens"
        + (f", {len(data.held_out)} held out" if data.held_out else "")
        + ")"
    )
    if data.fim_mix is not None:
        mix = data.fim_mix
        console.print(
            f"FIM mix: {mix.examples} FIM examples ({mix.from_corpus} from the corpus, {mix.from_responses} from "
            f"response code) = {mix.fraction * 100:.1f}% of {mix.tokens + mix.instruction_tokens:,} training "
            f"tokens, {mix.target_fraction * 100:.1f}% of target tokens; loss on "
            + ("the middle + EOS" if mix.loss == "middle" else "every token")
            + (
                f"; the sources were drawn {mix.passes} times (a larger corpus would repeat less)"
                if mix.passes > 1
                else ""
            )
        )
    return train_with_progress(recipe, data, resume, "finetune")


@app.command("finetune")
def finetune(
    recipe: Annotated[str, typer.Argument(help="recipe YAML file, or the name of a bundled recipe (e.g. tiny-cpu)")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="dotted overrides, e.g. train.lr=1e-4")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run folder's latest checkpoint")] = False,
):
    """Instruction fine-tuning with response-only loss (packing keeps examples isolated)."""
    from codeinstruct.config import load_recipe, recipe_path

    run_finetune(load_recipe(recipe_path(recipe), overrides or []), resume)


@app.command("pretrain")
def pretrain(
    recipe: Annotated[
        str, typer.Argument(help="recipe YAML file, or the name of a bundled recipe (e.g. tiny-pretrain-cpu)")
    ],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="dotted overrides, e.g. data.fim_rate=0.9")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run folder's latest checkpoint")] = False,
):
    """Causal-LM pretraining from scratch on a code corpus with Fill-in-the-Middle (PSM and SPM)."""
    from codeinstruct.config import load_recipe, recipe_path
    from codeinstruct.train.prepare import prepare_pretrain

    recipe = load_recipe(recipe_path(recipe), overrides or [])
    quiet_libraries()
    with console.status("reading the corpus and tokenizing"):
        data = prepare_pretrain(recipe)
    n_tokens = sum(len(e.input_ids) for e in data.examples)
    console.print(
        f"{data.report.documents} documents ({data.report.bytes / 1e6:.1f} MB) -> {n_tokens:,} tokens in "
        f"{len(data.examples)} blocks of {recipe.data.max_length}; "
        f"FIM rate {recipe.data.fim_rate}, SPM rate {recipe.data.fim_spm_rate}"
    )
    train_with_progress(recipe, data, resume, "pretrain")


@app.command("plan")
def plan_command(
    recipe: Annotated[str, typer.Argument(help="recipe YAML file, or the name of a bundled recipe")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="dotted overrides, e.g. train.batch_size=2")] = None,
    gpus: Annotated[
        Optional[int],
        typer.Option(min=1, help="GPUs sharing the model (default: the recipe's distributed.gpus, else 1)"),
    ] = None,
    gpu_mem: Annotated[float, typer.Option(min=1.0, help="memory per GPU in GiB")] = 80.0,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
):
    """Per-GPU memory of training a recipe (full vs LoRA, with/without activation checkpointing): does it fit?"""
    from codeinstruct.config import load_recipe, recipe_path
    from codeinstruct.train.plan import GIB, plan

    r = load_recipe(recipe_path(recipe), overrides or [])
    p = plan(r, gpus, gpu_mem)
    if json_out:
        sys.stdout.write(json.dumps(p.as_dict(), indent=2) + "\n")
        return
    console.print(
        f"{p.shape.description}: {p.shape.parameters / 1e9:.2f}B parameters; {p.gpus} GPU(s) x {gpu_mem:g} GiB; "
        f"micro-batch {p.micro_batch} x {p.max_length} tokens; LoRA rank {r.model.lora.r} "
        f"trains {p.shape.lora_parameters / 1e6:.1f}M"
    )
    table = Table(title="per-GPU memory, GiB (estimate; * = the recipe's settings)")
    for col in ("method", "ckpt", "params", "grads", "adam", "gather", "acts", "other", "total", "fits"):
        table.add_column(col, justify="left" if col in ("method", "ckpt", "fits") else "right")
    for e in p.estimates:
        table.add_row(
            e.method + ("*" if e is p.chosen else ""),
            "on" if e.checkpointing else "off",
            *(
                f"{getattr(e, k) / GIB:.1f}"
                for k in ("parameters", "gradients", "optimizer", "buffers", "activations", "overhead", "total")
            ),
            "[green]yes[/]" if p.fits(e) else "[red]no[/]",
        )
    console.print(table)
    console.print(
        f"the recipe ({p.chosen.method}, activation checkpointing {'on' if p.chosen.checkpointing else 'off'}) "
        f"{'fits' if p.fits() else 'does NOT fit'}: {p.chosen.total / GIB:.1f} of {gpu_mem:g} GiB per GPU"
    )
    if p.advice is not None:
        console.print(f"what fits: {p.advice}" if p.suggestion is not None else p.advice)


@app.command("card")
def card(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder (runs/NAME)")],
    eval_results: Annotated[
        Optional[list[Path]],
        typer.Option("--eval", help="results JSON of `eval score` or `eval leaderboard` (repeatable)"),
    ] = None,
):
    """Write RUN_DIR/MODEL_CARD.md: the model, its training, and its scores."""
    from codeinstruct.card import write_model_card

    path = write_model_card(run_dir, eval_results or [])
    console.print(f"model card written to {path}")
