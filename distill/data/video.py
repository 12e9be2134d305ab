"""Video clips the way CLIP4Clip sees them: which frames, decoded with decord (or PyAV), resized, cropped,
normalised.

The frame choice copies CLIP4Clip's OpenCV extractor (spec section 3): `framerate` frames per second of video,
counted with the truncated integer fps and an inclusive last second, then thinned to `max_frames`.
"""

import math
import os
from typing import Literal

import av
import numpy as np
import torch
from einops import rearrange
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

try:
    import decord
except ImportError:  # no wheel for this platform: data.backend=pyav still works
    decord = None

CLIP_MEAN, CLIP_STD = OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
# normalize's scale 1 / (255 std) and shift mean / std, float32 [3, 1, 1], made once
_SCALE = 1 / (255 * torch.tensor(CLIP_STD).view(3, 1, 1))
_SHIFT = torch.tensor(CLIP_MEAN).view(3, 1, 1) / torch.tensor(CLIP_STD).view(3, 1, 1)

# decord is the fast default; PyAV runs where decord has no wheel (Linux aarch64, macOS arm64).
Backend = Literal["decord", "pyav"]
DEFAULT_BACKEND: Backend = "decord" if decord is not None else "pyav"  # for index, search and embed


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
    return thin([i for i in indices if i < frame_count], max_frames, slice_framepos)


def thin(indices: list[int], max_frames: int, slice_framepos: int) -> list[int]:
    """At most `max_frames` of `indices`: the first (0), the last (1) or an evenly spaced subset (2)."""
    if len(indices) <= max_frames:
        return indices
    if slice_framepos == 0:
        return indices[:max_frames]
    if slice_framepos == 1:
        return indices[-max_frames:]
    positions = np.linspace(0, len(indices) - 1, num=max_frames).astype(int)
    return [indices[p] for p in positions]


def probe_video(path, backend: Backend = "decord") -> tuple[int, float]:
    """Frame count and average frame rate of a video, without decoding a frame.

    This is the check every video gets before training: it opens the file the way `load_frames` will, so a
    missing, empty, truncated or undecodable video fails here (decord indexes every packet when it opens a
    file; PyAV reads every packet here) instead of in the middle of an epoch.

    Raises:
        VideoError: The file is missing, cannot be opened, or holds no frames.
    """
    if backend == "decord":
        vr = _open_decord(path)
        try:
            if not _misread_by_decord(vr):
                return _checked(path, len(vr), vr.get_avg_fps())
        finally:
            del vr  # decord readers hold decoder buffers until collected (tens of MB each)
    return _probe_pyav(path)


def load_frames(
    path, *, max_frames: int, framerate: int = 1, slice_framepos: int = 2, backend: Backend = "decord"
) -> torch.Tensor:
    """Decode the frames CLIP4Clip would sample from a video file.

    With the decord backend, a file decord would misread (an MP4 edit list that hides leading frames) is
    read with PyAV instead.

    Returns:
        uint8 `[k, H, W, 3]` RGB frames, 1 <= k <= max_frames.

    Raises:
        VideoError: The file is missing, cannot be decoded, or holds no frames.
    """
    sampling = {"max_frames": max_frames, "framerate": framerate, "slice_framepos": slice_framepos}
    return _read_frames(path, lambda frame_count, fps: clip4clip_frame_indices(frame_count, fps, **sampling), backend)[
        0
    ]


DECODE_GROUP = 256  # frames decoded at a time: what a long video costs in memory before resizing


def _read_frames(path, choose, backend: Backend, transform=None) -> tuple[torch.Tensor, int, float]:
    """`(frames, frame count, fps)`: the frames `choose(frame_count, fps)` names, decoded with decord, or
    with PyAV where decord would misread the file or the backend says so, as uint8 `[k, H, W, 3]`, or as
    `transform` makes each group of DECODE_GROUP of them (so a long video is never whole in memory)."""
    transform = transform or (lambda frames: frames)
    if backend == "decord":
        vr = _open_decord(path)
        try:
            if not _misread_by_decord(vr):
                frame_count, fps = _checked(path, len(vr), vr.get_avg_fps())
                indices = choose(frame_count, fps)
                try:
                    groups = [
                        transform(torch.from_numpy(vr.get_batch(indices[i : i + DECODE_GROUP]).asnumpy()))  # t h w c
                        for i in range(0, len(indices), DECODE_GROUP)
                    ]
                    # a training clip is one group: its frames as decoded, no copy
                    return (groups[0] if len(groups) == 1 else torch.cat(groups)), frame_count, fps
                except (RuntimeError, decord.DECORDError) as e:
                    raise VideoError(f"cannot decode frames {indices} of video {path}: {e}") from None
        finally:
            del vr
    frame_count, fps = _probe_pyav(path)
    indices = choose(frame_count, fps)
    return _decode_pyav(path, indices, transform), frame_count, fps


def segment_frame_indices(
    frame_count: int, fps: float, seconds: int, max_frames: int, *, framerate: int = 1, slice_framepos: int = 2
) -> list[tuple[int, list[int]]]:
    """`(first second, frame indices)` of each `seconds`-long segment of a video: the frames CLIP4Clip's
    sampling takes from the whole video, cut by their second (counted as CLIP4Clip counts it, with the
    truncated fps) into segments [k * seconds, (k + 1) * seconds), each thinned to `max_frames`."""
    fps_int = max(int(fps), 1)
    every = clip4clip_frame_indices(frame_count, fps, frame_count + fps_int, framerate=framerate)
    segments: dict[int, list[int]] = {}
    for i in every:
        segments.setdefault(i // fps_int // seconds * seconds, []).append(i)
    return [(start, thin(found, max_frames, slice_framepos)) for start, found in segments.items()]


def load_segments(
    path,
    seconds: int | None,
    *,
    max_frames: int,
    framerate: int = 1,
    slice_framepos: int = 2,
    size: int | None = None,
    backend: Backend = "decord",
) -> tuple[list[tuple[float, float]], list[torch.Tensor], float]:
    """A video cut into `seconds`-long segments, the frames of each sampled as `load_frames` samples a clip
    (one decode of the file for all, DECODE_GROUP frames at a time); `seconds=None` takes the whole video as
    one segment, as `load_frames`. With `size`, frames are resized and cropped as they are decoded
    (`resize_crop`).

    Returns:
        (`(start, end)` of each segment in seconds of the video, uint8 `[k, H, W, 3]` frames of each (with
        `size`: `[k, 3, size, size]`), the video's duration in seconds).

    Raises:
        VideoError: The file is missing, cannot be decoded, or holds no frames.
    """
    plan: list[tuple[int, list[int]]] = []

    def choose(frame_count: int, fps: float) -> list[int]:
        sampling = {"framerate": framerate, "slice_framepos": slice_framepos}
        plan.clear()  # a file decord would misread is chosen from again, for PyAV
        if seconds is None:
            plan.append((0, clip4clip_frame_indices(frame_count, fps, max_frames, **sampling)))
        else:
            plan.extend(segment_frame_indices(frame_count, fps, seconds, max_frames, **sampling))
        return sorted({i for _, indices in plan for i in indices})

    frames, frame_count, fps = _read_frames(path, choose, backend, size and (lambda f: resize_crop(f, size)))
    duration = frame_count / fps
    row = {index: k for k, index in enumerate(sorted({i for _, indices in plan for i in indices}))}
    scale = max(int(fps), 1) / fps  # a second as CLIP4Clip counts frames, in seconds of the video
    spans = [
        (round(start * scale, 3), round(duration if seconds is None else min((start + seconds) * scale, duration), 3))
        for start, _ in plan
    ]
    return spans, [frames[[row[i] for i in indices]] for _, indices in plan], duration


def _checked(path, frame_count: int, fps: float) -> tuple[int, float]:
    if frame_count == 0:
        raise VideoError(f"video {path} has no frames")
    if not (math.isfinite(fps) and fps > 0):
        raise VideoError(f"video {path} reports an unusable frame rate {fps}; expected a positive number")
    return frame_count, fps


def _open_decord(path) -> "decord.VideoReader":
    if decord is None:
        raise ImportError("decord is not installed (it has no wheel for this platform); set data.backend=pyav")
    if not os.path.isfile(path):
        raise VideoError(f"video file not found: {path}")
    try:
        return decord.VideoReader(os.fspath(path), ctx=decord.cpu(0), num_threads=1)
    except (RuntimeError, decord.DECORDError) as e:
        raise VideoError(f"cannot open video {path}: {e}") from None


def _misread_by_decord(vr: "decord.VideoReader") -> bool:
    """Whether decord counts frames the file does not present.

    An MP4 trimmed by stream copy keeps the packets from the keyframe before the cut and hides them with an
    edit list. decord ignores the edit list: it counts the hidden frames, gives them negative timestamps,
    and returns shifted and repeated frames for the indices near the end.
    """
    if len(vr) == 0:
        return False
    starts = vr.get_frame_timestamp(range(len(vr)))[:, 0]
    return bool(starts[0] < 0 or np.any(np.diff(starts) <= 0))


def _open_pyav(path) -> av.container.InputContainer:
    if not os.path.isfile(path):
        raise VideoError(f"video file not found: {path}")
    try:
        container = av.open(os.fspath(path))
    except av.FFmpegError as e:
        raise VideoError(f"cannot open video {path}: {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoError(f"video {path} has no video stream")
    return container


def _probe_pyav(path) -> tuple[int, float]:
    """Presented frames (packets an edit list hides are not counted) and frame rate, from the packets alone."""
    with _open_pyav(path) as container:
        stream = container.streams.video[0]
        frame_count = 0
        try:
            for packet in container.demux(stream):
                if packet.is_corrupt:
                    raise VideoError(f"video {path} is truncated or corrupt (packet after frame {frame_count})")
                if packet.size and not packet.is_discard:
                    frame_count += 1
        except av.FFmpegError as e:
            raise VideoError(f"cannot read video {path}: {e}") from None
        rate = stream.average_rate or stream.guessed_rate
        return _checked(path, frame_count, float(rate) if rate else math.nan)


def _decode_pyav(path, indices: list[int], transform=None) -> torch.Tensor:
    """Decodes the video from the start up to the last wanted frame and keeps the wanted ones, upright,
    passed through `transform` DECODE_GROUP at a time.

    PyAV leaves frames an edit list hides out of its output, so index i is the i-th presented frame. It does
    not apply the display matrix (the rotation a phone records instead of turning the pixels); decord does,
    so the frames are turned here by `frame.rotation` (degrees counter-clockwise), in quarter turns, to match.
    """
    transform = transform or (lambda frames: frames)
    wanted, frames, groups, count = set(indices), [], [], 0
    with _open_pyav(path) as container:
        stream = container.streams.video[0]
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames.append(np.rot90(frame.to_ndarray(format="rgb24"), round(frame.rotation / 90) % 4))
                    count += 1
                    if len(frames) == DECODE_GROUP:
                        groups.append(transform(torch.from_numpy(np.stack(frames))))
                        frames = []
                if i == indices[-1]:
                    break
        except av.FFmpegError as e:
            raise VideoError(f"cannot decode video {path}: {e}") from None
    if count < len(indices):
        raise VideoError(f"video {path} ended before frame {indices[-1]}: decoded {count} of frames {indices}")
    if frames:
        groups.append(transform(torch.from_numpy(np.stack(frames))))
    return groups[0] if len(groups) == 1 else torch.cat(groups)  # a clip: no copy, as before groups


def preprocess(frames: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's image transform on a stack of frames, all at once: `normalize(resize_crop(frames, size))`.

    Short side resized to `size` (antialiased bicubic on uint8, within a couple of levels of PIL's),
    centre crop `size` x `size`, scale to [0, 1], CLIP mean/std normalisation.

    Args:
        frames: uint8 `[T, H, W, 3]` RGB frames.
        size: Output side in pixels.

    Returns:
        float32 `[T, 3, size, size]`.
    """
    return normalize(resize_crop(frames, size))


def resize_crop(frames: torch.Tensor, size: int) -> torch.Tensor:
    """The uint8 half of `preprocess`: uint8 `[T, H, W, 3]` -> uint8 `[T, 3, size, size]`, short side resized
    to `size` and centre-cropped. Frame shards store this, so a clip read from them equals a decoded one."""
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {list(frames.shape)}")
    x = rearrange(frames, "t h w c -> t c h w")
    x = TF.resize(x, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(x, [size, size])


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """uint8 `[T, 3, s, s]` -> float32 scaled to [0, 1] and normalised with the CLIP mean/std.

    `(x / 255 - mean) / std` as one scale and one shift, in place on the float copy: one float tensor
    allocated instead of three. The copy is contiguous whatever the input's layout (a resize hands back
    channels-last frames, frame shards contiguous ones), so both data paths give the models the same
    tensors: on some CPUs convolutions pick other kernels, with other rounding, for another layout (a
    student then lays its frames out channels-last itself, the same way on both paths).
    """
    return frames.to(torch.float32, memory_format=torch.contiguous_format).mul_(_SCALE).sub_(_SHIFT)


def pad_clip(frames: torch.Tensor, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad `[k, 3, s, s]` frames to `max_frames` slots, real frames first, as CLIP4Clip does.

    Returns:
        (`[max_frames, 3, s, s]` frames, long `[max_frames]` mask with 1 for the k real frames).
    """
    k = frames.shape[0]
    if k > max_frames:
        raise ValueError(f"clip has {k} frames (shape {list(frames.shape)}), more than max_frames={max_frames}")
    if k == max_frames:  # nothing to pad: no copy
        return frames, torch.ones(max_frames, dtype=torch.long)
    padded = frames.new_zeros((max_frames, *frames.shape[1:]))
    padded[:k] = frames
    mask = torch.zeros(max_frames, dtype=torch.long)
    mask[:k] = 1
    return padded, mask


def read_clip(
    path, *, max_frames: int, size: int, framerate: int = 1, slice_framepos: int = 2, backend: Backend = "decord"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a video file into CLIP4Clip's model input.

    Returns:
        (float32 `[max_frames, 3, size, size]` normalised frames, long `[max_frames]` mask, 1 = real frame).

    Raises:
        VideoError: The file is missing, cannot be decoded, or holds no frames.
    """
    frames = load_frames(
        path, max_frames=max_frames, framerate=framerate, slice_framepos=slice_framepos, backend=backend
    )
    return pad_clip(preprocess(frames, size), max_frames)
