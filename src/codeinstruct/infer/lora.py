"""LoRA adapters served beside their base model, unmerged, chosen per request.

`load_adapters(engine, {name: dir})` puts an `AdapterRunner` in front of the engine's runner. A
request names its adapter in `SamplingParams.adapter`; the engine binds each of its slots to it
(`bind`) and the runner sends that slot's work through the adapter, everything else through the
base runner unchanged. The adapters (peft's format: `adapter_config.json` + weights, what
`finetune` writes to `runs/NAME/adapter/`) are loaded by peft onto a structural copy of the base
model that shares every base weight, so each adapter costs only its own low-rank matrices, and
base requests never pass through peft. Adapter sequences run through the transformers forward one
sequence at a time (`TransformersRunner`): correct for any adapter peft reads, not fast.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from codeinstruct.errors import CodeinstructError
from codeinstruct.infer.runners import ModelRunner, TransformersRunner


def adapter_directory(path: str | Path) -> Path:
    """The peft adapter directory at `path`, or in `path/adapter` (a run folder); a one-line error otherwise."""
    path = Path(path)
    for candidate in (path, path / "adapter"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise CodeinstructError(f"{path}: not a LoRA adapter directory (no adapter_config.json here or in adapter/)")


class AdapterRunner:
    """A `ModelRunner` over a base runner and peft adapters: each slot runs through the adapter it is bound to."""

    def __init__(self, base: ModelRunner, model, adapters: dict[str, str | Path], slots: int, max_len: int):
        from peft import PeftModel

        if not adapters:
            raise CodeinstructError("no LoRA adapters given")
        self.base = base
        self.device, self.vocab_size, self.max_len = base.device, base.vocab_size, base.max_len
        # A copy of the module tree whose parameters and buffers are the base model's own tensors.
        shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
        skeleton = copy.deepcopy(model, memo=shared)
        self.directories: dict[str, Path] = {}
        peft_model = None
        for name, path in adapters.items():
            directory = adapter_directory(path)
            try:
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(skeleton, str(directory), adapter_name=name)
                else:
                    peft_model.load_adapter(str(directory), adapter_name=name)
            except (ValueError, RuntimeError, KeyError, OSError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise CodeinstructError(f"{directory}: cannot load the LoRA adapter {name!r}: {first}") from None
            self.directories[name] = directory
        self.peft_model = peft_model.eval()
        self.lora = TransformersRunner(self.peft_model, slots, max_len)
        self.bound: dict[int, str] = {}  # slot -> adapter; unbound slots run on the base

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(self.directories)

    @property
    def cache_bytes(self) -> int:
        return getattr(self.base, "cache_bytes", 0)

    def adapter_model(self, name: str):
        """The peft model with `name` active (the caller holds the engine's lock)."""
        self.peft_model.set_adapter(name)
        return self.peft_model

    def bind(self, slot: int, adapter: str) -> None:
        self.bound[slot] = adapter

    def extend(self, slot: int, start: int, ids: list[int]) -> torch.Tensor:
        name = self.bound.get(slot)
        if name is None:
            return self.base.extend(slot, start, ids)
        self.peft_model.set_adapter(name)
        return self.lora.extend(slot, start, ids)

    def decode(self, slots: list[int], tokens: list[int], positions: list[int]) -> torch.Tensor:
        on_base = [i for i, s in enumerate(slots) if s not in self.bound]
        if len(on_base) == len(slots):
            return self.base.decode(slots, tokens, positions)
        rows: list[torch.Tensor | None] = [None] * len(slots)
        if on_base:
            out = self.base.decode(
                [slots[i] for i in on_base], [tokens[i] for i in on_base], [positions[i] for i in on_base]
            )
            for row, i in enumerate(on_base):
                rows[i] = out[row]
        for i, slot in enumerate(slots):
            if rows[i] is None:
                self.peft_model.set_adapter(self.bound[slot])
                rows[i] = self.lora.decode([slot], [tokens[i]], [positions[i]])[0]
        return torch.stack([r.to(rows[0].dtype) for r in rows])

    def copy(self, src: int, dst: int, length: int) -> None:
        name = self.bound.get(src)
        if name is None:
            self.bound.pop(dst, None)
            self.base.copy(src, dst, length)
        else:
            self.bound[dst] = name
            # TransformersRunner.copy crops unconditionally, which transformers 5 refuses for some caches;
            # the engine copies whole caches (samples sharing a prefill, compaction), so crop only if longer
            cache = copy.deepcopy(self.lora.caches[src])
            if cache.get_seq_length() > length:
                cache.crop(length)
            self.lora.caches[dst] = cache

    def release(self, slot: int) -> None:
        if self.bound.pop(slot, None) is not None:
            self.lora.release(slot)
        else:
            self.base.release(slot)


def load_adapters(engine, adapters: dict[str, str | Path]) -> None:
    """Serve `adapters` ({name: directory}) on `engine` beside its base model; requests choose one by name."""
    if not adapters:
        return
    engine.runner = AdapterRunner(engine.runner, engine.model, adapters, engine.max_batch_size, engine.max_seq_len)
