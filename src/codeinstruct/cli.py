"""The `codeinstruct` command: one Typer app, each command a thin wrapper over library calls."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from codeinstruct.errors import CodeinstructError

app = typer.Typer(
    help="Turn a base code LLM into an instruction-following code assistant: fine-tune, run, evaluate, trust.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Read and check instruction data.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train tokenizers with StarCoder's special tokens.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(tokenizer_app, name="tokenizer")

console = Console()
err_console = Console(stderr=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


# ---------------------------------------------------------------- data


@data_app.command("stats")
def data_stats(
    file: Annotated[Path, typer.Argument(help="JSON/JSONL of GPTeacher or Alpaca records")],
    tokenizer: Annotated[Optional[Path], typer.Option(help="tokenizer directory, for token lengths")] = None,
    max_length: Annotated[int, typer.Option(help="context length to check records against")] = 1024,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
):
    """Count records, empty inputs, token-length percentiles and how many exceed the max length."""
    from codeinstruct.data.records import load_records
    from codeinstruct.data.sft import percentiles, tokenize_records

    records = load_records(file)
    stats: dict = {"file": str(file), "records": len(records), "empty_input": sum(not r.has_input for r in records)}
    if tokenizer is not None:
        _quiet_libraries()
        from codeinstruct.tokenizer import load_tokenizer

        _, report = tokenize_records(records, load_tokenizer(tokenizer), max_length=10**9, source=str(file))
        stats["max_length"] = max_length
        stats["tokens"] = percentiles(report.lengths)
        stats["tokens"]["mean"] = round(sum(report.lengths) / len(report.lengths), 1)
        stats["over_max_length"] = sum(n > max_length for n in report.lengths)
    if as_json:
        print(json.dumps(stats))
        return
    table = Table(title=str(file), show_header=False)
    table.add_row("records", str(stats["records"]))
    table.add_row("empty input (no-input template)", str(stats["empty_input"]))
    if "tokens" in stats:
        for key, value in stats["tokens"].items():
            table.add_row(f"tokens {key}", str(value))
        table.add_row(f"over {max_length} tokens", str(stats["over_max_length"]))
    console.print(table)


@data_app.command("preview")
def data_preview(
    file: Annotated[Path, typer.Argument(help="JSON/JSONL of GPTeacher or Alpaca records")],
    tokenizer: Annotated[Path, typer.Option(help="tokenizer directory")],
    index: Annotated[int, typer.Option(help="record to show (1-based)")] = 1,
):
    """Show one training example; the trained (unmasked) tokens are highlighted."""
    from rich.text import Text

    from codeinstruct.data.records import load_records
    from codeinstruct.data.sft import IGNORE_INDEX, tokenize_records

    _quiet_libraries()
    from codeinstruct.tokenizer import load_tokenizer

    records = load_records(file)
    if not 1 <= index <= len(records):
        raise CodeinstructError(f"{file}: --index {index} is out of range (1..{len(records)})")
    tok = load_tokenizer(tokenizer)
    [example], _ = tokenize_records([records[index - 1]], tok, max_length=10**9, source=str(file))
    # The trained span (response + EOS) is enclosed in « » so it shows without colour too; in a
    # terminal its tokens alternate two shades of green, so token boundaries are visible.
    text = Text()
    trained_started = False
    for k, (token_id, label) in enumerate(zip(example.input_ids, example.labels)):
        piece = tok.decode([token_id])
        if label == IGNORE_INDEX:
            text.append(piece, style="dim")
            continue
        if not trained_started:
            text.append("«", style="bold")
            trained_started = True
        text.append(piece, style="black on green" if k % 2 else "black on bright_green")
    text.append("»", style="bold")
    console.print(text)
    console.print(
        f"\nprompt tokens (masked, no loss): {example.labels.count(IGNORE_INDEX)}   "
        f"trained tokens «response + EOS»: {example.n_targets}",
        highlight=False,
    )


# ---------------------------------------------------------------- tokenizer


@tokenizer_app.command("train")
def tokenizer_train(
    sources: Annotated[list[Path], typer.Argument(help="text/code files, directories of them, or instruction JSON/JSONL")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output directory")],
    vocab_size: Annotated[int, typer.Option(help="vocabulary size, special tokens included")] = 4096,
):
    """Train a byte-level BPE tokenizer with StarCoder's 19 special tokens at ids 0-18."""
    from codeinstruct.data.records import load_records
    from codeinstruct.tokenizer import save_tokenizer, train_tokenizer

    _quiet_libraries()
    texts: list[str] = []
    for src in sources:
        files = sorted(p for p in src.rglob("*") if p.is_file()) if src.is_dir() else [src]
        if not src.exists():
            raise CodeinstructError(f"{src}: no such file or directory")
        for f in files:
            if f.suffix in (".json", ".jsonl"):
                texts.extend(r.instruction + "\n" + r.input + "\n" + r.response for r in load_records(f))
            else:
                try:
                    texts.append(f.read_text(encoding="utf-8"))
                except UnicodeDecodeError:
                    continue  # binary files carry nothing a code tokenizer should learn
    if not texts:
        raise CodeinstructError("no text found in the given sources")
    with console.status(f"training BPE on {len(texts)} texts"):
        tok = train_tokenizer(texts, vocab_size=vocab_size)
    save_tokenizer(tok, out)
    console.print(f"tokenizer with {len(tok)} tokens written to {out}")


# ---------------------------------------------------------------- finetune


class _ProgressObserver:
    """Draws the training progress bar (loss, target tokens/s, ETA) from the loop's reports."""

    def __init__(self, progress):
        self.progress = progress
        self.task = None

    def start(self, total_steps: int, first_step: int) -> None:
        self.task = self.progress.add_task("fine-tuning", total=total_steps, completed=first_step, loss=float("nan"), tps=0.0)

    def step(self, metrics: dict) -> None:
        self.progress.update(self.task, completed=metrics["step"], loss=metrics["loss"], tps=metrics["tokens_per_s"])

    def checkpoint(self, path: Path) -> None:
        self.progress.console.print(f"[dim]checkpoint {path}[/]")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[tps]:,.0f} target tok/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def run_finetune(recipe, resume: bool):
    """Prepare data, then train with a progress bar; Ctrl-C checkpoints and stops cleanly."""
    from codeinstruct.train.loop import prepare_sft, train

    _quiet_libraries()
    with console.status("reading and tokenizing data"):
        data = prepare_sft(recipe)
    rep = data.report
    console.print(
        f"{rep.kept} training examples from {recipe.data.train} "
        f"({rep.dropped_overlong} dropped and {rep.truncated} truncated at {recipe.data.max_length} tokens"
        + (f", {len(data.held_out)} held out" if data.held_out else "")
        + ")"
    )
    stop = {"requested": False}

    def on_sigint(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        console.print("[yellow]stopping after this step (Ctrl-C again to abort without a checkpoint)[/]")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with _progress() as progress:
            result = train(recipe, data, resume=resume, observer=_ProgressObserver(progress),
                           should_stop=lambda: stop["requested"])
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.interrupted:
        console.print(f"stopped at step {result.steps}; continue with: codeinstruct finetune ... --resume")
        raise typer.Exit(130)
    console.print(
        f"done: {result.steps} steps, final loss {result.final_loss:.4f}, "
        f"{result.target_tokens / max(result.seconds, 1e-9):,.0f} target tokens/s; model in {result.final_dir}"
    )
    return result


@app.command("finetune")
def finetune(
    recipe: Annotated[str, typer.Argument(help="recipe YAML file, or the name of a bundled recipe (e.g. tiny-cpu)")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="dotted overrides, e.g. train.lr=1e-4")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run folder's latest checkpoint")] = False,
):
    """Instruction fine-tuning with response-only loss (packing keeps examples isolated)."""
    from codeinstruct.config import load_recipe, recipe_path

    run_finetune(load_recipe(recipe_path(recipe), overrides or []), resume)


# ---------------------------------------------------------------- generate


@app.command("generate")
def generate(
    instruction: Annotated[str, typer.Argument(help="the instruction")],
    model: Annotated[Path, typer.Option(help="model directory (e.g. runs/NAME/final)")],
    input: Annotated[Optional[str], typer.Option("--input", help="context for the instruction")] = None,
    input_file: Annotated[Optional[Path], typer.Option(help="read the input context from a file")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 decodes greedily")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: int = 0,
):
    """Answer an instruction with the Alpaca prompt; prints only the response."""
    from codeinstruct.infer.generate import SamplingSettings, generate_response, load_for_inference

    if input is not None and input_file is not None:
        raise CodeinstructError("give --input or --input-file, not both")
    context = input or ""
    if input_file is not None:
        try:
            context = input_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CodeinstructError(f"{input_file}: cannot read ({e})") from None
    _quiet_libraries()
    m, tok = load_for_inference(model)
    settings = SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    sys.stdout.write(generate_response(m, tok, instruction, context, settings) + "\n")


# ---------------------------------------------------------------- demo


@app.command("demo")
def demo(
    run_dir: Annotated[Path, typer.Option(help="where the demo's run folder goes")] = Path("runs/demo"),
    examples: Annotated[int, typer.Option(help="held-out instructions to answer at the end")] = 3,
    overrides: Annotated[Optional[list[str]], typer.Argument(help="dotted overrides of the tiny-cpu recipe")] = None,
):
    """The whole path offline: tokenizer + instruction data from the local Python stdlib,
    fine-tune a small GPTBigCode on CPU, then answer held-out instructions."""
    import shutil

    from codeinstruct.config import load_recipe, recipe_path
    from codeinstruct.data.records import load_records
    from codeinstruct.infer.generate import SamplingSettings, generate_response, load_for_inference

    recipe = load_recipe(recipe_path("tiny-cpu"), [f"run_dir={run_dir}", *(overrides or [])])
    if run_dir.exists():
        if any(run_dir.iterdir()) and not (run_dir / "config.yaml").exists():
            raise CodeinstructError(f"{run_dir}: exists and is not a run folder; choose another --run-dir")
        shutil.rmtree(run_dir)  # the demo always starts fresh
    result = run_finetune(recipe, resume=False)
    model, tok = load_for_inference(result.final_dir)
    held_out = load_records(run_dir / "held_out.jsonl")[:examples]
    for record in held_out:
        answer = generate_response(model, tok, record.instruction, record.input, SamplingSettings(max_new_tokens=160))
        console.rule("[bold]held-out instruction")
        console.print(record.instruction + (f"\n[dim]input:[/] {record.input}" if record.has_input else ""))
        console.rule("model's answer", style="green")
        console.print(answer, markup=False, highlight=False)
        console.rule("reference (from the standard library)", style="dim")
        console.print(record.response, markup=False, highlight=False, style="dim")
    console.print(f"\nrun folder: {run_dir}  (metrics.jsonl, loss.png, final/)")
    console.print(f"try: codeinstruct generate --model {result.final_dir} \"Write a Python function that ...\"")


def main() -> None:
    try:
        app()
    except CodeinstructError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
