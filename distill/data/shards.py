"""Frame shards: every video of a dataset decoded once, stored at the sizes the recipe's views need.

Decoding a 12-frame clip from H.264 costs 50-400 ms; reading the same frames back from 224 px JPEG costs
about 3 ms. `prepare_frames` decodes each video once with CLIP4Clip's sampling, resizes and crops the frames
once per view size (`resize_crop`, the uint8 half of `preprocess`), and appends them to shard files;
`FrameShards` reads them back. A clip read from shards equals a decoded one exactly with `encoding="raw"`,
and within JPEG error with `encoding="jpeg"` (the default: 7x smaller at 224 px).

A frames folder holds
    shard_00000.bin    the frames of up to VIDEOS_PER_SHARD videos, one after another: per video, for each
                       size s (ascending), one tile of its k frames: a JPEG of the frames side by side
                       (k * s wide, s high), or raw uint8 `[k, 3, s, s]`
    shard_00000.json   the index of a finished shard: FORMAT, settings, its videos, per video the offset in
                       the .bin, k and the byte length of each tile; written after the .bin is complete
    manifest.json      all shard indexes together, written last: what the dataset reads
Every file is written under a temporary name and renamed, so a killed prepare leaves only finished shards,
and the next one starts at the first unfinished shard. Shards in another FORMAT (those of earlier versions,
a JPEG a frame, record none) are not read, and a prepare into their folder is refused.

A JPEG a clip and size rather than a frame: Pillow's cost per image dominates small frames. Side by side
rather than stacked: the decoder also costs per row. The frames of a tile share JPEG's chroma blocks at
their edges, which moves a clip's mean error by about 0.1 level of 255 (BENCHMARKS.md, "Frame shards").
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from collections.abc import Iterable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from tqdm.auto import tqdm

from distill.core.files import atomic_text, atomic_write, diff_dicts
from distill.data.video import VideoError, load_frames, resize_crop

Encoding = Literal["jpeg", "raw"]
# data.prepared_encoding=auto stores raw frames up to this size: there a raw clip is small (12 frames at
# 64 px: 147 KB) and reads 3-4x faster than JPEG (Pillow's fixed cost a tile), JPEG above it.
RAW_UP_TO = 64
FORMAT = "clip4clip-distill/frame-shards-2"  # 2: a tile a clip and size; before it (none recorded): a JPEG a frame
VIDEOS_PER_SHARD = 256  # 12 frames at 224 px: about 30 MB of JPEG a shard, the work a kill can lose
JPEG_QUALITY = 90  # 12 frames at 224 px: about 100-200 KB a clip, mean error about 1-2 levels of 255
JPEG_MAX_WIDTH = 65500  # libjpeg's largest side: a JPEG tile holds at most 65500 // size frames (292 at 224 px)


class FrameShards:
    """The clips of a finished frames folder (see the module docstring), by video path.

    Attributes:
        failed: video -> why it could not be decoded when the shards were prepared.
    """

    def __init__(self, folder: Path, manifest: dict):
        self.folder = Path(folder)
        self.sizes: list[int] = manifest["settings"]["sizes"]
        self.encoding: Encoding = manifest["encoding"]
        self.shards: list[str] = manifest["shards"]
        self.paths = [self.folder / name for name in self.shards]
        self.videos: dict[str, list] = manifest["videos"]  # video -> [shard index, offset, frames, tile lengths]
        self.failed: dict[str, str] = manifest["failed"]

    def __contains__(self, video: str) -> bool:
        return video in self.videos or video in self.failed

    def __len__(self) -> int:
        return len(self.videos)

    def read(self, video: str, sizes: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
        """The stored frames of `video` at `sizes` (default: all): size -> uint8 `[k, 3, size, size]`.

        Raises:
            VideoError: the video failed to decode when the shards were prepared, or its shard is damaged.
        """
        if video in self.failed:
            raise VideoError(self.failed[video])
        shard, offset, k, lengths = self.videos[video]
        path = self.paths[shard]
        buffer = bytearray(sum(lengths))
        try:
            with open(path, "rb", buffering=0) as f:  # one read: a buffer would only add cost
                f.seek(offset)
                complete = f.readinto(buffer) == len(buffer)
        except OSError as error:
            raise VideoError(f"cannot read the frames of video {video} from {path}: {error}") from None
        if not complete:
            raise VideoError(f"frame shard {path} is truncated: it ends inside the frames of video {video}")
        starts = [0, *accumulate(lengths)]
        clips = {}
        for j, size in enumerate(self.sizes):
            if sizes is not None and size not in sizes:
                continue
            tile = memoryview(buffer)[starts[j] : starts[j + 1]]
            if self.encoding == "raw":
                clips[size] = torch.frombuffer(tile, dtype=torch.uint8).view(k, 3, size, size)
                continue
            try:
                clips[size] = decode_tile(tile, k, size)
            except ValueError as error:
                raise VideoError(
                    f"damaged frames of video {video} in {path} (the {k}-frame tile at {size} px): {error}"
                ) from None
        return clips


# JPEG through Pillow (libjpeg-turbo): torchvision's encode_jpeg/decode_jpeg are deprecated since 0.29 (for
# TorchCodec, not a dependency here). Pillow writes the same bytes at the same quality and decodes them to the
# same pixels, 224 px frames as fast, but costs more an image (a tile pays it once a clip and size).


def encode_tile(clip: torch.Tensor) -> bytes:
    """uint8 `[k, 3, s, s]` frames -> one JPEG (quality JPEG_QUALITY, 4:2:0 chroma) of them side by side,
    k * s wide and s high."""
    out = io.BytesIO()
    Image.fromarray(rearrange(clip, "t c h w -> h (t w) c").numpy()).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def decode_tile(jpeg: bytes | bytearray | memoryview, k: int, size: int) -> torch.Tensor:
    """A tile of `encode_tile` -> uint8 `[k, 3, size, size]`.

    Decoded straight into an image of the known size (`Image.frombytes` with the JPEG decoder): `Image.open`
    would parse the header in Python first, 1.6x the time of an 8-frame 32 px tile.

    Raises:
        ValueError: the data is not a JPEG of `k * size` x `size` (damaged data).
    """
    image = Image.frombytes("RGB", (k * size, size), jpeg, "jpeg", "RGB", "")
    tile = np.frombuffer(image.tobytes(), np.uint8).reshape(size, k, size, 3)  # h t w c
    # "h t w c -> t c h w" in numpy: einops' rearrange costs 5% of a small clip's read here
    return torch.from_numpy(tile.transpose(1, 3, 0, 2).copy())


def open_shards(folder: Path, settings: dict) -> tuple[FrameShards | None, str]:
    """The frame shards in `folder` if they were prepared with `settings`.

    Returns:
        (the shards or None, a log line saying which and why).
    """
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        return None, (
            f"no frame shards in {folder} (the prepare stage, or python -m distill.prepare RECIPE, "
            "writes them); decoding videos"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        return None, (
            f"the frame shards in {folder} are in {_format_name(manifest)}, this version reads {FORMAT} "
            "(delete them and prepare again: python -m distill.prepare RECIPE); decoding videos"
        )
    differ = _differences(manifest["settings"], settings)
    if differ:
        return None, f"the frame shards in {folder} were prepared with other settings ({differ}); decoding videos"
    shards = FrameShards(folder, manifest)
    return shards, f"reading clips from the frame shards ({shards.encoding}, {len(shards)} videos) in {folder}"


def encode_clip(video: str, settings: dict, encoding: Encoding) -> tuple[bytes, int, list[int]] | str:
    """Decodes one video and encodes its frames at every size: (the tiles, the frame count, the byte length of
    each tile); the error message where it fails."""
    try:
        frames = load_frames(
            video,
            max_frames=settings["max_frames"],
            framerate=settings["framerate"],
            slice_framepos=settings["slice_framepos"],
            backend=settings["backend"],
        )
    except VideoError as error:
        return str(error)
    tiles = []
    for size in settings["sizes"]:
        clip = resize_crop(frames, size)  # t 3 s s
        tiles.append(clip.numpy().tobytes() if encoding == "raw" else encode_tile(clip))
    return b"".join(tiles), len(frames), [len(tile) for tile in tiles]


def prepare_frames(
    videos: Sequence[str],
    folder: Path,
    settings: dict,
    *,
    encoding: Literal["auto", "jpeg", "raw"] = "auto",
    workers: int = 0,
    progress: bool = False,
) -> FrameShards:
    """Decodes every video of `videos` once into frame shards in `folder`, keeping the finished shards of an
    earlier, interrupted call with the same settings.

    Args:
        encoding: jpeg, raw, or auto: raw when no size is above RAW_UP_TO, else jpeg.
        workers: processes decoding videos in parallel; 0 decodes in this process.

    Raises:
        ValueError: `folder` holds shards prepared with other settings, another encoding or in another format;
            or a JPEG tile would be wider than JPEG allows.
    """
    if encoding == "auto":
        encoding = "raw" if max(settings["sizes"]) <= RAW_UP_TO else "jpeg"
    width = settings["max_frames"] * max(settings["sizes"])
    if encoding == "jpeg" and width > JPEG_MAX_WIDTH:
        raise ValueError(
            f"{settings['max_frames']} frames at {max(settings['sizes'])} px make a JPEG tile {width} px "
            f"wide, more than JPEG's {JPEG_MAX_WIDTH}; set data.prepared_encoding=raw"
        )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    videos = list(dict.fromkeys(videos))
    chunks = [videos[i : i + VIDEOS_PER_SHARD] for i in range(0, len(videos), VIDEOS_PER_SHARD)]
    indexes = [_finished_shard(folder, n, chunk, settings, encoding) for n, chunk in enumerate(chunks)]
    todo = [n for n, index in enumerate(indexes) if index is None]
    bar = tqdm(
        total=len(videos),
        initial=len(videos) - sum(len(chunks[n]) for n in todo),
        desc="prepare frames",
        unit="video",
        disable=not progress,
    )
    if todo:  # shards are about to change under an older manifest
        (folder / "manifest.json").unlink(missing_ok=True)
    for stale in folder.glob("shard_*"):  # left by an earlier prepare of more videos
        if int(stale.name[6:11]) >= len(chunks):
            stale.unlink()
    work = ((video, settings, encoding) for n in todo for video in chunks[n])
    pool = multiprocessing.get_context("spawn").Pool(workers) if workers > 0 and todo else None
    try:
        encoded = pool.imap(_encode_star, work, chunksize=4) if pool else (encode_clip(*w) for w in work)
        for n in todo:
            indexes[n] = _write_shard(folder, n, chunks[n], encoded, settings, encoding, bar)
    finally:
        if pool is not None:
            pool.terminate()
    bar.close()
    manifest = {
        "format": FORMAT,
        "settings": settings,
        "encoding": encoding,
        "shards": [_name(n, ".bin") for n in range(len(chunks))],
        "videos": {},
        "failed": {},
    }
    for n, index in enumerate(indexes):
        manifest["videos"].update({video: [n, *entry] for video, entry in index["videos"].items()})
        manifest["failed"].update(index["failed"])
    atomic_text(folder / "manifest.json", json.dumps(manifest))
    return FrameShards(folder, manifest)


def _write_shard(
    folder: Path, n: int, chunk: list[str], encoded: Iterable, settings: dict, encoding: Encoding, bar
) -> dict:
    index = {"format": FORMAT, "settings": settings, "encoding": encoding, "chunk": chunk, "videos": {}, "failed": {}}

    def write(partial: Path) -> None:
        with open(partial, "wb") as f:
            for video, result in zip(chunk, encoded):
                if isinstance(result, str):
                    index["failed"][video] = result
                else:
                    data, k, lengths = result
                    index["videos"][video] = [f.tell(), k, lengths]
                    f.write(data)
                bar.update(1)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(folder / _name(n, ".bin"), write)
    atomic_text(folder / _name(n, ".json"), json.dumps(index))
    return index


def _finished_shard(folder: Path, n: int, chunk: list[str], settings: dict, encoding: Encoding) -> dict | None:
    """The index of shard `n` if a finished one holds exactly `chunk`; refuses a folder made otherwise."""
    path = folder / _name(n, ".json")
    if not path.is_file() or not (folder / _name(n, ".bin")).is_file():
        return None
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise ValueError(
            f"{folder} holds frame shards in {_format_name(index)}, this version writes {FORMAT}; "
            "delete it or set data.prepared to another folder"
        )
    differ = _differences(index["settings"], settings)
    if differ or index["encoding"] != encoding:
        differ = differ or f"encoding {index['encoding']} there, {encoding} here"
        raise ValueError(
            f"{folder} holds frame shards prepared with other settings ({differ}); delete it or set "
            "data.prepared to another folder"
        )
    return index if index["chunk"] == chunk else None


def _differences(found: dict, wanted: dict) -> str:
    return "; ".join(f"{key} {a} there, {b} here" for key, a, b in diff_dicts(found, wanted))


def _format_name(manifest: dict) -> str:
    return (
        f"format {manifest['format']}"
        if "format" in manifest
        else "the format of earlier versions (a JPEG a frame, no format recorded)"
    )


def _name(n: int, suffix: str) -> str:
    return f"shard_{n:05d}{suffix}"


def _encode_star(args: tuple) -> tuple[bytes, int, list[int]] | str:
    return encode_clip(*args)
