"""distill.evaluation.metrics against transcriptions of CLIP4Clip's metrics and hand-checked matrices."""

import numpy as np
import pytest
import torch

from distill.evaluation.metrics import multi_sentence_metrics, retrieval_metrics, retrieval_metrics_from_embeddings

KEYS = {"R1": "R1", "R5": "R5", "R10": "R10", "MR": "MdR", "MeanR": "MnR"}  # CLIP4Clip name -> ours


def compute_metrics(x):
    """CLIP4Clip's compute_metrics, rows are queries and the diagonal is the truth."""
    sx = np.sort(-x, axis=1)
    d = np.diag(-x)[:, np.newaxis]
    ind = np.where(sx - d == 0)[1]
    metrics = {f"R{k}": 100 * float(np.sum(ind < k)) / len(ind) for k in (1, 5, 10)}
    return metrics | {"MR": np.median(ind) + 1, "MeanR": np.mean(ind) + 1}


def tensor_text_to_video_metrics(sim_tensor):
    """CLIP4Clip's multi-sentence t2v on the -inf padded (V, K, V) tensor."""
    stacked = sim_tensor.permute(1, 0, 2)  # (K, V, V)
    first_argsort = torch.argsort(stacked, dim=-1, descending=True)
    second_argsort = torch.argsort(first_argsort, dim=-1, descending=False)
    ranks = torch.flatten(torch.diagonal(second_argsort, dim1=1, dim2=2))
    diagonal = torch.flatten(torch.diagonal(sim_tensor, dim1=0, dim2=2))
    valid = ranks[~(torch.isinf(diagonal) | torch.isnan(diagonal))]
    metrics = {f"R{k}": float(torch.sum(valid < k) * 100 / len(valid)) for k in (1, 5, 10)}
    return metrics | {"MR": float(torch.median(valid + 1)), "MeanR": float(np.mean(valid.numpy() + 1))}


def tensor_video_to_text_sim(sim_tensor):
    """CLIP4Clip's (V, K, V) -> (video j, caption group i) matrix."""
    sim_tensor = sim_tensor.clone()
    sim_tensor[sim_tensor != sim_tensor] = float("-inf")
    values, _ = torch.max(sim_tensor, dim=1, keepdim=True)
    return torch.squeeze(values, dim=1).T


def reference_multi_sentence(sim, captions_per_video):
    """CLIP4Clip's eval_epoch for contiguous captions: pad each video's rows with -inf to (V, K, V)."""
    cut_off_points = np.cumsum(captions_per_video)
    k = max(captions_per_video)
    groups = np.split(sim.numpy(), cut_off_points[:-1])
    padded = [np.concatenate([g, np.full((k - len(g), sim.shape[1]), -np.inf)]) for g in groups]
    sim_tensor = torch.from_numpy(np.stack(padded))
    return {
        "t2v": tensor_text_to_video_metrics(sim_tensor),
        "v2t": compute_metrics(tensor_video_to_text_sim(sim_tensor).numpy()),
    }


def assert_matches(ours, original):
    assert set(ours) == set(KEYS.values())
    for theirs, mine in KEYS.items():
        assert ours[mine] == pytest.approx(original[theirs], rel=1e-6, abs=1e-6), mine


@pytest.mark.parametrize("n, chunk_size", [(1, 2048), (2, 1), (5, 2048), (50, 7), (50, 50), (101, 16)])
def test_matches_compute_metrics_without_ties(n, chunk_size):
    sim = torch.randn(n, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    sim += 2 * torch.eye(n, dtype=torch.float64)  # some true pairs on top, some not
    assert_matches(retrieval_metrics(sim, chunk_size=chunk_size), compute_metrics(sim.numpy()))
    assert_matches(retrieval_metrics(sim.T, chunk_size=chunk_size), compute_metrics(sim.T.numpy()))


def test_hand_checked_ties_count_in_the_query_favour():
    sim = torch.tensor(
        [
            [0.9, 0.9, 0.1, 0.2],  # true item tied with column 1: rank 0
            [0.5, 0.3, 0.4, 0.1],  # 0.5 and 0.4 are higher: rank 2
            [0.1, 0.2, 0.3, 0.0],  # rank 0
            [0.8, 0.7, 0.6, 0.5],  # rank 3
        ],
        dtype=torch.float64,
    )
    # Ranks + 1 = [1, 3, 1, 4]: median of the even count = (1 + 3) / 2.
    assert retrieval_metrics(sim) == {"R1": 50.0, "R5": 100.0, "R10": 100.0, "MdR": 2.0, "MnR": 2.25}
    # The original gives row 0 two entries (ranks 0 and 1): 5 entries for 4 queries, ranks [0, 1, 2, 0, 3].
    original = compute_metrics(sim.numpy())
    assert original == {"R1": 40.0, "R5": 100.0, "R10": 100.0, "MR": 2.0, "MeanR": pytest.approx(2.2)}


def test_nan_true_score_is_the_worst_rank():
    sim = torch.eye(4)
    sim[1, 1] = float("nan")
    sim[2, 0] = float("nan")  # a NaN of another item never counts as higher
    assert retrieval_metrics(sim) == {"R1": 75.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.75}
    assert compute_metrics(sim.numpy())["MeanR"] == 1.0  # the original drops the NaN query instead


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_ranked_in_float32(dtype):
    sim = torch.randn(30, 30, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert retrieval_metrics(sim, chunk_size=8) == retrieval_metrics(sim.float())


def test_rejects_non_square_matrix():
    with pytest.raises(ValueError, match=r"sim must be square .* got shape \(3, 4\)"):
        retrieval_metrics(torch.zeros(3, 4))


@pytest.mark.parametrize("chunk_size", [7, 2048])
def test_embeddings_equal_the_full_matrix(chunk_size):
    g = torch.Generator().manual_seed(0)
    text = torch.randn(50, 16, generator=g, dtype=torch.float64)
    video = torch.randn(50, 16, generator=g, dtype=torch.float64)
    ours = retrieval_metrics_from_embeddings(text, video, chunk_size=chunk_size)
    assert ours == {"t2v": retrieval_metrics(text @ video.T), "v2t": retrieval_metrics(video @ text.T)}
    assert_matches(ours["t2v"], compute_metrics((text @ video.T).numpy()))
    assert_matches(ours["v2t"], compute_metrics((video @ text.T).numpy()))


def test_embeddings_take_the_true_score_from_the_same_matmul():
    g = torch.Generator().manual_seed(0)
    video = torch.nn.functional.normalize(torch.randn(200, 512, generator=g), dim=1)
    text = torch.nn.functional.normalize(video + 0.1 * torch.randn(200, 512, generator=g), dim=1)
    ours = retrieval_metrics_from_embeddings(text, video, chunk_size=64)
    assert ours["t2v"]["R1"] == ours["v2t"]["R1"] == 100.0  # every true pair is far ahead
    # The pitfall: a diagonal recomputed elementwise rounds differently, and where it comes out lower the
    # true item counts as strictly higher than itself.
    sim, recomputed = text @ video.T, (text * video).sum(1)
    naive_r1 = 100 * ((sim > recomputed[:, None]).sum(1) == 0).double().mean().item()
    assert naive_r1 < 100.0 or not (recomputed < sim.diagonal()).any()


def test_embeddings_with_duplicates_follow_the_tie_rule():
    text = torch.eye(10, 16)
    text[7] = text[3]  # exact duplicates: text 3 and 7 score exactly alike on every video
    video = text.clone()
    ours = retrieval_metrics_from_embeddings(text, video, chunk_size=4)
    perfect = {"R1": 100.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.0}
    assert ours == {"t2v": perfect, "v2t": perfect}
    # The original counts rows 3 and 7 twice (ranks 0 and 1): 12 entries for 10 queries.
    assert compute_metrics((text @ video.T).numpy())["R1"] == pytest.approx(100 * 10 / 12)


@pytest.mark.parametrize("captions_per_video", [[1, 3, 2, 5, 1, 4], [2] * 8, [7, 1, 3] * 5])
def test_multi_sentence_matches_the_original(captions_per_video):
    g = torch.Generator().manual_seed(len(captions_per_video))
    video_of_text = torch.repeat_interleave(torch.arange(len(captions_per_video)), torch.tensor(captions_per_video))
    sim = torch.randn(len(video_of_text), len(captions_per_video), generator=g, dtype=torch.float64)
    sim[torch.arange(len(video_of_text)), video_of_text] += 1.5
    original = reference_multi_sentence(sim, captions_per_video)
    for chunk_size in (3, 2048):
        ours = multi_sentence_metrics(sim, video_of_text.tolist(), chunk_size=chunk_size)
        assert_matches(ours["t2v"], original["t2v"])
        assert_matches(ours["v2t"], original["v2t"])


def test_multi_sentence_medians_and_caption_order():
    # Captions of videos [0, 0, 1, 1]; t2v ranks + 1 = [1, 2, 2, 1]: lower median 1 where numpy gives 1.5.
    sim = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.3, 0.6]])
    ours = multi_sentence_metrics(sim, [0, 0, 1, 1])
    assert ours["t2v"] == {"R1": 50.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.5}
    # v2t: [video j, group i] = [[0.9, 0.7], [0.8, 0.6]] -> ranks [0, 1], numpy median 1.5.
    assert ours["v2t"] == {"R1": 50.0, "R5": 100.0, "R10": 100.0, "MdR": 1.5, "MnR": 1.5}
    order = [3, 0, 2, 1]
    assert multi_sentence_metrics(sim[order], torch.tensor([1, 0, 1, 0])) == ours


def test_multi_sentence_rejects_a_video_without_captions():
    with pytest.raises(ValueError, match=r"videos \[1\] have no caption"):
        multi_sentence_metrics(torch.zeros(3, 3), [0, 2, 2])
