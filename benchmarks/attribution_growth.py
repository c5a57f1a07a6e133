"""What attribution costs as the corpus grows, fitted and extrapolated to a StarCoder-sized corpus.

    .venv/bin/python benchmarks/attribution_growth.py --sizes 30 300 1000 \
        --sources builtin:stdlib .venv/lib/python3.11/site-packages DIR... [--per-kind 100] [--workdir W] [--out F]

For each size it runs benchmarks/attribution.py (the same near-duplicate-heavy corpus drawn from
the sources, the same plants and judging) in its own process and keeps the index, then opens the
index again in a fresh process to measure the open time and how much memory opening takes
(resident set before and after: an index opened memory-mapped reads only its manifest and maps
the rest). Every size uses the same --workers on the same machine.

Each measure y is fitted against the corpus size x as y = a * x^b (least squares on log-log over
the sizes measured) and extrapolated to StarCoderData (--target-gb, 800 GB by default): the index
size, the build time on one machine like this one, the machines needed to build it in
--target-hours with the build's shards as tasks on a cluster (the build of independent shards
scales with the machines; the merge is only the manifest), and the query latency when the index is
cut into shards of --shard-gb each, all queried by one process (latency grows with the number of
shards) or each shard by its own worker (latency of one shard plus the merge).

Sources with more than about 1 GB of Python are needed for the largest size: the stdlib and a
large environment's site-packages give about 400 MB; the sources of a few large packages'
wheels (unzipped, e.g. tensorflow-cpu, ansible, azure-mgmt-network, google-cloud-aiplatform,
kubernetes, scipy, pandas, sympy, homeassistant) give the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

OPEN_PROBE = r"""
import json, sys, time
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
import codeinstruct.attribution as attribution
before = rss()
t = time.perf_counter()
index = attribution.AttributionIndex.open(sys.argv[1])
open_s = time.perf_counter() - t
after = rss()
t = time.perf_counter()
attribution.AttributionIndex.open(sys.argv[1], verify=False)
open_noverify_s = time.perf_counter() - t
print(json.dumps({"open_s": open_s, "open_noverify_s": open_noverify_s, "rss_before": before, "rss_after": after}))
"""


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """(a, b) of y = a * x^b, least squares on log-log."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.maximum(np.asarray(ys, float), 1e-12))
    b, log_a = np.polyfit(lx, ly, 1)
    return float(math.exp(log_a)), float(b)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(size_mb: float, args: argparse.Namespace, workdir: Path) -> dict:
    work = workdir / f"{size_mb:g}mb"
    out = work / "results.json"
    if out.exists() and args.reuse:
        results = json.loads(out.read_text())
    else:
        if work.exists():
            subprocess.run(["rm", "-rf", str(work)], check=True)
        work.mkdir(parents=True)
        cmd = [sys.executable, str(HERE / "attribution.py"), "--size-mb", f"{size_mb:g}"]
        cmd += ["--per-kind", str(args.per_kind), "--workers", str(args.workers), "--seed", str(args.seed)]
        cmd += ["--workdir", str(work), "--out", str(out)]
        if args.sources:
            cmd += ["--sources", *args.sources]
        print(f"== {size_mb:g} MB: {' '.join(cmd)}", flush=True)
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"   ({time.perf_counter() - t:.0f} s)", flush=True)
        results = json.loads(out.read_text())
    probe = subprocess.run(
        [sys.executable, "-c", OPEN_PROBE, str(work / "index")], check=True, capture_output=True, text=True
    )
    opened = json.loads(probe.stdout.strip().splitlines()[-1])
    return {
        "corpus_mb": results["corpus"]["mb"],
        "documents": results["corpus"]["documents"],
        "duplication": results["corpus"]["duplication"].get("shingles_elsewhere"),
        "build_s": results["build"]["seconds"],
        "build_mb_per_s": results["build"]["mb_per_s"],
        "build_load_average": results["build"]["load_average"],
        "shards": results["build"].get("shards", 1),
        "index_mb": round(dir_bytes(work / "index") / 1e6, 1),
        "open_ms": round(opened["open_s"] * 1e3, 1),
        "open_noverify_ms": round(opened["open_noverify_s"] * 1e3, 1),
        "open_rss_mb": round((opened["rss_after"] - opened["rss_before"]) / 1e6, 1),
        "p50_ms": results["latency_ms"]["p50"],
        "p95_ms": results["latency_ms"]["p95"],
        "recall": results["recall"],
        "precision": results["precision"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", type=float, default=[30, 300, 1000], help="corpus sizes in MB")
    ap.add_argument("--sources", nargs="*", help="corpus sources (default: attribution.py's: stdlib + .venv)")
    ap.add_argument("--per-kind", type=int, default=100, help="plants per kind at each size (latency and recall)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, help="keep corpora, indexes and results here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="reuse a size's results.json in --workdir if present")
    ap.add_argument("--target-gb", type=float, default=800.0, help="corpus to extrapolate to (StarCoderData)")
    ap.add_argument("--target-hours", type=float, default=24.0, help="build deadline for the machine count")
    ap.add_argument("--shard-gb", type=float, default=10.0, help="shard size for the extrapolated query latency")
    ap.add_argument("--out", type=Path, help="write rows, fits and extrapolation as JSON here")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        rows = [measure(size, args, workdir) for size in args.sizes]

    print()
    print("| corpus | documents | build | build rate | index | index/corpus | open | RSS on open | query p50 | p95 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['corpus_mb']:,.0f} MB | {r['documents']:,} | {r['build_s']:,.0f} s | {r['build_mb_per_s']:.1f} MB/s "
            f"| {r['index_mb']:,.0f} MB | {r['index_mb'] / r['corpus_mb']:.1%} | {r['open_ms']:.0f} ms "
            f"| {r['open_rss_mb']:.0f} MB | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms |"
        )
    print()
    xs = [r["corpus_mb"] for r in rows]
    target_mb = args.target_gb * 1e3
    fits = {}
    for key in ("build_s", "index_mb", "open_ms", "open_rss_mb", "p50_ms", "p95_ms"):
        a, b = fit(xs, [max(r[key], 1e-3) for r in rows])
        fits[key] = {"a": a, "b": b, "at_target": a * target_mb**b}
        print(f"{key:<12} ~ {a:.3g} * MB^{b:.2f}   -> {fits[key]['at_target']:,.3g} at {args.target_gb:g} GB")

    # Build and index size are extrapolated from the largest size's rate and ratio (each shard is built alone,
    # so the work is linear in the corpus; smaller sizes carry fixed costs such as starting Ray that would
    # make a power-law fit look sublinear). Shards are independent tasks, so the build divides by the machines.
    largest = rows[-1]
    build_hours_one = target_mb / largest["build_mb_per_s"] / 3600
    machines = max(1, math.ceil(build_hours_one / args.target_hours))
    index_gb = target_mb * largest["index_mb"] / largest["corpus_mb"] / 1e3
    shard_mb = args.shard_gb * 1e3
    shards = math.ceil(target_mb / shard_mb)
    per_shard_p50 = fits["p50_ms"]["a"] * shard_mb ** fits["p50_ms"]["b"]
    per_shard_p95 = fits["p95_ms"]["a"] * shard_mb ** fits["p95_ms"]["b"]
    per_shard_open = fits["open_ms"]["a"] * shard_mb ** fits["open_ms"]["b"]
    extrapolation = {
        "target_gb": args.target_gb,
        "build_hours_one_machine": build_hours_one,
        "machines_for_target_hours": machines,
        "target_hours": args.target_hours,
        "index_gb": index_gb,
        "shards": shards,
        "shard_gb": args.shard_gb,
        "open_s_all_shards": shards * per_shard_open / 1e3,
        "query_p50_ms_one_process": shards * per_shard_p50,
        "query_p95_ms_one_process": shards * per_shard_p95,
        "query_p50_ms_worker_per_shard": per_shard_p50,
        "query_p95_ms_worker_per_shard": per_shard_p95,
    }
    print()
    print(
        f"StarCoderData ({args.target_gb:g} GB): build {build_hours_one:,.0f} h on one {os.cpu_count()}-CPU machine "
        f"like this one = {machines} such machines for {args.target_hours:g} h; index {index_gb:,.0f} GB in {shards} "
        f"shards of {args.shard_gb:g} GB (open {extrapolation['open_s_all_shards']:.1f} s); query p50/p95 "
        f"{extrapolation['query_p50_ms_one_process']:,.0f}/{extrapolation['query_p95_ms_one_process']:,.0f} ms with "
        f"all shards in one process, {per_shard_p50:.1f}/{per_shard_p95:.1f} ms plus the merge with a worker per shard"
    )
    if args.out:
        args.out.write_text(json.dumps({"rows": rows, "fits": fits, "extrapolation": extrapolation}, indent=1) + "\n")


if __name__ == "__main__":
    main()
