"""`codeinstruct export`: GGUF for llama.cpp, Ollama and LM Studio."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from codeinstruct.cli.app import console


# ---------------------------------------------------------------- export

export_app = typer.Typer(
    help="Export a model to other runtimes: GGUF for llama.cpp, Ollama and LM Studio.", no_args_is_help=True
)


@export_app.command("gguf")
def export_gguf_command(
    model_dir: Annotated[Path, typer.Argument(help="a Hugging Face model directory, e.g. RUN/final")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the .gguf file to write")],
    type: Annotated[str, typer.Option("--type", help="weights of the matrices: f32, f16 or q8_0")] = "f16",
    modelfile: Annotated[
        Optional[Path], typer.Option(help="where to write the Ollama Modelfile (default: beside the gguf)")
    ] = None,
):
    """Write a llama.cpp `starcoder` GGUF with the tokenizer and Alpaca chat template, and an Ollama Modelfile."""
    from rich.filesize import decimal
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from codeinstruct.export.gguf import export_gguf

    with Progress(TextColumn("writing tensors"), BarColumn(), DownloadColumn(), console=console, transient=True) as bar:
        task = bar.add_task("gguf", total=None)
        result = export_gguf(
            model_dir,
            out,
            type=type,
            modelfile=modelfile,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console.print(
        f"wrote {result.path} ({decimal(result.n_bytes)}, {result.type}, {result.n_params:,} parameters, "
        f"context {result.n_ctx})",
        highlight=False,
        soft_wrap=True,
    )
    if result.modelfile is not None:
        console.print(
            f"wrote {result.modelfile}: ollama create NAME -f {result.modelfile}", highlight=False, soft_wrap=True
        )
