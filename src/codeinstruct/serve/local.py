"""The OpenAI routes on the in-process engine (continuous batching, one background thread): the
`ServingBackend` of engine mode.

Each request becomes one engine submission per prompt (its `n` samples share the prefill),
tokenized and submitted on a worker thread: `engine.submit` waits for the engine's lock, which a
decode step holds, and the event loop serving every other stream must not wait with it. The engine
hands events straight to the event loop (`_LoopEvents` is the queue it writes to), so no thread
waits per request: a blocked `get` on the loop's few executor threads would starve 32 streams, and
a waiting thread per stream takes GIL time from the engine's thread. Events that pile up while the
loop is busy go out together as one. A request that ends for any reason, the client gone included,
is cancelled in the engine, which frees its slots at its next step.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from codeinstruct.errors import CodeinstructError
from codeinstruct.infer.engine import Engine
from codeinstruct.infer.generate import ResponseStream, fim_request, response_params
from codeinstruct.infer.requests import RequestHandle
from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.prompts import encode_text, format_prompt
from codeinstruct.serve import openai_compat as oa
from codeinstruct.serve.http import (
    Admission,
    Attributor,
    ClientGone,
    SSEResponse,
    Ticket,
    until_disconnected,
)
from codeinstruct.serve.schemas import (
    ApiError,
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
)

DEFAULT_COMPLETION_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
MAX_CHARS_PER_TOKEN = 64  # text longer than this many characters per context token is refused untokenized


@dataclass
class _Prompt:
    ids: list[int]
    params: SamplingParams
    echo: str = ""


class _Delivery:
    """Hands engine events to the event loop: one wake-up of the loop per batch, whatever the number of streams.

    The engine's thread calls `put` on each request's `_LoopEvents`; a wake-up is scheduled only when
    none is pending, so the events of every stream that arrive while the loop is busy (a decode step
    makes one per running sequence) are delivered together.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.lock = threading.Lock()
        self.pending: list[tuple[_LoopEvents, object]] = []

    def push(self, target: _LoopEvents, item) -> None:
        with self.lock:
            self.pending.append((target, item))
            if len(self.pending) > 1:
                return  # a delivery is already scheduled and will take this one too
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: the server has stopped
            pass

    def _deliver(self) -> None:
        with self.lock:
            items, self.pending = self.pending, []
        batches: dict[_LoopEvents, list] = {}
        for target, item in items:
            batches.setdefault(target, []).append(item)
        for target, events in batches.items():
            target.inbox.put_nowait((target.k, events))


class _LoopEvents:
    """The events queue the engine writes to for one request (it only ever calls `put`)."""

    def __init__(self, delivery: _Delivery, inbox: asyncio.Queue, k: int):
        self.delivery, self.inbox, self.k = delivery, inbox, k

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        self.delivery.push(self, item)


@dataclass(eq=False)
class Generation:
    """The engine requests of one HTTP request: choice k * n + i is sample i of prompt k."""

    prompts: list[_Prompt]
    n: int
    handles: list[RequestHandle] = field(default_factory=list)
    ticket: Ticket | None = None
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)  # (prompt k, [events]) from _LoopEvents

    @property
    def samples(self) -> int:
        return len(self.prompts) * self.n

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.ids) for p in self.prompts)

    def completion_tokens(self) -> int:
        return sum(len(s.tokens) for h in self.handles for s in h.sequences)

    def close(self) -> None:
        for h in self.handles:
            if not h.done:
                h.cancel()
        if self.ticket is not None:
            self.ticket.release()


class LocalModel:
    """The routes' work on an `Engine`: validate, admit, submit, stream, attribute."""

    mode = "engine"

    def __init__(self, engine: Engine, name: str, admission: Admission, attributor: Attributor):
        self.engine = engine
        self.name = name
        self.admission = admission
        self.attributor = attributor
        self.live: set[Generation] = set()
        self._started_engine = False
        self.created = oa.now()
        self.delivery: _Delivery | None = None  # made on the serving loop, at the first request

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._started_engine = not self.engine.running_in_background
        self.engine.start()

    async def stop(self) -> None:
        for g in list(self.live):
            g.close()
        if self._started_engine:
            await asyncio.to_thread(self.engine.stop)

    def health(self) -> dict:
        return {"free_slots": self.engine.free_slots, "max_seq_len": self.engine.max_seq_len}

    async def models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": self.name,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "codeinstruct",
                    "max_model_len": self.engine.max_seq_len,
                }
            ],
        }

    # ------------------------------------------------------------------ requests -> engine

    def _check_size(self, text: str, param: str) -> None:
        # Refused before tokenizing: no token is this long, and tokenizing megabytes would stall every stream.
        if len(text) > MAX_CHARS_PER_TOKEN * self.engine.max_seq_len:
            raise ApiError(
                400,
                f"{param} has {len(text):,} characters; the model's context is "
                f"{self.engine.max_seq_len} tokens (shorten it)",
                param=param,
                code="context_length_exceeded",
            )

    def _check_n(self, n: int) -> None:
        if n > self.engine.max_batch_size:
            raise ApiError(
                400,
                f"n={n} is more than the server's {self.engine.max_batch_size} concurrent sequences "
                "(--max-concurrency)",
                param="n",
            )

    def _completion_prompts(self, body: CompletionRequest) -> list[_Prompt]:
        tok = self.engine.tokenizer
        max_tokens = body.max_tokens or DEFAULT_COMPLETION_TOKENS
        out = []
        for prompt in body.prompts:
            if isinstance(prompt, str):
                self._check_size(prompt + (body.suffix or ""), "prompt")
            if body.suffix is not None:
                if not isinstance(prompt, str):
                    raise ApiError(400, "suffix needs a text prompt, not token ids", param="suffix")
                try:
                    ids, fim_params = fim_request(self.engine, prompt, body.suffix)
                except CodeinstructError as e:
                    raise ApiError(400, f"suffix (Fill-in-the-Middle): {e}", param="suffix") from None
                params = oa.sampling_params(
                    body,
                    len(ids),
                    self.engine.max_seq_len,
                    max_tokens,
                    "prompt",
                    stop_token_ids=fim_params.stop_token_ids,
                )
                out.append(_Prompt(ids, params))
                continue
            if isinstance(prompt, str):
                ids, fim = oa.encode_raw_prompt(tok, prompt)
                echo = prompt
            else:
                ids, fim, echo = prompt, False, tok.decode(prompt) if body.echo else ""
            if not ids:
                raise ApiError(400, "prompt: must not be empty", param="prompt")
            stops = oa.fim_stop_ids(tok) if fim else ()
            params = oa.sampling_params(
                body, len(ids), self.engine.max_seq_len, max_tokens, "prompt", stop_token_ids=stops
            )
            out.append(_Prompt(ids, params, echo if body.echo else ""))
        return out

    def _chat_prompt_list(self, body: ChatCompletionRequest) -> list[_Prompt]:
        return [self._chat_prompt(body)]

    def _chat_prompt(self, body: ChatCompletionRequest) -> _Prompt:
        instruction, context = oa.alpaca_from_messages(body.messages)
        self._check_size(instruction + context, "messages")
        ids = encode_text(self.engine.tokenizer, format_prompt(instruction, context))
        params = oa.sampling_params(body, len(ids), self.engine.max_seq_len, body.max_new_tokens, "messages")
        return _Prompt(ids, response_params(params))

    async def _start(self, prepare, body, samples: int) -> Generation:
        """Admit `samples` (429 when full), then tokenize and submit on a worker thread: `engine.submit`
        waits for the engine's lock, held through each step, and the event loop must not wait with it."""
        self._check_n(body.n)
        generation = Generation([], body.n, ticket=self.admission.admit(samples))
        if self.delivery is None:
            self.delivery = _Delivery(asyncio.get_running_loop())
        try:
            await asyncio.to_thread(self._prepare_and_submit, generation, prepare, body)
        except BaseException:
            generation.close()
            raise
        self.live.add(generation)
        return generation

    def _prepare_and_submit(self, generation: Generation, prepare, body) -> None:
        generation.prompts = prepare(body)
        for k, p in enumerate(generation.prompts):
            events = _LoopEvents(self.delivery, generation.inbox, k)
            try:
                generation.handles.append(self.engine.submit(p.ids, p.params, events=events))
            except CodeinstructError as e:
                raise ApiError(400, str(e), param="prompt") from None

    def _finish(self, generation: Generation) -> None:
        generation.close()
        self.live.discard(generation)

    async def _events(self, generation: Generation) -> AsyncIterator[tuple[int, str, str | None]]:
        """(choice index, text delta, finish_reason or None) as the engine produces them.

        Text that piled up while the loop was busy goes out as one event, not one per token: under
        load the per-event cost (JSON, a send, the client's parse) would otherwise grow with it."""
        open_handles = len(generation.handles)
        while open_handles:
            arrived = [await generation.inbox.get()]
            while not generation.inbox.empty():
                arrived.append(generation.inbox.get_nowait())
            held: dict[int, str] = {}
            for k, events in arrived:
                for event in events:
                    if event is None:
                        open_handles -= 1
                        error = generation.handles[k].error
                        if error is not None:
                            raise ApiError(500, f"generation failed: {error}", type="server_error")
                        continue
                    if event.finish_reason == "cancelled":  # not by us: the engine failed or is stopping
                        error = generation.handles[k].error
                        if error is not None:
                            raise ApiError(500, f"generation failed: {error}", type="server_error")
                        raise ApiError(
                            503, "the generation was cancelled (the server is shutting down)", type="server_error"
                        )
                    index = k * generation.n + event.index
                    text = held.pop(index, "") + event.text
                    if event.finish_reason is None:
                        held[index] = text
                    else:
                        yield index, text, event.finish_reason
            for index, text in held.items():
                if text:
                    yield index, text, None

    # ------------------------------------------------------------------ routes

    def _stream(
        self,
        generation: Generation,
        body,
        rid: str,
        created: int,
        object_name: str,
        choice_lists: AsyncIterator[list[dict]],
    ) -> SSEResponse:
        """The event stream of a route: one chunk per list of choices, then usage (when asked) and [DONE];
        an error on the way is sent as an event, and the generation is finished however the stream ends."""
        usage_field = {"usage": None} if body.include_usage else {}

        def chunk(choices: list[dict], **extra) -> bytes:
            return oa.sse(oa.envelope(rid, object_name, created, self.name, choices, **extra))

        async def stream() -> AsyncIterator[bytes]:
            try:
                async with aclosing(choice_lists):
                    async for choices in choice_lists:
                        yield chunk(choices, **usage_field)
                if body.include_usage:
                    yield chunk([], usage=oa.usage(generation.prompt_tokens, generation.completion_tokens()))
            except ApiError as e:
                yield oa.sse(e.body())
            yield oa.DONE

        return SSEResponse(stream(), lambda: self._finish(generation))

    async def completions(self, request: Request, body: CompletionRequest, raw: dict | None = None) -> Response:
        generation = await self._start(self._completion_prompts, body, len(body.prompts) * body.n)
        rid, created = oa.new_id("cmpl"), oa.now()

        if body.stream:

            async def choice_lists() -> AsyncIterator[list[dict]]:
                texts: dict[int, str] = {}
                for k, p in enumerate(generation.prompts):
                    for i in range(generation.n):
                        if p.echo:
                            yield [oa.completion_choice(k * generation.n + i, p.echo, None)]
                async for index, text, finish in self._events(generation):
                    texts[index] = texts.get(index, "") + text
                    if finish is None:
                        if text:
                            yield [oa.completion_choice(index, text, None)]
                        continue
                    attribution = await self.attributor.check(texts[index])
                    yield [oa.completion_choice(index, text, finish, attribution)]

            return self._stream(generation, body, rid, created, "text_completion", choice_lists())

        async def collect() -> dict:
            texts = [""] * generation.samples
            finishes: list[str | None] = [None] * generation.samples
            async for index, text, finish in self._events(generation):
                texts[index] += text
                finishes[index] = finish or finishes[index]
            attributions = await self.attributor.check_all(texts)
            echoes = [p.echo for p in generation.prompts for _ in range(generation.n)]
            choices = [
                oa.completion_choice(i, echoes[i] + texts[i], finishes[i], attributions[i]) for i in range(len(texts))
            ]
            return oa.envelope(
                rid,
                "text_completion",
                created,
                self.name,
                choices,
                usage=oa.usage(generation.prompt_tokens, generation.completion_tokens()),
            )

        return await self._answer(request, generation, collect())

    async def chat(self, request: Request, body: ChatCompletionRequest, raw: dict | None = None) -> Response:
        generation = await self._start(self._chat_prompt_list, body, body.n)
        rid, created = oa.new_id("chatcmpl"), oa.now()
        answers = [ResponseStream() for _ in range(generation.samples)]

        if body.stream:

            async def choice_lists() -> AsyncIterator[list[dict]]:
                for i in range(generation.samples):
                    yield [oa.chat_delta(i, {"role": "assistant", "content": ""})]
                async for index, text, finish in self._events(generation):
                    piece = answers[index].push(text)
                    if finish is None:
                        if piece:
                            yield [oa.chat_delta(index, {"content": piece})]
                        continue
                    attribution = await self.attributor.check(answers[index].text)
                    delta = {"content": piece} if piece else {}
                    yield [oa.chat_delta(index, delta, finish, attribution)]

            return self._stream(generation, body, rid, created, "chat.completion.chunk", choice_lists())

        async def collect() -> dict:
            finishes: list[str | None] = [None] * generation.samples
            async for index, text, finish in self._events(generation):
                answers[index].push(text)
                finishes[index] = finish or finishes[index]
            texts = [a.text for a in answers]
            attributions = await self.attributor.check_all(texts)
            choices = [oa.chat_choice(i, texts[i], finishes[i], attributions[i]) for i in range(len(texts))]
            return oa.envelope(
                rid,
                "chat.completion",
                created,
                self.name,
                choices,
                usage=oa.usage(generation.prompt_tokens, generation.completion_tokens()),
            )

        return await self._answer(request, generation, collect())

    async def _answer(self, request: Request, generation: Generation, work) -> Response:
        try:
            return JSONResponse(await until_disconnected(request, work))
        except ClientGone:
            return Response(status_code=499)  # nobody reads it
        except ApiError as e:
            return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)
        finally:
            self._finish(generation)
