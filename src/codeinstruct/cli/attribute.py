"""`codeinstruct attribute`: index a corpus, check where code came from."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from codeinstruct.cli.app import console, err_console
from codeinstruct.errors import CodeinstructError
from codeinstruct.files import read_text


# ---------------------------------------------------------------- attribute

attribute_app = typer.Typer(
    help="Find where generated code came from: repository, path, license and lines.", no_args_is_help=True
)


@attribute_app.command("index")
def attribute_index(
    sources: Annotated[
        list[str], typer.Argument(help="directories, JSONL files of {content, repo, path, license}, or builtin:stdlib")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="the index directory to write")],
    add: Annotated[
        bool, typer.Option("--add", help="add the documents to the index at --out as new shards (others untouched)")
    ] = False,
    include: Annotated[
        list[str] | None,
        typer.Option(help="files to read in directories: a glob ('*.py') or extension ('py'); repeatable"),
    ] = None,
    max_file_bytes: Annotated[int, typer.Option(min=1, help="skip files larger than this")] = 1_000_000,
    min_tokens: Annotated[
        int | None, typer.Option(min=8, help="shortest shared span the index guarantees to find (default 50)")
    ] = None,
    shards: Annotated[
        int | None,
        typer.Option(min=1, help="shards, built as Ray tasks when more than one (default: one per worker, >= 32 MB)"),
    ] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="CPUs of the local Ray cluster (default: all)")] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="build on this Ray cluster (head:6379, or auto on one of its nodes) instead of a local one"),
    ] = None,
):
    """Index a code corpus for attribution: token views, a Bloom filter and winnowed fingerprints, in shards."""
    from rich.filesize import decimal
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from codeinstruct.attribution import build_index

    # stdout holds only the result; no bar when stderr is not a terminal
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as progress:
        task = progress.add_task("reading", total=None)
        summary = build_index(
            sources,
            out,
            add=add,
            include=include or None,
            max_file_bytes=max_file_bytes,
            min_tokens=min_tokens,
            shards=shards,
            workers=workers,
            ray_address=ray_address,
            progress=lambda what, done, total: progress.update(task, description=what, completed=done, total=total),
        )
    held = f"{summary.documents:,} documents ({decimal(summary.corpus_bytes)})"
    if summary.shards > 1:
        held += f" in {summary.shards} shards"
    what = f"added {summary.added:,} documents; {out} holds {held}" if add else f"indexed {held} into {out}"
    console.print(
        f"{what}: {decimal(summary.index_bytes)}, {summary.size_ratio:.1%} of the corpus; "
        f"finds every shared span of {summary.min_tokens} tokens or more",
        highlight=False,
        soft_wrap=True,
    )


def _print_matches(report, prefix: str = "") -> None:
    for m in report.matches:
        copies = f"{m.copies} copies" if m.copies > 1 else "1 copy"
        console.print(
            f"{prefix}lines {m.query_lines[0]}-{m.query_lines[1]}  {m.kind}  {m.tokens} tokens  "
            f"{m.repo} {m.path}:{m.source_lines[0]}-{m.source_lines[1]}  {m.license or 'license unknown'}  ({copies})",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@attribute_app.command("check")
def attribute_check(
    index: Annotated[Path, typer.Argument(help="an index written by `attribute index`")],
    file: Annotated[str | None, typer.Argument(help="the code to check: a file, or - for standard input")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    min_tokens: Annotated[int | None, typer.Option(help="shortest span to report (default: the index's, 50)")] = None,
    language: Annotated[
        str | None,
        typer.Option(help="language of the code, e.g. Python (default: the file's, else every language indexed)"),
    ] = None,
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
        console.print(
            f"{result.benchmark}: {len(result.overlapping)} of {result.problems} problems overlap the index "
            f"(spans of {result.min_tokens} tokens or more)",
            highlight=False,
        )
        for task_id, report in result.overlapping:
            _print_matches(report, prefix=f"{task_id}: ")
        if result.licenses:
            console.print(
                "licenses: " + ", ".join(f"{name} {n}" for name, n in result.licenses.items()), highlight=False
            )
        return
    if file == "-":
        code = sys.stdin.read()
    else:
        code = read_text(file)
        if language is None:
            from codeinstruct.data.languages import language_of

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
    console.print(
        "licenses: " + ", ".join(f"{name} {n}" for name, n in report.licenses.items()), highlight=False, soft_wrap=True
    )
