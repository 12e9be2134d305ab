"""Random crops of training clips (`teacher.crop_scale`), for the teacher stage.

A teacher trained on a small pool memorises it (training loss near 0 while validation R@1 stalls); a new
crop of every clip each epoch is the cheapest way to show it more that keeps what a caption says: the same
crop for every frame of a clip, so "moves left, then ..." stays true (no flips, no time reversal, and no
colour changes: captions name colours). Each crop is drawn from (seed, epoch, pair index): the same
whatever the batch order, the number of processes or a resume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def crop_box(scale: float, height: int, width: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """`(top, left, h, w)`: a crop whose sides are one fraction of the frame's, drawn from [scale, 1], at a
    uniform position."""
    fraction = scale + (1 - scale) * torch.rand((), generator=generator).item()
    h, w = max(1, round(height * fraction)), max(1, round(width * fraction))
    top = torch.randint(0, height - h + 1, (), generator=generator).item()
    left = torch.randint(0, width - w + 1, (), generator=generator).item()
    return top, left, h, w


def random_crops(batch: dict[str, torch.Tensor], epoch: int, *, view: str, scale: float, seed: int) -> dict:
    """`batch` with each clip of its `view` cropped (`crop_box`, one box for all its frames) and resized back
    bilinearly to the frame size."""
    video = batch[f"{view}_video"]  # [B, T, 3, H, W]
    height, width = video.shape[-2:]
    crops = []
    for clip, index in zip(video, batch["index"].tolist()):
        generator = torch.Generator().manual_seed((seed * 100_003 + epoch) * 1_000_003 + index)
        top, left, h, w = crop_box(scale, height, width, generator)
        crop = clip[..., top : top + h, left : left + w]
        crops.append(crop if (h, w) == (height, width) else F.interpolate(crop, (height, width), mode="bilinear"))
    return {**batch, f"{view}_video": torch.stack(crops)}
