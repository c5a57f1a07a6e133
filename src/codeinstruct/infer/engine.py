"""The generation engine: KV-cache decoding with continuous batching and streamed text.

Everything that runs a model here (generate, complete, the server, HumanEval sampling) goes
through `Engine`. Per step it (1) drops cancelled requests, (2) spends a token budget on
prompt prefill (long prompts in chunks, new requests admitted first come, first served while
cache slots are free), and (3) decodes one token for every running sequence in one batched
forward pass. A request leaves the batch the step it finishes; its slot is reused at once.

The KV cache is allocated once: per layer [slots, kv_heads, max_len, head_dim]. GPTBigCode's
multi-query attention keeps one KV head, so the cache is n_head times smaller than a
multi-head one; queries of all heads attend to it through a grouped view, never a copy.
GPTBigCode runs on a compact forward written against the model's own weights (the transformers
module stack costs more in Python than the model costs in arithmetic at this size); any other
causal LM runs through its transformers forward with one cache per sequence.

Nothing a request sees depends on its neighbours: each sequence samples from its own seeded
generator, attends only to its own slot, and greedy decoding is an argmax per row.
"""

from __future__ import annotations

import inspect
import itertools
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from codeinstruct.errors import CodeinstructError
from codeinstruct.infer.sampling import SamplingParams, choose_token, sequence_generator
from codeinstruct.infer.streaming import Detokenizer, TextStream
from codeinstruct.prompts import encode_text

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


# --------------------------------------------------------------------------- requests


class _Sequence:
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

    @property
    def position(self) -> int:
        """Where the last sampled token goes when it is fed back."""
        return len(self.request.prompt_ids) + len(self.tokens) - 1

    def seen(self, device) -> torch.Tensor:
        if self._seen is None:
            return torch.empty(0, dtype=torch.long, device=device)
        return torch.tensor(sorted(self._seen), dtype=torch.long, device=device)


class RequestHandle:
    """A submitted request: iterate it for `StreamEvent`s, or call `result()`; `cancel()` any time."""

    def __init__(self, engine: Engine, request_id: int, prompt_ids: list[int], params: SamplingParams,
                 events: queue.Queue | None = None):
        self.engine = engine
        self.id = request_id
        self.prompt_ids = prompt_ids
        self.params = params
        self.prefilled = 0
        first = params.first_sample
        self.sequences = [_Sequence(self, first + i, engine.tokenizer, engine.device) for i in range(params.n)]
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
        self.cancel_requested = True
        self.engine._cancel_pending = True
        self.engine._wake()

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
            choices=[Choice(s.index, s.stream.visible, list(s.tokens), s.finish_reason or FINISH_CANCELLED) for s in self.sequences],
        )


# --------------------------------------------------------------------------- model runners


class GPTBigCodeRunner:
    """GPTBigCode forward over a static KV cache, reading the transformers model's weights in place."""

    def __init__(self, model, slots: int, max_len: int):
        from transformers.activations import ACT2FN

        cfg = model.config
        t = model.transformer
        self.wte, self.wpe = t.wte.weight, t.wpe.weight
        self.lm_head = model.lm_head.weight
        self.ln_f = (t.ln_f.weight, t.ln_f.bias, t.ln_f.eps)
        self.blocks = [
            (
                (b.ln_1.weight, b.ln_1.bias, b.ln_1.eps),
                (b.attn.c_attn.weight, b.attn.c_attn.bias),
                (b.attn.c_proj.weight, b.attn.c_proj.bias),
                (b.ln_2.weight, b.ln_2.bias, b.ln_2.eps),
                (b.mlp.c_fc.weight, b.mlp.c_fc.bias),
                (b.mlp.c_proj.weight, b.mlp.c_proj.bias),
            )
            for b in t.h
        ]
        self.act = ACT2FN[cfg.activation_function]
        if cfg.activation_function == "gelu_pytorch_tanh":  # the same kernel, without a module call per layer
            self.act = lambda x: F.gelu(x, approximate="tanh")
        self.embed, self.heads = cfg.n_embd, cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.multi_query = bool(cfg.multi_query)
        self.kv_heads = 1 if self.multi_query else self.heads
        self.scale = self.head_dim**-0.5 if cfg.scale_attn_weights else 1.0
        shape = (slots, self.kv_heads, max_len, self.head_dim)
        dev, dt = self.wte.device, self.wte.dtype
        self.k = [torch.zeros(shape, dtype=dt, device=dev) for _ in self.blocks]
        self.v = [torch.zeros(shape, dtype=dt, device=dev) for _ in self.blocks]
        self.device = dev

    @property
    def cache_bytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for k in self.k)

    def _split(self, qkv: torch.Tensor):
        """[N, c_attn out] -> q [N, heads, D], k and v [N, kv_heads, D] (the checkpoint's layouts)."""
        n, e, d = qkv.shape[0], self.embed, self.head_dim
        if self.multi_query:
            return qkv[:, :e].view(n, self.heads, d), qkv[:, e : e + d].view(n, 1, d), qkv[:, e + d :].view(n, 1, d)
        x = qkv.view(n, self.heads, 3 * d)
        return x[..., :d], x[..., d : 2 * d], x[..., 2 * d :]

    def _mlp_and_residual(self, x, attn, blk):
        (_, _, _), _, proj, ln2, fc, fc_proj = blk
        x = x + F.linear(attn, *proj)
        h = F.layer_norm(x, (self.embed,), ln2[0], ln2[1], ln2[2])
        return x + F.linear(self.act(F.linear(h, *fc)), *fc_proj)

    def extend(self, slot: int, start: int, ids: list[int]) -> torch.Tensor:
        """Feed prompt tokens at positions start.. into `slot`; the logits after the last one [V]."""
        n = len(ids)
        end = start + n
        pos = torch.arange(start, end, device=self.device)
        x = self.wte[torch.tensor(ids, device=self.device)] + self.wpe[pos]
        mask = None
        if start:
            mask = (torch.arange(end, device=self.device)[None, :] <= pos[:, None])[None, None]
        for i, blk in enumerate(self.blocks):
            ln1, attn_w = blk[0], blk[1]
            h = F.layer_norm(x, (self.embed,), ln1[0], ln1[1], ln1[2])
            q, k, v = self._split(F.linear(h, *attn_w))
            self.k[i][slot, :, start:end] = k.transpose(0, 1)
            self.v[i][slot, :, start:end] = v.transpose(0, 1)
            out = F.scaled_dot_product_attention(
                q.transpose(0, 1)[None],
                self.k[i][slot : slot + 1, :, :end],
                self.v[i][slot : slot + 1, :, :end],
                attn_mask=mask,
                is_causal=mask is None,
                scale=self.scale,
                enable_gqa=self.kv_heads != self.heads,
            )
            x = self._mlp_and_residual(x, out[0].transpose(0, 1).reshape(n, self.embed), blk)
        x = F.layer_norm(x[-1:], (self.embed,), *self.ln_f[:2], self.ln_f[2])
        return F.linear(x, self.lm_head)[0]

    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One token for each of `slots` at `positions`: logits [B, V]."""
        b, g, d = len(slots), self.heads // self.kv_heads, self.head_dim
        dev = self.device
        length = max(positions) + 1
        pos_t = torch.tensor(positions, device=dev)
        x = self.wte[torch.tensor(tokens, device=dev)] + self.wpe[pos_t]
        single = b == 1
        if single:  # its own length: no mask, plain slices
            slot, pos = slots[0], positions[0]
            mask = None
        else:
            slot_t = torch.tensor(slots, device=dev)
            contiguous = slots == list(range(b))
            mask = (torch.arange(length, device=dev)[None, :] <= pos_t[:, None])[:, None, None, :]
            # where each new K/V row goes in the cache seen as [slots * kv_heads * max_len, D]
            max_len = self.k[0].shape[2]
            rows = ((slot_t[:, None] * self.kv_heads + torch.arange(self.kv_heads, device=dev)[None, :]) * max_len
                    + pos_t[:, None]).reshape(-1)
        for i, blk in enumerate(self.blocks):
            ln1, attn_w = blk[0], blk[1]
            h = F.layer_norm(x, (self.embed,), ln1[0], ln1[1], ln1[2])
            q, k, v = self._split(F.linear(h, *attn_w))
            cache_k, cache_v = self.k[i], self.v[i]
            if single:
                cache_k[slot, :, pos] = k[0]
                cache_v[slot, :, pos] = v[0]
                keys, values = cache_k[slot : slot + 1, :, :length], cache_v[slot : slot + 1, :, :length]
            else:
                cache_k.view(-1, d).index_copy_(0, rows, k.reshape(-1, d))
                cache_v.view(-1, d).index_copy_(0, rows, v.reshape(-1, d))
                if contiguous:
                    keys, values = cache_k[:b, :, :length], cache_v[:b, :, :length]
                else:
                    keys, values = cache_k[slot_t, :, :length], cache_v[slot_t, :, :length]
            # heads sharing a KV head ride along as that head's "query positions"
            out = F.scaled_dot_product_attention(q.reshape(b, self.kv_heads, g, d), keys, values, attn_mask=mask, scale=self.scale)
            x = self._mlp_and_residual(x, out.reshape(b, self.embed), blk)
        x = F.layer_norm(x, (self.embed,), *self.ln_f[:2], self.ln_f[2])
        return F.linear(x, self.lm_head)

    def copy(self, src: int, dst: int, length: int) -> None:
        for k, v in zip(self.k, self.v):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]

    def release(self, slot: int) -> None:
        pass


class TransformersRunner:
    """Any causal LM through its own forward, one transformers cache per sequence (correct, not fast)."""

    def __init__(self, model, slots: int, max_len: int):
        self.model = model
        self.device = model.device
        self.caches: dict[int, object] = {}
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        self.cache_bytes = 0

    def _forward(self, slot: int, ids: list[int], start: int) -> torch.Tensor:
        from transformers import DynamicCache

        if start == 0 or slot not in self.caches:
            self.caches[slot] = DynamicCache(config=self.model.config)
        pos = torch.arange(start, start + len(ids), device=self.device)[None]
        out = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=pos,
            use_cache=True,
            **{self.cache_kw: self.caches[slot]},
        )
        return out.logits[0, -1]

    def extend(self, slot: int, start: int, ids: list[int]) -> torch.Tensor:
        return self._forward(slot, ids, start)

    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        return torch.stack([self._forward(s, [t], p) for s, t, p in zip(slots, tokens, positions)])

    def copy(self, src: int, dst: int, length: int) -> None:
        import copy

        self.caches[dst] = copy.deepcopy(self.caches[src])
        self.caches[dst].crop(length)

    def release(self, slot: int) -> None:
        self.caches.pop(slot, None)


def _context_length(config) -> int | None:
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


# --------------------------------------------------------------------------- engine


class Engine:
    """Continuous-batching generation over one model. Thread-safe: submit from any thread."""

    def __init__(self, model, tokenizer, *, max_batch_size: int = 16, max_tokens_per_step: int = 512,
                 max_seq_len: int | None = None):
        if max_batch_size < 1 or max_tokens_per_step < 1:
            raise CodeinstructError("max_batch_size and max_tokens_per_step must be at least 1")
        context = _context_length(model.config)
        self.max_seq_len = min(x for x in (max_seq_len, context) if x) if (max_seq_len or context) else 2048
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = model.device
        self.eos_id = tokenizer.eos_token_id
        self.max_batch_size = max_batch_size
        self.max_tokens_per_step = max_tokens_per_step
        runner_class = GPTBigCodeRunner if model.config.model_type == "gpt_bigcode" else TransformersRunner
        self.runner = runner_class(model, max_batch_size, self.max_seq_len)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._ids = itertools.count()
        self._waiting: deque[RequestHandle] = deque()
        self._prefilling: deque[RequestHandle] = deque()  # admitted, prompt partly in the cache
        self._running: list[_Sequence] = []  # decoding, in slot order as far as possible
        self._free_slots = list(range(max_batch_size))
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cancel_pending = False
        self.steps = 0

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, device: str = "auto", **kwargs) -> Engine:
        from codeinstruct.infer.generate import load_for_inference

        model, tokenizer = load_for_inference(model_dir, device=device)
        return cls(model, tokenizer, **kwargs)

    # ------------------------------------------------------------------ public API

    @property
    def free_slots(self) -> int:
        with self._lock:
            return len(self._free_slots)

    @property
    def running_in_background(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, prompt: str | list[int], params: SamplingParams = SamplingParams(),
               events: queue.Queue | None = None) -> RequestHandle:
        ids = encode_text(self.tokenizer, prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids:
            raise CodeinstructError("the prompt is empty")
        if len(ids) >= self.max_seq_len:
            raise CodeinstructError(f"the prompt has {len(ids)} tokens; the model's context is {self.max_seq_len}")
        if params.n > self.max_batch_size:
            raise CodeinstructError(f"n={params.n} samples need more than the engine's {self.max_batch_size} slots")
        vocab = self.runner.wte.shape[0] if isinstance(self.runner, GPTBigCodeRunner) else None
        if vocab is not None and (min(ids) < 0 or max(ids) >= vocab):
            raise CodeinstructError(f"the prompt has token ids outside the model's vocabulary of {vocab}")
        with self._cond:
            handle = RequestHandle(self, next(self._ids), ids, params, events)
            self._waiting.append(handle)
            self._cond.notify_all()
        return handle

    def generate(self, prompts: list[str | list[int]], params: SamplingParams = SamplingParams()) -> list[RequestOutput]:
        """Run prompts together (continuous batching) and return their outputs in order."""
        handles = [self.submit(p, params) for p in prompts]
        return [h.result() for h in handles]

    def start(self) -> None:
        """Run steps on a background thread (for servers); requests then stream without driving it."""
        with self._lock:
            if self.running_in_background:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="codeinstruct-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._waiting or self._prefilling or self._running)

    # ------------------------------------------------------------------ scheduling

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not (self._waiting or self._prefilling or self._running):
                    self._cond.wait()
                if self._stopping:
                    return
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
                self._close(r)
            self._waiting.clear()
            self._prefilling.clear()

    @torch.inference_mode()
    def step(self) -> bool:
        """One scheduling step: cancellations, prefill within the token budget, one decode. True if it did work."""
        with self._lock:
            try:
                self._drop_cancelled()
                prefilled = self._prefill(self.max_tokens_per_step - len(self._running))
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
            self._close(r)
        for r in [r for r in self._prefilling if r.cancel_requested]:
            self._prefilling.remove(r)
            for s in r.sequences:
                self._finish(s, FINISH_CANCELLED, "")
            self._close(r)
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
                for s in r.sequences[1:]:
                    self.runner.copy(first.slot, s.slot, r.prefilled)
                self._running.extend(r.sequences)
                for s in r.sequences:
                    self._accept(s, choose_token(logits, r.params, s.seen(self.device), s.generator))
                self._compact()

    def _decode(self, seqs: list[_Sequence]) -> None:
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
                token = choose_token(logits[i], s.request.params, s.seen(self.device), s.generator)
            self._accept(s, token)
        self._compact()

    def _accept(self, s: _Sequence, token: int) -> None:
        """Record a sampled token, stream its text, and finish the sequence if it is done."""
        p, r = s.request.params, s.request
        s.tokens.append(token)
        s.token_times.append(time.perf_counter())
        if s._seen is not None:
            s._seen.add(token)
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

    def _finish(self, s: _Sequence, reason: str, text: str, fed: bool = False) -> None:
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
            self._close(s.request)

    def _close(self, r: RequestHandle) -> None:
        if r.done:
            return
        r.finished_at = time.perf_counter()
        r._done.set()
        r.events.put(None)

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
