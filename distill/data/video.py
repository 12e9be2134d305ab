"""Video clips the way CLIP4Clip sees them: which frames, decoded with decord, resized, cropped, normalised.

The frame choice copies CLIP4Clip's OpenCV extractor (spec section 3): `framerate` frames per second of video,
counted with the truncated integer fps and an inclusive last second, then thinned to `max_frames`.
"""

import math
import os

import decord
import numpy as np
import torch
from einops import rearrange
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VideoError(Exception):
    """A video file that is missing or cannot be decoded; the message names the file."""


def clip4clip_frame_indices(
    frame_count: int, fps: float, max_frames: int, *, framerate: int = 1, slice_framepos: int = 2
) -> list[int]:
    """Source frame indices CLIP4Clip's decoder keeps for a video.

    Args:
        frame_count: Frames in the video.
        fps: Average frame rate; truncated to an int as CLIP4Clip does (29.97 -> 29).
        max_frames: Most frames to keep.
        framerate: Frames sampled per second of video (CLIP4Clip's `--feature_framerate`).
        slice_framepos: When more than `max_frames` are sampled: 0 keeps the first, 1 the last,
            2 an evenly spaced (floored `np.linspace`) subset.
    """
    # CLIP4Clip divides by int(fps) and asserts fps >= framerate; clamping keeps sub-1 fps and fps < framerate
    # videos usable (one frame per source frame) instead of failing.
    fps_int = max(int(fps), 1)
    step = max(fps_int // framerate, 1)
    offsets = range(0, fps_int, step)[:framerate]
    duration = math.ceil(frame_count / fps_int)
    # The last second is inclusive, and the first index past the end stops the read (indices only grow).
    indices = [sec * fps_int + off for sec in range(duration + 1) for off in offsets]
    indices = [i for i in indices if i < frame_count]
    if len(indices) <= max_frames:
        return indices
    if slice_framepos == 0:
        return indices[:max_frames]
    if slice_framepos == 1:
        return indices[-max_frames:]
    positions = np.linspace(0, len(indices) - 1, num=max_frames).astype(int)
    return [indices[p] for p in positions]


def load_frames(path, *, max_frames: int, framerate: int = 1, slice_framepos: int = 2) -> torch.Tensor:
    """Decode the frames CLIP4Clip would sample from a video file.

    Returns:
        uint8 `[k, H, W, 3]` RGB frames, 1 <= k <= max_frames.

    Raises:
        VideoError: The file is missing, cannot be decoded, or holds no frames.
    """
    if not os.path.isfile(path):
        raise VideoError(f"video file not found: {path}")
    try:
        vr = decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), num_threads=1)
    except (RuntimeError, decord.DECORDError) as e:
        raise VideoError(f"cannot open video {path}: {e}") from None
    try:
        frame_count, fps = len(vr), vr.get_avg_fps()
        if frame_count == 0:
            raise VideoError(f"video {path} has no frames")
        if not (math.isfinite(fps) and fps > 0):
            raise VideoError(f"video {path} reports an unusable frame rate {fps}; expected a positive number")
        indices = clip4clip_frame_indices(
            frame_count, fps, max_frames, framerate=framerate, slice_framepos=slice_framepos
        )
        try:
            frames = vr.get_batch(indices).asnumpy()  # t h w c
        except (RuntimeError, decord.DECORDError) as e:
            raise VideoError(f"cannot decode frames {indices} of video {path}: {e}") from None
    finally:
        # decord readers hold decoder buffers until collected (tens of MB each); release this one now.
        del vr
    return torch.from_numpy(frames)


def preprocess(frames: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's image transform on a stack of frames, all at once.

    Short side resized to `size` (antialiased bicubic on uint8, within a couple of levels of PIL's),
    centre crop `size` x `size`, scale to [0, 1], CLIP mean/std normalisation.

    Args:
        frames: uint8 `[T, H, W, 3]` RGB frames.
        size: Output side in pixels.

    Returns:
        float32 `[T, 3, size, size]`.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    x = rearrange(frames, "t h w c -> t c h w")
    x = TF.resize(x, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, [size, size])
    x = x.float() / 255.0
    return TF.normalize(x, mean=list(CLIP_MEAN), std=list(CLIP_STD))


def pad_clip(frames: torch.Tensor, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad `[k, 3, s, s]` frames to `max_frames` slots, real frames first, as CLIP4Clip does.

    Returns:
        (`[max_frames, 3, s, s]` frames, long `[max_frames]` mask with 1 for the k real frames).
    """
    k = frames.shape[0]
    if k > max_frames:
        raise ValueError(f"clip has {k} frames (shape {list(frames.shape)}), more than max_frames={max_frames}")
    padded = frames.new_zeros((max_frames, *frames.shape[1:]))
    padded[:k] = frames
    mask = torch.zeros(max_frames, dtype=torch.long)
    mask[:k] = 1
    return padded, mask


def read_clip(
    path, *, max_frames: int, size: int, framerate: int = 1, slice_framepos: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a video file into CLIP4Clip's model input.

    Returns:
        (float32 `[max_frames, 3, size, size]` normalised frames, long `[max_frames]` mask, 1 = real frame).

    Raises:
        VideoError: The file is missing, cannot be decoded, or holds no frames.
    """
    frames = load_frames(path, max_frames=max_frames, framerate=framerate, slice_framepos=slice_framepos)
    return pad_clip(preprocess(frames, size), max_frames)
