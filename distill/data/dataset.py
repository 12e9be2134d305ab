"""Caption-video pairs, each video decoded once into one view per model.

The teacher and the student may see different frame counts and resolutions: a clip is decoded once with
the larger frame count, and each view takes its frames from that decode (evenly spaced when it needs
fewer) before its own resize and crop.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.data.video import Backend, VideoError, load_frames, pad_clip, preprocess
from teachers.tokenizer import tokenize


@dataclass(frozen=True)
class View:
    """What one model sees of a clip."""

    max_frames: int
    size: int


class VideoTextDataset(Dataset):
    """Yields `{"index", "input_ids", "attention_mask", "<view>_video", "<view>_mask"}` per pair.

    Args:
        pairs: `(video path, caption, ...)` tuples, e.g. the `Pair`s of `distill.data.formats.read_split`
            after `distill.data.checks.check_videos`; several captions may share a video.
        views: name -> View, e.g. `{"teacher": View(8, 32), "student": View(4, 32)}`.
        backend: video decoder, "decord" or "pyav".
        keep_decoded: hold decoded uint8 frames in memory after the first read (small datasets only).
        bad_videos: file a video that fails to decode here is added to. Given, such a failure yields the
            item of the next pair whose video reads (its own "index"), so an epoch goes on with full batches,
            which the global-batch losses across processes need; not given, the `VideoError` propagates.
    """

    def __init__(self, pairs: Sequence[tuple], views: dict[str, View], *, max_words: int, framerate: int = 1,
                 slice_framepos: int = 2, backend: Backend = "decord", keep_decoded: bool = False,
                 bad_videos: Path | None = None):
        if not pairs:
            raise ValueError("VideoTextDataset: no pairs")
        self.video_ids = [str(pair[0]) for pair in pairs]  # the video path of each pair; equal ones share a video
        self.captions = [pair[1] for pair in pairs]
        self.input_ids, self.attention_mask = tokenize(self.captions, max_words)
        self.views = views
        self.decode_frames = max(view.max_frames for view in views.values())
        self.framerate, self.slice_framepos, self.backend = framerate, slice_framepos, backend
        self.decoded: dict[str, torch.Tensor] | None = {} if keep_decoded else None  # video -> frames
        self.bad_videos = bad_videos
        self.failed: dict[str, str] = {}  # video -> why it failed, in this process

    def __len__(self) -> int:
        return len(self.video_ids)

    def frames(self, index: int) -> torch.Tensor:
        """Decoded uint8 frames `[k, H, W, 3]` of the clip of pair `index`."""
        video = self.video_ids[index]
        if self.decoded is not None and video in self.decoded:
            return self.decoded[video]
        frames = load_frames(video, max_frames=self.decode_frames, framerate=self.framerate,
                             slice_framepos=self.slice_framepos, backend=self.backend)
        if self.decoded is not None:
            self.decoded[video] = frames
        return frames

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            if self.video_ids[i] in self.failed:
                continue
            try:
                frames = self.frames(i)
            except VideoError as error:
                if self.bad_videos is None:
                    raise
                self.record_failure(self.video_ids[i], error)
                continue
            return self.item(i, frames)
        raise VideoError(f"none of the {len(self)} pairs has a video that decodes; see {self.bad_videos}")

    def item(self, index: int, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        item = {"index": torch.tensor(index), "input_ids": self.input_ids[index],
                "attention_mask": self.attention_mask[index]}
        for name, view in self.views.items():
            keep = frames
            if len(frames) > view.max_frames:
                keep = frames[np.linspace(0, len(frames) - 1, view.max_frames).astype(int)]
            item[f"{name}_video"], item[f"{name}_mask"] = pad_clip(preprocess(keep, view.size), view.max_frames)
        return item

    def record_failure(self, video: str, error: VideoError) -> None:
        """Counts a video that passed the check before training but fails now, and lists it in `bad_videos`."""
        self.failed[video] = str(error)
        with open(self.bad_videos, "a") as f:
            f.write(f"{video}\t{error} (while training; its pairs were replaced by the next readable pair)\n")
        print(f"warning: {error}; its pairs are replaced by the next readable pair (listed in {self.bad_videos})",
              file=sys.stderr)
