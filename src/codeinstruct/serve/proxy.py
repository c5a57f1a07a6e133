"""Proxy mode: the OpenAI routes in front of another OpenAI-compatible server, adding what it lacks (the
`ServingBackend` of proxy mode).

A large deployment keeps its engine (vLLM, TGI, ... serving a real StarCoder on GPUs) and gets,
from this server in front of it:

- chat as in engine mode: the conversation becomes the Alpaca prompt the model was tuned on
  (openai_compat.alpaca_from_messages), sent to the upstream's `/v1/completions` (a base or
  fine-tuned StarCoder has no chat template, so vLLM refuses its chat route); the answer is
  `extract_response`'s text, streamed or not, and `logprobs`/`top_logprobs` come back in chat's shape;
- FIM with `suffix`: `prompt` + `suffix` are sent as the raw PSM prompt
  `<fim_prefix>PROMPT<fim_suffix>SUFFIX<fim_middle>` (vLLM rejects `suffix`; a StarCoder upstream
  reads the special-token strings of a raw prompt as its control tokens); llama.cpp's `/infill` the same way;
- attribution of every finished choice (in its last stream event when streaming), as in engine mode;
- stop strings enforced here as well (an upstream can miss one that ends inside a token), held back
  across stream chunks so that no part of one is ever shown; when every choice has stopped here the
  upstream request is closed, which frees its slots there;
- the same admission limit (429 beyond --max-concurrency requests upstream plus --max-queue
  waiting; by default 256, so a healthy upstream is never throttled here) and API key; a client that
  disconnects closes its upstream request at once.

Everything else is passed through: every other option of a request (logprobs, echo, penalties,
logit_bias, best_of, ... are the upstream's to honour or refuse), other fields of responses,
upstream errors with their status (429 and 503 with Retry-After), `/v1/models`, vLLM's `/tokenize`
and `/detokenize`. The upstream is the only address this server ever contacts.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from codeinstruct.infer.generate import ResponseStream
from codeinstruct.infer.streaming import TextStream
from codeinstruct.prompts import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX, STOP_STRINGS, extract_response, format_prompt
from codeinstruct.serve import openai_compat as oa
from codeinstruct.serve.http import (
    Admission,
    Attributor,
    ClientGone,
    SSEResponse,
    until_disconnected,
)
from codeinstruct.serve.llama_native import CompletionLimits
from codeinstruct.serve.metrics import ServerMetrics
from codeinstruct.serve.schemas import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    InfillRequest,
    LlamaCompletionRequest,
    TokenizeRequest,
    error_body,
)

# What a chat request holds that a completions request does not (or holds in another form).
CHAT_ONLY = (
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "response_format",
    "parallel_tool_calls",
    "functions",
    "function_call",
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
        self.answers: dict[int, ResponseStream] = {}  # chat: extract_response as a stream, per choice
        self.llama = None  # infill shape: the llama.cpp-native request, whose limits cut the text
        self.limits = CompletionLimits()
        self.final: dict | None = None  # infill shape: the finished choice, answered once usage is known

    def take_final(self, payload: dict, usage_event: dict | None = None) -> list[dict]:
        """Infill shape: llama.cpp's final object for the finished choice (counts from the upstream's usage
        chunk, which comes after it when the upstream reports usage), once."""
        if self.final is None:
            return []
        choice, self.final = self.final, None
        return [self.llama.fields(_infill_answer("", choice, usage_event or {}, payload, self.limits))]

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
        metrics: ServerMetrics | None = None,
    ):
        self.base = upstream_base(url)
        self.root = self.base.removesuffix("/v1")  # vLLM's /tokenize and /detokenize live here
        self.admission = admission
        self.attributor = attributor
        self.slots = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0  # upstream requests open
        self.waiting = 0  # requests admitted, waiting for a slot
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.transport = transport
        self.timeout = httpx.Timeout(30.0, read=read_timeout)
        self.client: httpx.AsyncClient | None = None
        if metrics is not None:
            metrics.read_load_from(lambda: {"waiting": self.waiting, "running": self.in_flight})

    async def start(self) -> None:
        # trust_env=False: no proxy settings or .netrc from the environment; only the upstream is contacted.
        self.client = httpx.AsyncClient(
            base_url=self.base, headers=self.headers, timeout=self.timeout, transport=self.transport, trust_env=False
        )

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def health(self) -> dict:
        return {"upstream": self.base, "upstream_requests": self.in_flight}

    async def _acquire(self) -> None:
        self.waiting += 1
        try:
            await self.slots.acquire()
        finally:
            self.waiting -= 1
        self.in_flight += 1

    def _release(self) -> None:
        self.in_flight -= 1
        self.slots.release()

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
        # an overloaded upstream's advice to its clients reaches them
        headers = {"Retry-After": r.headers["retry-after"]} if "retry-after" in r.headers else None
        return JSONResponse(data, status_code=r.status_code, headers=headers)

    async def models(self) -> dict | Response:
        try:
            r = await self.client.get("/models")
        except httpx.HTTPError as e:
            raise self._unreachable(e) from None
        if r.status_code != 200:
            return await self._error_from(r)
        return r.json()

    async def _post_root(self, path: str, payload: dict) -> Response:
        """A request to the upstream's root (vLLM's tokenizer routes), answered as the upstream answers it."""
        await self._acquire()
        try:
            r = await self.client.post(self.root + path, json=payload)
        except httpx.HTTPError as e:
            raise self._unreachable(e) from None
        finally:
            self._release()
        if r.status_code != 200:
            return await self._error_from(r)
        return JSONResponse(r.json())

    # ------------------------------------------------------------------ routes

    async def completions(self, request: Request, body: CompletionRequest, raw: dict) -> Response:
        body.check()
        payload = dict(raw)
        if body.suffix is not None:
            if any(not isinstance(p, str) for p in body.prompts):
                raise ApiError(400, "suffix needs a text prompt, not token ids", param="suffix")
            prompts = [psm_prompt(p, body.suffix) for p in body.prompts]
            payload["prompt"] = prompts[0] if isinstance(body.prompt, str) else prompts
            del payload["suffix"]
        return await self._forward(request, payload, body.stream, body.stop_strings, len(body.prompts) * body.n, "text")

    async def chat(self, request: Request, body: ChatCompletionRequest, raw: dict) -> Response:
        """The conversation as its Alpaca prompt, through the upstream's /v1/completions (as in engine mode)."""
        body.refuse_unsupported()
        instruction, context = oa.alpaca_from_messages(body.messages)
        payload = {k: v for k, v in raw.items() if k not in CHAT_ONLY}
        stops = tuple(dict.fromkeys((*body.stop_strings, *STOP_STRINGS)))
        payload.update(
            prompt=format_prompt(instruction, context),
            max_tokens=body.max_new_tokens,  # null: up to the context (vLLM)
            stop=list(stops),
        )
        if body.logprobs_top is not None:
            payload["logprobs"] = body.logprobs_top
        return await self._forward(request, payload, body.stream, stops, body.n, "chat")

    async def infill(self, request: Request, body: InfillRequest) -> Response:
        """llama.cpp's /infill as a raw PSM completion upstream, answered in llama.cpp's shape."""
        extra = "".join(f"<filename>{c.filename}\n{c.text}" if c.filename else c.text for c in body.input_extra)
        prompt = extra + psm_prompt(body.input_prefix, body.input_suffix) + body.prompt
        return await self._llama_forward(request, body, prompt)

    async def llama_completion(self, request: Request, body: LlamaCompletionRequest) -> Response:
        """llama.cpp's /completion as a raw completion upstream (text or token ids), answered in its shape."""
        return await self._llama_forward(request, body, body.prompt)

    async def _llama_forward(self, request: Request, body, prompt: str | list[int]) -> Response:
        payload = {
            "prompt": prompt,
            # n_predict 0: the upstream evaluates the prompt (and caches it) for one token, not shown
            "max_tokens": None if body.n_predict < 0 else max(1, body.n_predict),
            "temperature": body.temperature,
            "top_p": body.top_p,
            "top_k": body.top_k,
            "repetition_penalty": body.repeat_penalty,
            "presence_penalty": body.presence_penalty,
            "frequency_penalty": body.frequency_penalty,
            "stop": body.stop,
            "seed": None if body.seed < 0 else body.seed,
            "ignore_eos": body.ignore_eos,
            "stream": body.stream,
        }
        if body.stream:  # the counts of llama.cpp's final object
            payload["stream_options"] = {"include_usage": True}
        if body.model is not None:
            payload["model"] = body.model
        return await self._forward(request, payload, body.stream, tuple(body.stop), 1, "infill", llama=body)

    async def tokenize(self, request: Request, body: TokenizeRequest) -> Response:
        body.check()
        prompt = body.prompt
        if body.messages is not None:
            prompt = format_prompt(*oa.alpaca_from_messages(body.messages))
        payload = {"prompt": prompt, "add_special_tokens": body.add_special_tokens}
        if body.return_token_strs:
            payload["return_token_strs"] = True
        if body.model is not None:
            payload["model"] = body.model
        return await self._post_root("/tokenize", payload)

    async def detokenize(self, request: Request, body: DetokenizeRequest) -> Response:
        payload = {"tokens": body.tokens, **({"model": body.model} if body.model is not None else {})}
        return await self._post_root("/detokenize", payload)

    # ------------------------------------------------------------------ forwarding

    async def _forward(
        self,
        request: Request,
        payload: dict,
        stream: bool,
        stops: tuple[str, ...],
        samples: int,
        shape: str,
        llama=None,
    ) -> Response:
        """POST `payload` to the upstream's /completions; answer in `shape`: text (completions), chat, or
        infill (llama.cpp's native shape, of the /infill or /completion request `llama`)."""
        ticket = self.admission.admit(samples)
        try:
            if stream:
                return await self._forward_stream(request, payload, stops, samples, shape, ticket, llama)
            return await self._forward_once(request, payload, stops, shape, llama)
        finally:
            if not stream:
                ticket.release()

    async def _forward_once(
        self, request: Request, payload: dict, stops: tuple[str, ...], shape: str, llama=None
    ) -> Response:
        async def work() -> Response:
            await self._acquire()
            try:
                r = await self.client.post("/completions", json=payload)
            except httpx.HTTPError as e:
                raise self._unreachable(e) from None
            finally:
                self._release()
            if r.status_code != 200:
                return await self._error_from(r)
            data = r.json()
            choices = data.get("choices") or []
            texts = []
            for choice in choices:
                text = choice.get("text") or ""
                cut = first_stop(text, stops)
                if cut >= 0:
                    text = choice["text"] = text[:cut]
                    choice["finish_reason"] = "stop"
                texts.append(extract_response(text) if shape == "chat" else text)
            attributions = await self.attributor.check_all(texts) if self.attributor.enabled else [None] * len(texts)
            if shape == "infill":
                choice = choices[0] if choices else {}
                limits = _limits(llama)
                content, cut = limits.feed(texts[0] if texts else "", 0.0)
                if cut or limits.hidden:
                    choice = {**choice, "finish_reason": "length"}
                return JSONResponse(llama.fields(_infill_answer(content, choice, data, payload, limits)))
            for choice, text, attribution in zip(choices, texts, attributions):
                if attribution is not None:
                    choice["attribution"] = attribution
                if shape == "chat":
                    logprobs = oa.completion_to_chat_logprobs(choice.pop("logprobs", None))
                    choice.pop("text", None)
                    choice["message"] = {"role": "assistant", "content": text}
                    choice["logprobs"] = logprobs if "logprobs" in payload else None
            if shape == "chat":
                data["object"] = "chat.completion"
                data["choices"] = [_chat_order(c) for c in choices]
            return JSONResponse(data)

        try:
            return await until_disconnected(request, work())
        except ClientGone:
            return Response(status_code=499)

    async def _forward_stream(
        self, request: Request, payload: dict, stops: tuple[str, ...], samples: int, shape: str, ticket, llama=None
    ) -> Response:
        async def open_stream() -> httpx.Response:
            await self._acquire()
            try:
                return await self.client.send(
                    self.client.build_request("POST", "/completions", json=payload), stream=True
                )
            except BaseException as e:
                self._release()
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
                self._release()
                ticket.release()

        async def cleanup() -> None:
            await r.aclose()
            self._release()
            ticket.release()

        choices = _Choices(stops, samples)
        choices.llama, choices.limits = llama, _limits(llama)
        return SSEResponse(self._relay(r, choices, shape, payload), cleanup)

    async def _relay(self, r: httpx.Response, choices: _Choices, shape: str, payload: dict) -> AsyncIterator[bytes]:
        """The upstream's events, with stop strings enforced and attribution added to each choice's last one."""
        done = b"" if shape == "infill" else oa.DONE  # llama.cpp's streams end without [DONE]
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
                    for out in choices.take_final(payload):
                        yield oa.sse(out)
                    yield done
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    continue
                for out in await self._rewrite(event, choices, shape, payload):
                    yield oa.sse(out)
                if choices.all_stopped_here:
                    for out in choices.take_final(payload):
                        yield oa.sse(out)
                    yield done  # the upstream request is closed by the clean-up, freeing its slots
                    return
        except httpx.HTTPError as e:
            yield oa.sse(self._unreachable(e).body())
            yield done
            return
        yield oa.sse(error_body("the upstream closed the stream before it was done", type="upstream_error"))
        yield done

    async def _rewrite(self, event: dict, choices: _Choices, shape: str, payload: dict) -> list[dict]:
        """The events to send for one upstream completions chunk, in the route's shape."""
        if not isinstance(event, dict) or not isinstance(event.get("choices"), list) or not event["choices"]:
            if shape == "chat" and isinstance(event, dict) and "error" not in event:
                return [{**event, "object": "chat.completion.chunk"}]  # usage-only chunks
            if shape == "infill" and isinstance(event, dict) and "error" not in event:
                return choices.take_final(payload, event) if event.get("usage") else []
            return [event]
        out: list[dict] = []
        kept = []
        for choice in event["choices"]:
            index = choice.get("index", 0)
            if index in choices.finished:
                continue  # finished here by a stop string; the upstream is still going
            finish = choice.get("finish_reason")
            shown, stopped = choices.feed(index, choice.get("text") or "", finish is not None)
            if stopped:
                finish = "stop"
                choices.stopped_here += 1
            if finish is not None:
                choices.finished.add(index)
            if shape == "text":
                if "text" in choice or shown:
                    choice["text"] = shown
                choice["finish_reason"] = finish
                if finish is not None and self.attributor.enabled:
                    choice["attribution"] = await self.attributor.check(choices.text(index))
                kept.append(choice)
            elif shape == "chat":
                if index not in choices.answers:
                    choices.answers[index] = ResponseStream()
                    out.append(_chat_chunk(event, [oa.chat_delta(index, {"role": "assistant", "content": ""})]))
                answer = choices.answers[index]
                piece = answer.push(shown)
                logprobs = oa.completion_to_chat_logprobs(choice.get("logprobs")) if "logprobs" in payload else None
                if not piece and finish is None and not logprobs:
                    continue
                attribution = None
                if finish is not None and self.attributor.enabled:
                    attribution = await self.attributor.check(answer.text)
                kept.append(oa.chat_delta(index, {"content": piece} if piece else {}, finish, attribution, logprobs))
            else:  # infill
                shown, cut = choices.limits.feed(shown, time.perf_counter())
                if cut and finish is None:
                    finish = "length"
                    choices.stopped_here += 1
                    choices.finished.add(index)
                if choices.limits.hidden and finish is not None:
                    finish = "length"
                if shown:
                    out.append({"index": 0, "content": shown, "tokens": [], "stop": False})
                if finish is not None:
                    choices.final = {**choice, "finish_reason": finish}
        if kept:
            out.append({**event, "choices": kept} if shape == "text" else _chat_chunk(event, kept))
        if shape == "infill" and event.get("usage"):  # usage in the finishing chunk itself
            out += choices.take_final(payload, event)
        return out


def _chat_chunk(event: dict, choices: list[dict]) -> dict:
    """A chat stream chunk carrying `choices`, named as the upstream's completions chunk `event`."""
    chunk = {k: v for k, v in event.items() if k not in ("choices", "object")}
    return {**chunk, "object": "chat.completion.chunk", "choices": choices}


def _chat_order(choice: dict) -> dict:
    keys = ("index", "message", "logprobs", "finish_reason")
    return {**{k: choice.get(k) for k in keys}, **{k: v for k, v in choice.items() if k not in keys}}


def _limits(llama) -> CompletionLimits:
    if llama is None:
        return CompletionLimits()
    return CompletionLimits(llama.n_indent, llama.t_max_predict_ms, hidden=llama.n_predict == 0)


def _infill_answer(content: str, choice: dict, data: dict, payload: dict, limits: CompletionLimits) -> dict:
    """llama.cpp's final /infill or /completion object from an upstream completions choice."""
    finish = choice.get("finish_reason")
    usage = data.get("usage") or {}
    stopped_word = finish == "stop" and bool(payload.get("stop")) and choice.get("stop_reason") is not None
    return {
        "index": 0,
        "content": content,
        "tokens": [],
        "stop": True,
        "model": data.get("model"),
        "tokens_predicted": 0 if limits.hidden else usage.get("completion_tokens"),
        "tokens_evaluated": usage.get("prompt_tokens"),
        "prompt": payload["prompt"],
        "has_new_line": "\n" in limits.text,
        "truncated": False,
        "stop_type": "limit" if finish == "length" else "word" if stopped_word else "eos",
        "stopped_eos": finish == "stop" and not stopped_word,
        "stopped_word": stopped_word,
        "stopped_limit": finish == "length",
        "stopping_word": choice.get("stop_reason") if isinstance(choice.get("stop_reason"), str) else "",
    }
