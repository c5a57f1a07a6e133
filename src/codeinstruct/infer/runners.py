"""Model runners: a model's forward over a KV cache of fixed slots, as the engine's scheduler drives it.

`ModelRunner` is what the engine asks of a runner; `runner_for` picks one for a model. GPTBigCode runs
on a compact forward written against the model's own weights (the transformers module stack costs more
in Python than the model costs in arithmetic at this size), over a cache allocated once: per layer
[slots, kv_heads, max_len, head_dim]. Its multi-query attention keeps one KV head, so the cache is n_head
times smaller than a multi-head one; queries of all heads attend to it through a grouped view, never a
copy. Its matrices run as the model holds them (float32, bfloat16, float16) or, with `weights="int8"`,
as int8 copies with per-token int8 activations (`_Int8`). On CPUs with AVX-512 its decode steps run in
one native call instead (infer/native.py) on the same cache. Any other causal LM runs through its
transformers forward with one cache per sequence.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Protocol

import torch
import torch.nn.functional as F

from codeinstruct.errors import CodeinstructError
from codeinstruct.infer import native
from codeinstruct.infer.native import quantize_rows

log = logging.getLogger(__name__)


class ModelRunner(Protocol):
    """A model's forward over `slots` KV-cache slots of `max_len` positions each.

    The engine owns the slots (which are free, which sequence holds which): a runner only reads and
    writes the cache rows it is told to. A slot's cache is valid up to the last position fed into it.
    """

    device: torch.device
    vocab_size: int  # token ids the model can embed: [0, vocab_size); others are refused before a forward
    max_len: int  # positions per slot

    def extend(self, slot: int, start: int, ids: list[int]) -> torch.Tensor:
        """Feed prompt tokens at positions start.. into `slot`; the logits after the last one [V]."""
        ...

    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One token for each of `slots` at `positions`: logits [B, V]."""
        ...

    def copy(self, src: int, dst: int, length: int) -> None:
        """Make `dst` hold the first `length` positions of `src` (samples sharing a prefill; compaction)."""
        ...

    def release(self, slot: int) -> None:
        """The slot is free: drop whatever the runner keeps for it."""
        ...


def runner_for(model, slots: int, max_len: int, weights: str = "dense") -> ModelRunner:
    """The fastest runner that can run `model`; `weights="int8"` (GPTBigCode only) quantizes its matrices."""
    if model.config.model_type == "gpt_bigcode":
        return GPTBigCodeRunner(model, slots, max_len, weights=weights)
    if weights != "dense":
        raise CodeinstructError(f"int8 weights need a GPTBigCode model, not {model.config.model_type}")
    return TransformersRunner(model, slots, max_len)


WEIGHT_FORMATS = ("dense", "int8")


class _Dense:
    """A linear layer on the model's own tensors (any dtype), read in place."""

    __slots__ = ("weight", "bias")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class _OneDNN:
    """A linear layer through oneDNN (torch.ops.mkldnn), on the CPU in float32 or bfloat16: about twice as
    fast as `F.linear` here at batch 1-128 (torch's CPU `addmm` leaves most of two cores idle on these
    shapes). With `pack`, the weight is reordered once into oneDNN's blocked layout (a copy beside the
    model's own, which its transformers forward still uses), which is faster again and gives each row the
    same result whatever the batch beside it; without, the model's tensor is read in place."""

    __slots__ = ("weight", "bias")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool, batch: int):
        weight = weight.detach().contiguous()  # oneDNN reads plain row-major memory
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, batch) if pack else weight
        self.bias = None if bias is None else bias.detach().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")

    def with_gelu(self, x: torch.Tensor, approximate: str) -> torch.Tensor:
        """gelu(self(x)) in one pass: the activation applied as the product is written ("tanh" or "none")."""
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "gelu", [], approximate)

    @staticmethod
    def usable(weight: torch.Tensor) -> bool:
        """Whether oneDNN runs this weight's dtype here, and agrees with `F.linear` on a small product."""
        if weight.device.type != "cpu" or weight.dtype not in (torch.float32, torch.bfloat16):
            return False
        if not torch.backends.mkldnn.is_available():
            return False
        try:
            w = torch.linspace(-1, 1, 24, dtype=weight.dtype).reshape(6, 4)
            x = torch.linspace(1, -1, 12, dtype=weight.dtype).reshape(3, 4)
            packed = _OneDNN(w, w[:, 0], pack=True, batch=3)
            return torch.allclose(packed(x).float(), F.linear(x, w, w[:, 0]).float(), atol=1e-2)
        except (RuntimeError, AttributeError):
            return False


def _memory_bytes() -> int:
    """The machine's physical memory (0 where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _dense_layer(weights: list[torch.Tensor], batch: int):
    """How a runner in the model's own dtype multiplies: oneDNN where it runs (its blocked copies of the
    matrices when they take at most a quarter of the machine's memory, else in place), else F.linear."""
    if not _OneDNN.usable(weights[0]):
        return _Dense
    size = sum(w.numel() * w.element_size() for w in weights)
    pack = 0 < size <= _memory_bytes() // 4
    return lambda weight, bias: _OneDNN(weight, bias, pack=pack, batch=batch)


_BLOCKED_PREFILL_MIN = 64  # new tokens from which a multi-query prefill's attention runs as blocked products
_BLOCKED_PREFILL_ROWS = 64  # query rows per block


def _mkldnn_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T through oneDNN (float32, both contiguous)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


_ONEDNN_INT8_MIN = 1 << 20  # weights (elements) from which oneDNN's int8 matmul beats torch._int_mm at batch 1


class _Int8:
    """A linear layer with int8 weights (one scale per output row) and int8 activations quantized as they come,
    one scale per row (token), multiplied exactly in int32: through oneDNN's int8 matmul on its prepacked
    weight (`torch.ops.onednn.qlinear_pointwise`, VNNI where the CPU has it) for matrices of a million
    weights or more where this torch has it (on the 130M shape the MLP's and the output layer's: 2.7x
    faster for the output layer at batch 1), else `torch._int_mm`, whose call costs less.

    Per-token scales keep every row's result independent of the other rows of the batch: a sequence decodes
    the same tokens alone or beside others. oneDNN scales activations per tensor, so each row goes in with
    scale 1 (its int8 values, offset by 128 as uint8) and is scaled after the product, which is exact in
    int32; the two ways differ only in float rounding. (fbgemm's dynamic-quantization kernel scales a
    whole batch at once.)
    """

    __slots__ = ("weight", "scale", "bias", "packed", "zero_points")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, onednn: bool | None = None):
        w = weight.detach().float()
        q, self.scale = quantize_rows(w)
        self.bias = None if bias is None else bias.detach().float()
        self.packed = self.weight = None
        if onednn is None:  # oneDNN's call costs more (~30 us here against ~15): it pays on large matrices
            onednn = w.numel() >= _ONEDNN_INT8_MIN and _Int8.onednn_usable()
        if onednn:
            self.packed = torch.ops.onednn.qlinear_prepack(q, [8, w.shape[1]])
            self.zero_points = torch.zeros(w.shape[0], dtype=torch.int64)
        else:
            self.weight, self.zero_points = q.t().contiguous(), None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x_scale = torch.linalg.vector_norm(x, float("inf"), dim=1, keepdim=True).clamp_(min=1e-12).div_(127)
        if self.packed is not None:
            q = torch.div(x, x_scale).round_().add_(128).to(torch.uint8)
            out = torch.ops.onednn.qlinear_pointwise(
                q, 1.0, 128, self.packed, self.scale, self.zero_points, None, 1.0, 0, torch.float32, "none", [], ""
            ).mul_(x_scale)
        else:
            q = torch.div(x, x_scale).round_().to(torch.int8)
            out = torch._int_mm(q, self.weight).float().mul_(x_scale).mul_(self.scale)
        return out if self.bias is None else out.add_(self.bias)

    _usable: bool | None = None

    @staticmethod
    def onednn_usable() -> bool:
        """Whether oneDNN's int8 matmul runs here and agrees with `torch._int_mm` on a small product."""
        if _Int8._usable is None:
            try:
                g = torch.Generator().manual_seed(0)
                w, x = torch.randn(24, 16, generator=g), torch.randn(3, 16, generator=g)
                ok = torch.allclose(_Int8(w, w[:, 0], onednn=True)(x), _Int8(w, w[:, 0], onednn=False)(x), atol=1e-4)
            except (RuntimeError, AttributeError):
                ok = False
            _Int8._usable = ok
        return _Int8._usable


class GPTBigCodeRunner:
    """GPTBigCode forward over a static KV cache, reading the transformers model's weights in place
    (`weights="dense"`, in the model's dtype) or an int8 copy of its matrices (`"int8"`, fp32 elsewhere)."""

    def __init__(self, model, slots: int, max_len: int, weights: str = "dense", native: bool | None = None):
        from transformers.activations import ACT2FN

        if weights not in WEIGHT_FORMATS:
            raise CodeinstructError(f"unknown weight format '{weights}' (known: {', '.join(WEIGHT_FORMATS)})")
        cfg = model.config
        t = model.transformer
        if weights == "int8":
            if t.wte.weight.dtype != torch.float32 or t.wte.weight.device.type != "cpu":
                raise CodeinstructError("int8 weights run on the CPU from a float32 model (load it with dtype float32)")
            linear = _Int8
        else:
            matrices = [model.lm_head.weight] + [
                m.weight for b in t.h for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)
            ]
            linear = _dense_layer(
                matrices, min(max(slots, 8), 32)
            )  # the layout oneDNN picks for batch 1 only is slower for all
        self.weights = weights
        # float32 products through oneDNN (the blocked prefill attention computes in float32)
        self._onednn = _OneDNN.usable(torch.zeros((), device=t.wte.weight.device))
        self._diag: torch.Tensor | None = None
        self.wte, self.wpe = t.wte.weight, t.wpe.weight
        self.lm_head = linear(model.lm_head.weight, None)
        self.ln_f = (t.ln_f.weight, t.ln_f.bias, t.ln_f.eps)
        self.blocks = [
            (
                (b.ln_1.weight, b.ln_1.bias, b.ln_1.eps),
                linear(b.attn.c_attn.weight, b.attn.c_attn.bias),
                linear(b.attn.c_proj.weight, b.attn.c_proj.bias),
                (b.ln_2.weight, b.ln_2.bias, b.ln_2.eps),
                linear(b.mlp.c_fc.weight, b.mlp.c_fc.bias),
                linear(b.mlp.c_proj.weight, b.mlp.c_proj.bias),
            )
            for b in t.h
        ]
        self.act = ACT2FN[cfg.activation_function]
        if cfg.activation_function == "gelu_pytorch_tanh":  # the same kernel, without a module call per layer
            self.act = lambda x: F.gelu(x, approximate="tanh")
        # the MLP's first product and its activation: one oneDNN call where it can apply the GELU itself
        gelu = {"gelu_pytorch_tanh": "tanh", "gelu": "none"}.get(cfg.activation_function)
        self.fc_act = [
            (lambda h, fc=blk[4]: fc.with_gelu(h, gelu))
            if gelu is not None and isinstance(blk[4], _OneDNN)
            else (lambda h, fc=blk[4]: self.act(fc(h)))
            for blk in self.blocks
        ]
        self.embed, self.heads = cfg.n_embd, cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.multi_query = bool(cfg.multi_query)
        self.kv_heads = 1 if self.multi_query else self.heads
        self.scale = self.head_dim**-0.5 if cfg.scale_attn_weights else 1.0
        shape = (slots, self.kv_heads, max_len, self.head_dim)
        dev, dt = self.wte.device, self.wte.dtype
        self.dtype = dt
        self.k = [torch.zeros(shape, dtype=dt, device=dev) for _ in self.blocks]
        self.v = [torch.zeros(shape, dtype=dt, device=dev) for _ in self.blocks]
        self.device = dev
        self.vocab_size = self.wte.shape[0]
        self.max_len = max_len
        self._positions = torch.arange(max_len, device=dev)
        self.activation = cfg.activation_function
        self.inner = cfg.n_inner or 4 * cfg.n_embd
        self.native = self._native_decoder(model, weights) if native is not False else None

    def _native_decoder(self, model, weights: str):
        """The native decode step (infer/native.py) where it runs this model here, else None (torch's)."""
        why = native.unsupported(self, weights)
        if why is None:
            per_weight = {"int8": 1, "dense": self.wte.element_size()}[weights]
            matrices = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".weight") and p.dim() == 2)
            if matrices * per_weight > _memory_bytes() // 4:
                why = "its packed copy would take over a quarter of the memory"
        if why is not None:
            log.debug("native decode step not used: %s", why)
            return None
        return native.NativeDecoder(self, model, weights)

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

    def _mlp_and_residual(self, x, attn, i):
        _, _, proj, ln2, _, fc_proj = self.blocks[i]
        x = x + proj(attn)
        h = F.layer_norm(x, (self.embed,), ln2[0], ln2[1], ln2[2])
        return x + fc_proj(self.fc_act[i](h))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x, (self.embed,), *self.ln_f[:2], self.ln_f[2])
        logits = self.lm_head(x)
        return logits if logits.dtype == torch.float32 else logits.float()  # sampling and logprobs want fp32

    def extend(self, slot: int, start: int, ids: list[int]) -> torch.Tensor:
        """Feed prompt tokens at positions start.. into `slot`; the logits after the last one [V]."""
        n = len(ids)
        end = start + n
        pos = self._positions[start:end]
        x = self.wte[torch.tensor(ids, device=self.device)] + self.wpe[pos]
        blocked = self.multi_query and self._onednn and n >= _BLOCKED_PREFILL_MIN
        mask = None
        if start and not blocked:
            mask = (self._positions[:end][None, :] <= pos[:, None])[None, None]
        for i, blk in enumerate(self.blocks):
            ln1, attn_w = blk[0], blk[1]
            h = F.layer_norm(x, (self.embed,), ln1[0], ln1[1], ln1[2])
            q, k, v = self._split(attn_w(h))
            self.k[i][slot, :, start:end] = k.transpose(0, 1)
            self.v[i][slot, :, start:end] = v.transpose(0, 1)
            if blocked:
                attn = self._multi_query_prefill(q, self.k[i][slot, 0, :end], self.v[i][slot, 0, :end], start)
            else:
                out = F.scaled_dot_product_attention(
                    q.transpose(0, 1)[None],
                    self.k[i][slot : slot + 1, :, :end],
                    self.v[i][slot : slot + 1, :, :end],
                    attn_mask=mask,
                    is_causal=mask is None,
                    scale=self.scale,
                    enable_gqa=self.kv_heads != self.heads,
                )
                attn = out[0].transpose(0, 1).reshape(n, self.embed)
            x = self._mlp_and_residual(x, attn, i)
        return self._logits(x[-1:])[0]

    def _multi_query_prefill(self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, start: int):
        """Causal attention of `n` new queries (q [n, heads, D], at positions start..) over one KV head's
        keys and values [start + n, D], as matrix products through oneDNN: the queries of every head against
        the one KV head form a single product, taken in blocks of query rows, each against the keys up to its
        last row (so about half of a causal square is computed), the block's own diagonal masked. torch's CPU
        flash attention took 5.2 ms for 512 positions here (12 heads of 64), this about 2-3.5; -> [n, E]."""
        n, heads, d = q.shape
        dtype = q.dtype
        q = q.float() * self.scale
        keys, values_t = keys.float(), values.float().t()
        out = torch.empty((n, heads, d), dtype=torch.float32, device=q.device)
        step = _BLOCKED_PREFILL_ROWS
        diagonal = self._diagonal(step)
        for s0 in range(0, n, step):
            e = min(n, s0 + step)
            rows, seen = e - s0, start + e
            scores = _mkldnn_linear(q[s0:e].reshape(rows * heads, d), keys[:seen]).view(rows, heads, seen)
            scores[:, :, start + s0 : seen].add_(diagonal[:rows, None, :rows])
            weights = torch.softmax(scores, -1).view(rows * heads, seen)
            out[s0:e] = _mkldnn_linear(weights, values_t[:, :seen].contiguous()).view(rows, heads, d)
        return out.view(n, heads * d).to(dtype)

    def _diagonal(self, size: int) -> torch.Tensor:
        """[size, size]: 0 on and below the diagonal, -inf above (a block's queries against its own keys)."""
        if self._diag is None or self._diag.shape[0] != size:
            self._diag = torch.full((size, size), float("-inf"), device=self.device).triu_(1)
        return self._diag

    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        """One token for each of `slots` at `positions`: logits [B, V]."""
        if self.native is not None:
            return self.native.decode(slots, tokens, positions)
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
            mask = None
            if min(positions) + 1 != length:  # rows of different lengths: an additive mask, built once per step
                mask = torch.zeros((b, 1, 1, length), dtype=self.dtype, device=dev)
                mask.masked_fill_((self._positions[:length][None, :] > pos_t[:, None])[:, None, None], float("-inf"))
            # where each new K/V row goes in the cache seen as [slots * kv_heads * max_len, D]
            rows = (
                (slot_t[:, None] * self.kv_heads + torch.arange(self.kv_heads, device=dev)[None, :]) * self.max_len
                + pos_t[:, None]
            ).reshape(-1)
        for i, blk in enumerate(self.blocks):
            ln1, attn_w = blk[0], blk[1]
            h = F.layer_norm(x, (self.embed,), ln1[0], ln1[1], ln1[2])
            q, k, v = self._split(attn_w(h))
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
            out = F.scaled_dot_product_attention(
                q.reshape(b, self.kv_heads, g, d), keys, values, attn_mask=mask, scale=self.scale
            )
            x = self._mlp_and_residual(x, out.reshape(b, self.embed), i)
        return self._logits(x)

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
        self.vocab_size = model.get_input_embeddings().weight.shape[0]
        self.max_len = max_len
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
