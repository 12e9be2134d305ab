"""Frames channels-last or in the default layout through the frame encoders of bench_kd's students, in one
process: does the memory layout make them faster on this CPU?

    python benchmarks/bench_layout.py [--rounds 7] [--videos 4] [--batch 64]

For each backbone (timm, random weights, at the size bench_kd gives it): inference (eval, inference_mode)
on `--videos` videos of 8 frames a call, as bench_cost times encode_video, and a training step (train
mode, forward and backward of a sum of the features) on `--batch` videos' frames. The two layouts
alternate within each round, the weights stay in timm's layout; medians of `--rounds` rounds (a warm-up
round first). The allocator is pinned, as in bench_cost: unpinned, glibc's page faults on large buffers
dominate the convolutional backbones' time and move with the layout's buffer sizes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

from pinned import restart_pinned  # benchmarks/pinned.py

FRAMES = 8
RN10T = {"channels": [16, 32, 64, 128], "stem_width": 8}
BACKBONES = {  # bench_kd's sizes: (timm model, kwargs, frame size)
    "tiny (ViT)": (
        "vit_tiny_patch16_224",
        {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2},
        32,
    ),
    "effvit (EfficientViT-M0)": (
        "efficientvit_m0",
        {"img_size": 64, "embed_dim": [32, 64, 96], "num_heads": [2, 2, 2]},
        64,
    ),
    "mnv3 (MobileNetV3-Small 0.5)": ("mobilenetv3_small_050", {}, 64),
    "rn10t (ResNet-10-T narrowed)": ("resnet10t", RN10T, 64),
    "rn10t32 (the same at 32 px)": ("resnet10t", RN10T, 32),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--videos", type=int, default=4, help="videos an inference call")
    parser.add_argument("--batch", type=int, default=64, help="videos a training step")
    args = parser.parse_args()

    import timm
    import torch

    layouts = {"default": torch.contiguous_format, "channels-last": torch.channels_last}
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, timm {timm.__version__}, fp32; {FRAMES} frames a video; medians of "
        f"{args.rounds} rounds\n"
    )
    print(
        f"| frame encoder | videos/s, default ({args.videos} a call) | videos/s, channels-last | ratio "
        f"| training videos/s, default ({args.batch} a step) | training, channels-last | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    torch.manual_seed(0)
    for label, (name, kwargs, size) in BACKBONES.items():
        model = timm.create_model(name, num_classes=0, **kwargs)
        small = torch.randn(args.videos * FRAMES, 3, size, size)
        large = torch.randn(args.batch * FRAMES, 3, size, size)
        times = {(mode, layout): [] for mode in ("eval", "train") for layout in layouts}
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for layout, memory_format in layouts.items():
                model.eval()
                frames = small.contiguous(memory_format=memory_format)
                start = time.perf_counter()
                with torch.inference_mode():
                    model(frames)
                eval_s = time.perf_counter() - start
                model.train()
                frames = large.contiguous(memory_format=memory_format)
                start = time.perf_counter()
                model(frames).sum().backward()
                train_s = time.perf_counter() - start
                model.zero_grad(set_to_none=True)
                if round_:
                    times["eval", layout].append(eval_s)
                    times["train", layout].append(train_s)
        count = {"eval": args.videos, "train": args.batch}
        speed = {key: count[key[0]] / statistics.median(t) for key, t in times.items()}
        cells = []
        for mode in ("eval", "train"):
            default, last = speed[mode, "default"], speed[mode, "channels-last"]
            cells += [f"{default:.0f}", f"{last:.0f}", f"{last / default:.2f}x"]
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    restart_pinned()
    main()
