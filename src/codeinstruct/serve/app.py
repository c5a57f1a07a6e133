"""The FastAPI app: OpenAI routes, API key, errors in OpenAI's shape, health, and the playground.

    GET  /v1/models             the served model (or the upstream's list, in proxy mode); /v1/models/ID one
    POST /v1/completions        prompt (+ suffix: FIM), streaming or not
    POST /v1/chat/completions   messages mapped onto the Alpaca prompt, streaming or not
    POST /tokenize, /detokenize vLLM's tokenizer routes
    POST /infill                llama.cpp's Fill-in-the-Middle route
    POST /completion            llama.cpp's raw completion route (also /completions)
    GET  /metrics               Prometheus text format; never needs the API key
    GET  /health                status and load; never needs the API key
    GET  /                      the playground page (static files, no external assets)

The work behind the /v1 routes is done by a `ServingBackend` (serve/backend.py): the in-process engine
or another OpenAI-compatible server; both add attribution when an index is loaded.
"""

from __future__ import annotations

import secrets
import signal
import socket
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from codeinstruct.errors import CodeinstructError
from codeinstruct.serve.backend import ServingBackend, open_backend
from codeinstruct.serve.http import Admission, Attributor
from codeinstruct.serve.metrics import CountRequests, ServerMetrics
from codeinstruct.serve.schemas import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    InfillRequest,
    LlamaCompletionRequest,
    TokenizeRequest,
    error_body,
    validation_error,
)

ENGINE_CONCURRENCY = 8  # the engine's slots when --max-concurrency is not given
# Upstream requests in flight when --max-concurrency is not given: high enough never to throttle a healthy
# upstream (vLLM batches 256 sequences by default); an overloaded one answers 429/503 itself, passed through.
PROXY_CONCURRENCY = 256

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ServerSettings:
    """What `codeinstruct serve` is told; see README "Server"."""

    api_key: str | None = None
    # sequences generating at once (the engine's slots; upstream requests in proxy mode); None: the mode's default
    max_concurrency: int | None = None
    max_queue: int = 32  # sequences waiting beyond those; one more is answered 429

    def __post_init__(self):
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise CodeinstructError(f"--max-concurrency must be at least 1, got {self.max_concurrency}")
        if self.max_queue < 0:
            raise CodeinstructError(f"--max-queue must be 0 or more, got {self.max_queue}")

    @property
    def capacity(self) -> int:
        return self.concurrency + self.max_queue

    @property
    def concurrency(self) -> int:
        return ENGINE_CONCURRENCY if self.max_concurrency is None else self.max_concurrency

    def for_mode(self, proxy: bool) -> ServerSettings:
        """These settings with the mode's default concurrency filled in."""
        if self.max_concurrency is not None:
            return self
        return replace(self, max_concurrency=PROXY_CONCURRENCY if proxy else ENGINE_CONCURRENCY)


def create_app(
    settings: ServerSettings,
    *,
    engine=None,
    model_name: str | None = None,
    upstream: str | None = None,
    upstream_api_key: str | None = None,
    attribution=None,
    upstream_transport=None,
) -> FastAPI:
    """The server over an `Engine` (named `model_name`) or in front of an `upstream` OpenAI-compatible URL.

    `attribution` is an opened `AttributionIndex` or None. Nothing runs until the app starts
    (uvicorn's lifespan): then the engine's background loop starts, and it stops with the app.
    """
    if (engine is None) == (upstream is None):
        raise CodeinstructError("give a model (engine) or an upstream URL, not both and not neither")
    settings = settings.for_mode(proxy=upstream is not None)
    admission = Admission(settings.capacity)
    attributor = Attributor(attribution)
    metrics = ServerMetrics()
    backend: ServingBackend = open_backend(
        engine=engine,
        model_name=model_name,
        upstream=upstream,
        upstream_api_key=upstream_api_key,
        upstream_transport=upstream_transport,
        max_concurrency=settings.max_concurrency,
        admission=admission,
        attributor=attributor,
        metrics=metrics,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await backend.start()
        try:
            yield
        finally:
            await backend.stop()
            attributor.close()

    app = FastAPI(title="codeinstruct", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.backend = backend
    app.state.admission = admission
    app.state.metrics = metrics
    app.add_middleware(CountRequests, metrics=metrics)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key.strip().encode(), settings.api_key.encode()):
            raise ApiError(
                401, "missing or invalid API key (send it as 'Authorization: Bearer KEY')", code="invalid_api_key"
            )

    async def parse(request: Request, schema):
        try:
            raw = await request.json()
        except ValueError:
            raise ApiError(400, "the request body is not valid JSON") from None
        if not isinstance(raw, dict):
            raise ApiError(400, "the request body must be a JSON object")
        try:
            body = schema.model_validate(raw)
        except ValidationError as e:
            raise validation_error(e) from None
        return raw, body

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"] if p != "body")
        return JSONResponse(
            error_body(f"{loc}: {first['msg']}" if loc else first["msg"], param=loc or None), status_code=400
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        return JSONResponse(error_body(str(e.detail), code=str(e.status_code)), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        return JSONResponse(
            error_body(f"internal error: {type(e).__name__}: {e}", type="server_error"), status_code=500
        )

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "mode": backend.mode,
            "model": backend.name,
            "attribution": attributor.enabled,
            "auth": settings.api_key is not None,
            "active": admission.active,
            "capacity": admission.capacity,
            "max_concurrency": settings.max_concurrency,
            "max_queue": settings.max_queue,
            **backend.health(),
        }

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return await backend.models()

    @app.get("/v1/models/{model_id:path}")
    async def model(request: Request, model_id: str):
        authorize(request)
        listed = await backend.models()
        if isinstance(listed, Response):
            return listed
        for entry in listed.get("data", []):
            if entry.get("id") == model_id:
                return entry
        raise ApiError(404, f"the model '{model_id}' does not exist", param="model", code="model_not_found")

    @app.post("/v1/completions")
    async def completions(request: Request):
        authorize(request)
        raw, body = await parse(request, CompletionRequest)
        return await backend.completions(request, body, raw)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        raw, body = await parse(request, ChatCompletionRequest)
        return await backend.chat(request, body, raw)

    @app.post("/tokenize")
    async def tokenize(request: Request):
        authorize(request)
        _, body = await parse(request, TokenizeRequest)
        return await backend.tokenize(request, body)

    @app.post("/detokenize")
    async def detokenize(request: Request):
        authorize(request)
        _, body = await parse(request, DetokenizeRequest)
        return await backend.detokenize(request, body)

    @app.post("/infill")
    async def infill(request: Request):
        authorize(request)
        _, body = await parse(request, InfillRequest)
        return await backend.infill(request, body)

    @app.post("/completion")
    @app.post("/completions")
    async def llama_completion(request: Request):
        authorize(request)
        _, body = await parse(request, LlamaCompletionRequest)
        return await backend.llama_completion(request, body)

    @app.get("/metrics")
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def playground():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def default_model_name(model_dir: str | Path) -> str:
    """What /v1/models calls a model directory: its name, or the run's name for runs/NAME/final."""
    path = Path(model_dir).resolve()
    return path.parent.name if path.name == "final" and path.parent.name else path.name


def build_app(
    settings: ServerSettings,
    *,
    model: str | Path | None = None,
    upstream: str | None = None,
    attribution_index: str | Path | None = None,
    model_name: str | None = None,
    upstream_api_key: str | None = None,
    lora: dict[str, str | Path] | None = None,
    dtype: str = "auto",
) -> FastAPI:
    """What `codeinstruct serve` runs: load the model (in `dtype`, modeling.INFERENCE_DTYPES), or point at the
    upstream, and the index, then the app."""
    if model is None and upstream is None:
        raise CodeinstructError("give --model DIR to serve a model here, or --upstream URL to proxy another server")
    if model is not None and upstream is not None:
        raise CodeinstructError("give --model DIR or --upstream URL, not both")
    index = None
    if attribution_index is not None:
        from codeinstruct.attribution import AttributionIndex

        index = AttributionIndex.open(attribution_index)
    if upstream is not None:
        if lora:
            raise CodeinstructError("--lora needs --model (the proxy's upstream serves its own adapters)")
        return create_app(settings, upstream=upstream, upstream_api_key=upstream_api_key, attribution=index)
    from codeinstruct.infer.engine import Engine
    from codeinstruct.infer.lora import load_adapters

    engine = Engine.from_pretrained(model, dtype=dtype, max_batch_size=settings.concurrency)
    load_adapters(engine, lora or {})
    return create_app(settings, engine=engine, model_name=model_name or default_model_name(model), attribution=index)


def listen(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A listening socket for the server (port 0: any free one); an address in use is a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
        )[0]
        # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets' connections, and without it
        # a response written in two pieces waits for the client's delayed ACK (40 ms per keep-alive request).
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(1024)
        except OSError:
            sock.close()
            raise
        return sock
    except OSError as e:
        raise CodeinstructError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def run_server(app: FastAPI, sock: socket.socket) -> None:
    """Serve on `sock` until interrupted (Ctrl-C, SIGTERM); uvicorn logs requests to stderr.

    With a model, the engine steps on this (the main) thread, where the model was loaded, and uvicorn
    serves from a second one (`Engine.run` says why: 20-25% more decode throughput on the CPU)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="info", timeout_graceful_shutdown=5))
    engine = getattr(app.state.backend, "engine", None)
    if engine is None or threading.current_thread() is not threading.main_thread():
        server.run(sockets=[sock])
        return

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        finally:
            engine.halt()  # the HTTP side is done (shut down, or failed to start): so is the engine

    def shut_down(signum, frame) -> None:
        server.should_exit = True  # uvicorn's graceful shutdown; the engine steps until it is over

    previous = {s: signal.signal(s, shut_down) for s in (signal.SIGINT, signal.SIGTERM)}
    http = threading.Thread(target=serve, name="codeinstruct-http")
    try:
        engine.run(until=lambda: not http.is_alive(), on_start=http.start)
        if http.ident is not None:
            http.join()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
