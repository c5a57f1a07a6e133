"""Preparing the data of a run: everything that can fail on the user's input, done before training starts.

prepare_sft() reads, validates, splits off the held-out records and tokenizes an instruction file,
then adds Fill-in-the-Middle examples when the recipe mixes them in (data.fim_mix);
prepare_pretrain() reads a code corpus and cuts it into blocks of `data.max_length` tokens with
Fill-in-the-Middle. Both run before the run folder exists, so bad input never leaves a half-made one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from codeinstruct.config import Recipe
from codeinstruct.data.corpus import iter_documents, read_corpus
from codeinstruct.data.fim_mix import FimMixReport, mix_fim_examples
from codeinstruct.data.pretrain import pretraining_blocks
from codeinstruct.data.records import InstructionRecord, load_instruction_data, split_held_out
from codeinstruct.data.sft import TokenizedExample, tokenize_records
from codeinstruct.errors import CodeinstructError
from codeinstruct.tokenizer import resolve_tokenizer


@dataclass
class PreparedData:
    tokenizer: object
    examples: list[TokenizedExample]  # epoch 0's (every epoch's, unless examples_for_epoch is set)
    report: object  # TokenizeReport (finetune) or CorpusReport (pretrain), for the CLI to show
    held_out: list[InstructionRecord] = field(default_factory=list)
    fim_mix: FimMixReport | None = None  # what data.fim_mix added (finetune with the mix only)
    # Pretraining redraws FIM each epoch; the row count must stay that of epoch 0.
    examples_for_epoch: Callable[[int], list[TokenizedExample]] | None = None
    kind: str = "finetune"  # or "pretrain": what the model card says was done

    def epoch_examples(self, epoch: int) -> list[TokenizedExample]:
        return self.examples if self.examples_for_epoch is None or epoch == 0 else self.examples_for_epoch(epoch)


def prepare_sft(recipe: Recipe) -> PreparedData:
    """Instruction records -> held-out split -> tokenized examples, all before the run folder exists."""
    tokenizer_spec = recipe.model.tokenizer or recipe.model.source
    if tokenizer_spec.startswith("preset:"):
        raise CodeinstructError("model.tokenizer is required when model.source is a preset")
    if not isinstance(recipe.data.train, str):
        raise CodeinstructError("data.train: fine-tuning reads one instruction file")
    tokenizer = resolve_tokenizer(tokenizer_spec)
    records = load_instruction_data(recipe.data.train)
    if recipe.data.limit:
        records = records[: recipe.data.limit]
    train_records, held_out = split_held_out(records, recipe.data.held_out, recipe.seed)
    examples, report = tokenize_records(
        train_records, tokenizer, recipe.data.max_length, recipe.data.overlong, source=recipe.data.train
    )
    mix_report = None
    if recipe.data.fim_mix is not None:
        examples, mix_report = _mix_fim(recipe, tokenizer, examples, train_records)
    return PreparedData(tokenizer, examples, report, held_out, fim_mix=mix_report)


def _mix_fim(
    recipe: Recipe, tokenizer, examples: list[TokenizedExample], train_records: list[InstructionRecord]
) -> tuple[list[TokenizedExample], FimMixReport]:
    """data.fim_mix: FIM examples from the corpus and the training responses (never the held-out ones)."""
    mix = recipe.data.fim_mix
    corpus: list[str] = []
    if mix.sources:
        documents = iter_documents(mix.sources, include=mix.include)
        corpus = [d.content for d in itertools.islice(documents, mix.limit)]
        if not corpus:
            raise CodeinstructError(f"data.fim_mix.corpus: no documents found in {', '.join(mix.sources)}")
    return mix_fim_examples(
        examples,
        tokenizer,
        corpus=corpus,
        responses=[r.response for r in train_records] if mix.from_responses else (),
        fraction=mix.fraction,
        fim_rate=mix.fim_rate,
        fim_spm_rate=mix.fim_spm_rate,
        loss=mix.loss,
        max_length=recipe.data.max_length,
        chunk_tokens=mix.chunk_tokens,
        seed=recipe.seed,
    )


def prepare_pretrain(recipe: Recipe) -> PreparedData:
    """Corpus -> tokens with FIM -> blocks of data.max_length, all before the run folder exists."""
    if not recipe.model.tokenizer:
        raise CodeinstructError(
            "model.tokenizer is required for pretraining (train one with `codeinstruct tokenizer train`)"
        )
    if recipe.data.fim_mix is not None:
        raise CodeinstructError("data.fim_mix: mixes FIM into fine-tuning; pretraining has data.fim_rate")
    tokenizer = resolve_tokenizer(recipe.model.tokenizer)
    sources = [recipe.data.train] if isinstance(recipe.data.train, str) else recipe.data.train
    documents, report = read_corpus(sources, include=recipe.data.include)
    if recipe.data.limit:
        documents = documents[: recipe.data.limit]
    if not documents:
        raise CodeinstructError(f"data.train: no documents found in {', '.join(sources)}")
    texts = [d.content for d in documents]
    d = recipe.data

    def blocks(epoch: int, n_blocks: int | None = None) -> list[TokenizedExample]:
        return pretraining_blocks(
            texts,
            tokenizer,
            d.max_length,
            fim_rate=d.fim_rate,
            fim_spm_rate=d.fim_spm_rate,
            seed=recipe.seed,
            epoch=epoch,
            n_blocks=n_blocks,
        )

    first = blocks(0)
    return PreparedData(
        tokenizer, first, report, examples_for_epoch=lambda epoch: blocks(epoch, len(first)), kind="pretrain"
    )
