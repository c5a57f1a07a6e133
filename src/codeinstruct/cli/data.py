"""`codeinstruct data`, `tokenizer` and `corpus`: read and check instruction data and code corpora, train tokenizers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from codeinstruct.cli.app import console, quiet_libraries, reading_progress
from codeinstruct.errors import CodeinstructError


data_app = typer.Typer(help="Read and check instruction data.", no_args_is_help=True)
tokenizer_app = typer.Typer(help="Train tokenizers with StarCoder's special tokens.", no_args_is_help=True)
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
        quiet_libraries()
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

    quiet_libraries()
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
    sources: Annotated[
        list[str], typer.Argument(help="code directories, corpus JSONL, builtin:stdlib, or instruction .json files")
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="output directory")],
    vocab_size: Annotated[int, typer.Option(help="vocabulary size, special tokens included")] = 4096,
    include: Annotated[
        Optional[list[str]], typer.Option(help="file globs to read from directories (default: source code)")
    ] = None,
):
    """Train a byte-level BPE tokenizer with StarCoder's 19 special tokens at ids 0-18."""
    from codeinstruct.data.corpus import read_corpus
    from codeinstruct.data.records import load_records
    from codeinstruct.tokenizer import save_tokenizer, train_tokenizer

    quiet_libraries()
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


@corpus_app.command("stats")
def corpus_stats(
    sources: Annotated[
        list[str], typer.Argument(help="directories, JSONL files of {content, repo, path, license}, or builtin:stdlib")
    ],
    include: Annotated[
        Optional[list[str]],
        typer.Option(help="files to read in directories: a glob ('*.py') or extension ('py'); repeatable"),
    ] = None,
    max_file_bytes: Annotated[int, typer.Option(min=1, help="skip files larger than this")] = 1_000_000,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
):
    """Count documents, bytes, skipped files by reason, languages and licenses of a code corpus."""
    from rich.filesize import decimal
    from codeinstruct.data.corpus import CorpusReport, iter_documents

    report = CorpusReport()
    with reading_progress() as progress:
        task = progress.add_task("reading", total=None, documents=0)
        for n, _ in enumerate(
            iter_documents(sources, include=include or None, max_file_bytes=max_file_bytes, report=report)
        ):
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
