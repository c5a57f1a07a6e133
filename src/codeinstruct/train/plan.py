"""Will a recipe fit? Per-GPU memory of training, estimated from the model's shape alone.

What this loop actually holds, per GPU, with W processes sharing the model under FSDP2:

  parameters   fp32 weights, sharded: 4P/W bytes (LoRA too: the frozen base stays fp32, as loaded;
               FSDP gathers it in bf16 for compute).
  gradients    fp32, sharded, for the trained weights only.
  optimizer    AdamW: two fp32 moments per trained weight, sharded.
  buffers      FSDP gathers one block's parameters at a time in bf16 (two in flight: the current
               block and the prefetched next), plus the root's embeddings while they are used.
  activations  per micro-batch of b rows of s tokens, hidden h, L layers, 16-bit: ~34*s*b*h bytes per
               layer kept for the backward pass with sdpa/flash attention (no s x s score matrix;
               Korthikanti et al. 2022, without their attention-score term); with activation
               checkpointing only each layer's input (2*s*b*h) is kept and one layer is recomputed
               at a time. The logits add ~10*b*s*V bytes (bf16 logits, fp32 copy for the loss, its grad).
  overhead     a fixed 2 GiB for the CUDA context, kernels' workspaces and allocator slack.

Estimates, not measurements: good to a few GiB, which is what deciding settings needs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from codeinstruct.config import Recipe
from codeinstruct.errors import CodeinstructError

GIB = 2**30
OVERHEAD_BYTES = 2 * GIB
# hub ids whose shape is a preset, for planning without the checkpoint on disk
KNOWN_SHAPES = {
    "bigcode/starcoder": "starcoder",
    "bigcode/starcoderbase": "starcoder",
    "bigcode/starcoderplus": "starcoder",
}


@dataclass(frozen=True)
class MemoryEstimate:
    method: str
    checkpointing: bool
    parameters: float  # bytes per GPU
    gradients: float
    optimizer: float
    buffers: float
    activations: float
    overhead: float = OVERHEAD_BYTES

    @property
    def total(self) -> float:
        return self.parameters + self.gradients + self.optimizer + self.buffers + self.activations + self.overhead


@dataclass(frozen=True)
class ModelShape:
    description: str
    parameters: int
    block_parameters: int  # one transformer block
    root_parameters: int  # embeddings (and anything outside the blocks)
    lora_parameters: int  # adapters of the recipe's rank on the recipe's target modules
    hidden: int
    layers: int
    vocab: int


def model_config(recipe: Recipe):
    """The recipe's model config, without loading weights (presets and known hub ids need nothing on disk)."""
    from transformers import AutoConfig

    from codeinstruct.modeling import PRESET_PREFIX, preset_config

    source = recipe.model.source
    if source.startswith(PRESET_PREFIX):
        return preset_config(source[len(PRESET_PREFIX) :]), source
    try:
        return AutoConfig.from_pretrained(source, local_files_only=True), source
    except (OSError, ValueError):
        if source in KNOWN_SHAPES:
            return preset_config(
                KNOWN_SHAPES[source]
            ), f"{source} (shape of preset:{KNOWN_SHAPES[source]}; not on disk)"
        raise CodeinstructError(
            f"{source}: no config.json found locally to plan from (nothing is downloaded)"
        ) from None


def model_shape(recipe: Recipe) -> ModelShape:
    import torch
    from transformers import AutoModelForCausalLM

    from codeinstruct.train.lora import lora_config

    config, description = model_config(recipe)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    from codeinstruct.train.distributed import transformer_blocks

    blocks = transformer_blocks(model)
    block = sum(p.numel() for p in blocks[0].parameters())
    targets = lora_config(model, recipe.model.lora).target_modules
    targets = set(targets) if targets is not None else None
    lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            if targets is None or name.rsplit(".", 1)[-1] in targets:
                lora += recipe.model.lora.r * (module.in_features + module.out_features)
    hidden = getattr(config, "n_embd", None) or config.hidden_size
    layers = getattr(config, "n_layer", None) or config.num_hidden_layers
    return ModelShape(description, total, block, total - block * len(blocks), lora, hidden, layers, config.vocab_size)


def estimate(
    shape: ModelShape,
    *,
    method: str,
    checkpointing: bool,
    gpus: int,
    batch_size: int,
    max_length: int,
    bf16: bool = True,
) -> MemoryEstimate:
    p, w = shape.parameters, gpus
    half = 2 if bf16 else 4
    trained = p if method == "full" else shape.lora_parameters
    params = 4 * (p + (trained if method == "lora" else 0)) / w
    gathered = 2 * shape.block_parameters + shape.root_parameters if w > 1 else 0
    sbh = max_length * batch_size * shape.hidden
    if checkpointing:
        acts = 2 * sbh * shape.layers + 34 * sbh
    else:
        acts = 34 * sbh * shape.layers
    acts += 10 * batch_size * max_length * shape.vocab
    return MemoryEstimate(method, checkpointing, params, 4 * trained / w, 8 * trained / w, half * gathered, acts)


@dataclass(frozen=True)
class Plan:
    """The four estimates (full/LoRA x activation checkpointing off/on) for a recipe on `gpus` GPUs
    of `gpu_mem_gib` each, which one the recipe asks for, whether it fits, and what to change."""

    shape: ModelShape
    gpus: int
    gpu_mem_gib: float
    micro_batch: int
    max_length: int
    estimates: tuple[MemoryEstimate, ...]
    chosen: MemoryEstimate  # the recipe's own method and checkpointing

    def fits(self, estimate: MemoryEstimate | None = None) -> bool:
        return (estimate or self.chosen).total <= self.gpu_mem_gib * GIB

    @property
    def fitting(self) -> tuple[MemoryEstimate, ...]:
        return tuple(e for e in self.estimates if self.fits(e))

    @property
    def suggestion(self) -> MemoryEstimate | None:
        """Where the recipe does not fit: the fitting settings nearest to it (same method first)."""
        if self.fits() or not self.fitting:
            return None
        return min(
            self.fitting, key=lambda e: (e.method != self.chosen.method, e.checkpointing != self.chosen.checkpointing)
        )

    @property
    def advice(self) -> str | None:
        """The overrides to pass, or what to change when nothing fits; None when the recipe fits."""
        if self.fits():
            return None
        if self.suggestion is None:
            return "nothing fits: use more GPUs (--gpus), a shorter data.max_length or train.batch_size=1"
        best = self.suggestion
        return f"model.method={best.method} train.gradient_checkpointing={str(best.checkpointing).lower()}"

    def as_dict(self) -> dict:
        def gib(e: MemoryEstimate) -> dict:
            return {
                k: round(getattr(e, k) / GIB, 2)
                for k in ("parameters", "gradients", "optimizer", "buffers", "activations", "overhead", "total")
            }

        return {
            "model": self.shape.description,
            "parameters": self.shape.parameters,
            "gpus": self.gpus,
            "gpu_mem_gib": self.gpu_mem_gib,
            "micro_batch": self.micro_batch,
            "max_length": self.max_length,
            "estimates": [
                {"method": e.method, "activation_checkpointing": e.checkpointing, **gib(e), "fits": self.fits(e)}
                for e in self.estimates
            ],
            "recipe": {
                "method": self.chosen.method,
                "activation_checkpointing": self.chosen.checkpointing,
                "total_gib": round(self.chosen.total / GIB, 2),
                "fits": self.fits(),
            },
            "advice": self.advice,
        }

    def __iter__(self):
        """Deprecated: `shape, gpus, rows = plan(...)` as before Plan existed."""
        warnings.warn(
            "unpacking plan() is deprecated; use Plan.shape, Plan.gpus and Plan.estimates",
            DeprecationWarning,
            stacklevel=2,
        )
        return iter((self.shape, self.gpus, list(self.estimates)))


def plan(recipe: Recipe, gpus: int | None = None, gpu_mem_gib: float = 80.0) -> Plan:
    """Per-GPU memory of training `recipe` on `gpus` GPUs (default: the recipe's distributed.gpus, else 1)."""
    gpus = gpus or recipe.distributed.gpus or 1
    shape = model_shape(recipe)
    bf16 = recipe.train.precision != "fp32"
    rows = tuple(
        estimate(
            shape,
            method=m,
            checkpointing=c,
            gpus=gpus,
            batch_size=recipe.train.batch_size,
            max_length=recipe.data.max_length,
            bf16=bf16,
        )
        for m in ("full", "lora")
        for c in (False, True)
    )
    chosen = next(
        e for e in rows if e.method == recipe.model.method and e.checkpointing == recipe.train.gradient_checkpointing
    )
    return Plan(shape, gpus, gpu_mem_gib, recipe.train.batch_size, recipe.data.max_length, rows, chosen)
