"""The generation engine's scheduler: continuous batching over a model runner, with streamed text.

Everything that runs a model here (generate, complete, the server, HumanEval sampling) goes
through `Engine`. Per step it (1) drops cancelled requests, (2) spends a token budget on
prompt prefill (long prompts in chunks, new requests admitted first come, first served while
cache slots are free), and (3) decodes one token for every running sequence in one batched
forward pass. A request leaves the batch the step it finishes; its slot is reused at once.
A prompt that begins like a recent one (the Alpaca preamble, an editor's file) copies that
beginning's keys and values from a few extra cache slots that keep recent prompts, and prefills
only the rest.

The forward passes and the KV cache are the runner's (infer/runners.py); the handles, events and
outputs a caller holds are in infer/requests.py. Nothing a request sees depends on its neighbours:
each sequence samples from its own seeded generator, attends only to its own slot, and greedy
decoding is an argmax per row.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

import torch

from codeinstruct.errors import CodeinstructError
from codeinstruct.infer.requests import (  # noqa: F401  (Choice: importable from here, as before the split)
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    Choice,
    RequestHandle,
    RequestOutput,
    Sequence,
    StreamEvent,
)
from codeinstruct.infer.runners import GPTBigCodeRunner, ModelRunner, TransformersRunner, runner_for  # noqa: F401
from codeinstruct.infer.sampling import SamplingParams, choose_token
from codeinstruct.modeling import context_length, load_for_inference
from codeinstruct.prompts import encode_text


MIN_PREFIX_TOKENS = 16  # shorter shared beginnings are computed again: a copy would save little


@dataclass
class _Prefix:
    """A cache slot holding a recent prompt's keys and values."""

    slot: int
    ids: list[int] = field(default_factory=list)
    used: int = 0


PREFIX_CACHE_BYTES = 1 << 30  # what the kept prompts' slots may take by default
MAX_PREFIX_SLOTS = 64


def _auto_prefix_slots(model, max_len: int, weights: str) -> int:
    """How many prompts to keep: as many slots as fit in PREFIX_CACHE_BYTES, from 4 to MAX_PREFIX_SLOTS (a
    server sees prompts again: an eval harness's, an editor's file, a benchmark's earlier rounds)."""
    cfg = model.config
    kv_heads = 1 if getattr(cfg, "multi_query", False) else cfg.n_head
    element = 4 if weights == "int8" else model.get_input_embeddings().weight.element_size()
    slot = cfg.n_layer * 2 * kv_heads * max_len * (cfg.n_embd // cfg.n_head) * element
    return max(4, min(MAX_PREFIX_SLOTS, PREFIX_CACHE_BYTES // max(slot, 1)))


def _common_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Engine:
    """Continuous-batching generation over one model. Thread-safe: submit from any thread."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_batch_size: int = 16,
        max_tokens_per_step: int = 1024,
        max_seq_len: int | None = None,
        weights: str = "dense",
        prefix_slots: int | None = None,
    ):
        """`weights="int8"` runs a float32 GPTBigCode model's matrices in int8 (runners.GPTBigCodeRunner).
        `prefix_slots` extra cache slots keep recent prompts, whose shared beginnings later prompts reuse
        instead of computing them again (GPTBigCode only; 0: off; None: as many as take 1 GiB, from 4 to 64)."""
        if max_batch_size < 1 or max_tokens_per_step < 1:
            raise CodeinstructError("max_batch_size and max_tokens_per_step must be at least 1")
        context = context_length(model.config)
        self.max_seq_len = min(x for x in (max_seq_len, context) if x) if (max_seq_len or context) else 2048
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.eos_token_id
        self.max_batch_size = max_batch_size
        self.max_tokens_per_step = max_tokens_per_step
        # prompts' KV kept in slots past the batch's, for prefix reuse; only where a slot copy is cheap
        if model.config.model_type != "gpt_bigcode":
            prefix_slots = 0
        elif prefix_slots is None:
            prefix_slots = _auto_prefix_slots(model, self.max_seq_len, weights)
        self.runner: ModelRunner = runner_for(model, max_batch_size + prefix_slots, self.max_seq_len, weights=weights)
        self._prefixes = [_Prefix(max_batch_size + i) for i in range(prefix_slots)]
        self._prefix_uses = itertools.count(1)
        self.prefix_tokens_reused = 0
        self.device = self.runner.device
        self.vocab_size = self.runner.vocab_size
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._ids = itertools.count()
        self._waiting: deque[RequestHandle] = deque()
        self._prefilling: deque[RequestHandle] = deque()  # admitted, prompt partly in the cache
        self._running: list[Sequence] = []  # decoding, in slot order as far as possible
        self._free_slots = list(range(max_batch_size))
        self._thread: threading.Thread | None = None
        self._calls: deque[tuple[Callable[[], object], Future]] = deque()  # for the loop's thread to run
        self._stopping = False
        self._cancel_pending = False
        self.steps = 0

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "auto", dtype: str = "auto", **kwargs) -> Engine:
        """An engine over a model directory; `dtype` converts the weights as they load (modeling.INFERENCE_DTYPES)."""
        model, tokenizer = load_for_inference(model_dir, device=device, dtype=dtype)
        return cls(model, tokenizer, weights="int8" if dtype == "int8" else "dense", **kwargs)

    # ------------------------------------------------------------------ public API

    @property
    def free_slots(self) -> int:
        with self._lock:
            return len(self._free_slots)

    @property
    def running_in_background(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(
        self, prompt: str | list[int], params: SamplingParams = SamplingParams(), events: queue.Queue | None = None
    ) -> RequestHandle:
        ids = encode_text(self.tokenizer, prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise CodeinstructError("the prompt is empty")
        if len(ids) >= self.max_seq_len:
            raise CodeinstructError(f"the prompt has {len(ids)} tokens; the model's context is {self.max_seq_len}")
        if params.n > self.max_batch_size:
            raise CodeinstructError(f"n={params.n} samples need more than the engine's {self.max_batch_size} slots")
        # checked here: an id past the embedding would fail the whole batch's step (on a GPU, the whole process)
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise CodeinstructError(f"the prompt has token ids outside the model's vocabulary of {self.vocab_size}")
        if params.adapter is not None and params.adapter not in self.adapters:
            raise CodeinstructError(f"no LoRA adapter named {params.adapter!r} is loaded")
        with self._cond:
            handle = RequestHandle(self, next(self._ids), ids, params, events)
            self._waiting.append(handle)
            self._cond.notify_all()
        return handle

    def generate(
        self, prompts: list[str | list[int]], params: SamplingParams = SamplingParams()
    ) -> list[RequestOutput]:
        """Run prompts together (continuous batching) and return their outputs in order."""
        handles = [self.submit(p, params) for p in prompts]
        return [h.result() for h in handles]

    def start(self) -> None:
        """Run steps on a background thread (for servers); requests then stream without driving it.

        On the CPU, `run()` on the thread that loaded the model is faster (see there)."""
        with self._lock:
            if self.running_in_background:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="codeinstruct-engine", daemon=True)
            self._thread.start()

    def run(self, until: Callable[[], bool] | None = None, on_start: Callable[[], object] | None = None) -> None:
        """Run steps on the calling thread until `halt()` (from another thread) or, when given, until `until()`
        is true (asked at least every half second); meanwhile requests stream as with `start()`, and `start()`
        does nothing. `on_start` is called once the engine counts as running, before the first step (a server
        starts its HTTP thread there, so that nothing starts a background loop beside this one).

        Why a server runs the engine on its main thread: torch's CPU operators run on an OpenMP team per
        calling thread, and a process whose main thread loaded the model keeps that team. A second thread
        stepping the engine gets a second team, and with more OpenMP threads than cores, GNU OpenMP puts
        idle workers to sleep almost at once, so every operator (~240 per decode step) waits for a wake-up:
        decoding from a background thread was 20-25% slower here. Run where the model was loaded, the
        engine keeps the one team."""
        with self._lock:
            if self.running_in_background:
                raise CodeinstructError("the engine is already running")
            self._stopping = False
            self._thread = threading.current_thread()
        try:
            if on_start is not None:
                on_start()
            self._loop(until)
        finally:
            with self._lock:
                self._thread = None

    def halt(self) -> None:
        """Ask the loop (`start()`'s or `run()`'s) to return after the current step, without waiting."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def stop(self) -> None:
        """Stop the background loop and wait for it (after `start()`; `halt()` for `run()`)."""
        self.halt()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            if self._thread is thread:
                self._thread = None

    def cancel(self, handle: RequestHandle) -> None:
        """Stop `handle`'s request; its slots are freed at the next step."""
        handle.cancel_requested = True
        self._cancel_pending = True
        self._wake()

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._waiting or self._prefilling or self._running)

    @property
    def decode_path(self) -> str:
        """How decode steps run: "native" (the C step of infer/native.py) or "torch" (the runner's forward)."""
        runner = getattr(self.runner, "base", self.runner)
        return "native" if getattr(runner, "native", None) is not None else "torch"

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the LoRA adapters requests may choose (`SamplingParams.adapter`; infer/lora.py loads them)."""
        return tuple(getattr(self.runner, "adapters", ()))

    def load(self) -> dict:
        """Requests waiting, sequences running, and the share of the KV cache's positions they hold (for metrics)."""
        with self._lock:
            held = sum(s.position + 1 for s in self._running) + sum(r.prefilled for r in self._prefilling)
            return {
                "waiting": len(self._waiting) + len(self._prefilling),
                "running": len(self._running),
                "cache_usage": held / (self.max_batch_size * self.max_seq_len),
            }

    def prompt_logits(self, ids: list[int], adapter: str | None = None) -> torch.Tensor:
        """The model's logits at every position of `ids` [L, V], through its own forward (echo with logprobs).
        While a loop runs, on the loop's thread (between steps), so that one thread runs the model (see `run`)."""

        def forward() -> torch.Tensor:
            with self._lock, torch.inference_mode():
                model = self.model if adapter is None else self.runner.adapter_model(adapter)
                return model(input_ids=torch.tensor([ids], device=self.device)).logits[0].float()

        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return forward()
        done: Future = Future()
        with self._cond:
            self._calls.append((forward, done))
            self._cond.notify_all()
        while True:
            try:
                return done.result(timeout=0.5)
            except FutureTimeout:
                if self._thread is None and done.cancel():  # the loop ended before taking it
                    return forward()

    def _run_calls(self) -> None:
        """Work other threads handed to the loop's thread (prompt_logits)."""
        while self._calls:
            call, done = self._calls.popleft()
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(call())
                except BaseException as e:
                    done.set_exception(e)

    # ------------------------------------------------------------------ scheduling

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _loop(self, until: Callable[[], bool] | None = None) -> None:
        while True:
            with self._cond:
                while not (self._stopping or self._calls or self._waiting or self._prefilling or self._running):
                    if until is not None and until():
                        self._stopping = True
                        break
                    self._cond.wait(None if until is None else 0.5)
                if self._stopping or (until is not None and until()):
                    self._run_calls()
                    return
            self._run_calls()
            try:
                self.step()  # a failed step fails its requests (their streams raise), not the loop
            except Exception:
                pass

    def _fail_all(self, error: BaseException) -> None:
        with self._lock:
            requests = {s.request for s in self._running} | set(self._prefilling) | set(self._waiting)
            for r in requests:
                r.error = error
                for s in r.sequences:
                    if s.finish_reason is None:
                        self._finish(s, FINISH_CANCELLED, "")
                r.end_stream()
            self._waiting.clear()
            self._prefilling.clear()

    @torch.inference_mode()
    def step(self) -> bool:
        """One scheduling step: cancellations, prefill within the token budget, one decode. True if it did work."""
        with self._lock:
            try:
                self._drop_cancelled()
                # decoding rows first; prompts get the rest of the step's tokens, and at least a quarter of them
                # (so that a batch as large as the budget does not keep waiting prompts out)
                prefilled = self._prefill(
                    max(self.max_tokens_per_step - len(self._running), self.max_tokens_per_step // 4)
                )
                decoding = list(self._running)
                if decoding:
                    self._decode(decoding)
            except BaseException as e:
                self._fail_all(e)
                raise
            if prefilled or decoding:
                self.steps += 1
            return bool(prefilled or decoding)

    def _drop_cancelled(self) -> None:
        if not self._cancel_pending:
            return
        self._cancel_pending = False
        for r in [r for r in self._waiting if r.cancel_requested]:
            self._waiting.remove(r)
            for s in r.sequences:
                self._finish(s, FINISH_CANCELLED, "")
            r.end_stream()
        for r in [r for r in self._prefilling if r.cancel_requested]:
            self._prefilling.remove(r)
            for s in r.sequences:
                self._finish(s, FINISH_CANCELLED, "")
            r.end_stream()
        for s in [s for s in self._running if s.request.cancel_requested]:
            self._finish(s, FINISH_CANCELLED, "")

    def _prefill(self, budget: int) -> int:
        fed = 0
        while True:
            if self._prefilling:
                r = self._prefilling[0]
            elif self._waiting and len(self._free_slots) >= self._waiting[0].params.n:
                r = self._waiting.popleft()
                for s in r.sequences:
                    s.slot = self._free_slots.pop(0)
                    if r.params.adapter is not None:  # a LoRA adapter's request (infer/lora.py)
                        self.runner.bind(s.slot, r.params.adapter)
                self._reuse_prefix(r)
                self._prefilling.append(r)
            else:
                return fed
            if budget <= 0:
                if fed or self._running:
                    return fed
                budget = self.max_tokens_per_step  # nothing else to do: make progress
            chunk = r.prompt_ids[r.prefilled : r.prefilled + budget]
            logits = self.runner.extend(r.sequences[0].slot, r.prefilled, chunk)
            r.prefilled += len(chunk)
            budget -= len(chunk)
            fed += len(chunk)
            if r.prefilled == len(r.prompt_ids):
                self._prefilling.popleft()
                first = r.sequences[0]
                self._keep_prefix(r)
                for s in r.sequences[1:]:
                    self.runner.copy(first.slot, s.slot, r.prefilled)
                self._running.extend(r.sequences)
                for s in r.sequences:
                    token = choose_token(logits, r.params, s.seen(self.device), s.generator, s.tokens)
                    s.note_logprob(logits, token)
                    self._accept(s, token)
                self._compact()

    def _reuse_prefix(self, r: RequestHandle) -> None:
        """Start `r`'s prefill after the longest beginning it shares with a kept prompt (all but its last token)."""
        if not self._prefixes or r.params.adapter is not None:
            return
        ids, best, length = r.prompt_ids, None, 0
        for p in self._prefixes:
            n = _common_length(p.ids, ids)
            if n > length:
                best, length = p, n
        length = min(length, len(ids) - 1)
        if best is None or length < MIN_PREFIX_TOKENS:
            return
        self.runner.copy(best.slot, r.sequences[0].slot, length)
        best.used = next(self._prefix_uses)
        r.prefilled = r.prefix_reused = length
        self.prefix_tokens_reused += length

    def _keep_prefix(self, r: RequestHandle) -> None:
        """Keep the prompt `r` just prefilled, in place of the least recently used kept one."""
        ids = r.prompt_ids
        if not self._prefixes or r.params.adapter is not None or len(ids) < MIN_PREFIX_TOKENS:
            return
        if any(_common_length(p.ids, ids) == len(ids) for p in self._prefixes):
            return  # already kept whole (within a longer prompt)
        target = min(self._prefixes, key=lambda p: p.used)
        self.runner.copy(r.sequences[0].slot, target.slot, len(ids))
        target.ids, target.used = ids, next(self._prefix_uses)

    def _decode(self, seqs: list[Sequence]) -> None:
        seqs.sort(key=lambda s: s.slot)
        logits = self.runner.decode([s.slot for s in seqs], [s.tokens[-1] for s in seqs], [s.position for s in seqs])
        greedy_rows = [i for i, s in enumerate(seqs) if s.request.params.plain_greedy]
        choices: dict[int, int] = {}
        if len(greedy_rows) == len(seqs):
            choices = dict(enumerate(logits.argmax(-1).tolist()))
        elif greedy_rows:
            choices = dict(zip(greedy_rows, logits[greedy_rows].argmax(-1).tolist()))
        for i, s in enumerate(seqs):
            token = choices.get(i)
            if token is None:
                token = choose_token(logits[i], s.request.params, s.seen(self.device), s.generator, s.tokens)
            if s.logprobs is not None:
                s.note_logprob(logits[i], token)
            self._accept(s, token)
        self._compact()

    def _accept(self, s: Sequence, token: int) -> None:
        """Record a sampled token, stream its text, and finish the sequence if it is done."""
        p, r = s.request.params, s.request
        s.append(token)
        if (token == self.eos_id and not p.ignore_eos) or token in p.stop_token_ids:
            self._finish(s, FINISH_STOP, s.detokenizer.flush())
            return
        delta, stopped = s.stream.feed(s.detokenizer.push(token))
        if stopped:
            self._finish(s, FINISH_STOP, delta, fed=True)
        elif len(s.tokens) >= p.max_new_tokens or len(r.prompt_ids) + len(s.tokens) >= self.max_seq_len:
            rest, stopped = s.stream.feed(s.detokenizer.flush(), final=True)
            self._finish(s, FINISH_STOP if stopped else FINISH_LENGTH, delta + rest, fed=True)
        elif delta:
            r.events.put(StreamEvent(s.index, delta))

    def _finish(self, s: Sequence, reason: str, text: str, fed: bool = False) -> None:
        if s.finish_reason is not None:
            return
        if not fed:
            delta, stopped = s.stream.feed(text, final=True)
            text = delta
            if stopped:
                reason = FINISH_STOP
        s.finish_reason = reason
        s.request.events.put(StreamEvent(s.index, text, reason))
        if s in self._running:
            self._running.remove(s)
        if s.slot >= 0:
            self.runner.release(s.slot)
            self._free_slots.append(s.slot)
            self._free_slots.sort()
            s.slot = -1
        if all(q.finish_reason is not None for q in s.request.sequences):
            s.request.end_stream()

    def _compact(self) -> None:
        """Move running sequences into the lowest free slots, so decode reads the cache as one view."""
        for s in sorted(self._running, key=lambda s: -s.slot):
            if not self._free_slots or self._free_slots[0] > s.slot:
                break
            dst = self._free_slots.pop(0)
            self.runner.copy(s.slot, dst, s.position)
            self.runner.release(s.slot)
            self._free_slots.append(s.slot)
            self._free_slots.sort()
            s.slot = dst
