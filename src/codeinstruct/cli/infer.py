"""`codeinstruct generate` and `complete`: answer an instruction, fill a gap."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from codeinstruct.cli.app import app, quiet_libraries
from codeinstruct.errors import CodeinstructError
from codeinstruct.files import read_text
from codeinstruct.modeling import InferenceDtype

DTYPE_HELP = "the weights' dtype, converted as they load (auto: the checkpoint's own)"


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
    dtype: Annotated[InferenceDtype, typer.Option(help=DTYPE_HELP)] = "auto",
):
    """Answer an instruction with the Alpaca prompt; prints only the response."""
    from codeinstruct.infer.engine import Engine
    from codeinstruct.infer.generate import generate_response, stream_response

    if input is not None and input_file is not None:
        raise CodeinstructError("give --input or --input-file, not both")
    context = input or ""
    if input_file is not None:
        context = read_text(input_file)
    params = _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    quiet_libraries()
    engine = Engine.from_pretrained(model, dtype=dtype, max_batch_size=1)
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
    spm: Annotated[
        bool, typer.Option("--spm", help="suffix-prefix-middle order instead of prefix-suffix-middle")
    ] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 decodes greedily")] = 0.0,
    top_k: Annotated[int, typer.Option(min=0, help="0: off")] = 0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: int = 0,
    dtype: Annotated[InferenceDtype, typer.Option(help=DTYPE_HELP)] = "auto",
):
    """Fill-in-the-Middle: print exactly the code that goes between the prefix and the suffix."""
    from codeinstruct.infer.engine import Engine
    from codeinstruct.infer.generate import complete_middle

    texts = [read_text(prefix_file), read_text(suffix_file)]
    params = _sampling(max_new_tokens, temperature, top_k, top_p, 1.0, seed)
    quiet_libraries()
    engine = Engine.from_pretrained(model, dtype=dtype, max_batch_size=1)
    sys.stdout.write(complete_middle(engine, texts[0], texts[1], spm=spm, params=params))


def _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed):
    from codeinstruct.infer.sampling import SamplingParams

    if top_p <= 0:
        raise CodeinstructError("--top-p must be greater than 0")
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        seed=seed,
    )
