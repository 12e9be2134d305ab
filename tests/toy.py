"""A small in-memory pair dataset and a two-tower model, for the tests that call the training loop directly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


class Pairs(Dataset):
    """`count` random caption-clip pairs in the batch layout of `VideoTextDataset`, with a student view and a
    teacher view (the same frames in reverse order)."""

    def __init__(self, count: int):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 50, (count, 5), generator=g)
        self.video = torch.randn(count, 2, 3, 4, 4, generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        clip, mask = self.video[i], torch.ones(2, dtype=torch.long)
        return {
            "index": torch.tensor(i),
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(5, dtype=torch.long),
            "student_video": clip,
            "student_mask": mask,
            "teacher_video": clip.flip(0),
            "teacher_mask": mask,
        }


class TwoTower(nn.Module):
    """Embedding bag for text, a linear layer over frames; `dropout` and BatchNorm make the forward pass
    random and batch-dependent."""

    is_tight = False

    def __init__(self, dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        self.embedding = nn.EmbeddingBag(50, 8)
        self.video = nn.Linear(3 * 4 * 4, 8)
        self.norm = nn.BatchNorm1d(8) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.logit_scale_log = nn.Parameter(torch.tensor(2.0))

    def forward(self, input_ids, attention_mask, video, video_mask) -> dict[str, torch.Tensor]:
        frames = self.dropout(self.video(video.flatten(2))).mean(1)
        return {
            "text_features": F.normalize(self.dropout(self.embedding(input_ids)), dim=-1),
            "video_features": F.normalize(self.norm(frames), dim=-1),
            "logit_scale": self.logit_scale_log.exp(),
        }
