"""Approximate search for galleries too large to scan on every query: a FAISS inverted-file index over an
index folder's embeddings (`python -m distill.index ... --faiss`).

The gallery is split into `nlist` k-means cells (about the square root of its size); a query scores the
entries of its `nprobe` nearest cells exactly (inner products of the float16 embeddings, which FAISS's
scalar quantizer stores as they are), so a hit's score equals exact search's (to float32 rounding) and
only an entry in a cell not probed can be missed. Recall@10 against exact search is measured in
`benchmarks/bench_search.py`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

FILE = "faiss.index"
NPROBE = 32
TRAIN_POINTS_PER_CELL = 64  # k-means sample: FAISS warns below 39 a cell; 64 keeps training seconds at 1M


def faiss_module():
    try:
        import faiss
    except ImportError:
        raise ImportError("--faiss needs faiss-cpu: pip install -e '.[faiss]'") from None
    return faiss


def build(embeddings: torch.Tensor, seed: int = 0):
    """An IVF index (inner product, float16 storage) of `embeddings [N, D]`, `nlist` = about sqrt(N)."""
    faiss = faiss_module()
    n, dim = embeddings.shape
    nlist = max(1, min(round(math.sqrt(n)), n // 39))
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    index.by_residual = False  # store the vectors (float16 holds them exactly), not their offsets to a centre
    index.cp.seed, index.cp.min_points_per_centroid = seed, 1  # a small gallery needs no warning: nlist is 1
    sample = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: TRAIN_POINTS_PER_CELL * nlist]
    index.train(embeddings[sample].float().numpy())
    for start in range(0, n, 65_536):  # float32 copies of a slice at a time
        index.add(embeddings[start : start + 65_536].float().numpy())
    return index


def save(index, path: Path) -> None:
    faiss_module().write_index(index, str(path))


def load(path: Path):
    return faiss_module().read_index(str(path))


def top_k(index, query: torch.Tensor, k: int, nprobe: int = NPROBE) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` best `(scores, rows)` for `query [D]` among the entries of its `nprobe` nearest cells."""
    index.nprobe = nprobe
    scores, rows = index.search(np.ascontiguousarray(query.float().numpy()[None]), min(k, index.ntotal))
    found = rows[0] >= 0  # fewer than k entries in the probed cells: FAISS pads with -1
    return torch.from_numpy(scores[0][found]), torch.from_numpy(rows[0][found]).long()
