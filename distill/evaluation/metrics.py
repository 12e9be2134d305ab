"""Retrieval metrics as CLIP4Clip prints them: R@1/5/10 in percent, median rank (MdR) and mean rank (MnR).

Rank rule, used everywhere here: the 0-based rank of a query's true item is the number of gallery items
whose score is *strictly higher* than the true item's score. Ties therefore count in the query's favour and
the result is deterministic; on a tie-free matrix it equals CLIP4Clip's `compute_metrics` exactly. (The
original adds one rank entry per tied column, which grows the denominator beyond the number of queries and
shifts R@K, MdR and MnR.) A NaN true score gets the worst rank, gallery size - 1, where the original drops
the query; NaN scores of other items never count as higher.

Ranks are counted in chunks of query rows, so a 50k x 50k evaluation needs neither a full argsort nor, with
`retrieval_metrics_from_embeddings`, the full matrix. Half-precision scores are compared in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Metrics = dict[str, float]


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _ranks(rows: Callable[[slice], torch.Tensor], true_item: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """0-based rank of each query's true item; `rows(s)` gives the scores of queries `s`, (len(s), gallery)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    ranks = []
    for start in range(0, len(true_item), chunk_size):
        scores = _at_least_float32(rows(slice(start, start + chunk_size)))  # (q, gallery)
        # The true score comes out of the same tensor it is compared with: recomputing it elsewhere
        # changes its rounding, and then the true item can count as strictly higher than itself.
        true = scores.gather(1, true_item[start : start + chunk_size, None])  # (q, 1)
        rank = (scores > true).sum(1)
        ranks.append(rank.masked_fill(true[:, 0].isnan(), scores.shape[1] - 1))
    return torch.cat(ranks)


def _summarize(ranks: torch.Tensor, *, lower_median: bool = False) -> Metrics:
    """R@K, MdR and MnR from 0-based ranks; MdR averages the two middle values unless `lower_median`."""
    r = (ranks.double() + 1).sort().values.cpu()
    n = len(r)
    median = r[(n - 1) // 2] if lower_median else (r[(n - 1) // 2] + r[n // 2]) / 2
    metrics = {f"R{k}": 100 * (r <= k).double().mean().item() for k in (1, 5, 10)}
    return metrics | {"MdR": median.item(), "MnR": r.mean().item()}


def _check_matrix(name: str, x: torch.Tensor, *, square: bool) -> None:
    if x.ndim != 2 or x.numel() == 0 or (square and x.shape[0] != x.shape[1]):
        shape = "square (N, N) with N > 0" if square else "2-D and non-empty"
        raise ValueError(f"{name} must be {shape}, got shape {tuple(x.shape)}")


def retrieval_metrics(sim: torch.Tensor, *, chunk_size: int = 2048) -> Metrics:
    """Metrics of a square (query, gallery) score matrix whose diagonal holds the true pairs.

    Pass `sim` for t2v and `sim.T` for v2t. MdR follows numpy's median (the mean of the two middle ranks
    for an even count), as CLIP4Clip's `compute_metrics` does. Ties and NaNs: see the module docstring.
    """
    _check_matrix("sim", sim, square=True)
    diagonal = torch.arange(len(sim), device=sim.device)
    return _summarize(_ranks(lambda s: sim[s], diagonal, chunk_size))


def retrieval_metrics_from_embeddings(
    text: torch.Tensor, video: torch.Tensor, *, chunk_size: int = 2048
) -> dict[str, Metrics]:
    """t2v and v2t metrics of paired embeddings (text i goes with video i) without the full score matrix.

    Each chunk of scores is one matmul, `text[s] @ video.T` (t2v) or `video[s] @ text.T` (v2t), in at
    least float32, and the true scores are that chunk's diagonal entries. Normalise the embeddings first if
    you want cosine scores; a common scale does not change ranks.
    """
    _check_matrix("text", text, square=False)
    _check_matrix("video", video, square=False)
    if text.shape != video.shape:
        raise ValueError(
            f"text and video must have the same shape (N, D), got {tuple(text.shape)} and {tuple(video.shape)}"
        )
    text, video = _at_least_float32(text), _at_least_float32(video)
    diagonal = torch.arange(len(text), device=text.device)
    return {
        "t2v": _summarize(_ranks(lambda s: text[s] @ video.T, diagonal, chunk_size)),
        "v2t": _summarize(_ranks(lambda s: video[s] @ text.T, diagonal, chunk_size)),
    }


def multi_sentence_metrics(
    sim: torch.Tensor, video_of_text: Sequence[int] | torch.Tensor, *, chunk_size: int = 2048
) -> dict[str, Metrics]:
    """Metrics when several captions share one video (MSVD style), as CLIP4Clip computes them.

    Args:
        sim: (captions S, videos V) scores.
        video_of_text: (S,) video index of each caption; every video needs at least one caption. Unlike the
            original, the captions of a video need not be contiguous.

    t2v: every caption is a query over the V videos. MdR is the *lower* middle rank, matching the original's
    `torch.median` (e.g. 24.0 where numpy would give 24.5).
    v2t: video j is the query and the gallery items are the caption groups; the score of group i is its best
    caption, max over captions k of video i of sim[k, j] (NaN scores ignored), and the true item is video
    j's own group. MdR uses numpy's median, as the original's `compute_metrics` does.
    Ties and NaNs: see the module docstring.
    """
    ranks = multi_sentence_ranks(sim, video_of_text, chunk_size=chunk_size)
    return {"t2v": _summarize(ranks["t2v"], lower_median=True), "v2t": _summarize(ranks["v2t"])}


def multi_sentence_ranks(
    sim: torch.Tensor, video_of_text: Sequence[int] | torch.Tensor, *, chunk_size: int = 2048
) -> dict[str, torch.Tensor]:
    """The 0-based ranks `multi_sentence_metrics` summarises: `{"t2v": (S,), "v2t": (V,)}`."""
    _check_matrix("sim", sim, square=False)
    owner = torch.as_tensor(video_of_text, dtype=torch.long, device=sim.device)
    num_texts, num_videos = sim.shape
    if owner.shape != (num_texts,):
        raise ValueError(f"video_of_text must have shape ({num_texts},), one per row of sim, got {tuple(owner.shape)}")
    if owner.min() < 0 or owner.max() >= num_videos:
        low, high = owner.min().item(), owner.max().item()
        raise ValueError(f"video_of_text must index the {num_videos} columns of sim, got values in [{low}, {high}]")
    captions = torch.bincount(owner, minlength=num_videos)
    if (captions == 0).any():
        raise ValueError(f"videos {(captions == 0).nonzero()[:, 0].tolist()} have no caption in video_of_text")

    scores = _at_least_float32(sim)
    scores = scores.masked_fill(scores.isnan(), float("-inf"))
    best = scores.new_full((num_videos, num_videos), float("-inf"))  # (caption group i, video j)
    best = best.scatter_reduce(0, owner[:, None].expand_as(scores), scores, reduce="amax")
    diagonal = torch.arange(num_videos, device=sim.device)
    return {
        "t2v": _ranks(lambda s: sim[s], owner, chunk_size),
        "v2t": _ranks(lambda s: best.T[s], diagonal, chunk_size),
    }


def recall_curve(ranks: torch.Tensor, max_k: int) -> list[float]:
    """R@K in percent for K = 1 .. max_k, from 0-based ranks."""
    r = ranks.cpu()
    return [100 * (r < k).double().mean().item() for k in range(1, max_k + 1)]
