"""Data pipeline throughput on this machine: clips/s of raw decord, of the dataset on raw videos and of the
dataset on frame shards, one process, one thread; and resident memory over 1000 clip reads.

    python benchmarks/bench_data.py [--rounds 5] [--seconds 2]

Clips, made here (there is no download): a real-world-like H.264 clip (640x360, 30 fps, 20 s, 1/f "natural"
texture panned with a moving disc, sensor noise and two scene cuts; x264 crf 23) read as a recipe with a
12-frame 224 px teacher and student would (CLIP4Clip sampling at 1 frame/s); and demo clips (recipes/demo.yaml:
64 px, 4 fps, 8 s, 8 frames at 32 px). Raw decord = open + get_batch of the same frames + the same uint8
resize and crop (`resize_crop`), nothing else. Every method is timed for `--seconds` per round, rounds
interleave the methods, and the table gives medians. The allocator is pinned (MALLOC_MMAP_THRESHOLD_,
MALLOC_TRIM_THRESHOLD_), so numbers do not move with process history and RSS only grows on a real leak.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

from pinned import restart_pinned  # noqa: E402  (benchmarks/pinned.py)

restart_pinned(OMP_NUM_THREADS="1")

import av  # noqa: E402
import decord  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from distill.core.schema import SyntheticConfig  # noqa: E402
from distill.data.dataset import VideoTextDataset, View  # noqa: E402
from distill.data.shards import prepare_frames  # noqa: E402
from distill.data.synthetic import generate_synthetic  # noqa: E402
from distill.data.video import clip4clip_frame_indices, load_frames, resize_crop  # noqa: E402


def natural_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """1/f noise, the power spectrum of natural images, with correlated colour channels; float `[h, w, 3]`."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.hypot(fx, fy)
    f[0, 0] = 1
    channels = [
        np.fft.irfft2((rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) / f, s=(h, w)) for _ in range(3)
    ]
    img = np.stack([c / c.std() for c in channels], -1)
    img = 0.6 * img + 0.4 * img.mean(-1, keepdims=True)
    return np.clip(128 + 45 * img, 0, 255).astype(np.float32)


def write_real_like(path: Path, *, width: int, height: int, seconds: int, fps: int = 30, seed: int = 0) -> None:
    """A camera panning over three "scenes" (two cuts), a disc moving across, sensor noise; H.264 crf 23."""
    rng = np.random.default_rng(seed)
    frames = fps * seconds
    scenes = [natural_texture(rng, height + 40, width + frames + 20) for _ in range(3)]
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for i in range(frames):
            scene, j = divmod(i * 3, frames)
            y = 20 + int(15 * np.sin(i / 25))
            frame = scenes[scene][y : y + height, j : j + width].copy()
            cx, cy = (i * 4) % width, height // 2 + int(height / 4 * np.sin(i / 15))
            frame[(xx - cx) ** 2 + (yy - cy) ** 2 < (height // 8) ** 2] = (215, 70, 40)
            frame += rng.normal(0, 2, frame.shape).astype(np.float32)
            image = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())


def raw_decord(path: str, max_frames: int, size: int) -> torch.Tensor:
    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    indices = clip4clip_frame_indices(len(vr), vr.get_avg_fps(), max_frames)
    frames = torch.from_numpy(vr.get_batch(indices).asnumpy())
    del vr
    return resize_crop(frames, size)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 1e6


class Case:
    """One kind of clip: its videos, views and the three ways of reading it."""

    def __init__(self, name: str, videos: list[str], views: dict[str, View], folder: Path):
        self.name, self.videos, self.views = name, videos, views
        view = max(views.values(), key=lambda v: (v.size, v.max_frames))
        pairs = [(video, "a caption") for video in videos]
        settings = {
            "max_frames": max(v.max_frames for v in views.values()),
            "framerate": 1,
            "slice_framepos": 2,
            "backend": "decord",
            "sizes": sorted({v.size for v in views.values()}),
        }
        self.shards = {
            encoding: prepare_frames(videos, folder / f"{name}-{encoding}", settings, encoding=encoding)
            for encoding in ("jpeg", "raw")
        }
        self.clip_kb = {
            e: sum((s.folder / n).stat().st_size for n in s.shards) / len(videos) / 1e3 for e, s in self.shards.items()
        }
        decoded = VideoTextDataset(pairs, views, max_words=32)
        jpeg = VideoTextDataset(pairs, views, max_words=32, shards=self.shards["jpeg"])
        raw = VideoTextDataset(pairs, views, max_words=32, shards=self.shards["raw"])
        self.methods = {
            "raw decord (open + get_batch + resize)": lambda i: raw_decord(videos[i], view.max_frames, view.size),
            "dataset on raw videos": decoded.__getitem__,
            "dataset on JPEG shards": jpeg.__getitem__,
            "dataset on raw uint8 shards": raw.__getitem__,
        }
        self.rates: dict[str, list[float]] = {m: [] for m in self.methods}
        self.jpeg_error = max(
            (decoded.frames(i)[s].float() - jpeg.frames(i)[s].float()).abs().mean().item()
            for i in range(len(videos))
            for s in settings["sizes"]
        )  # levels of 255

    def time_round(self, seconds: float) -> None:
        for method, read in self.methods.items():
            count, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                read(count % len(self.videos))
                count += 1
            self.rates[method].append(count / elapsed)


def memory(path: str, reads: int) -> list[float]:
    """RSS (MB) after 50 warm-up reads of `path` through the dataset's decoding, then every 100 reads."""
    series = []
    for i in range(50 + reads):
        load_frames(path, max_frames=12)
        if i >= 49 and (i - 49) % 100 == 0:
            series.append(rss_mb())
    return series


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed per method per round")
    parser.add_argument("--reads", type=int, default=1000, help="clip reads for the memory check")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="bench_data_"))
    real = folder / "real_like_640x360_20s.mp4"
    write_real_like(real, width=640, height=360, seconds=20)
    with av.open(str(real)) as container:
        kbps = container.bit_rate / 1e3
    demo_root = generate_synthetic(
        folder / "demo", SyntheticConfig(num_train=64, num_test=1, size=64, fps=4, seconds=8)
    )
    cases = [
        Case("real_like", [str(real)], {"teacher": View(12, 224), "student": View(12, 224)}, folder),
        Case(
            "demo",
            sorted(str(p) for p in (demo_root / "videos").glob("train_*.mp4")),
            {"teacher": View(8, 32), "student": View(8, 32)},
            folder,
        ),
    ]
    for _ in range(args.rounds):
        for case in cases:
            case.time_round(args.seconds)

    print(f"clips/s, one process, one thread; median of {args.rounds} interleaved rounds of {args.seconds:g} s\n")
    print(
        f"| method | real-like 640x360 30 fps 20 s H.264 ({kbps:.0f} kb/s), 12 frames at 224 px "
        "| demo clips 64 px 8 s, 8 frames at 32 px |"
    )
    print("|---|---:|---:|")
    for method in cases[0].methods:
        cells = []
        for case in cases:
            rate = statistics.median(case.rates[method])
            base = statistics.median(case.rates["raw decord (open + get_batch + resize)"])
            cells.append(f"{rate:.1f}" + ("" if method.startswith("raw decord") else f" ({rate / base:.2f}x)"))
        print(f"| {method} | {' | '.join(cells)} |")
    print(
        "| KB per clip on disk: JPEG q90 / raw uint8 | "
        + " | ".join(f"{c.clip_kb['jpeg']:.0f} / {c.clip_kb['raw']:.0f}" for c in cases)
        + " |"
    )
    print("| JPEG error, worst clip mean (levels of 255) | " + " | ".join(f"{c.jpeg_error:.2f}" for c in cases) + " |")

    print(
        f"\nRSS over {args.reads} clip reads through the dataset's decoding (load_frames, decord), MB after 50 "
        "warm-up reads, then every 100:"
    )
    for width, height in ((640, 360), (1280, 720)):
        path = folder / f"memory_{width}x{height}.mp4"
        write_real_like(path, width=width, height=height, seconds=2)
        series = memory(str(path), args.reads)
        print(
            f"  {width}x{height} 2 s: {' '.join(f'{r:.0f}' for r in series)}  (growth {series[-1] - series[0]:+.1f} MB)"
        )


if __name__ == "__main__":
    main()
