"""Caption-video pairs from a JSONL annotation file, each video decoded once into one view per model.

The teacher and the student may see different frame counts and resolutions: a clip is decoded once with
the larger frame count, and each view takes its frames from that decode (evenly spaced when it needs
fewer) before its own resize and crop.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.data.video import load_frames, pad_clip, preprocess
from teachers.tokenizer import tokenize


@dataclass(frozen=True)
class View:
    """What one model sees of a clip."""

    max_frames: int
    size: int


def read_annotations(path: str | Path) -> list[dict]:
    """Reads `{"video", "caption"}` objects, one a line; a bad line is an error naming its number."""
    items = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not JSON ({error})") from None
        if not isinstance(item, dict) or not isinstance(item.get("video"), str) \
                or not isinstance(item.get("caption"), str):
            raise ValueError(f"{path}, line {number}: expected an object with string 'video' and 'caption'")
        items.append(item)
    if not items:
        raise ValueError(f"{path}: no annotations")
    return items


class VideoTextDataset(Dataset):
    """Yields `{"index", "input_ids", "attention_mask", "<view>_video", "<view>_mask"}` per pair.

    Args:
        annotations: JSONL file of `{"video", "caption"}`; video paths are relative to `video_root`.
        views: name -> View, e.g. `{"teacher": View(8, 32), "student": View(4, 32)}`.
        keep_decoded: hold decoded uint8 frames in memory after the first read (small datasets only).
    """

    def __init__(self, annotations: str | Path, video_root: str | Path, views: dict[str, View], *,
                 max_words: int, framerate: int = 1, slice_framepos: int = 2, keep_decoded: bool = False):
        items = read_annotations(annotations)
        self.videos = [str(Path(video_root) / item["video"]) for item in items]
        self.captions = [item["caption"] for item in items]
        self.input_ids, self.attention_mask = tokenize(self.captions, max_words)
        self.views = views
        self.decode_frames = max(view.max_frames for view in views.values())
        self.framerate, self.slice_framepos = framerate, slice_framepos
        self.decoded: dict[int, torch.Tensor] | None = {} if keep_decoded else None

    def __len__(self) -> int:
        return len(self.videos)

    def frames(self, index: int) -> torch.Tensor:
        """Decoded uint8 frames `[k, H, W, 3]` of one clip."""
        if self.decoded is not None and index in self.decoded:
            return self.decoded[index]
        frames = load_frames(self.videos[index], max_frames=self.decode_frames, framerate=self.framerate,
                             slice_framepos=self.slice_framepos)
        if self.decoded is not None:
            self.decoded[index] = frames
        return frames

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        frames = self.frames(index)
        item = {"index": torch.tensor(index), "input_ids": self.input_ids[index],
                "attention_mask": self.attention_mask[index]}
        for name, view in self.views.items():
            keep = frames
            if len(frames) > view.max_frames:
                keep = frames[np.linspace(0, len(frames) - 1, view.max_frames).astype(int)]
            item[f"{name}_video"], item[f"{name}_mask"] = pad_clip(preprocess(keep, view.size), view.max_frames)
        return item
