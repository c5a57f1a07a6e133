"""What the routes ask of whatever does their work (`ServingBackend`), and choosing it (`open_backend`).

Two backends implement it: `LocalModel` (serve/local.py, the in-process engine) and `UpstreamModel`
(serve/proxy.py, another OpenAI-compatible server). Both validate, admit, answer or stream, and add
attribution; the app (serve/app.py) adds routing, the API key, errors and health around them.
"""

from __future__ import annotations

from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response

from codeinstruct.serve.http import Admission, Attributor
from codeinstruct.serve.metrics import ServerMetrics
from codeinstruct.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    InfillRequest,
    LlamaCompletionRequest,
    TokenizeRequest,
)


class ServingBackend(Protocol):
    """The work behind the /v1 routes. `raw` is the request body as sent, `body` its validated form."""

    mode: str  # "engine" or "proxy", as /health reports it
    name: str | None  # the served model's id (None in proxy mode: the upstream names its models)

    async def start(self) -> None:
        """Called as the app starts serving."""
        ...

    async def stop(self) -> None:
        """Called as the app stops: end what is in flight, release what `start` took."""
        ...

    def health(self) -> dict:
        """The backend's own fields of /health."""
        ...

    async def models(self) -> dict | Response:
        """The body of /v1/models."""
        ...

    async def completions(self, request: Request, body: CompletionRequest, raw: dict) -> Response: ...

    async def chat(self, request: Request, body: ChatCompletionRequest, raw: dict) -> Response: ...

    async def tokenize(self, request: Request, body: TokenizeRequest) -> dict | Response:
        """vLLM's /tokenize."""
        ...

    async def detokenize(self, request: Request, body: DetokenizeRequest) -> dict | Response:
        """vLLM's /detokenize."""
        ...

    async def infill(self, request: Request, body: InfillRequest) -> Response:
        """llama.cpp's /infill."""
        ...

    async def llama_completion(self, request: Request, body: LlamaCompletionRequest) -> Response:
        """llama.cpp's /completion."""
        ...


def open_backend(
    *,
    engine=None,
    model_name: str | None = None,
    upstream: str | None = None,
    upstream_api_key: str | None = None,
    upstream_transport=None,
    max_concurrency: int,
    admission: Admission,
    attributor: Attributor,
    metrics: ServerMetrics | None = None,
) -> ServingBackend:
    """The local backend over `engine` (served as `model_name`), or the proxy in front of `upstream`."""
    # Each backend is imported only when chosen: the local one brings torch, the proxy one httpx.
    if engine is not None:
        from codeinstruct.serve.local import LocalModel

        return LocalModel(engine, model_name or "codeinstruct", admission, attributor, metrics)
    from codeinstruct.serve.proxy import UpstreamModel

    return UpstreamModel(
        upstream,
        admission,
        attributor,
        max_concurrency,
        api_key=upstream_api_key,
        transport=upstream_transport,
        metrics=metrics,
    )
