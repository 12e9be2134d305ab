"""Search latency, memory and FAISS recall at 10k, 100k and 1M index entries.

    python benchmarks/bench_search.py [--dim 512] [--top 10] [--rounds 20] [--sizes 10000 100000 1000000]

Each size runs in its own child process, on a float16 L2-normalised gallery as `distill.retrieval.index` stores it, of
two kinds: `random` (uniform on the sphere: every entry nearly as far as any other, the hardest case for
an inverted-file index) and `clustered` (2,000 centres, each entry a centre plus noise, the query a noisy
copy of an entry: neighbours in cells, as real captions and their clips are). Exact search
(`distill.retrieval.search.top_k`) and the FAISS index (`distill.retrieval.ann`, at several `nprobe`) answer
the same queries;
prints median latency, recall@K of FAISS against exact search (the share of exact top-K rows it returns),
FAISS's build time, and the peak resident memory each adds to the gallery's (ru_maxrss).
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
NPROBES = (8, 32, 128)


def gallery_of(kind: str, entries: int, dim: int, queries: int):
    """`(gallery [N, D] float16, queries [Q, D] float32)`, both L2-normalised, built in 10k pieces."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(2000, dim, generator=g), dim=1)
    gallery = torch.empty(entries, dim, dtype=torch.float16)
    for start in range(0, entries, 10_000):
        n = min(10_000, entries - start)
        part = torch.randn(n, dim, generator=g)
        if kind == "clustered":  # noise of norm about 0.7 around a centre of norm 1
            part = centres[torch.randint(0, 2000, (n,), generator=g)] + 0.7 * part / dim**0.5
        gallery[start : start + n] = F.normalize(part, dim=1).half()
    if kind == "random":
        return gallery, F.normalize(torch.randn(queries, dim, generator=g), dim=1)
    picked = gallery[torch.randint(0, entries, (queries,), generator=g)].float()
    return gallery, F.normalize(picked + 0.5 * torch.randn(queries, dim, generator=g) / dim**0.5, dim=1)


def measure(kind: str, entries: int, dim: int, top: int, rounds: int) -> dict:
    import statistics
    import time

    from distill.retrieval import ann
    from distill.retrieval.search import top_k

    gallery, queries = gallery_of(kind, entries, dim, rounds + 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, exact = [], []
    for query in queries:  # the first warms up
        start = time.perf_counter()
        exact.append(set(top_k(query, [gallery], top)[1].tolist()))
        times.append(time.perf_counter() - start)
    found = {"exact_ms": 1e3 * statistics.median(times[1:]), "gallery_mb": gallery.numel() * 2 / 2**20}
    found["exact_extra_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    start = time.perf_counter()
    index = ann.build(gallery)
    found |= {"build_s": time.perf_counter() - start, "nlist": index.nlist}
    found["faiss_extra_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024
    for nprobe in NPROBES:
        times, recall = [], []
        for query, want in zip(queries, exact):
            start = time.perf_counter()
            rows = ann.top_k(index, query, top, nprobe)[1]
            times.append(time.perf_counter() - start)
            recall.append(len(want & set(rows.tolist())) / len(want))
        found[f"nprobe{nprobe}"] = {"ms": 1e3 * statistics.median(times[1:]), "recall": statistics.mean(recall[1:])}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20, help="queries a measurement (after one to warm up)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.dim, args.top, args.rounds)))
        return
    import faiss
    import torch

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, faiss {faiss.__version__}; {args.dim}-d float16 entries, top {args.top}, "
        f"median latency and mean recall@{args.top} of {args.rounds} queries\n"
    )
    probes = " | ".join(f"nprobe {n}: ms / recall@{args.top}" for n in NPROBES)
    print(
        f"| gallery | entries | exact ms | exact extra MB | gallery MB | FAISS build s (nlist) | FAISS extra MB | "
        f"{probes} |\n|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(NPROBES)
    )
    for kind in ("random", "clustered"):
        for entries in args.sizes:
            command = [sys.executable, __file__, "--child", kind, str(entries), "--dim", str(args.dim)]
            command += ["--top", str(args.top), "--rounds", str(args.rounds)]
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=True,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            r = json.loads(done.stdout.splitlines()[-1])
            cells = " | ".join(f"{r[f'nprobe{n}']['ms']:.1f} / {r[f'nprobe{n}']['recall']:.3f}" for n in NPROBES)
            print(
                f"| {kind} | {entries:,} | {r['exact_ms']:.1f} | {r['exact_extra_mb']:.0f} | {r['gallery_mb']:.0f} | "
                f"{r['build_s']:.1f} ({r['nlist']}) | {r['faiss_extra_mb']:.0f} | {cells} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
