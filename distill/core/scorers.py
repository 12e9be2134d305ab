"""The face of a retrieval model, and the two ways such a model scores a caption against a video.

Every model (teacher or student) has `encode_text`, `encode_video`, `similarity_logits` and
`frame_features` (see `Retriever`); its `forward` returns its per-pair outputs for a batch of pairs, the
rows that are gathered over the processes (`distill.training.gradcache.PER_SAMPLE`), plus shared values. How
captions and videos meet is its scorer's business:
- `TwoTower` (CLIP4Clip's meanP, seqLSTM and seqTransf heads, every student): a caption and a video are
  embedded apart, and a score is a scaled cosine of the two embeddings;
- `CrossEncoder` (tightTransf): the text features and the frame features of a pair go through a cross
  encoder together; there are no embeddings.
The training loop, the teacher cache and evaluation ask `scorer_for(model)` and never branch on the head.
"""

from __future__ import annotations

from typing import ClassVar, Protocol

import torch
from torch import nn


class Retriever(Protocol):
    """What the toolkit asks of a retrieval model (ARCHITECTURE.md, "Contracts")."""

    embed_dim: int  # width of the embeddings (of the cross encoder's features for tightTransf)
    input_size: int  # side of the square frames it reads
    # Parameter-name prefixes of its parts: "token_embedding", "text_tower", "frame_encoder", "temporal_head"
    # (a parameter counts in the first part whose prefix it has), for the cost table.
    PARTS: ClassVar[dict[str, tuple[str, ...]]]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised `[N, D]` (two-tower models)."""

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised `[B, D]` from `video [B, T, 3, H, W]` (two-tower models)."""

    def similarity_logits(self, input_ids, attention_mask, video, video_mask) -> torch.Tensor:
        """`[N, B]` scores, text rows and video columns."""

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        """Per-frame features `[B, T, D]`: what a temporal head or a cross encoder reads."""


class TwoTower:
    """Captions and videos embedded apart; scores `logit_scale * text @ video.T`."""

    pairwise = False  # a score needs only the two embeddings

    def __init__(self, model: nn.Module):
        self.model = model

    def texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """A row per caption."""
        return {"text_features": self.model.encode_text(input_ids, attention_mask)}

    def videos(self, frames: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """A row per video, from its `frame_features [B, T, D]` and `mask [B, T]`."""
        return {"video_features": self.model.pool_frames(frames, mask)}

    def shared(self) -> dict[str, torch.Tensor]:
        """What every score of a batch also needs."""
        return {"logit_scale": self.model.logit_scale()}

    def loss_inputs(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The losses' inputs from the outputs of the global batch (see `distill.training.losses.similarity`)."""
        return outputs

    def scores(self, texts: dict[str, torch.Tensor], videos: dict[str, torch.Tensor]) -> torch.Tensor:
        """`[N, V]` for ranking (the logit scale does not change ranks)."""
        return texts["text_features"] @ videos["video_features"].T


class CrossEncoder:
    """Each (caption, video) pair scored jointly by the model's cross encoder from text and frame features."""

    pairwise = True  # a score needs the pair together: there is nothing to embed alone

    def __init__(self, model: nn.Module):
        self.model = model

    def texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"text_features": self.model.text_features(input_ids)}

    def videos(self, frames: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"frame_features": frames, "video_mask": mask}

    def shared(self) -> dict[str, torch.Tensor]:
        return {}

    def loss_inputs(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`{"logits"}`: every caption of the global batch against every video, through the cross encoder."""
        return {"logits": self.scores(outputs, outputs)}

    def scores(self, texts: dict[str, torch.Tensor], videos: dict[str, torch.Tensor]) -> torch.Tensor:
        """The cross encoder's `[N, V]` scores, computed where the model is (rows held on the CPU move there)."""
        device = next(self.model.parameters()).device
        return self.model.cross_scores(
            texts["text_features"].to(device), videos["frame_features"].to(device), videos["video_mask"].to(device)
        )


Scorer = TwoTower | CrossEncoder


def scorer_for(model: nn.Module) -> Scorer:
    """The scorer of `model`: a cross encoder for a tightTransf CLIP4Clip, two towers for every other."""
    return CrossEncoder(model) if getattr(model, "is_tight", False) else TwoTower(model)
