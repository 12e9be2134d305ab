"""What the student of recipes/msrvtt.yaml costs next to the teacher it replaces, at real sizes: a
CLIP4Clip seqTransf teacher on OpenAI CLIP ViT-B/32 (CLIP4Clip's MSR-VTT setting: 12 frames at 224 px, 32
tokens, 4 temporal layers) and the recipe's ViT-Tiny student, both with random weights (cost does not
depend on them).

    python benchmarks/bench_cost.py [--rounds 5] [--videos 4] [--captions 32] [dotted.key=value ...]

Prints parameters, GFLOPs per video and per caption (FlopCounterMode, 1 multiply-add = 2 FLOPs) and CPU
latency (eval mode, inference_mode, fp32, the machine's threads): `--videos` videos and `--captions` captions a
call, median of `--rounds` rounds in which teacher and student alternate. Overrides change the student
(e.g. student.backbone=mobilenetv3_large_100).
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

REPO = Path(__file__).resolve().parents[1]
# OpenAI's ViT-B/32 as CLIP4Clip loads it (max_words 32 reads the first 32 of 77 positions).


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--videos", type=int, default=4, help="videos a timed call")
    parser.add_argument("--captions", type=int, default=32, help="captions a timed call")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value for recipes/msrvtt.yaml")
    args = parser.parse_args()

    import torch

    from distill.evaluate import count_gflops
    from distill.recipe import load_recipe
    from students import Student
    from teachers import CLIP4Clip, tokenize
    from teachers.archs import clip4clip_arch

    with tempfile.TemporaryDirectory() as tmp:  # stand-ins for the recipe's paths, which are not read here
        for name in ("checkpoint", "MSRVTT_train.9k.csv", "MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv"):
            (Path(tmp) / name).touch()
        recipe = load_recipe(
            REPO / "recipes" / "msrvtt.yaml",
            [f"data.annotations={tmp}", f"data.video_root={tmp}", f"teacher.source={tmp}/checkpoint", *args.overrides],
        )
    frames, size, words = recipe.teacher.max_frames, recipe.student.image_size, recipe.data.max_words
    torch.manual_seed(0)
    models = {
        "teacher": CLIP4Clip(clip4clip_arch("vit_b_32", "seqTransf")).eval(),
        "student": Student(recipe.student, max_words=words).eval(),
    }
    video = torch.randn(args.videos, frames, 3, size, size)
    mask = torch.ones(args.videos, frames, dtype=torch.long)
    ids, ids_mask = tokenize([f"a person is cooking dish number {i} in a kitchen" for i in range(args.captions)], words)

    rows = {}
    for name, model in models.items():
        rows[name] = {
            "params": sum(p.numel() for p in model.parameters()) / 1e6,
            "video_gflops": count_gflops(model.encode_video, video[:1], mask[:1]),
            "caption_gflops": count_gflops(model.encode_text, ids[:1], ids_mask[:1]),
            "video_s": [],
            "caption_s": [],
        }
    with torch.inference_mode():
        for round_ in range(args.rounds + 1):  # round 0 warms up
            for name, model in models.items():
                for key, fn in (
                    ("video_s", lambda: model.encode_video(video, mask)),
                    ("caption_s", lambda: model.encode_text(ids, ids_mask)),
                ):
                    start = time.perf_counter()
                    fn()
                    if round_:
                        rows[name][key].append(time.perf_counter() - start)

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, fp32; {frames} frames at {size} px, {words} tokens; "
        f"student: {recipe.student.backbone}, {recipe.student.temporal_layers} temporal layers, text "
        f"{recipe.student.text_width} wide x {recipe.student.text_layers}; medians of {args.rounds} rounds\n"
    )
    print(
        f"| model | params (M) | GFLOPs / video | GFLOPs / caption | ms / video ({args.videos} a call) "
        f"| ms / caption ({args.captions} a call) |\n|---|---:|---:|---:|---:|---:|"
    )
    ms = {
        name: (
            1e3 * statistics.median(r["video_s"]) / args.videos,
            1e3 * statistics.median(r["caption_s"]) / args.captions,
        )
        for name, r in rows.items()
    }
    for name, r in rows.items():
        print(
            f"| {name} | {r['params']:.1f} | {r['video_gflops']:.1f} | {r['caption_gflops']:.2f} "
            f"| {ms[name][0]:.0f} | {ms[name][1]:.1f} |"
        )
    t, s = rows["teacher"], rows["student"]
    print(
        f"| teacher / student | {t['params'] / s['params']:.1f}x | {t['video_gflops'] / s['video_gflops']:.1f}x "
        f"| {t['caption_gflops'] / s['caption_gflops']:.1f}x | {ms['teacher'][0] / ms['student'][0]:.1f}x "
        f"| {ms['teacher'][1] / ms['student'][1]:.1f}x |"
    )


if __name__ == "__main__":
    # glibc hands large buffers back to the system and page-faults them in again every call; pin it. It reads
    # these at start-up, so the script starts itself again with them set.
    pinned = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000"}
    if any(os.environ.get(key) != value for key, value in pinned.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **pinned})
    main()
