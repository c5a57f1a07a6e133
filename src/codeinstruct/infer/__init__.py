"""Inference: generation on one model with continuous batching and streamed text.

engine (the scheduler: `Engine`), runners (a model's forward over the KV cache: `ModelRunner`),
lora (unmerged LoRA adapters chosen per request: `load_adapters`), requests (what a caller holds:
handles, stream events, outputs), sampling (`SamplingParams`, token choice, log-probabilities),
streaming (detokenizing and stop strings), generate (the Alpaca prompt and FIM on the engine).
Model directories are loaded by `codeinstruct.modeling.load_for_inference`.
"""
