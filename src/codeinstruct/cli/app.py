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
