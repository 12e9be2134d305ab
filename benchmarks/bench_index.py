"""Index throughput: videos/s of `distill.retrieval.index.build_index` (decode, sample, preprocess, embed, save) with
a recipe's student and its teacher, in one run.

    python benchmarks/bench_index.py [--videos 96 24] [--rounds 3] [--workers 0 2]

Two galleries the synthetic generator writes (H.264 .mp4): the demo's clips (64 px, 8 s at 4 fps), indexed by
the demo recipe's student and teacher; and real-like clips (256 px frames, 10 s at 30 fps, as MSR-VTT's
are about), indexed by the MSR-VTT recipe's student (ViT-Tiny/16, 12 frames at 224 px) and its CLIP4Clip
ViT-B/32 teacher. Random weights (speed does not depend on them); the students also on onnxruntime. Each
(gallery, model, runtime, DataLoader workers) indexes the gallery (`--videos`: a count for each gallery)
into a fresh folder `--rounds` times after a warm-up of one batch; videos/s = videos / the median wall
seconds. The machine's threads; nothing else should run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pinned import restart_pinned  # benchmarks/pinned.py

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

GALLERIES = {  # name: (recipe, SyntheticConfig size, fps, seconds)
    "demo clips (64 px, 8 s, 4 fps)": ("demo", 64, 4, 8),
    "real-like (256 px, 10 s, 30 fps)": ("msrvtt", 256, 30, 10),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, nargs=2, default=[96, 24], help="demo clips, real-like clips")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()

    import torch
    from bench_cost import recipe_models

    from distill.core.schema import SyntheticConfig
    from distill.data.synthetic import generate_synthetic
    from distill.retrieval.encoders import OnnxEncoder, TorchEncoder
    from distill.retrieval.index import build_index, list_videos
    from students.onnx import describe_folder, export_onnx

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; {' and '.join(map(str, args.videos))} videos, batch 16, fp32, median of "
        f"{args.rounds} rounds\n"
    )
    print("| gallery | model | frames x px | runtime | workers | videos/s |\n|---|---|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for count, (gallery, (recipe_name, size, fps, seconds)) in zip(args.videos, GALLERIES.items()):
            config = SyntheticConfig(num_train=count, num_test=1, size=size, fps=fps, seconds=seconds, seed=3)
            root = generate_synthetic(tmp / recipe_name / "data", config)
            videos = [p for p in list_videos(root / "videos") if p.name.startswith("train")]
            recipe, models = recipe_models(REPO / "recipes" / f"{recipe_name}.yaml", [])
            encoders = {(name, "torch"): TorchEncoder(model) for name, model in models.items()}
            onnx = tmp / recipe_name / "onnx"
            export_onnx(models["student"], onnx)
            describe_folder(onnx, models["student"], {"sha256": "-", "space": "-"})
            encoders[("student", "onnx")] = OnnxEncoder(onnx)
            for (name, runtime), encoder in encoders.items():
                record = {"sha256": f"{name}-{runtime}", "embed_dim": encoder.embed_dim, "source": name}
                for workers in args.workers:
                    out = tmp / recipe_name / f"{name}-{runtime}-{workers}"
                    build_index(encoder, record, videos[:16], out.with_name(f"{out.name}-warm-up"), num_workers=workers)
                    times = []
                    for round_ in range(args.rounds):
                        start = time.perf_counter()
                        build_index(encoder, record, videos, out.with_name(f"{out.name}-{round_}"), num_workers=workers)
                        times.append(time.perf_counter() - start)
                    rate = len(videos) / statistics.median(times)
                    shape = f"{encoder.preprocessing.max_frames} x {encoder.preprocessing.image_size}"
                    print(f"| {gallery} | {name} | {shape} | {runtime} | {workers} | {rate:.1f} |", flush=True)


if __name__ == "__main__":
    restart_pinned()
    main()
