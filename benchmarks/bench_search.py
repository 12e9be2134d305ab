"""Exact search latency and memory of `distill.search.top_k` at 10k, 100k and 1M index entries.

    python benchmarks/bench_search.py [--dim 512] [--top 10] [--rounds 5]

Each size runs in its own child process: a random float16 L2-normalised gallery (as `distill.index` stores
it), then `--rounds` queries; prints the median latency and the peak resident memory the search adds to
the gallery's (ru_maxrss after the search minus before it), and the gallery's own size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def measure(entries: int, dim: int, top: int, rounds: int) -> dict:
    import statistics
    import time

    import torch

    from distill.search import top_k

    torch.manual_seed(0)
    gallery = torch.empty(entries, dim, dtype=torch.float16)
    for start in range(0, entries, 10_000):  # in pieces of 20 MB, so building it peaks little above it
        part = torch.randn(min(10_000, entries - start), dim)
        gallery[start : start + len(part)] = torch.nn.functional.normalize(part, dim=1).half()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(rounds + 1):  # the first warms up
        query = torch.nn.functional.normalize(torch.randn(dim), dim=0)
        start = time.perf_counter()
        top_k(query, gallery, top)
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "ms": 1e3 * statistics.median(times[1:]),
        "extra_mb": (after - before) / 1024,
        "gallery_mb": gallery.numel() * 2 / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.dim, args.top, args.rounds)))
        return
    import torch

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; {args.dim}-d float16 entries, top {args.top}, median of {args.rounds} "
        "queries\n"
    )
    print("| entries | ms / query | gallery (MB) | search's extra peak memory (MB) |\n|---:|---:|---:|---:|")
    for entries in (10_000, 100_000, 1_000_000):
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(entries),
                "--dim",
                str(args.dim),
                "--top",
                str(args.top),
                "--rounds",
                str(args.rounds),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        r = json.loads(done.stdout.splitlines()[-1])
        print(f"| {entries:,} | {r['ms']:.1f} | {r['gallery_mb']:.0f} | {r['extra_mb']:.0f} |")


if __name__ == "__main__":
    main()
