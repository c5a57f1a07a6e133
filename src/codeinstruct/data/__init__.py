"""Data: what training reads, from files on disk to batches.

Instruction data (supervised fine-tuning):

- `records`: read and validate instruction records (GPTeacher/Alpaca JSON, JSONL, `builtin:stdlib`).
- `sft`: records -> token ids with response-only labels.

Code corpus (tokenizer training, pretraining, the attribution index):

- `corpus`: the reader: documents with repo, path, license and language; junk skipped and counted.
- `languages`: the language table, file extensions to languages.
- `licenses`: SPDX normalisation of declared license names, classification of license texts.
- `provenance`: a directory's project and license from manifests, LICENSE files and dist-info.
- `builtin`: the offline default data, built from the running interpreter's standard library.

Training examples:

- `fim`: Fill-in-the-Middle transformation of a document.
- `pretrain`: documents joined and cut into blocks for causal-LM pretraining.
- `packing`: examples into rows, packed with isolated examples or padded, and rows into tensors.
- `batches`: which rows each step, micro-batch and rank trains on.

Reports:

- `stats`: nearest-rank percentiles (token lengths, benchmark latencies).
"""
