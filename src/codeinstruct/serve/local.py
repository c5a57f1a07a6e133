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
import secrets
import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from codeinstruct.errors import CodeinstructError
from codeinstruct.infer.engine import Engine
from codeinstruct.infer.generate import ResponseStream, fim_request, response_params
from codeinstruct.infer.requests import RequestHandle
from codeinstruct.infer.sampling import SamplingParams, prompt_logprobs
from codeinstruct.prompts import FimTokens, encode_text, fim_prompt_ids, format_prompt
from codeinstruct.serve import openai_compat as oa
from codeinstruct.serve.http import (
    Admission,
    Attributor,
    ClientGone,
    SSEResponse,
    Ticket,
    until_disconnected,
)
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
from codeinstruct.serve.llama_native import CompletionLimits, timings

MAX_CHARS_PER_TOKEN = 64  # text longer than this many characters per context token is refused untokenized


@dataclass
class _Prompt:
    ids: list[int]
    params: SamplingParams | None  # None: nothing to generate (max_tokens 0 with echo)
    echo: str = ""
    prompt_logprobs: list | None = None  # echo with logprobs: each prompt token's (the first: None)


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

    def __init__(
        self,
        engine: Engine,
        name: str,
        admission: Admission,
        attributor: Attributor,
        metrics: ServerMetrics | None = None,
    ):
        self.engine = engine
        self.name = name
        self.admission = admission
        self.attributor = attributor
        self.metrics = metrics
        if metrics is not None:
            metrics.read_load_from(engine.load)
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
        base = {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "codeinstruct",
            "root": self.name,
            "parent": None,
            "max_model_len": self.engine.max_seq_len,
        }
        directories = getattr(self.engine.runner, "directories", {})
        adapters = [
            {**base, "id": name, "root": str(directories.get(name, name)), "parent": self.name}
            for name in self.engine.adapters
        ]
        return {"object": "list", "data": [base, *adapters]}

    def _adapter(self, model: str | None) -> str | None:
        """The LoRA adapter a request's `model` names, or None (the base model: any other name)."""
        return model if model is not None and model in self.engine.adapters else None

    def _model_name(self, body) -> str:
        return self._adapter(body.model) or self.name

    def _check_bias(self, body) -> None:
        if any(t >= self.engine.vocab_size for t, _ in body.bias_pairs):
            raise ApiError(
                400,
                f"logit_bias: token ids must be below the vocabulary size {self.engine.vocab_size}",
                param="logit_bias",
            )

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
        max_tokens = body.max_tokens  # None: up to the context, as vLLM reads an explicit null
        adapter = self._adapter(body.model)
        extra = {"logprobs": body.logprobs, "adapter": adapter}
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
                    **extra,
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
                body, len(ids), self.engine.max_seq_len, max_tokens, "prompt", stop_token_ids=stops, **extra
            )
            p = _Prompt(ids, None if max_tokens == 0 else params, echo if body.echo else "")
            if body.echo and body.logprobs is not None:
                if max(ids) >= self.engine.vocab_size:
                    raise ApiError(400, "prompt: token ids outside the model's vocabulary", param="prompt")
                p.prompt_logprobs = prompt_logprobs(self.engine.prompt_logits(ids, adapter), ids, body.logprobs)
            out.append(p)
        return out

    def _chat_prompt_list(self, body: ChatCompletionRequest) -> list[_Prompt]:
        return [self._chat_prompt(body)]

    def _chat_prompt(self, body: ChatCompletionRequest) -> _Prompt:
        instruction, context = oa.alpaca_from_messages(body.messages)
        self._check_size(instruction + context, "messages")
        ids = encode_text(self.engine.tokenizer, format_prompt(instruction, context))
        params = oa.sampling_params(
            body,
            len(ids),
            self.engine.max_seq_len,
            body.max_new_tokens,
            "messages",
            logprobs=body.logprobs_top,
            adapter=self._adapter(body.model),
        )
        return _Prompt(ids, response_params(params))

    def _infill_prompt(self, body: InfillRequest) -> list[_Prompt]:
        """llama.cpp's infill: extra files first (`<filename>NAME` + newline + text, when the tokenizer has
        `<filename>`), then the PSM prompt of prefix and suffix, then what is already typed of the middle."""
        tok = self.engine.tokenizer
        self._check_size(body.input_prefix + body.input_suffix + body.prompt, "input_prefix")
        try:
            tokens = FimTokens.from_tokenizer(tok)
        except CodeinstructError as e:
            raise ApiError(400, f"infill: {e}", param="input_prefix") from None
        ids: list[int] = []
        filename = tok.convert_tokens_to_ids("<filename>")
        has_filename = isinstance(filename, int) and filename != tok.unk_token_id
        for chunk in body.input_extra:
            self._check_size(chunk.text, "input_extra")
            head = [filename] if has_filename else []
            ids += head + encode_text(tok, f"{chunk.filename}\n{chunk.text}" if chunk.filename else chunk.text)
        ids += fim_prompt_ids(tok, body.input_prefix, body.input_suffix, tokens=tokens)
        ids += encode_text(tok, body.prompt)
        return [self._llama_prompt(body, ids, tokens.all, "input_prefix")]

    def _llama_completion_prompt(self, body: LlamaCompletionRequest) -> list[_Prompt]:
        """llama.cpp's /completion: a raw prompt (text with special-token strings read as those tokens, or ids)."""
        tok = self.engine.tokenizer
        if isinstance(body.prompt, str):
            self._check_size(body.prompt, "prompt")
            ids, fim = oa.encode_raw_prompt(tok, body.prompt)
        else:
            ids, fim = list(body.prompt), False
            if min(ids) < 0 or max(ids) >= self.engine.vocab_size:
                raise ApiError(400, f"prompt: token ids must be in [0, {self.engine.vocab_size})", param="prompt")
        if not ids:
            raise ApiError(400, "prompt: must not be empty", param="prompt")
        return [self._llama_prompt(body, ids, oa.fim_stop_ids(tok) if fim else (), "prompt")]

    def _llama_prompt(self, body, ids: list[int], stop_ids: tuple[int, ...], param: str) -> _Prompt:
        """A llama.cpp-native request's prompt and sampling. `n_predict` 0 still runs the prompt (one token,
        not shown), so that its KV is kept for the prompts that will share its beginning."""
        room = self.engine.max_seq_len - len(ids)
        if room < 1:
            raise ApiError(
                400,
                f"the prompt has {len(ids)} tokens; the model's context is {self.engine.max_seq_len}",
                param=param,
                code="context_length_exceeded",
            )
        params = SamplingParams(
            max_new_tokens=room if body.n_predict < 0 else max(1, min(body.n_predict, room)),
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            repetition_penalty=body.repeat_penalty,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            seed=body.seed if body.seed >= 0 else secrets.randbelow(2**62),
            stop=tuple(body.stop),
            stop_token_ids=stop_ids,
            ignore_eos=body.ignore_eos,
            adapter=self._adapter(body.model),
        )
        return _Prompt(ids, params)

    async def _start(self, prepare, body, samples: int) -> Generation:
        """Admit `samples` (429 when full), then tokenize and submit on a worker thread: `engine.submit`
        waits for the engine's lock, held through each step, and the event loop must not wait with it."""
        self._check_n(body.n)
        if isinstance(body, CompletionRequest | ChatCompletionRequest):
            body.refuse_unsupported()
            self._check_bias(body)
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
            if p.params is None:
                continue
            events = _LoopEvents(self.delivery, generation.inbox, k)
            try:
                generation.handles.append(self.engine.submit(p.ids, p.params, events=events))
            except CodeinstructError as e:
                raise ApiError(400, str(e), param="prompt") from None

    def _finish(self, generation: Generation) -> None:
        if generation in self.live and self.metrics is not None:
            self.metrics.prompt_tokens.inc(generation.prompt_tokens)
            self.metrics.prefix_hits.inc(sum(h.prefix_reused for h in generation.handles))
            for h in generation.handles:
                for s in h.sequences:
                    self.metrics.sequence_done(h.submitted_at, list(s.token_times))
        generation.close()
        self.live.discard(generation)

    def _sequence(self, generation: Generation, index: int):
        """The engine's sequence behind choice `index`."""
        return generation.handles[index // generation.n].sequences[index % generation.n]

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
        model: str | None = None,
    ) -> SSEResponse:
        """The event stream of a route: one chunk per list of choices, then usage (when asked) and [DONE];
        an error on the way is sent as an event, and the generation is finished however the stream ends."""
        usage_field = {"usage": None} if body.include_usage else {}

        def chunk(choices: list[dict], **extra) -> bytes:
            return oa.sse(oa.envelope(rid, object_name, created, model or self.name, choices, **extra))

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
        rid, created, name = oa.new_id("cmpl"), oa.now(), self._model_name(body)
        tok = self.engine.tokenizer
        want_logprobs = body.logprobs is not None
        # one legacy logprobs object per choice; with echo, the prompt's tokens come first
        logprobs = [oa.CompletionLogprobs(tok) for _ in range(generation.samples)] if want_logprobs else []

        def prompt_part(index: int) -> dict | None:
            p = generation.prompts[index // generation.n]
            if not want_logprobs or p.prompt_logprobs is None:
                return None
            return logprobs[index].prompt_part(p.ids, p.prompt_logprobs)

        def generated_part(index: int) -> dict | None:
            if not want_logprobs or not generation.handles:
                return None
            return logprobs[index].new(self._sequence(generation, index).logprobs or [])

        if body.stream:

            async def choice_lists() -> AsyncIterator[list[dict]]:
                texts: dict[int, str] = {}
                for k, p in enumerate(generation.prompts):
                    for i in range(generation.n):
                        index = k * generation.n + i
                        if p.echo:
                            finish = "length" if p.params is None else None
                            yield [oa.completion_choice(index, p.echo, finish, logprobs=prompt_part(index))]
                async for index, text, finish in self._events(generation):
                    texts[index] = texts.get(index, "") + text
                    if finish is None:
                        if text:
                            yield [oa.completion_choice(index, text, None, logprobs=generated_part(index))]
                        continue
                    attribution = await self.attributor.check(texts[index])
                    yield [oa.completion_choice(index, text, finish, attribution, generated_part(index))]

            return self._stream(generation, body, rid, created, "text_completion", choice_lists(), name)

        async def collect() -> dict:
            texts = [""] * generation.samples
            finishes: list[str | None] = ["length" if not generation.handles else None] * generation.samples
            async for index, text, finish in self._events(generation):
                texts[index] += text
                finishes[index] = finish or finishes[index]
            attributions = await self.attributor.check_all(texts)
            echoes = [p.echo for p in generation.prompts for _ in range(generation.n)]
            choices = []
            for i in range(len(texts)):
                lp = oa.merge_logprobs(prompt_part(i), generated_part(i)) if want_logprobs else None
                choices.append(oa.completion_choice(i, echoes[i] + texts[i], finishes[i], attributions[i], lp))
            return oa.envelope(
                rid,
                "text_completion",
                created,
                name,
                choices,
                usage=oa.usage(generation.prompt_tokens, generation.completion_tokens()),
            )

        return await self._answer(request, generation, collect())

    async def chat(self, request: Request, body: ChatCompletionRequest, raw: dict | None = None) -> Response:
        generation = await self._start(self._chat_prompt_list, body, body.n)
        rid, created, name = oa.new_id("chatcmpl"), oa.now(), self._model_name(body)
        answers = [ResponseStream() for _ in range(generation.samples)]
        tok = self.engine.tokenizer
        sent = [0] * generation.samples  # logprob entries already streamed, per choice

        def new_logprobs(index: int) -> dict | None:
            if body.logprobs_top is None:
                return None
            entries = self._sequence(generation, index).logprobs or []
            fresh, sent[index] = entries[sent[index] :], len(entries)
            return oa.chat_logprobs(tok, fresh)

        if body.stream:

            async def choice_lists() -> AsyncIterator[list[dict]]:
                for i in range(generation.samples):
                    yield [oa.chat_delta(i, {"role": "assistant", "content": ""})]
                async for index, text, finish in self._events(generation):
                    piece = answers[index].push(text)
                    if finish is None:
                        if piece:
                            yield [oa.chat_delta(index, {"content": piece}, logprobs=new_logprobs(index))]
                        continue
                    attribution = await self.attributor.check(answers[index].text)
                    delta = {"content": piece} if piece else {}
                    yield [oa.chat_delta(index, delta, finish, attribution, new_logprobs(index))]

            return self._stream(generation, body, rid, created, "chat.completion.chunk", choice_lists(), name)

        async def collect() -> dict:
            finishes: list[str | None] = [None] * generation.samples
            async for index, text, finish in self._events(generation):
                answers[index].push(text)
                finishes[index] = finish or finishes[index]
            texts = [a.text for a in answers]
            attributions = await self.attributor.check_all(texts)
            choices = [
                oa.chat_choice(i, texts[i], finishes[i], attributions[i], new_logprobs(i)) for i in range(len(texts))
            ]
            return oa.envelope(
                rid,
                "chat.completion",
                created,
                name,
                choices,
                usage=oa.usage(generation.prompt_tokens, generation.completion_tokens()),
            )

        return await self._answer(request, generation, collect())

    # ------------------------------------------------------------------ vLLM's and llama.cpp's extra routes

    def _encode_for_tokenize(self, body: TokenizeRequest) -> list[int]:
        body.check()
        tok = self.engine.tokenizer
        if body.messages is not None:
            instruction, context = oa.alpaca_from_messages(body.messages)
            self._check_size(instruction + context, "messages")
            return encode_text(tok, format_prompt(instruction, context))
        self._check_size(body.prompt, "prompt")
        return oa.encode_raw_prompt(tok, body.prompt)[0]

    async def tokenize(self, request: Request, body: TokenizeRequest) -> dict:
        ids = await asyncio.to_thread(self._encode_for_tokenize, body)
        tok = self.engine.tokenizer
        return {
            "count": len(ids),
            "max_model_len": self.engine.max_seq_len,
            "tokens": ids,
            "token_strs": tok.convert_ids_to_tokens(ids) if body.return_token_strs else None,
        }

    async def detokenize(self, request: Request, body: DetokenizeRequest) -> dict:
        if min(body.tokens) < 0 or max(body.tokens) >= self.engine.vocab_size:
            raise ApiError(
                400, f"tokens: ids must be in [0, {self.engine.vocab_size}) (the vocabulary)", param="tokens"
            )
        return {"prompt": self.engine.tokenizer.decode(body.tokens)}

    async def infill(self, request: Request, body: InfillRequest) -> Response:
        """llama.cpp's /infill."""
        return await self._llama_answer(request, body, self._infill_prompt)

    async def llama_completion(self, request: Request, body: LlamaCompletionRequest) -> Response:
        """llama.cpp's /completion."""
        return await self._llama_answer(request, body, self._llama_completion_prompt)

    async def _llama_answer(self, request: Request, body, prepare) -> Response:
        """A llama.cpp-native answer: its response fields (`content`, `stop`, `stop_type`, `tokens_predicted`,
        `timings`, ...), or those of `response_fields`; streamed as `data: {"content": ..., "stop": false}`
        events, the last with `stop: true` and the rest. The text is cut by `n_indent` and
        `t_max_predict_ms` as it comes (`CompletionLimits`), which ends the generation there."""
        generation = await self._start(prepare, body, 1)
        started = time.perf_counter()
        limits = CompletionLimits(body.n_indent, body.t_max_predict_ms, hidden=body.n_predict == 0)

        def final(text: str, finish: str | None) -> dict:
            handle = generation.handles[0]
            seq = handle.sequences[0]
            if limits.cut or limits.hidden:
                finish = "length"
            stopped_word = finish == "stop" and handle.params.stop and seq.stream.stopped
            stopped_eos = finish == "stop" and not stopped_word
            first = seq.token_times[0] if seq.token_times else time.perf_counter()
            predicted = 0 if limits.hidden else len(seq.tokens)
            answer = {
                "index": 0,
                "content": text,
                "tokens": [],
                "id_slot": -1,
                "stop": True,
                "model": self._model_name(body),
                "tokens_predicted": predicted,
                "tokens_evaluated": len(handle.prompt_ids),
                "prompt": self.engine.tokenizer.decode(handle.prompt_ids),
                "has_new_line": "\n" in limits.text,
                "truncated": False,
                "stop_type": "word" if stopped_word else "eos" if stopped_eos else "limit",
                "stopped_eos": bool(stopped_eos),
                "stopped_word": bool(stopped_word),
                "stopped_limit": finish == "length",
                "stopping_word": handle.params.stop[0] if stopped_word and len(handle.params.stop) == 1 else "",
                "tokens_cached": handle.prefix_reused,
                "timings": timings(
                    len(handle.prompt_ids) - handle.prefix_reused,
                    handle.prefix_reused,
                    (first - started) * 1000,
                    predicted,
                    0.0 if limits.hidden else (time.perf_counter() - first) * 1000,
                ),
                "generation_settings": {
                    "n_predict": body.n_predict,
                    "temperature": body.temperature,
                    "top_k": body.top_k,
                    "top_p": body.top_p,
                    "seed": handle.params.seed,
                    "stop": list(body.stop),
                    "n_indent": body.n_indent,
                    "t_max_predict_ms": body.t_max_predict_ms,
                },
            }
            return body.fields(answer)

        async def pieces() -> AsyncIterator[tuple[str, str | None]]:
            """(text to show, finish_reason or None), ending early where the limits cut the text."""
            async with aclosing(self._events(generation)) as events:
                async for _, text, finish in events:
                    shown, cut = limits.feed(text, time.perf_counter())
                    yield shown, "length" if cut else finish
                    if cut:
                        return

        if body.stream:

            async def events() -> AsyncIterator[bytes]:
                try:
                    async for text, finish in pieces():
                        if text:
                            yield oa.sse({"index": 0, "content": text, "tokens": [], "stop": False})
                        if finish is not None:
                            yield oa.sse(final("", finish))
                except ApiError as e:
                    yield oa.sse(e.body())

            return SSEResponse(events(), lambda: self._finish(generation))

        async def collect() -> dict:
            text, finish = "", None
            async for piece, end in pieces():
                text += piece
                finish = end or finish
            return final(text, finish)

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
