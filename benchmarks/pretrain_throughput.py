"""Pretraining throughput on CPU: tokens/s of `codeinstruct pretrain` and model FLOP/s as a fraction
of this machine's measured matmul peak, both measured in the same run.

    .venv/bin/python benchmarks/pretrain_throughput.py [--docs 20] [--steps 40] [--preset small]

Model FLOPs per token follow the usual accounting for a decoder trained with backprop: 6 x parameters
(forward 2, backward 4) plus 12 x layers x hidden x context for attention scores and values. The peak is
the best fp32 rate of a square torch matmul (size 2048 by default) with the same thread count.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from codeinstruct.config import load_recipe, recipe_path
from codeinstruct.modeling import count_parameters
from codeinstruct.train.loop import train
from codeinstruct.train.prepare import prepare_pretrain


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=20, help="stdlib documents to pretrain on")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(
            recipe_path("tiny-pretrain-cpu"),
            [
                f"run_dir={tmp}/run",
                f"data.limit={args.docs}",
                f"model.source=preset:{args.preset}",
                f"data.max_length={args.max_length}",
                f"train.batch_size={args.batch_size}",
                "train.save_every=0",
                "train.log_every=1",
            ],
        )
        data = prepare_pretrain(recipe)
        peak_before = matmul_peak()
        result = train(recipe, data)
        peak_after = matmul_peak()
        metrics = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    # steady state: drop the first steps (allocator and kernel warm-up)
    skip = max(1, len(metrics) // 10)
    tokens = metrics[-1]["target_tokens"] - metrics[skip - 1]["target_tokens"]
    seconds = metrics[-1]["elapsed_s"] - metrics[skip - 1]["elapsed_s"]
    tokens_per_s = tokens / seconds

    from codeinstruct.modeling import preset_config

    cfg = preset_config(args.preset, vocab_size=len(data.tokenizer))
    n_params = count_parameters(cfg)
    flops_per_token = 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * args.max_length
    achieved = tokens_per_s * flops_per_token
    peak = max(peak_before, peak_after)
    rows = {
        "preset": args.preset,
        "parameters": n_params,
        "context": args.max_length,
        "batch_size": args.batch_size,
        "steps": result.steps,
        "threads": torch.get_num_threads(),
        "tokens_per_s": round(tokens_per_s, 1),
        "model_flop_per_token": flops_per_token,
        "achieved_gflop_s": round(achieved / 1e9, 2),
        "matmul_peak_gflop_s": round(peak / 1e9, 2),
        "fraction_of_peak": round(achieved / peak, 4),
        "final_loss": round(result.final_loss, 4),
    }
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
