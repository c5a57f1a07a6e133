"""Recipes: YAML validated by a pydantic schema, with dotted `key=value` overrides.

The resolved recipe (after overrides and defaults) is what gets saved in the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from codeinstruct.errors import CodeinstructError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSection(_Strict):
    r: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    # None: GPTBigCode's attention and MLP projections (c_attn, c_proj, c_fc, q_attn where present);
    # for other architectures peft's defaults for the model type.
    target_modules: list[str] | None = None


class ModelSection(_Strict):
    # `preset:NAME` (random init, see codeinstruct.modeling.PRESETS), a local HF directory, or a
    # hub id already in the local cache (nothing is downloaded).
    source: str
    # Tokenizer directory; defaults to the model directory. Required for presets.
    tokenizer: str | None = None
    # Overrides the checkpoint's dropout (None keeps it; presets default to 0).
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    # full: every weight trains. lora: low-rank adapters (peft) on a frozen base; final/ holds the
    # merged model, adapter/ the adapter alone.
    method: Literal["full", "lora"] = "full"
    lora: LoraSection = LoraSection()


class FimMixSection(_Strict):
    """Fill-in-the-Middle examples mixed into instruction fine-tuning, so the model keeps infilling."""

    # Code sources read as pretraining reads them (directories, JSONL of {content, ...}, `builtin:stdlib`).
    corpus: str | list[str] = Field(default_factory=list)
    include: list[str] | None = None  # which files of the corpus directories (as data.include)
    limit: int | None = Field(default=None, ge=1)  # read at most this many corpus documents
    # Also FIM-transform the code of the training records' responses (fenced blocks; a response without
    # a fence counts as one block when it is Python that compiles).
    from_responses: bool = False
    # Share of the training tokens (packed input tokens) that are FIM examples.
    fraction: float = Field(default=0.3, gt=0.0, lt=1.0)
    # Per chunk: FIM with probability fim_rate (else plain code), SPM with probability fim_spm_rate.
    fim_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    fim_spm_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    # middle: loss on the middle and EOS only (what the model writes at inference); all: every token.
    loss: Literal["middle", "all"] = "middle"
    # Corpus documents are cut at line boundaries into chunks of at most this many tokens
    # (default: data.max_length less room for the FIM control tokens and EOS).
    chunk_tokens: int | None = Field(default=None, ge=16)

    @model_validator(mode="after")
    def _has_a_source(self) -> FimMixSection:
        if not self.corpus and not self.from_responses:
            raise ValueError("needs a corpus, from_responses: true, or both")
        return self

    @property
    def sources(self) -> list[str]:
        return [self.corpus] if isinstance(self.corpus, str) else list(self.corpus)


class DataSection(_Strict):
    # finetune: a JSON/JSONL file of GPTeacher or Alpaca records, or `builtin:stdlib` (the embedded demo data).
    # pretrain: code sources (directories, JSONL of {content, repo, path, license}, `builtin:stdlib`).
    train: str | list[str]
    max_length: int = Field(default=1024, ge=16)
    overlong: Literal["drop", "truncate"] = "drop"
    packing: bool = True
    # Records held out from training (the demo prints answers for them); 0 keeps all.
    held_out: float = Field(default=0.0, ge=0.0, lt=1.0)
    limit: int | None = Field(default=None, ge=1)
    # pretrain only: Fill-in-the-Middle rates (StarCoder used 0.5 and 0.5) and which files to read.
    fim_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    fim_spm_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    include: list[str] | None = None
    # finetune only: FIM examples mixed into the instruction examples (off when absent).
    fim_mix: FimMixSection | None = None


class TrainSection(_Strict):
    epochs: int = Field(default=3, ge=1)
    # Rows (packed sequences or single examples) per micro-batch. One optimizer step takes
    # batch_size x grad_accum rows in all, whatever the number of processes: under torchrun each
    # process gets an equal share of the step's rows and runs it in micro-batches of batch_size.
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=2e-5, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPUs that have it, else fp32
    gradient_checkpointing: bool = False
    device: str = "auto"
    log_every: int = Field(default=1, ge=1)
    save_every: int = Field(default=0, ge=0)  # optimizer steps between checkpoints; 0: none until the end
    keep_checkpoints: int = Field(default=2, ge=1)


class DistributedSection(_Strict):
    # Under torchrun (more than one process) the model is always sharded with FSDP2; `fsdp` here
    # records that the recipe is meant for it.
    strategy: Literal["none", "fsdp"] = "none"
    # The card's setup, for `codeinstruct plan`; the process count comes from torchrun.
    gpus: int | None = Field(default=None, ge=1)
    cpu_offload: bool = False  # FSDP2: keep sharded parameters, gradients and optimizer state in CPU memory


class Recipe(_Strict):
    name: str
    seed: int = 0
    run_dir: str | None = None  # default: runs/<name>
    model: ModelSection
    data: DataSection
    train: TrainSection = TrainSection()
    distributed: DistributedSection = DistributedSection()

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def apply_override(tree: dict, assignment: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (numbers, bools, null, lists)."""
    if "=" not in assignment:
        raise CodeinstructError(f"override '{assignment}': expected key=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise CodeinstructError(f"override '{assignment}': bad key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise CodeinstructError(f"override '{assignment}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def _describe(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "recipe"
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
    more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{where}: {msg}{more}"


def recipe_from_dict(tree: dict, source: str = "<recipe>") -> Recipe:
    try:
        return Recipe.model_validate(tree)
    except ValidationError as e:
        raise CodeinstructError(f"{source}: {_describe(e)}") from None


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CodeinstructError(f"{path}: no such recipe file") from None
    except UnicodeDecodeError:
        raise CodeinstructError(f"{path}: not valid UTF-8") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        raise CodeinstructError(f"{path}: {line}invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(tree, dict):
        raise CodeinstructError(f"{path}: a recipe is a YAML mapping")
    for assignment in overrides:
        apply_override(tree, assignment)
    return recipe_from_dict(tree, str(path))


BUNDLED_RECIPES = Path(__file__).parent / "recipes"


def recipe_path(name_or_path: str) -> Path:
    """A recipe file, or the name of one bundled with the package (`tiny-cpu`, `starcoder-gpteacher`)."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    bundled = BUNDLED_RECIPES / f"{name_or_path}.yaml"
    if bundled.exists():
        return bundled
    known = ", ".join(sorted(p.stem for p in BUNDLED_RECIPES.glob("*.yaml")))
    raise CodeinstructError(f"{name_or_path}: no such recipe file or bundled recipe (bundled: {known})")
