"""What a caller of the engine holds: the handle of a submitted request, its stream events and its output.

A `RequestHandle` streams `StreamEvent`s (iterate it) or gives the whole `RequestOutput` (`result()`);
each of its `n` samples is a `Sequence`, the per-sample state the engine's scheduler advances.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import torch

from codeinstruct.errors import CodeinstructError
from codeinstruct.infer.sampling import SamplingParams, TokenLogprob, sequence_generator, token_logprob
from codeinstruct.infer.streaming import Detokenizer, TextStream

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"


@dataclass(frozen=True)
class StreamEvent:
    """New text of one sample of a request; the last event of a sample carries its finish_reason."""

    index: int
    text: str
    finish_reason: str | None = None


@dataclass(frozen=True)
class Choice:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[TokenLogprob] | None = None  # per generated token, when the request asked for them


@dataclass(frozen=True)
class RequestOutput:
    request_id: int
    prompt_tokens: int
    choices: list[Choice]

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.choices)

    @property
    def text(self) -> str:
        return self.choices[0].text


class Scheduler(Protocol):
    """What a handle needs of the engine it was submitted to."""

    tokenizer: object
    device: torch.device

    @property
    def running_in_background(self) -> bool: ...

    def step(self) -> bool: ...

    def cancel(self, handle: RequestHandle) -> None: ...


class Sequence:
    """One sample of a request: its slot in the cache, its tokens and its visible text."""

    def __init__(self, request: RequestHandle, index: int, tokenizer, device):
        p = request.params
        self.request = request
        self.index = index
        self.slot = -1
        self.tokens: list[int] = []
        self.token_times: list[float] = []
        self.generator = None if p.greedy else sequence_generator(p.seed, index, device)
        self.detokenizer = Detokenizer(tokenizer, p.skip_special_tokens)
        self.stream = TextStream(p.stop)
        self.finish_reason: str | None = None
        self._seen = set(request.prompt_ids) if p.repetition_penalty != 1.0 else None
        self.logprobs: list[TokenLogprob] | None = [] if p.logprobs is not None else None

    def note_logprob(self, logits: torch.Tensor, token: int) -> None:
        """Record the chosen token's log-probability in the model's distribution `logits` [V] (logprobs asked)."""
        if self.logprobs is not None:
            self.logprobs.append(token_logprob(logits, token, self.request.params.logprobs))

    @property
    def position(self) -> int:
        """Where the last sampled token goes when it is fed back."""
        return len(self.request.prompt_ids) + len(self.tokens) - 1

    def append(self, token: int) -> None:
        """Record a sampled token (and the time it came, for latency figures)."""
        self.tokens.append(token)
        self.token_times.append(time.perf_counter())
        if self._seen is not None:
            self._seen.add(token)

    def seen(self, device) -> torch.Tensor:
        """The token ids the repetition penalty applies to (none when it is off)."""
        if self._seen is None:
            return torch.empty(0, dtype=torch.long, device=device)
        return torch.tensor(sorted(self._seen), dtype=torch.long, device=device)


class RequestHandle:
    """A submitted request: iterate it for `StreamEvent`s, or call `result()`; `cancel()` any time."""

    def __init__(
        self,
        engine: Scheduler,
        request_id: int,
        prompt_ids: list[int],
        params: SamplingParams,
        events: queue.Queue | None = None,
    ):
        self.engine = engine
        self.id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self.prefilled = 0
        self.prefix_reused = 0  # prompt tokens whose keys and values came from a kept prompt
        first = params.first_sample
        self.sequences = [Sequence(self, first + i, engine.tokenizer, engine.device) for i in range(params.n)]
        # The engine only ever calls events.put(event), then put(None) at the end; a caller may pass its own
        # queue (e.g. one that hands events to an asyncio loop) and then reads it instead of iterating the handle.
        self.events: queue.Queue[StreamEvent | None] = queue.Queue() if events is None else events
        self.submitted_at = time.perf_counter()
        self.finished_at: float | None = None
        self.error: BaseException | None = None
        self.cancel_requested = False
        self._done = threading.Event()
        self._drained = False  # the end-of-stream marker has been read

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop this request; its slots are freed at the engine's next step."""
        self.engine.cancel(self)

    def end_stream(self) -> None:
        """Mark the request done and put the end-of-stream marker (the engine's call, once)."""
        if self.done:
            return
        self.finished_at = time.perf_counter()
        self._done.set()
        self.events.put(None)

    def __iter__(self):
        return self.stream()

    def stream(self):
        """StreamEvents as they come; drives the engine itself when no background loop runs."""
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                if self._drained:
                    event = None
                elif self.engine.running_in_background:
                    event = self.events.get()
                else:
                    if not self.engine.step() and self.events.empty():
                        raise CodeinstructError(f"request {self.id} is stuck: the engine has nothing to run")
                    continue
            if event is None:
                self._drained = True
                if self.error is not None:
                    raise CodeinstructError(f"generation failed: {self.error}")
                return
            yield event

    def result(self) -> RequestOutput:
        for _ in self.stream():
            pass
        return RequestOutput(
            request_id=self.id,
            prompt_tokens=len(self.prompt_ids),
            choices=[
                Choice(
                    s.index,
                    s.stream.visible,
                    list(s.tokens),
                    s.finish_reason or FINISH_CANCELLED,
                    None if s.logprobs is None else list(s.logprobs),
                )
                for s in self.sequences
            ],
        )
