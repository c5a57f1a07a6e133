"""The `codeinstruct` command: one Typer app, one module per command group, each command a thin
wrapper over library calls (the library computes and returns; only these modules print)."""

from __future__ import annotations

import os
import sys

from codeinstruct.cli import attribute, data, demo, evaluate, export, infer, serve, train  # noqa: F401  (they register commands)
from codeinstruct.cli.app import app, console, err_console
from codeinstruct.errors import CodeinstructError

app.add_typer(data.data_app, name="data")
app.add_typer(data.tokenizer_app, name="tokenizer")
app.add_typer(data.corpus_app, name="corpus")
app.add_typer(evaluate.eval_app, name="eval")
app.add_typer(attribute.attribute_app, name="attribute")
app.add_typer(export.export_app, name="export")

__all__ = ["app", "main"]


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
