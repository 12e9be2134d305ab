"""What a recipe's student costs next to the teacher it replaces, measured in one process.

    python benchmarks/bench_cost.py [--recipe recipes/msrvtt.yaml] [--rounds 5] [--videos 4] [--captions 32]
                                    [dotted.key=value ...]

recipes/msrvtt.yaml (the default): a CLIP4Clip seqTransf teacher on OpenAI CLIP ViT-B/32 (CLIP4Clip's MSR-VTT
setting: 12 frames at 224 px, 32 tokens, 4 temporal layers) and the recipe's ViT-Tiny student. A recipe
without `teacher.source` (recipes/demo.yaml): the teacher its teacher stage would train. Random weights
(cost does not depend on them); the teacher frozen, as distillation and evaluation run it.

Prints parameters (in all and by part), GFLOPs per video and per caption (distill.evaluation.evaluate.count_gflops: 1
multiply-add = 2 FLOPs, the same count for a frozen and a trainable model), the size of the shipped file
(the student at `export.dtype`, the teacher as `save_teacher` writes it) and CPU throughput (eval mode,
inference_mode, fp32, the machine's threads): `--videos` videos and `--captions` captions a call, median of
`--rounds` rounds in which teacher and student alternate; in a round, a model's video calls, then its
caption calls, are each as many calls as take about `--round-s` seconds (set by a warm-up call). Overrides
change the recipe (e.g. student.backbone=mobilenetv3_large_100).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from pinned import restart_pinned  # benchmarks/pinned.py

REPO = Path(__file__).resolve().parents[1]


def recipe_models(path: Path, overrides: list[str]):
    """`(recipe, {"teacher", "student"})` with random weights and the recipe's `preprocessing`: a recipe that
    distils a given CLIP4Clip checkpoint gets CLIP4Clip's MSR-VTT teacher (ViT-B/32 seqTransf), else the one
    its teacher stage would train; the teacher frozen. Stand-ins for the recipe's paths, which are not read."""
    import torch

    from distill.recipe import load_recipe
    from students import Student
    from students.model import Preprocessing
    from teachers import CLIP4Clip
    from teachers.archs import clip4clip_arch, teacher_arch

    with tempfile.TemporaryDirectory() as tmp:
        for name in ("checkpoint", "MSRVTT_train.9k.csv", "MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv"):
            (Path(tmp) / name).touch()
        given = (yaml.safe_load(path.read_text()).get("teacher") or {}).get("source") is not None
        paths = [f"data.annotations={tmp}", f"data.video_root={tmp}", f"data.root={tmp}", "stages=[data]"]
        paths += [f"teacher.source={tmp}/checkpoint"] if given else []
        recipe = load_recipe(path, [*paths, *overrides])
    words = recipe.data.max_words
    torch.manual_seed(0)
    arch = clip4clip_arch("vit_b_32", "seqTransf") if given else teacher_arch(recipe.teacher, words)
    models = {
        "teacher": CLIP4Clip(arch).eval().requires_grad_(False),
        "student": Student(recipe.student, max_words=words).eval(),
    }
    for name, model in models.items():  # how each reads a clip (students.model.preprocessing_of)
        frames = recipe.teacher.max_frames if name == "teacher" else recipe.student.max_frames
        model.preprocessing = Preprocessing(frames, model.input_size, words, recipe.data.framerate)
    return recipe, models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "msrvtt.yaml")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--videos", type=int, default=4, help="videos a timed call")
    parser.add_argument("--captions", type=int, default=32, help="captions a timed call")
    parser.add_argument(
        "--round-s",
        type=float,
        default=0.25,
        help="seconds a model's video calls, then its caption calls, take a round",
    )
    parser.add_argument("overrides", nargs="*", help="dotted.key=value for the recipe")
    args = parser.parse_args()

    import torch

    from distill.evaluation.evaluate import PART_COLUMNS, count_gflops, parameter_parts
    from students import export_student, round_weights
    from teachers import save_teacher, tokenize

    recipe, models = recipe_models(args.recipe, args.overrides)
    words = recipe.data.max_words
    ids, ids_mask = tokenize([f"a person is cooking dish number {i} in a kitchen" for i in range(args.captions)], words)

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            frames, size = model.preprocessing.max_frames, model.preprocessing.image_size
            video = torch.randn(args.videos, frames, 3, size, size)
            mask = torch.ones(args.videos, frames, dtype=torch.long)
            file = Path(tmp) / f"{name}.safetensors"
            if name == "teacher":
                save_teacher(model, file)
            else:
                round_weights(model, recipe.export.dtype)
                export_student(model, file, dtype=recipe.export.dtype)
            rows[name] = {
                "params": sum(p.numel() for p in model.parameters()) / 1e6,
                "parts": parameter_parts(model),
                "video_gflops": count_gflops(model.encode_video, video[:1], mask[:1]),
                "caption_gflops": count_gflops(model.encode_text, ids[:1], ids_mask[:1]),
                "file_mb": file.stat().st_size / 1e6,
                "inputs": (video, mask),
                "video_s": [],
                "caption_s": [],
            }

    def calls(name: str):
        model, (video, mask) = models[name], rows[name]["inputs"]
        return (
            ("video_s", lambda: model.encode_video(video, mask)),
            ("caption_s", lambda: model.encode_text(ids, ids_mask)),
        )

    repeats = {}  # (model, key) -> calls a round: one 4 ms call a round is at the mercy of the scheduler
    with torch.inference_mode():
        for name in models:  # warm-up: the second call sets how many make up a round
            for key, fn in calls(name):
                fn()
                start = time.perf_counter()
                fn()
                repeats[name, key] = max(1, math.ceil(args.round_s / (time.perf_counter() - start)))
        for _ in range(args.rounds):
            for name in models:
                for key, fn in calls(name):
                    start = time.perf_counter()
                    for _ in range(repeats[name, key]):
                        fn()
                    rows[name][key].append((time.perf_counter() - start) / repeats[name, key])

    s = recipe.student
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} "
        f"threads, torch {torch.__version__}, fp32; {args.recipe.name}: teacher {recipe.teacher.max_frames} frames "
        f"at {models['teacher'].input_size} px, student {s.max_frames} at {s.image_size} px ({s.backbone}, "
        f"{s.temporal_layers} temporal layers, text {s.text_width} wide x {s.text_layers}, token rank "
        f"{s.token_rank or 'full'}), {words} tokens; medians of {args.rounds} rounds of about {args.round_s} s "
        "of each model's video calls and of its caption calls\n"
    )
    print(
        "| model | params (M) | " + " | ".join(p.replace("_", " ") for p in PART_COLUMNS) + " | GFLOPs / video "
        f"| GFLOPs / caption | file (MB) | videos/s ({args.videos} a call) | captions/s ({args.captions} a call) |"
    )
    print("|---|" + "---:|" * (len(PART_COLUMNS) + 6))
    speed = {
        name: (args.videos / statistics.median(r["video_s"]), args.captions / statistics.median(r["caption_s"]))
        for name, r in rows.items()
    }
    for name, r in rows.items():
        parts = " | ".join(f"{r['parts'][p]:.2f}" for p in PART_COLUMNS)
        print(
            f"| {name} | {r['params']:.2f} | {parts} | {r['video_gflops']:.3f} | {r['caption_gflops']:.4f} "
            f"| {r['file_mb']:.1f} | {speed[name][0]:.1f} | {speed[name][1]:.0f} |"
        )
    t, st = rows["teacher"], rows["student"]
    ratio = lambda a, b: f"{a / b:.1f}x" if b else "-"  # noqa: E731
    parts = " | ".join(ratio(t["parts"][p], st["parts"][p]) for p in PART_COLUMNS)
    print(
        f"| teacher / student | {ratio(t['params'], st['params'])} | {parts} "
        f"| {ratio(t['video_gflops'], st['video_gflops'])} | {ratio(t['caption_gflops'], st['caption_gflops'])} "
        f"| {ratio(t['file_mb'], st['file_mb'])} | {ratio(speed['student'][0], speed['teacher'][0])} "
        f"| {ratio(speed['student'][1], speed['teacher'][1])} |"
    )


if __name__ == "__main__":
    restart_pinned()
    main()
