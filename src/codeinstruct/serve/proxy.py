"""Proxy mode: the OpenAI routes in front of another OpenAI-compatible server, adding what it lacks (the
`ServingBackend` of proxy mode).

A large deployment keeps its engine (vLLM, TGI, ... serving a real StarCoder on GPUs) and gets,
from this server in front of it:

- attribution of every finished choice (in its last stream event when streaming), as in engine mode;
- FIM with `suffix`: `prompt` + `suffix` are sent as the raw PSM prompt
  `<fim_prefix>PROMPT<fim_suffix>SUFFIX<fim_middle>` (vLLM rejects `suffix`; a StarCoder upstream
  reads the special-token strings of a raw prompt as its control tokens);
- stop strings enforced here as well (an upstream can miss one that ends inside a token), held back
  across stream chunks so that no part of one is ever shown; when every choice has stopped here the
  upstream request is closed, which frees its slots there;
- the same admission limit (429 beyond --max-concurrency requests upstream plus --max-queue
  waiting) and API key; a client that disconnects closes its upstream request at once.

Everything else is passed through: other fields of requests and responses, upstream errors
(with their status), `/v1/models`. The upstream is the only address this server ever contacts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from codeinstruct.infer.streaming import TextStream
from codeinstruct.prompts import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX
from codeinstruct.serve import openai_compat as oa
from codeinstruct.serve.http import (
    Admission,
    Attributor,
    ClientGone,
    SSEResponse,
    until_disconnected,
)
from codeinstruct.serve.schemas import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
)


def psm_prompt(prefix: str, suffix: str) -> str:
    """The raw Fill-in-the-Middle prompt (PSM) as text; its special-token strings become control tokens upstream."""
    return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"


def upstream_base(url: str) -> str:
    """The upstream's API root: `http://host:8000` and `http://host:8000/v1` both mean .../v1."""
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        from codeinstruct.errors import CodeinstructError

        raise CodeinstructError(f"--upstream {url}: expected an http:// or https:// URL")
    return url if url.endswith("/v1") else url + "/v1"


def first_stop(text: str, stops: tuple[str, ...]) -> int:
    return min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)


class _Choices:
    """Per choice of a relayed stream: the stop-string filter, the visible text, whether it has finished."""

    def __init__(self, stops: tuple[str, ...], expected: int):
        self.stops = stops
        self.expected = expected
        self.filters: dict[int, TextStream] = {}
        self.finished: set[int] = set()
        self.stopped_here = 0

    def text(self, index: int) -> str:
        return self.filters[index].visible if index in self.filters else ""

    def feed(self, index: int, piece: str, upstream_finished: bool) -> tuple[str, bool]:
        """(text to show, stopped by a stop string here)."""
        stream = self.filters.setdefault(index, TextStream(self.stops))
        shown, stopped = stream.feed(piece, final=upstream_finished)
        return shown, stopped and not upstream_finished

    @property
    def all_stopped_here(self) -> bool:
        """Every choice has finished, some by a stop string here: nothing more to relay."""
        return self.stopped_here > 0 and len(self.finished) >= self.expected


def _field(choice: dict, name: str) -> dict:
    if not isinstance(choice.get(name), dict):
        choice[name] = {}
    return choice[name]


class UpstreamModel:
    """The routes' work against an upstream OpenAI-compatible server over httpx."""

    mode = "proxy"
    name = None

    def __init__(
        self,
        url: str,
        admission: Admission,
        attributor: Attributor,
        max_concurrency: int,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        read_timeout: float = 600.0,
    ):
        self.base = upstream_base(url)
        self.admission = admission
        self.attributor = attributor
        self.slots = asyncio.Semaphore(max_concurrency)
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.transport = transport
        self.timeout = httpx.Timeout(30.0, read=read_timeout)
        self.client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        # trust_env=False: no proxy settings or .netrc from the environment; only the upstream is contacted.
        self.client = httpx.AsyncClient(
            base_url=self.base, headers=self.headers, timeout=self.timeout, transport=self.transport, trust_env=False
        )

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def health(self) -> dict:
        return {"upstream": self.base}

    # ------------------------------------------------------------------ upstream calls

    def _unreachable(self, e: httpx.HTTPError) -> ApiError:
        if isinstance(e, httpx.TimeoutException):
            return ApiError(
                504,
                f"the upstream {self.base} timed out ({type(e).__name__})",
                type="server_error",
                code="upstream_timeout",
            )
        return ApiError(
            502,
            f"the upstream {self.base} is unreachable ({type(e).__name__}: {e})",
            type="server_error",
            code="upstream_unavailable",
        )

    async def _error_from(self, r: httpx.Response) -> Response:
        """An upstream error answered with its status and body (OpenAI-shaped when it is not already)."""
        body = await r.aread()
        if r.status_code in (401, 403):
            return JSONResponse(
                error_body(
                    f"the upstream {self.base} refused this server's credentials (--upstream-api-key)",
                    type="server_error",
                    code="upstream_auth",
                ),
                status_code=502,
            )
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict) or "error" not in data:
            text = body.decode("utf-8", "replace").strip()[:500] or r.reason_phrase
            data = error_body(f"upstream error {r.status_code}: {text}", type="upstream_error")
        return JSONResponse(data, status_code=r.status_code)

    async def models(self) -> Response:
        try:
            r = await self.client.get("/models")
        except httpx.HTTPError as e:
            raise self._unreachable(e) from None
        if r.status_code != 200:
            return await self._error_from(r)
        return JSONResponse(r.json())

    # ------------------------------------------------------------------ routes

    async def completions(self, request: Request, body: CompletionRequest, raw: dict) -> Response:
        payload = dict(raw)
        if body.suffix is not None:
            if any(not isinstance(p, str) for p in body.prompts):
                raise ApiError(400, "suffix needs a text prompt, not token ids", param="suffix")
            prompts = [psm_prompt(p, body.suffix) for p in body.prompts]
            payload["prompt"] = prompts[0] if isinstance(body.prompt, str) else prompts
            del payload["suffix"]
        return await self._forward(request, "/completions", payload, body, len(body.prompts) * body.n, chat=False)

    async def chat(self, request: Request, body: ChatCompletionRequest, raw: dict) -> Response:
        return await self._forward(request, "/chat/completions", dict(raw), body, body.n, chat=True)

    async def _forward(self, request: Request, path: str, payload: dict, body, samples: int, chat: bool) -> Response:
        ticket = self.admission.admit(samples)
        try:
            if body.stream:
                return await self._forward_stream(request, path, payload, body, samples, chat, ticket)
            return await self._forward_once(request, path, payload, body, chat)
        finally:
            if not body.stream:
                ticket.release()

    async def _forward_once(self, request: Request, path: str, payload: dict, body, chat: bool) -> Response:
        async def work() -> Response:
            async with self.slots:
                try:
                    r = await self.client.post(path, json=payload)
                except httpx.HTTPError as e:
                    raise self._unreachable(e) from None
            if r.status_code != 200:
                return await self._error_from(r)
            data = r.json()
            choices = data.get("choices") or []
            texts = []
            for choice in choices:
                holder, key = (_field(choice, "message"), "content") if chat else (choice, "text")
                text = holder.get(key) or ""
                cut = first_stop(text, body.stop_strings)
                if cut >= 0:
                    text = holder[key] = text[:cut]
                    choice["finish_reason"] = "stop"
                texts.append(text)
            if self.attributor.enabled:
                for choice, attribution in zip(choices, await self.attributor.check_all(texts)):
                    choice["attribution"] = attribution
            return JSONResponse(data)

        try:
            return await until_disconnected(request, work())
        except ClientGone:
            return Response(status_code=499)

    async def _forward_stream(
        self, request: Request, path: str, payload: dict, body, samples: int, chat: bool, ticket
    ) -> Response:
        async def open_stream() -> httpx.Response:
            await self.slots.acquire()
            try:
                return await self.client.send(self.client.build_request("POST", path, json=payload), stream=True)
            except BaseException as e:
                self.slots.release()
                if isinstance(e, httpx.HTTPError):
                    raise self._unreachable(e) from None
                raise

        try:
            r = await until_disconnected(request, open_stream())
        except ClientGone:
            ticket.release()
            return Response(status_code=499)
        except BaseException:
            ticket.release()
            raise
        if r.status_code != 200:
            try:
                return await self._error_from(r)
            finally:
                await r.aclose()
                self.slots.release()
                ticket.release()

        async def cleanup() -> None:
            await r.aclose()
            self.slots.release()
            ticket.release()

        return SSEResponse(self._relay(r, _Choices(body.stop_strings, samples), chat), cleanup)

    async def _relay(self, r: httpx.Response, choices: _Choices, chat: bool) -> AsyncIterator[bytes]:
        """The upstream's events, with stop strings enforced and attribution added to each choice's last one."""
        data_lines: list[str] = []
        try:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    data_lines.append(line[5:].removeprefix(" "))
                    continue
                if line or not data_lines:
                    continue  # comments, other fields, keep-alive blank lines
                data, data_lines = "\n".join(data_lines), []
                if data.strip() == "[DONE]":
                    yield oa.DONE
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                out = await self._rewrite(event, choices, chat)
                if out is not None:
                    yield oa.sse(out)
                if choices.all_stopped_here:
                    yield oa.DONE  # the upstream request is closed by the clean-up, freeing its slots
                    return
        except httpx.HTTPError as e:
            yield oa.sse(self._unreachable(e).body())
            yield oa.DONE
            return
        yield oa.sse(error_body("the upstream closed the stream before it was done", type="upstream_error"))
        yield oa.DONE

    async def _rewrite(self, event: dict, choices: _Choices, chat: bool) -> dict | None:
        if not isinstance(event, dict) or not isinstance(event.get("choices"), list) or not event["choices"]:
            return event  # errors, usage-only chunks
        kept = []
        for choice in event["choices"]:
            index = choice.get("index", 0)
            if index in choices.finished:
                continue  # finished here by a stop string; the upstream is still going
            holder, key = (_field(choice, "delta"), "content") if chat else (choice, "text")
            finish = choice.get("finish_reason")
            piece = holder.get(key) or ""
            shown, stopped = choices.feed(index, piece, finish is not None)
            if key in holder or shown:
                holder[key] = shown
            if stopped:
                choice["finish_reason"] = finish = "stop"
                choices.stopped_here += 1
            if finish is not None:
                choices.finished.add(index)
                if self.attributor.enabled:
                    choice["attribution"] = await self.attributor.check(choices.text(index))
            kept.append(choice)
        if not kept:
            return None
        event["choices"] = kept
        return event
