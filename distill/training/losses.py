"""Losses. Each returns `{"<name>_loss": tensor}` already weighted; the loop sums the values.

Model outputs are dicts `{"text_features", "video_features", "logit_scale"}` with L2-normalised features;
the similarity matrix has text rows and video columns, and row i holds the true pair (i, i). A teacher
ensemble's outputs are the first teacher's, with the others' outputs as a list under "ensemble".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.core.schema import LossConfig


def similarity(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """`logit_scale * text @ video.T`, `[N, N]`; a cross encoder (tightTransf) gives its `logits` directly."""
    if "logits" in outputs:
        return outputs["logits"]
    return outputs["logit_scale"] * outputs["text_features"] @ outputs["video_features"].T  # (scale * text) @ video


def cosines(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """`text @ video.T` of the unit embeddings, `[N, N]`, without the model's logit scale."""
    return outputs["text_features"] @ outputs["video_features"].T


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """CLIP4Clip's symmetric cross entropy: the mean of the t2v (rows) and v2t (columns) terms."""
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _distributions(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor], temperature: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(student, teacher) log-probabilities over each t2v row, then over each v2t column (as rows). Several
    teachers: the mean of their distributions, after the softmax (MobileCLIP's ensemble)."""
    members = [teacher_logits] if isinstance(teacher_logits, torch.Tensor) else list(teacher_logits)
    pairs = []
    for transpose in (False, True):
        s = student_logits.T if transpose else student_logits
        targets = [F.log_softmax((t.T if transpose else t) / temperature, dim=1) for t in members]
        target = targets[0] if len(targets) == 1 else torch.logsumexp(torch.stack(targets), 0) - math.log(len(targets))
        pairs.append((F.log_softmax(s / temperature, dim=1), target))
    return pairs


def similarity_kl_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor], temperature: float
) -> torch.Tensor:
    """KL(teacher || student) over each t2v row and each v2t column, averaged over both directions.

    Both models keep their own logit scale; `temperature` divides both. The `temperature**2` factor keeps
    the gradient size independent of the temperature (Hinton et al.).
    """
    pairs = _distributions(student_logits, teacher_logits, temperature)
    terms = [F.kl_div(s, t, log_target=True, reduction="batchmean") for s, t in pairs]
    return sum(terms) / len(terms) * temperature**2


def similarity_pearson_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor | Sequence[torch.Tensor], temperature: float
) -> torch.Tensor:
    """TeachCLIP's form of the similarity term: 1 - the Pearson correlation between each student row (and
    column) and the teacher's after the softmax, averaged over rows and both directions.

    A correlation ignores the rows' scale, so a student whose distributions are sharper or softer than the
    teacher's but ranked alike pays little: less sensitive to the two models' logit scales than the KL.
    As in TeachCLIP: no T^2 factor (the KL has one so that its gradients keep their size at any temperature;
    this term's do not), and cosine_similarity's eps of 1e-8, so a row with no spread at all (a collapsed
    student) has a very large gradient, which train.grad_clip bounds.
    """
    terms = []
    for s, t in _distributions(student_logits, teacher_logits, temperature):
        p, q = s.exp(), t.exp()
        correlation = F.cosine_similarity(p - p.mean(1, keepdim=True), q - q.mean(1, keepdim=True), dim=1)
        terms.append(1 - correlation.mean())
    return sum(terms) / len(terms)


def feature_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """Squared distance between unit vectors, summed over dimensions, mean over the batch.

    On unit vectors this is `2 - 2 cos`: the cosine-distance loss (`1 - cos`) at twice the weight, so one
    term serves both conventions (CLIP-KD's FD is this MSE, at weight 2000 on its per-element mean).
    """
    return (F.normalize(student_features, dim=-1) - teacher_features).pow(2).sum(-1).mean()


def cross_model_loss(
    student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor], scale: torch.Tensor
) -> torch.Tensor:
    """CLIP-KD's interactive contrastive loss: each student video picks its caption among the teacher's
    text embeddings, and each student caption its video among the teacher's video embeddings (cross
    entropy, `scale` times cosine similarity; student features already in the teacher's width)."""
    labels = torch.arange(len(student["text_features"]), device=scale.device)
    video = F.normalize(student["video_features"], dim=-1) @ teacher["text_features"].T
    text = F.normalize(student["text_features"], dim=-1) @ teacher["video_features"].T
    return (F.cross_entropy(scale * video, labels) + F.cross_entropy(scale * text, labels)) / 2


class DistillationLoss(nn.Module):
    """Weighted sum of similarity KL, feature matching, cross-model contrastive and ground-truth contrastive
    terms.

    Holds the learned projections from the student's embedding width to the teacher's (identity when they
    match or no term compares embeddings: DDP refuses parameters that get no gradient) and the learned
    scale of the cross-model term; they train with the student and are not part of the exported model.

    The loop passes the outputs of the whole global batch, gathered from every process (`distill.training.gather`).
    """

    def __init__(self, config: LossConfig, *, student_dim: int, teacher_dim: int):
        super().__init__()
        self.config = config

        def projection() -> nn.Module:
            if student_dim == teacher_dim or not (config.feature_weight or config.cross_weight):
                return nn.Identity()
            return nn.Linear(student_dim, teacher_dim)

        self.text_projection, self.video_projection = projection(), projection()
        if config.cross_weight:
            self.cross_scale_log = nn.Parameter(torch.tensor(math.log(1 / config.cross_temperature)))

    def forward(
        self, student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        c = self.config
        logits = similarity(student)
        losses = {}
        if c.contrastive_weight:
            losses["contrastive_loss"] = c.contrastive_weight * contrastive_loss(logits)
        if teacher is None:
            return losses
        if c.kl_weight:
            members = [teacher, *teacher.get("ensemble", [])]
            if c.teacher_logit_scale:
                targets = [(c.teacher_logit_scale * cosines(member)).detach() for member in members]
            else:
                targets = [similarity(member).detach() for member in members]
            form = similarity_kl_loss if c.kl_form == "kl" else similarity_pearson_loss
            losses["kl_loss"] = c.kl_weight * form(logits, targets, c.kl_temperature)
        if not (c.feature_weight or c.cross_weight):
            return losses
        projected = {
            "text_features": self.text_projection(student["text_features"]),
            "video_features": self.video_projection(student["video_features"]),
        }
        if c.feature_weight:
            losses["feature_loss"] = (
                c.feature_weight
                * (
                    feature_loss(projected["text_features"], teacher["text_features"])
                    + feature_loss(projected["video_features"], teacher["video_features"])
                )
                / 2
            )
        if c.cross_weight:
            scale = self.cross_scale_log.clamp(max=math.log(100)).exp()
            losses["cross_loss"] = c.cross_weight * cross_model_loss(projected, teacher, scale)
        return losses
