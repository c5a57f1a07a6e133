"""The server's overhead: streaming over HTTP (`codeinstruct serve`) against the engine called in-process.

    .venv/bin/python benchmarks/serve.py [--preset tiny] [--clients 1,8,32] [--requests 96] [--new-tokens 64]

One model (random weights, the stdlib BPE tokenizer) is saved as a model directory. The same
requests (32-token openings of standard-library files, greedy, exactly --new-tokens tokens each,
streamed) are sent by 1, 8 and 32 concurrent clients to:

  in-process   an `Engine` with 32 slots running on its background thread; clients are threads
               iterating their request handles (what a Python caller of the library gets)
  http         `codeinstruct serve --max-concurrency 32` in its own process; clients are asyncio
               tasks streaming /v1/completions with httpx (what an editor or the openai client gets)

For each: requests/s, time to first token (TTFT, from sending to the first streamed text) and time
per output token after the first (TPOT = (last - first) / (tokens - 1), per request), p50 and p95.
The http/in-process ratios show what HTTP, JSON, server-sent events and the event loop cost.
Client and server share this machine's cores; absolute numbers on a shared machine are noise,
the ratios less so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from generation import stdlib_prompts  # the same prompts as benchmarks/generation.py

from codeinstruct.data.stats import percentile
from codeinstruct.infer.engine import Engine
from codeinstruct.infer.sampling import SamplingParams

SLOTS = 32


def summarize(samples: list[tuple[float, float, int]], seconds: float) -> dict:
    """samples: (ttft_s, last_minus_first_s, tokens) per request."""
    ttft = [s[0] for s in samples]
    tpot = [s[1] / (s[2] - 1) for s in samples if s[2] > 1]
    return {
        "requests": len(samples),
        "seconds": seconds,
        "req_s": len(samples) / seconds,
        "tokens_s": sum(s[2] for s in samples) / seconds,
        "ttft_p50_ms": 1e3 * statistics.median(ttft),
        "ttft_p95_ms": 1e3 * percentile(ttft, 95),
        "tpot_p50_ms": 1e3 * statistics.median(tpot),
        "tpot_p95_ms": 1e3 * percentile(tpot, 95),
    }


# --------------------------------------------------------------------------- in-process


def run_in_process(engine: Engine, prompts: list[list[int]], clients: int, new_tokens: int) -> dict:
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    queue = list(reversed(prompts))
    lock = threading.Lock()
    samples: list[tuple[float, float, int]] = []

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                ids = queue.pop()
            sent = time.perf_counter()
            handle = engine.submit(ids, params)
            first = last = None
            for event in handle:
                if event.text:
                    last = time.perf_counter()
                    first = first or last
            out = handle.result()
            with lock:
                samples.append((first - sent, last - first, out.completion_tokens))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(samples, time.perf_counter() - start)


# --------------------------------------------------------------------------- http


async def _http_run(url: str, prompts: list[list[int]], clients: int, new_tokens: int) -> dict:
    queue = list(reversed(prompts))
    samples: list[tuple[float, float, int]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

        async def client() -> None:
            while queue:
                ids = queue.pop()
                body = {
                    "prompt": ids,
                    "max_tokens": new_tokens,
                    "temperature": 0,
                    "ignore_eos": True,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                sent = time.perf_counter()
                first = last = None
                tokens = 0
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    r.raise_for_status()
                    async for line in r.aiter_lines():
                        if not line.startswith("data: {"):
                            continue
                        event = json.loads(line[6:])
                        if event["choices"] and event["choices"][0]["text"]:
                            last = time.perf_counter()
                            first = first or last
                        if event.get("usage"):
                            tokens = event["usage"]["completion_tokens"]
                samples.append((first - sent, last - first, tokens))

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return summarize(samples, time.perf_counter() - start)


def run_http(url: str, prompts: list[list[int]], clients: int, new_tokens: int) -> dict:
    return asyncio.run(_http_run(url, prompts, clients, new_tokens))


def start_server(model_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    out = log.open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "codeinstruct",
            "serve",
            "--model",
            str(model_dir),
            "--port",
            "0",
            "--max-concurrency",
            str(SLOTS),
            "--max-queue",
            str(4 * SLOTS),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    end = time.monotonic() + 120
    while not (m := re.search(r"at (http://[\d.]+:\d+)/v1", log.read_text())):
        if proc.poll() is not None or time.monotonic() > end:
            raise SystemExit(f"the server did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return proc, m.group(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--requests", type=int, default=96)  # 3 waves at 32 clients: p50 is not a wave boundary
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from codeinstruct.modeling import preset_config, save_hf_directory
    from codeinstruct.tokenizer import resolve_tokenizer

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    tokenizer = resolve_tokenizer("builtin:stdlib")
    prompts = stdlib_prompts(tokenizer, args.requests, args.prompt_tokens)
    model = AutoModelForCausalLM.from_config(
        preset_config(args.preset, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    ).eval()
    levels = [int(c) for c in args.clients.split(",")]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; preset {args.preset} "
        f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters), {SLOTS} slots; "
        f"{args.requests} requests "
        f"x {args.new_tokens} new tokens after {args.prompt_tokens}-token prompts, greedy, streamed"
    )
    print("client and server share this machine's cores; on a shared machine absolute figures are noise\n")
    report: dict = {"preset": args.preset, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_hf_directory(model, tokenizer, Path(tmp) / "model")
        engine = Engine(model, tokenizer, max_batch_size=SLOTS)
        engine.start()
        run_in_process(engine, prompts[:SLOTS], SLOTS, 4)  # warm-up
        in_process = {c: run_in_process(engine, prompts, c, args.new_tokens) for c in levels}
        engine.stop()
        proc, url = start_server(model_dir, Path(tmp) / "server.log")
        try:
            run_http(url, prompts[:SLOTS], SLOTS, 4)  # warm-up
            http = {c: run_http(url, prompts, c, args.new_tokens) for c in levels}
        finally:
            proc.terminate()
            proc.wait(30)
    header = (
        f"{'clients':>7} {'mode':10} {'req/s':>7} {'tok/s':>8} {'TTFT p50':>9} {'TTFT p95':>9} "
        f"{'TPOT p50':>9} {'TPOT p95':>9}   (ms)"
    )
    print(header)
    print("-" * len(header))
    for c in levels:
        for mode, row in (("in-process", in_process[c]), ("http", http[c])):
            print(
                f"{c:7d} {mode:10} {row['req_s']:7.1f} {row['tokens_s']:8.0f} {row['ttft_p50_ms']:9.1f} "
                f"{row['ttft_p95_ms']:9.1f} {row['tpot_p50_ms']:9.2f} {row['tpot_p95_ms']:9.2f}"
            )
        a, b = in_process[c], http[c]
        print(
            f"{c:7d} {'http/in':10} {b['req_s'] / a['req_s']:6.2f}x {b['tokens_s'] / a['tokens_s']:7.2f}x "
            f"{b['ttft_p50_ms'] / a['ttft_p50_ms']:8.2f}x {b['ttft_p95_ms'] / a['ttft_p95_ms']:8.2f}x "
            f"{b['tpot_p50_ms'] / a['tpot_p50_ms']:8.2f}x {b['tpot_p95_ms'] / a['tpot_p95_ms']:8.2f}x"
        )
        report["rows"][c] = {"in_process": a, "http": b}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
