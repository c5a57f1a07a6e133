"""Model runners: a model's forward over a KV cache of fixed slots, as the engine's scheduler drives it.

`ModelRunner` is what the engine asks of a runner; `runner_for` picks one for a model. GPTBigCode runs
on a compact forward written against the model's own weights (the transformers module stack costs more
in Python than the model costs in arithmetic at this size), over a cache allocated once: per layer
[slots, kv_heads, max_len, head_dim]. Its multi-query attention keeps one KV head, so the cache is n_head
times smaller than a multi-head one; queries of all heads attend to it through a grouped view, never a
copy. Any other causal LM runs through its transformers forward with one cache per sequence.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import torch
import torch.nn.functional as F


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


def runner_for(model, slots: int, max_len: int) -> ModelRunner:
    """The fastest runner that can run `model`."""
    if model.config.model_type == "gpt_bigcode":
        return GPTBigCodeRunner(model, slots, max_len)
    return TransformersRunner(model, slots, max_len)


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
        self.vocab_size = self.wte.shape[0]
        self.max_len = max_len

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
            rows = (
                (slot_t[:, None] * self.kv_heads + torch.arange(self.kv_heads, device=dev)[None, :]) * self.max_len
                + pos_t[:, None]
            ).reshape(-1)
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
            out = F.scaled_dot_product_attention(
                q.reshape(b, self.kv_heads, g, d), keys, values, attn_mask=mask, scale=self.scale
            )
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
