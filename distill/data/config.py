"""The `data` section of a recipe: where the pairs and videos are and how clips are sampled."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SyntheticConfig:
    num_train: int = 1600  # training videos (one caption each)
    num_test: int = 200  # test videos, never trained on
    size: int = 64  # frame height and width in pixels
    fps: int = 4  # frames per second of the written .mp4
    seconds: int = 8  # clip length
    seed: int = 0  # the dataset depends on this seed only, so runs with other seeds share it
    # shapes: flat colours on a plain background, a still camera; scenes: the same captions over textured
    # backdrops and objects, a panning camera, distractors and near-duplicate twins (distill.data.scenes)
    style: Literal["shapes", "scenes"] = "shapes"


@dataclass
class DataConfig:
    # Annotation layout (README "Datasets"): synthetic, the generic jsonl and csv, or CLIP4Clip's datasets.
    # synthetic, jsonl, csv, msrvtt, msvd, lsmdc, activitynet, didemo: distill.data.formats.FORMATS, checked there
    format: str = "synthetic"
    root: str = "data/demo"  # synthetic: where the dataset is generated (and reused by later runs)
    annotations: str | None = None  # msrvtt, msvd, lsmdc, activitynet, didemo: folder of the annotation files
    train: str | None = None  # training annotation file (relative to `annotations` when set); jsonl, csv: required
    test: str | None = None  # test annotation file; the CLIP4Clip formats default both to CLIP4Clip's files
    # Share of the training videos held out as the validation split (by a hash of each video's file name:
    # deterministic, by video, see distill.data.splits): the per-epoch validation and every recipe choice
    # read it, the test split only the final report. 0: no validation split, no per-epoch validation.
    val_fraction: float = 0.1
    video_root: str | None = None  # every format but synthetic: folder of the videos
    backend: Literal["decord", "pyav"] = "decord"  # decoder; pyav where decord has no wheel (aarch64, macOS arm64)
    max_words: int = 32  # caption length in tokens, start and end tokens included (CLIP4Clip: 32)
    framerate: int = 1  # frames per second kept before slicing to max_frames (CLIP4Clip's feature_framerate)
    slice_framepos: Literal[0, 1, 2] = 2  # 0 head, 1 tail, 2 uniform (CLIP4Clip's slice_framepos)
    keep_decoded: bool = False  # hold decoded frames in memory after the first read (small datasets only)
    # Frame shards written by `python -m distill.prepare RECIPE` or the prepare stage, read instead of the videos
    # when they were prepared with this recipe's sampling and sizes; unset: <output_dir>/frames.
    prepared: str | None = None
    # How prepare stores frames: jpeg (quality 90, about 7x smaller at 224 px), raw uint8 (exactly the decoded
    # frames), or auto: raw when every view is at most 64 px (small, and 3-4x faster to read), else jpeg.
    prepared_encoding: Literal["auto", "jpeg", "raw"] = "auto"
    # DataLoader worker processes for training, the teacher cache and evaluation (and prepare's decoding);
    # 0: in the main process.
    num_workers: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
