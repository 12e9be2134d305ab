import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distill.core.schema import LossConfig
from distill.training.losses import (
    DistillationLoss,
    contrastive_loss,
    cross_model_loss,
    feature_loss,
    similarity,
    similarity_kl_loss,
    similarity_pearson_loss,
)

LOGITS = [[2.0, 0.0, 1.0], [0.5, 3.0, 0.0], [1.0, -1.0, 1.5]]


def log_softmax(values: list[float], i: int) -> float:
    return values[i] - math.log(sum(math.exp(v) for v in values))


def outputs(n: int, dim: int, *, scale: float = 10.0, seed: int = 0, grad: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(n, dim, generator=g), dim=-1).requires_grad_(grad)
    video = F.normalize(torch.randn(n, dim, generator=g), dim=-1).requires_grad_(grad)
    return {"text_features": text, "video_features": video, "logit_scale": torch.tensor(scale)}


# contrastive


def test_contrastive_matches_hand_computation():
    rows = [-log_softmax(LOGITS[i], i) for i in range(3)]  # t2v: caption i picks video i
    columns = [-log_softmax([LOGITS[j][i] for j in range(3)], i) for i in range(3)]  # v2t
    expected = (sum(rows) / 3 + sum(columns) / 3) / 2
    loss = contrastive_loss(torch.tensor(LOGITS))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert loss.item() == pytest.approx(0.3649619, rel=1e-6)  # golden value


def test_contrastive_is_symmetric_in_rows_and_columns():
    logits = torch.tensor(LOGITS)
    assert contrastive_loss(logits).item() == pytest.approx(contrastive_loss(logits.T).item(), rel=1e-6)


def test_contrastive_near_zero_for_diagonal_logits():
    assert contrastive_loss(50 * torch.eye(4)).item() < 1e-6
    assert contrastive_loss(torch.zeros(4, 4)).item() == pytest.approx(math.log(4), rel=1e-6)


# similarity KL


def explicit_kl(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    """KL(teacher || student) summed per row, averaged over rows, both directions averaged, times T^2."""

    def softmax(values):
        exps = [math.exp(v / temperature) for v in values]
        return [e / sum(exps) for e in exps]

    def direction(s, t):
        total = 0.0
        for s_row, t_row in zip(s, t):
            p, q = softmax(t_row), softmax(s_row)
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
        return total / len(s)

    def transpose(m):
        return [list(col) for col in zip(*m)]

    return (direction(student, teacher) + direction(transpose(student), transpose(teacher))) / 2 * temperature**2


TEACHER = [[3.0, 0.5, -1.0], [0.0, 2.0, 1.0], [1.0, 0.0, 0.5]]


def test_kl_zero_for_equal_logits():
    logits = torch.tensor(LOGITS)
    assert similarity_kl_loss(logits, logits.clone(), 1.0).item() == pytest.approx(0.0, abs=1e-7)
    assert similarity_kl_loss(logits, logits.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 0.5])
def test_kl_matches_explicit_sum(temperature):
    loss = similarity_kl_loss(torch.tensor(LOGITS), torch.tensor(TEACHER), temperature)
    assert loss.item() > 0
    assert loss.item() == pytest.approx(explicit_kl(LOGITS, TEACHER, temperature), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kl_of_an_ensemble_targets_the_mean_of_the_teachers_distributions(temperature):
    """By hand: p = (softmax(t1 / T) + softmax(t2 / T)) / 2 per row (and per column), KL(p || q)."""
    other = [[0.0, 1.0, 2.0], [2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]

    def softmax(values):
        exps = [math.exp(v / temperature) for v in values]
        return [e / sum(exps) for e in exps]

    def direction(s, a, b):
        total = 0.0
        for s_row, a_row, b_row in zip(s, a, b):
            p = [(x + y) / 2 for x, y in zip(softmax(a_row), softmax(b_row))]
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, softmax(s_row)))
        return total / len(s)

    t = lambda m: [list(col) for col in zip(*m)]  # noqa: E731
    expected = (direction(LOGITS, TEACHER, other) + direction(t(LOGITS), t(TEACHER), t(other))) / 2 * temperature**2
    loss = similarity_kl_loss(torch.tensor(LOGITS), [torch.tensor(TEACHER), torch.tensor(other)], temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    one = similarity_kl_loss(torch.tensor(LOGITS), [torch.tensor(TEACHER)], temperature)
    assert torch.equal(one, similarity_kl_loss(torch.tensor(LOGITS), torch.tensor(TEACHER), temperature))


def test_kl_temperature_divides_logits_and_multiplies_by_its_square():
    s, t = torch.tensor(LOGITS), torch.tensor(TEACHER)
    for temperature in (2.0, 3.0):
        scaled = similarity_kl_loss(s * temperature, t * temperature, temperature)
        assert scaled.item() == pytest.approx(temperature**2 * similarity_kl_loss(s, t, 1.0).item(), rel=1e-5)
        divided = similarity_kl_loss(s, t, temperature)
        assert divided.item() == pytest.approx(
            temperature**2 * similarity_kl_loss(s / temperature, t / temperature, 1.0).item(), rel=1e-5
        )


def test_kl_gradient_reaches_student_logits_only():
    config = LossConfig(kl_weight=1.0, feature_weight=0.0, contrastive_weight=0.0)
    student, teacher = outputs(4, 8, grad=True), outputs(4, 8, seed=1, grad=True)
    losses = DistillationLoss(config, student_dim=8, teacher_dim=8)(student, teacher)
    assert set(losses) == {"kl_loss"}
    losses["kl_loss"].backward()
    assert student["text_features"].grad.abs().sum() > 0
    assert student["video_features"].grad.abs().sum() > 0
    assert teacher["text_features"].grad is None
    assert teacher["video_features"].grad is None


def test_kl_gradient_direction_moves_student_towards_teacher():
    s = torch.tensor(LOGITS, requires_grad=True)
    t = torch.tensor(TEACHER)
    loss = similarity_kl_loss(s, t, 1.0)
    loss.backward()
    stepped = similarity_kl_loss(s.detach() - 0.1 * s.grad, t, 1.0)
    assert stepped.item() < loss.item()


# Pearson form (TeachCLIP)


def explicit_pearson(student, teachers, temperature):
    """1 - corr(softmax(s / T), p) per row, p the mean of the teachers' softmax(t / T); mean over rows and
    both directions, by hand."""

    def softmax(values):
        exps = [math.exp(v / temperature) for v in values]
        return [e / sum(exps) for e in exps]

    def corr(a, b):
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
        return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))

    def direction(s, ts):
        total = 0.0
        for i, row in enumerate(s):
            target = [sum(ps) / len(ps) for ps in zip(*(softmax(t[i]) for t in ts))]
            total += 1 - corr(softmax(row), target)
        return total / len(s)

    def transpose(m):
        return [list(col) for col in zip(*m)]

    return (direction(student, teachers) + direction(transpose(student), [transpose(t) for t in teachers])) / 2


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_pearson_matches_explicit_sum(temperature):
    loss = similarity_pearson_loss(torch.tensor(LOGITS), torch.tensor(TEACHER), temperature)
    assert 0 < loss.item() < 2
    assert loss.item() == pytest.approx(explicit_pearson(LOGITS, [TEACHER], temperature), rel=1e-5)


def test_pearson_zero_for_equal_distributions_and_blind_to_their_sharpness():
    s = torch.tensor(LOGITS)
    assert similarity_pearson_loss(s, s.clone(), 1.0).item() == pytest.approx(0.0, abs=1e-6)
    # A teacher with the student's order but 3x sharper rows, against one that ranks differently: the KL
    # counts the sharper one at 63% of the other (by these numbers), the correlation at under 8%
    sharper, t = 3.0 * s, torch.tensor(TEACHER)
    kl = similarity_kl_loss(s, sharper, 1.0) / similarity_kl_loss(s, t, 1.0)
    pearson = similarity_pearson_loss(s, sharper, 1.0) / similarity_pearson_loss(s, t, 1.0)
    assert kl.item() > 0.5 and pearson.item() < 0.1


def test_pearson_of_an_ensemble_correlates_with_the_mean_distribution_and_steps_downhill():
    other = [[0.0, 1.0, 2.0], [2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]
    targets = [torch.tensor(TEACHER), torch.tensor(other)]
    loss = similarity_pearson_loss(torch.tensor(LOGITS), targets, 1.0)
    assert loss.item() == pytest.approx(explicit_pearson(LOGITS, [TEACHER, other], 1.0), rel=1e-5)
    s = torch.tensor(LOGITS, requires_grad=True)
    similarity_pearson_loss(s, targets, 1.0).backward()
    assert similarity_pearson_loss(s.detach() - 0.5 * s.grad, targets, 1.0).item() < loss.item()


def test_kl_form_pearson_replaces_the_kl_term():
    student, teacher = outputs(4, 8), outputs(4, 8, scale=20.0, seed=1)
    config = LossConfig(kl_form="pearson", kl_weight=0.5, feature_weight=0.0, contrastive_weight=0.0)
    losses = DistillationLoss(config, student_dim=8, teacher_dim=8)(student, teacher)
    expected = 0.5 * similarity_pearson_loss(similarity(student), similarity(teacher), 1.0)
    assert set(losses) == {"kl_loss"}
    assert losses["kl_loss"].item() == pytest.approx(expected.item(), rel=1e-6)


# feature matching


def test_feature_loss_is_two_minus_two_cos_for_unit_vectors():
    a = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), dim=-1)
    b = F.normalize(torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, -1.0]]), dim=-1)
    cos = (a * b).sum(-1)  # [0, 1, -1]
    expected = (2 - 2 * cos).mean()
    assert feature_loss(a, b).item() == pytest.approx(expected.item(), abs=1e-6)
    assert feature_loss(a, b).item() == pytest.approx((2 + 0 + 4) / 3, abs=1e-6)


def test_feature_loss_normalises_the_student():
    s, t = outputs(5, 6)["text_features"], outputs(5, 6, seed=3)["text_features"]
    assert feature_loss(3.0 * s, t).item() == pytest.approx(feature_loss(s, t).item(), rel=1e-6)
    assert feature_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)


# DistillationLoss


def test_without_teacher_only_contrastive():
    student = outputs(4, 8)
    losses = DistillationLoss(LossConfig(), student_dim=8, teacher_dim=16)(student, None)
    assert set(losses) == {"contrastive_loss"}
    assert losses["contrastive_loss"].item() == pytest.approx(contrastive_loss(similarity(student)).item(), rel=1e-6)


def test_with_teacher_three_weighted_terms():
    student, teacher = outputs(4, 8), outputs(4, 8, scale=20.0, seed=1)
    losses = DistillationLoss(LossConfig(), student_dim=8, teacher_dim=8)(student, teacher)
    assert set(losses) == {"contrastive_loss", "kl_loss", "feature_loss"}
    assert all(key.endswith("_loss") for key in losses)
    assert all(value.ndim == 0 and value.item() > 0 for value in losses.values())
    kl = similarity_kl_loss(similarity(student), similarity(teacher), 1.0)
    assert losses["kl_loss"].item() == pytest.approx(kl.item(), rel=1e-6)
    features = (
        feature_loss(student["text_features"], teacher["text_features"])
        + feature_loss(student["video_features"], teacher["video_features"])
    ) / 2
    assert losses["feature_loss"].item() == pytest.approx(features.item(), rel=1e-6)


@pytest.mark.parametrize("dropped", ["kl", "feature", "contrastive"])
def test_zero_weight_drops_the_term(dropped):
    config = LossConfig(**{f"{dropped}_weight": 0.0})
    losses = DistillationLoss(config, student_dim=8, teacher_dim=8)(outputs(4, 8), outputs(4, 8, seed=1))
    assert set(losses) == {"contrastive_loss", "kl_loss", "feature_loss"} - {f"{dropped}_loss"}


def test_projection_only_when_widths_differ():
    same = DistillationLoss(LossConfig(), student_dim=8, teacher_dim=8)
    assert isinstance(same.text_projection, nn.Identity) and isinstance(same.video_projection, nn.Identity)
    assert not list(same.parameters())

    other = DistillationLoss(LossConfig(), student_dim=6, teacher_dim=8)
    for projection in (other.text_projection, other.video_projection):
        assert isinstance(projection, nn.Linear)
        assert (projection.in_features, projection.out_features) == (6, 8)
    assert other.text_projection is not other.video_projection
    student, teacher = outputs(4, 6), outputs(4, 8, seed=1)
    losses = other(student, teacher)
    losses["feature_loss"].backward()
    assert other.text_projection.weight.grad.abs().sum() > 0
    assert other.video_projection.weight.grad.abs().sum() > 0


def test_no_projection_without_feature_matching():
    loss = DistillationLoss(LossConfig(feature_weight=0.0), student_dim=6, teacher_dim=8)
    assert not list(loss.parameters())


def test_terms_are_multiplied_by_their_weights():
    student, teacher = outputs(4, 6), outputs(4, 8, seed=1)
    torch.manual_seed(0)
    ones = DistillationLoss(LossConfig(kl_temperature=2.0, cross_weight=1.0), student_dim=6, teacher_dim=8)
    twos = DistillationLoss(
        LossConfig(kl_weight=2.0, feature_weight=2.0, contrastive_weight=2.0, cross_weight=2.0, kl_temperature=2.0),
        student_dim=6,
        teacher_dim=8,
    )
    twos.load_state_dict(ones.state_dict())
    single, double = ones(student, teacher), twos(student, teacher)
    assert set(single) == set(double) == {"contrastive_loss", "kl_loss", "feature_loss", "cross_loss"}
    for key in single:
        assert double[key].item() == pytest.approx(2 * single[key].item(), rel=1e-6)


def test_fixed_teacher_logit_scale_replaces_the_teachers_own_in_the_kl_only():
    """teacher_logit_scale=100: the KL targets are 100 x the teacher's cosines whatever scale it learned;
    the student's logits and the other terms are unchanged."""
    student, teacher = outputs(5, 8), outputs(5, 8, seed=1)
    teacher["logit_scale"] = torch.tensor(15.0)
    fixed = DistillationLoss(LossConfig(teacher_logit_scale=100.0, feature_weight=0.0), student_dim=8, teacher_dim=8)
    own = DistillationLoss(LossConfig(feature_weight=0.0), student_dim=8, teacher_dim=8)
    scaled = {**teacher, "logit_scale": torch.tensor(100.0)}
    assert fixed(student, teacher)["kl_loss"].item() == pytest.approx(own(student, scaled)["kl_loss"].item(), rel=1e-6)
    assert fixed(student, teacher)["kl_loss"].item() != pytest.approx(own(student, teacher)["kl_loss"].item(), rel=1e-3)
    assert fixed(student, teacher)["contrastive_loss"] == own(student, teacher)["contrastive_loss"]


# cross-model contrastive


def test_cross_model_matches_hand_computation():
    """Student video i picks teacher caption i; student caption i picks teacher video i."""
    student, teacher = outputs(3, 4), outputs(3, 4, seed=1)
    cos = lambda a, b: [[sum(x * y for x, y in zip(r, c)) for c in b.tolist()] for r in a.tolist()]  # noqa: E731
    video_rows = [[5.0 * v for v in row] for row in cos(student["video_features"], teacher["text_features"])]
    text_rows = [[5.0 * v for v in row] for row in cos(student["text_features"], teacher["video_features"])]
    expected = (
        sum(-log_softmax(video_rows[i], i) for i in range(3)) / 3
        + sum(-log_softmax(text_rows[i], i) for i in range(3)) / 3
    ) / 2
    loss = cross_model_loss(student, teacher, torch.tensor(5.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_cross_model_term_has_a_learned_scale_and_projections():
    config = LossConfig(feature_weight=0.0, cross_weight=0.5, cross_temperature=0.05)
    loss = DistillationLoss(config, student_dim=6, teacher_dim=8)
    assert loss.cross_scale_log.item() == pytest.approx(math.log(20.0))
    assert isinstance(loss.text_projection, nn.Linear)  # cross-model needs the teacher's width
    student, teacher = outputs(4, 6, grad=True), outputs(4, 8, seed=1)
    losses = loss(student, teacher)
    assert set(losses) == {"contrastive_loss", "kl_loss", "cross_loss"}
    projected = {
        key: loss.text_projection(student["text_features"])
        if key == "text_features"
        else loss.video_projection(student["video_features"])
        for key in ("text_features", "video_features")
    }
    expected = 0.5 * cross_model_loss(projected, teacher, torch.tensor(20.0))
    assert losses["cross_loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    losses["cross_loss"].backward()
    assert loss.cross_scale_log.grad.abs() > 0 and student["video_features"].grad.abs().sum() > 0
    assert not hasattr(DistillationLoss(LossConfig(), student_dim=6, teacher_dim=8), "cross_scale_log")


def test_cross_model_near_zero_when_the_student_equals_the_teacher():
    same = outputs(4, 8)
    same["text_features"] = same["video_features"] = torch.eye(4, 8)
    assert cross_model_loss(same, same, torch.tensor(100.0)).item() < 1e-6
