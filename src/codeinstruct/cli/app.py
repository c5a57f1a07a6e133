"""The root `codeinstruct` app and what its command modules share: the consoles, quiet libraries."""

from __future__ import annotations

import os

import typer
from rich.console import Console

app = typer.Typer(
    help="Turn a base code LLM into an instruction-following code assistant: fine-tune, run, evaluate, trust.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)


def quiet_libraries() -> None:
    """Offline, and no progress bars or warnings of transformers' own between ours."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def step_progress(console_: Console | None = None, *fields):
    """A bar for counted work (training steps, problems, programs) with elapsed time and ETA;
    `fields` are extra columns (e.g. the training loss) drawn after the count."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *fields,
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console_ or console,
    )


def reading_progress(disable: bool = False):
    """Documents and bytes read so far and the rate, on stderr (stdout may carry JSON)."""
    from rich.progress import (
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns = (
        SpinnerColumn(),
        TextColumn("{task.fields[documents]:,} documents"),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=err_console, transient=True, disable=disable)
