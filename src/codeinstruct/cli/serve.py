"""`codeinstruct serve`: the OpenAI-compatible server (engine or proxy) and its playground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from codeinstruct.cli.app import app, console, quiet_libraries
from codeinstruct.errors import CodeinstructError
from codeinstruct.modeling import InferenceDtype


# ---------------------------------------------------------------- serve


@app.command("serve")
def serve(
    model: Annotated[Path | None, typer.Option(help="model directory to serve (e.g. runs/NAME/final)")] = None,
    upstream: Annotated[
        str | None, typer.Option(help="proxy mode: URL of an OpenAI-compatible server to put attribution in front of")
    ] = None,
    attribution_index: Annotated[
        Path | None, typer.Option(help="an index from `attribute index`: every completion carries its matches")
    ] = None,
    host: Annotated[str, typer.Option(help="address to bind (only this machine by default)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None, typer.Option(envvar="CODEINSTRUCT_API_KEY", help="require 'Authorization: Bearer KEY' on /v1")
    ] = None,
    upstream_api_key: Annotated[
        str | None, typer.Option(envvar="CODEINSTRUCT_UPSTREAM_API_KEY", help="key sent to the upstream")
    ] = None,
    max_concurrency: Annotated[
        int | None,
        typer.Option(
            min=1, help="sequences generating at once [default: 8; proxy mode: 256 upstream requests in flight]"
        ),
    ] = None,
    max_queue: Annotated[int, typer.Option(min=0, help="sequences waiting beyond those; more are answered 429")] = 32,
    model_name: Annotated[
        str | None, typer.Option(help="the name /v1/models reports (default: the run's name)")
    ] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=DIR: serve a LoRA adapter (peft, e.g. runs/NAME/adapter) unmerged; requests choose it by "
            "`model`. Repeatable"
        ),
    ] = None,
    dtype: Annotated[
        InferenceDtype, typer.Option(help="the weights' dtype, converted as they load (auto: the checkpoint's own)")
    ] = "auto",
):
    """OpenAI-compatible server (/v1/completions with FIM suffix, /v1/chat/completions, /v1/models), \
vLLM's /tokenize and /detokenize, llama.cpp's /infill and /completion, Prometheus /metrics, and a \
playground at /."""
    from codeinstruct.serve import ServerSettings, build_app, listen, run_server

    quiet_libraries()
    adapters = {}
    for spec in lora or []:
        name, sep, directory = spec.partition("=")
        if not sep or not name.strip() or not directory.strip():
            raise CodeinstructError(f"--lora {spec}: expected NAME=DIR")
        adapters[name.strip()] = Path(directory.strip())
    settings = ServerSettings(api_key=api_key, max_concurrency=max_concurrency, max_queue=max_queue)
    with listen(host, port) as sock:  # first, so that a busy port fails before the model loads
        with console.status("loading the model" if model else "starting the proxy"):
            server = build_app(
                settings,
                model=model,
                upstream=upstream,
                attribution_index=attribution_index,
                model_name=model_name,
                upstream_api_key=upstream_api_key,
                lora=adapters,
                dtype=dtype,
            )
        address = f"http://{f'[{host}]' if ':' in host else host}:{sock.getsockname()[1]}"
        what = f"{model}" if model else f"a proxy for {upstream}"
        engine = getattr(server.state.backend, "engine", None)
        console.print(
            f"serving {what} at {address}/v1 (playground: {address}/)"
            + (f"; decode steps: {engine.decode_path}" if engine is not None else "")
            + (f"; attribution from {attribution_index}" if attribution_index else ""),
            highlight=False,
            soft_wrap=True,
        )
        run_server(server, sock)
