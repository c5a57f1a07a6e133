"""Decoding throughput on CPU: transformers' generate() against codeinstruct's engine, side by side.

    .venv/bin/python benchmarks/generation.py [--presets tiny,small] [--requests 16] [--new-tokens 128]

For each model preset (random weights, the stdlib BPE tokenizer of 4,096 tokens) the same prompts
(32-token openings of standard-library files) are decoded greedily to exactly --new-tokens:

  generate x1    transformers `model.generate`, one request at a time (the baseline)
  engine x1      the engine, one request at a time
  engine x4/x16  the engine with 4 / 16 requests in flight (continuous batching)

Aggregate tokens/s, the ratio to the baseline, and p50/p95 time per output token (the gaps between
a sequence's consecutive tokens) are printed. The memory-bandwidth bound of single-stream decoding
is the weight bytes read per step (every matrix once, embeddings as the tied output layer) divided
by this machine's measured copy bandwidth (2 x bytes / time of a large tensor copy, read + write).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from codeinstruct.data.stats import percentile
from codeinstruct.infer.engine import Engine
from codeinstruct.infer.sampling import SamplingParams
from codeinstruct.modeling import preset_config


def copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def weight_bytes_per_step(model) -> int:
    """Bytes of weights one decode step reads: all but the position table (one row of it is read)."""
    skip = {id(model.transformer.wpe.weight)}
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or id(p) in skip:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def stdlib_prompts(tokenizer, n: int, length: int) -> list[list[int]]:
    from codeinstruct.data.builtin import stdlib_source_texts

    prompts = []
    for text in stdlib_source_texts():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            prompts.append(ids[:length])
        if len(prompts) == n:
            return prompts
    raise SystemExit("not enough standard-library sources for the prompts")


def bench_generate(model, prompts, new_tokens) -> dict:
    gaps, total, start = [], 0, time.perf_counter()
    for ids in prompts:
        x = torch.tensor([ids])
        t = time.perf_counter()
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        n = out.shape[1] - x.shape[1]
        total += n
        gaps.append((time.perf_counter() - t) / n)  # per-token time of this request (no per-token hook)
    seconds = time.perf_counter() - start
    return {
        "tokens": total,
        "seconds": seconds,
        "tok_s": total / seconds,
        "p50_ms": 1e3 * statistics.median(gaps),
        "p95_ms": 1e3 * percentile(gaps, 95),
    }


def bench_engine(model, tokenizer, prompts, new_tokens, concurrency) -> dict:
    engine = Engine(model, tokenizer, max_batch_size=concurrency, max_tokens_per_step=512)
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    engine.generate(prompts[:1], SamplingParams(max_new_tokens=4, ignore_eos=True))  # warm-up
    start = time.perf_counter()
    handles = [engine.submit(p, params) for p in prompts]
    results = [h.result() for h in handles]
    seconds = time.perf_counter() - start
    gaps = [b - a for h in handles for s in h.sequences for a, b in zip(s.token_times, s.token_times[1:])]
    total = sum(r.completion_tokens for r in results)
    return {
        "tokens": total,
        "seconds": seconds,
        "tok_s": total / seconds,
        "p50_ms": 1e3 * statistics.median(gaps),
        "p95_ms": 1e3 * percentile(gaps, 95),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from codeinstruct.tokenizer import resolve_tokenizer

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    tokenizer = resolve_tokenizer("builtin:stdlib")
    prompts = stdlib_prompts(tokenizer, args.requests, args.prompt_tokens)
    bandwidth = copy_bandwidth()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
        f"{args.requests} requests x {args.new_tokens} new tokens after {args.prompt_tokens}-token prompts, greedy"
    )
    report = {"bandwidth_bytes_s": bandwidth, "presets": {}}
    header = (
        f"{'preset':8} {'params':>7} {'mode':12} {'tok/s':>9} {'vs generate':>12} {'p50 ms/tok':>11} {'p95 ms/tok':>11}"
    )
    print(header)
    print("-" * len(header))
    for preset in args.presets.split(","):
        config = preset_config(preset, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
        model = AutoModelForCausalLM.from_config(config).eval()
        params = sum(p.numel() for p in model.parameters())
        bound = bandwidth / weight_bytes_per_step(model)
        rows = {"generate x1": bench_generate(model, prompts, args.new_tokens)}
        for c in (1, 4, 16):
            rows[f"engine x{c}"] = bench_engine(model, tokenizer, prompts, args.new_tokens, c)
        base = rows["generate x1"]["tok_s"]
        for mode, r in rows.items():
            r["vs_generate"] = r["tok_s"] / base
            print(
                f"{preset:8} {params / 1e6:6.1f}M {mode:12} {r['tok_s']:9,.0f} {r['vs_generate']:11.2f}x "
                f"{r['p50_ms']:11.2f} {r['p95_ms']:11.2f}"
            )
        single = rows["engine x1"]["tok_s"]
        print(
            f"{preset:8} bandwidth bound (single stream): {bound:,.0f} tok/s "
            f"({weight_bytes_per_step(model) / 1e6:.1f} MB of weights per step); "
            f"engine x1 reaches {single / bound:.1%} of it"
        )
        report["presets"][preset] = {"params": params, "bound_tok_s": bound, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    with torch.inference_mode():
        main()
