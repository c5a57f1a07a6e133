"""Single-stream decoding: codeinstruct's `Engine` against llama.cpp at equal precision, on the same model.

    .venv/bin/python benchmarks/decode_vs_llamacpp.py [--shapes 4m,130m] [--new-tokens 128] [--repeats 3]

For each model shape (benchmarks/shapes.py: random weights) the directory is exported to GGUF with
`codeinstruct export gguf` (export/gguf.py) in each precision and run by llama.cpp through
llama-cpp-python (in this venv; `.ci/run` builds it, or: CMAKE_ARGS="-DGGML_NATIVE=on -DLLAMA_BUILD_TESTS=off
-DLLAMA_BUILD_EXAMPLES=off -DLLAMA_CURL=off" .venv/bin/pip install llama-cpp-python==0.3.36; GGML_NATIVE=on
lets it use every instruction this CPU has, the strongest peer):

    f32   llama.cpp f32      against  Engine --dtype float32
    16    llama.cpp f16      against  Engine --dtype bfloat16 (no bf16 GGUF export; both 16-bit weights)
    8     llama.cpp q8_0     against  Engine --dtype int8 (int8 matrices, per-token int8 activations)

Both get the same 80-token prompt (ids, so no tokenizer differs) and decode --new-tokens tokens greedily,
one request alone, with as many threads as torch uses (the cores). Decode speed is (tokens - 1) / (time of
the last token - time of the first): prefill is left out, and reported apart as prompt tokens/s. The runs
alternate (llama.cpp, engine, llama.cpp, ...) --repeats times and the best of each is kept, so that load
from elsewhere hits both alike; the load average is printed. llama.cpp's own counters (decode time inside
llama_decode, without Python) are printed beside its wall-clock figure. Greedy outputs of the two are
compared token for token at f32 (random weights: ties are rare, differences at 16 and 8 bits are expected).
On a machine others are using, --threads 1 and the CPU-time columns (CPU time per decoded token, from a
whole run minus a run stopped at its first token) compare the two more steadily than the wall clock.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from shapes import build_model_dir

PAIRS = (("f32", "float32"), ("f16", "bfloat16"), ("q8_0", "int8"))


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def prompt_ids(model_dir: Path, length: int) -> list[int]:
    from codeinstruct.data.builtin import stdlib_source_texts
    from codeinstruct.tokenizer import encode_text, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    for text in stdlib_source_texts():
        ids = encode_text(tokenizer, text)
        if len(ids) >= length:
            return ids[:length]
    raise SystemExit("no standard-library source is long enough for the prompt")


def run_llama(llm, ids: list[int], new_tokens: int) -> dict:
    import llama_cpp

    llm.reset()
    llama_cpp.llama_perf_context_reset(llm.ctx)
    cpu = time.process_time()
    start = time.perf_counter()
    times, out = [], []
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        times.append(time.perf_counter())
        out.append(token)
        if len(out) == new_tokens:
            break
    cpu = time.process_time() - cpu
    perf = llama_cpp.llama_perf_context(llm.ctx)
    return {
        "cpu_s": cpu,
        "tokens": out,
        "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan"),
        "prefill_tok_s": len(ids) / (times[0] - start),
        "own_decode_tok_s": perf.n_eval / (perf.t_eval_ms / 1e3) if perf.t_eval_ms else float("nan"),
    }


def run_engine(engine, ids: list[int], new_tokens: int) -> dict:
    from codeinstruct.infer.sampling import SamplingParams

    cpu = time.process_time()
    handle = engine.submit(ids, SamplingParams(max_new_tokens=new_tokens, ignore_eos=True))
    output = handle.result()
    cpu = time.process_time() - cpu
    times = handle.sequences[0].token_times
    return {
        "cpu_s": cpu,
        "tokens": output.choices[0].token_ids,
        "decode_tok_s": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan"),
        "prefill_tok_s": len(ids) / (times[0] - handle.submitted_at),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="4m,130m")
    ap.add_argument("--precisions", default="f32,f16,q8_0", help="llama.cpp's names (see the table above)")
    ap.add_argument("--prompt-tokens", type=int, default=80)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "decode_vs_llamacpp")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("llama-cpp-python is not installed in this venv (see the docstring to build it)") from None
    from transformers.utils import logging as hf_logging

    from codeinstruct.export.gguf import export_gguf
    from codeinstruct.infer.engine import Engine

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"llama-cpp-python {llama_cpp.__version__}, torch {torch.__version__}, {args.threads} threads each; "
        f"{args.prompt_tokens}-token prompt, {args.new_tokens} tokens greedy; before: {load_average()}",
        flush=True,
    )
    wanted = args.precisions.split(",")
    rows = []
    for shape in args.shapes.split(","):
        model_dir = build_model_dir(shape, args.work_dir / f"model-{shape}")
        ids = prompt_ids(model_dir, args.prompt_tokens)
        for gguf_type, dtype in PAIRS:
            if gguf_type not in wanted:
                continue
            gguf = args.work_dir / f"{shape}-{gguf_type}.gguf"
            if not gguf.is_file():
                export_gguf(model_dir, gguf, type=gguf_type)
            llm = llama_cpp.Llama(
                str(gguf),
                n_ctx=512,
                n_batch=512,
                n_threads=args.threads,
                n_threads_batch=args.threads,
                verbose=False,
            )
            # no prefix reuse: every run prefills the whole prompt, as llama.cpp's after reset() does
            engine = Engine.from_pretrained(model_dir, dtype=dtype, max_batch_size=1, max_seq_len=512, prefix_slots=0)
            run_llama(llm, ids, 8)  # warm-up
            run_engine(engine, ids, 8)
            # CPU time of a decoded token: (a whole run - a run that stops at the first token) / the rest
            cpu_llama = min(run_llama(llm, ids, 1)["cpu_s"] for _ in range(3))
            cpu_engine = min(run_engine(engine, ids, 1)["cpu_s"] for _ in range(3))
            best_llama, best_engine = None, None
            for _ in range(args.repeats):
                a, b = run_llama(llm, ids, args.new_tokens), run_engine(engine, ids, args.new_tokens)
                if best_llama is None or a["decode_tok_s"] > best_llama["decode_tok_s"]:
                    best_llama = a
                if best_engine is None or b["decode_tok_s"] > best_engine["decode_tok_s"]:
                    best_engine = b
            same = sum(x == y for x, y in zip(best_llama["tokens"], best_engine["tokens"]))
            llama_ms = 1e3 * (best_llama["cpu_s"] - cpu_llama) / (args.new_tokens - 1)
            engine_ms = 1e3 * (best_engine["cpu_s"] - cpu_engine) / (args.new_tokens - 1)
            row = {
                "shape": shape,
                "llama": gguf_type,
                "engine": dtype,
                "llama_decode_tok_s": best_llama["decode_tok_s"],
                "llama_own_decode_tok_s": best_llama["own_decode_tok_s"],
                "engine_decode_tok_s": best_engine["decode_tok_s"],
                "ratio": best_engine["decode_tok_s"] / best_llama["decode_tok_s"],
                "llama_prefill_tok_s": best_llama["prefill_tok_s"],
                "engine_prefill_tok_s": best_engine["prefill_tok_s"],
                "llama_cpu_ms_per_token": llama_ms,
                "engine_cpu_ms_per_token": engine_ms,
                "cpu_ratio": llama_ms / engine_ms,
                "greedy_tokens_equal": same,
                "engine_native_step": getattr(engine.runner, "native", None) is not None,
            }
            rows.append(row)
            print(
                f"{shape:5} {gguf_type:5} vs {dtype:9} llama.cpp {row['llama_decode_tok_s']:7.1f} tok/s "
                f"(own counters {row['llama_own_decode_tok_s']:7.1f})  engine {row['engine_decode_tok_s']:7.1f} tok/s"
                f"  ratio {row['ratio']:5.2f}x   prefill tok/s: llama.cpp {row['llama_prefill_tok_s']:7.0f}, "
                f"engine {row['engine_prefill_tok_s']:7.0f}   CPU ms/token: llama.cpp {llama_ms:6.2f}, "
                f"engine {engine_ms:6.2f} (ratio {row['cpu_ratio']:5.2f}x)   same greedy tokens "
                f"{same}/{args.new_tokens}   native step {'on' if row['engine_native_step'] else 'off'}",
                flush=True,
            )
            del llm, engine
    print(f"after: {load_average()}")
    print("ratio = engine / llama.cpp decode tokens/s (wall clock, through each one's Python API): >1 favours us")
    print("CPU ratio = llama.cpp / engine CPU time per decoded token (steadier on a busy machine with --threads 1)")
    if args.json:
        args.json.write_text(json.dumps({"load_average": os.getloadavg(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
