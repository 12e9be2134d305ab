"""Caption-video pairs, each video decoded once into one view per model.

The teacher and the student may see different frame counts and resolutions: a clip is decoded once with
the larger frame count and resized and cropped once per view size, and each view takes its frames from
that (evenly spaced when it needs fewer) before the CLIP normalisation. Frame shards (`distill.data.shards`)
store exactly those resized frames, so a clip read from them is the clip decoded here.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset

from distill.core.schema import DataConfig
from distill.data.formats import annotation_file
from distill.data.shards import FrameShards
from distill.data.video import Backend, VideoError, load_frames, normalize, pad_clip, resize_crop
from teachers.tokenizer import tokenize

if TYPE_CHECKING:
    from distill.core.schema import Recipe


@dataclass(frozen=True)
class View:
    """What one model sees of a clip."""

    max_frames: int
    size: int


def recipe_views(recipe: Recipe, teacher_size: int | None = None) -> dict[str, View]:
    """The teacher and student views of a run of `recipe`; `teacher_size`: the input size of a loaded
    teacher (`teacher.source`), which the teacher view must use instead of `teacher.image_size`."""
    return {
        "teacher": View(recipe.teacher.max_frames, teacher_size or recipe.teacher.image_size),
        "student": View(recipe.student.max_frames, recipe.student.image_size),
    }


def frame_settings(data: DataConfig, views: dict[str, View]) -> dict:
    """Everything that determines the stored frames: the dataset, the sampling, the decoder and the sizes.

    Shards are used only by a recipe whose settings are equal to those they were prepared with.
    """
    root = data.root if data.format == "synthetic" else data.video_root
    return {
        "format": data.format,
        "train": str(annotation_file(data, "train").resolve()),
        "test": str(annotation_file(data, "test").resolve()),
        "video_root": str(Path(root).resolve()),
        "framerate": data.framerate,
        "slice_framepos": data.slice_framepos,
        "backend": data.backend,
        "max_frames": max(view.max_frames for view in views.values()),
        "sizes": sorted({view.size for view in views.values()}),
    }


def frames_folder(data: DataConfig, run_dir: Path) -> Path:
    """Where the recipe's frame shards live: `data.prepared`, by default `<output_dir>/frames`."""
    return Path(data.prepared) if data.prepared else Path(run_dir) / "frames"


class VideoTextDataset(Dataset):
    """Yields `{"index", "input_ids", "attention_mask", "<view>_video", "<view>_mask"}` per pair.

    Args:
        pairs: `(video path, caption, ...)` tuples, e.g. the `Pair`s of `distill.data.formats.read_split`
            after `distill.data.checks.check_videos`; several captions may share a video.
        views: name -> View, e.g. `{"teacher": View(8, 32), "student": View(4, 32)}`.
        backend: video decoder, "decord" or "pyav".
        keep_decoded: hold the resized uint8 frames in memory after the first read (small datasets only; each
            DataLoader worker holds its own).
        shards: frame shards prepared with the same sampling and view sizes; the clips they hold are read
            from them instead of decoded.
        bad_videos: file a video that fails to decode here is added to. Given, such a failure yields the
            item of the next pair whose video reads (its own "index"), so an epoch goes on with full batches,
            which the global-batch losses across processes need; not given, the `VideoError` propagates.
    """

    def __init__(
        self,
        pairs: Sequence[tuple],
        views: dict[str, View],
        *,
        max_words: int,
        framerate: int = 1,
        slice_framepos: int = 2,
        backend: Backend = "decord",
        keep_decoded: bool = False,
        bad_videos: Path | None = None,
        shards: FrameShards | None = None,
    ):
        if not pairs:
            raise ValueError("VideoTextDataset: no pairs")
        self.video_ids = [str(pair[0]) for pair in pairs]  # the video path of each pair; equal ones share a video
        self.captions = [pair[1] for pair in pairs]
        self.input_ids, self.attention_mask = tokenize(self.captions, max_words)
        self.views = views
        self.decode_frames = max(view.max_frames for view in views.values())
        self.sizes = sorted({view.size for view in views.values()})
        if shards is not None and not set(self.sizes) <= set(shards.sizes):
            raise ValueError(f"frame shards in {shards.folder} hold sizes {shards.sizes}, the views need {self.sizes}")
        self.framerate, self.slice_framepos, self.backend = framerate, slice_framepos, backend
        self.shards = shards
        self.decoded: dict[str, dict[int, torch.Tensor]] | None = {} if keep_decoded else None  # video -> frames
        self.bad_videos = bad_videos
        self.failed: dict[str, str] = {}  # video -> why it failed, in this process

    def __len__(self) -> int:
        return len(self.video_ids)

    def first_pairs(self) -> list[int]:
        """The first pair of every video, in order of appearance (a row per video in the cache and evaluation)."""
        seen: dict[str, int] = {}
        for index, video in enumerate(self.video_ids):
            seen.setdefault(video, index)
        return list(seen.values())

    def select_views(self, names: Sequence[str]) -> VideoTextDataset:
        """The same pairs yielding only the views `names` (e.g. no teacher view when the teacher's outputs
        are cached). Clips are still decoded with this dataset's frame count, so each kept view has the
        frames it has here; only the kept views' sizes are resized. Kept frames are shared with this dataset
        when the sizes are the same."""
        selected = copy.copy(self)
        selected.views = {name: self.views[name] for name in names}
        selected.sizes = sorted({view.size for view in selected.views.values()})
        if selected.decoded is not None and selected.sizes != self.sizes:
            selected.decoded = {}
        return selected

    def subset(self, count: int) -> VideoTextDataset:
        """The first `count` pairs (all of them when there are fewer), e.g. a validation subset of the test
        split; clips kept in memory are shared."""
        part = copy.copy(self)
        part.video_ids, part.captions = self.video_ids[:count], self.captions[:count]
        part.input_ids, part.attention_mask = self.input_ids[:count], self.attention_mask[:count]
        return part

    def frames(self, index: int) -> dict[int, torch.Tensor]:
        """The clip of pair `index` at every view size: size -> uint8 `[k, 3, size, size]` resized, cropped frames."""
        video = self.video_ids[index]
        if self.decoded is not None and video in self.decoded:
            return self.decoded[video]
        if self.shards is not None and video in self.shards:
            frames = self.shards.read(video, self.sizes)
        else:
            decoded = load_frames(
                video,
                max_frames=self.decode_frames,
                framerate=self.framerate,
                slice_framepos=self.slice_framepos,
                backend=self.backend,
            )
            frames = {size: resize_crop(decoded, size) for size in self.sizes}
        if self.decoded is not None:
            self.decoded[video] = frames
        return frames

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.readable(index)

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        """A batch (a DataLoader hands the dataset the batch's indices): as `__getitem__`, but a failed pair
        is replaced by the next readable pair that is not in the batch yet. The same pair twice in a batch
        would be a false negative of the contrastive loss."""
        taken, items = set(indices), []
        for index in indices:
            items.append(self.readable(index, taken))
            taken.add(items[-1]["index"].item())
        return items

    def readable(self, index: int, taken: set[int] = frozenset()) -> dict[str, torch.Tensor]:
        """The item of pair `index`, or when its video fails (with `bad_videos` given) of the next pair after
        it whose video reads and that is not in `taken`."""
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            if self.video_ids[i] in self.failed or (offset and i in taken):
                continue
            try:
                frames = self.frames(i)
            except VideoError as error:
                if self.bad_videos is None:
                    raise
                self.record_failure(self.video_ids[i], error)
                continue
            return self.item(i, frames)
        raise VideoError(
            f"no pair left whose video decodes ({len(self.failed)} of the videos of {len(self)} pairs "
            f"failed, {len(taken)} pairs already in the batch); see {self.bad_videos}"
        )

    def item(self, index: int, frames: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        item = {
            "index": torch.tensor(index),
            "input_ids": self.input_ids[index],
            "attention_mask": self.attention_mask[index],
        }
        clips = {}  # view -> (video, mask): views that are equal share one tensor
        for name, view in self.views.items():
            if view not in clips:
                keep = frames[view.size]
                if len(keep) > view.max_frames:
                    keep = keep[np.linspace(0, len(keep) - 1, view.max_frames).astype(int)]
                clips[view] = pad_clip(normalize(keep), view.max_frames)
            item[f"{name}_video"], item[f"{name}_mask"] = clips[view]
        return item

    def record_failure(self, video: str, error: VideoError) -> None:
        """Counts a video that passed the check before training but fails now, and lists it in `bad_videos`."""
        self.failed[video] = str(error)
        with open(self.bad_videos, "a") as f:
            f.write(f"{video}\t{error} (while training; its pairs were replaced by the next readable pair)\n")
        print(
            f"warning: {error}; its pairs are replaced by the next readable pair (listed in {self.bad_videos})",
            file=sys.stderr,
        )
