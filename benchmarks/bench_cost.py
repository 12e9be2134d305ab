"""What a recipe's student costs next to the teacher it replaces, measured in one process.

    python benchmarks/bench_cost.py [--recipe recipes/msrvtt.yaml] [--rounds 5] [--videos 4] [--captions 32]
                                    [dotted.key=value ...]
    python benchmarks/bench_cost.py --fullsize [--rounds 3] [--videos 16]

`--fullsize`: every full-size student of the recipes (each recipe with a `teacher.source`, a CLIP4Clip
checkpoint) side by side with the ViT-B/32 seqTransf teacher at the same frames and tokens, one row per distinct
student and teacher, each student's ratios against its teacher below; the teacher's file is the original
`pytorch_model.bin` as torch.save writes it, in float32 and as CLIP4Clip writes it (fp16 CLIP weights, the
rest float32). Students are built as the distill stage builds them (`text: inherit` from the random teacher),
from random weights (`student.pretrained` is not read).

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
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml
from pinned import restart_pinned  # benchmarks/pinned.py

from distill.data.formats import FORMATS
from distill.evaluation.evaluate import PART_COLUMNS, count_gflops, parameter_parts

REPO = Path(__file__).resolve().parents[1]


def recipe_models(path: Path, overrides: list[str]):
    """`(recipe, {"teacher", "student"})` with random weights and the recipe's `preprocessing`: a recipe that
    distils a given CLIP4Clip checkpoint gets CLIP4Clip's MSR-VTT teacher (ViT-B/32 seqTransf), else the one
    its teacher stage would train; the teacher frozen. Stand-ins for the recipe's paths, which are not read."""
    from distill.context import build_student
    from distill.recipe import load_recipe
    from students.model import Preprocessing
    from teachers import CLIP4Clip
    from teachers.archs import clip4clip_arch, teacher_arch

    raw = yaml.safe_load(path.read_text())
    layout = FORMATS.get((raw.get("data") or {}).get("format", "synthetic"))
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("checkpoint", *((layout and layout.files) or ())):
            (Path(tmp) / name).touch()
        given = (raw.get("teacher") or {}).get("source") is not None
        paths = [f"data.annotations={tmp}", f"data.video_root={tmp}", f"data.root={tmp}", "stages=[data]"]
        paths += ["student.pretrained=null"]  # random weights: cost does not depend on them
        paths += [f"teacher.source={tmp}/checkpoint"] if given else []
        recipe = load_recipe(path, [*paths, *overrides])
    words = recipe.data.max_words
    torch.manual_seed(0)
    arch = clip4clip_arch("vit_b_32", "seqTransf") if given else teacher_arch(recipe.teacher, words)
    teacher = CLIP4Clip(arch).eval().requires_grad_(False)
    models = {"teacher": teacher, "student": build_student(recipe, teacher).eval()}
    for name, model in models.items():  # how each reads a clip (students.model.preprocessing_of)
        frames = recipe.teacher.max_frames if name == "teacher" else recipe.student.max_frames
        model.preprocessing = Preprocessing(frames, model.input_size, words, recipe.data.framerate)
    return recipe, models


def original_checkpoint_mb(teacher, folder: Path) -> tuple[float, float, float]:
    """MB of the teacher as CLIP4Clip's `pytorch_model.bin` (torch.save of its state dict): all float32; as
    CLIP4Clip writes it, its CLIP's Linear and Conv weights, attention projections, `visual.proj` and
    `text_projection` in fp16 (`convert_weights`), embeddings, norms and the temporal head float32; all fp16."""
    half = ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj", "conv1.", "visual.proj", "text_projection")
    state = {k: v.float() for k, v in teacher.state_dict().items()}
    sizes = []
    for name, tensors in (
        ("fp32", state),
        (
            "clip4clip",
            {k: v.half() if k.startswith("clip.") and any(h in k for h in half) else v for k, v in state.items()},
        ),
        ("fp16", {k: v.half() for k, v in state.items()}),
    ):
        file = folder / f"pytorch_model_{name}.bin"
        torch.save(tensors, file)
        sizes.append(file.stat().st_size / 1e6)
    return sizes[0], sizes[1], sizes[2]


def measure(rows: dict[str, dict], rounds: int, round_s: float) -> None:
    """Fills each row's "video_s" and "caption_s" (seconds a call, one per round): rows alternate within a round;
    in a round, a model's video calls, then its caption calls, are each as many calls as take about `round_s`
    (set by a warm-up call)."""

    def calls(row: dict):
        model, (video, mask), (ids, ids_mask) = row["model"], row["inputs"], row["captions"]
        return (
            ("video_s", lambda: model.encode_video(video, mask)),
            ("caption_s", lambda: model.encode_text(ids, ids_mask)),
        )

    repeats = {}  # (row, key) -> calls a round: one 4 ms call a round is at the mercy of the scheduler
    with torch.inference_mode():
        for name, row in rows.items():  # warm-up: the second call sets how many make up a round
            row["video_s"], row["caption_s"] = [], []
            for key, fn in calls(row):
                fn()
                start = time.perf_counter()
                fn()
                repeats[name, key] = max(1, math.ceil(round_s / (time.perf_counter() - start)))
        for _ in range(rounds):
            for name, row in rows.items():
                for key, fn in calls(row):
                    start = time.perf_counter()
                    for _ in range(repeats[name, key]):
                        fn()
                    row[key].append((time.perf_counter() - start) / repeats[name, key])


def cost_row(model, videos: int, ids, ids_mask) -> dict:
    """Parameters (in all and by part), GFLOPs a video and a caption, and the timing inputs of one model."""
    frames, size = model.preprocessing.max_frames, model.preprocessing.image_size
    video = torch.randn(videos, frames, 3, size, size)
    mask = torch.ones(videos, frames, dtype=torch.long)
    return {
        "model": model,
        "params": sum(p.numel() for p in model.parameters()) / 1e6,
        "parts": parameter_parts(model),
        "video_gflops": count_gflops(model.encode_video, video[:1], mask[:1]),
        "caption_gflops": count_gflops(model.encode_text, ids[:1], ids_mask[:1]),
        "inputs": (video, mask),
        "captions": (ids, ids_mask),
    }


def machine(args) -> str:
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, fp32; medians of {args.rounds} rounds of about {args.round_s} s of each "
        f"model's video calls ({args.videos} videos a call) and of its caption calls ({args.captions} a call)"
    )


def speeds(row: dict, args) -> tuple[float, float]:
    """(videos/s, captions/s); NaN for a row not timed."""
    if "video_s" not in row:
        return math.nan, math.nan
    return args.videos / statistics.median(row["video_s"]), args.captions / statistics.median(row["caption_s"])


def fullsize(args) -> None:
    """Every full-size student of the recipes next to its ViT-B/32 teacher (see the module docstring)."""
    from students import export_student, round_weights

    teachers, students = {}, {}  # (frames, words) -> row; student spec -> row
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted((REPO / "recipes").glob("*.yaml")):
            if (yaml.safe_load(path.read_text()).get("teacher") or {}).get("source") is None:
                continue
            recipe, models = recipe_models(path, [])
            words, key = recipe.data.max_words, (recipe.teacher.max_frames, recipe.data.max_words)
            ids, ids_mask = captions(args.captions, words)
            if key not in teachers:
                row = teachers[key] = cost_row(models["teacher"], args.videos, ids, ids_mask)
                row["file_mb"], row["clip4clip_file_mb"], row["fp16_file_mb"] = original_checkpoint_mb(
                    models["teacher"], Path(tmp)
                )
                row["recipes"], row["frames"], row["words"] = [], *key
            teachers[key]["recipes"].append(recipe.name)
            student = models["student"]
            spec = json.dumps({**student.spec(), "max_frames": recipe.student.max_frames}, sort_keys=True)
            if spec not in students:
                row = students[spec] = cost_row(student, args.videos, ids, ids_mask)
                file = Path(tmp) / f"{recipe.name}.safetensors"
                round_weights(student, recipe.export.dtype)
                export_student(student, file, dtype=recipe.export.dtype)
                row["file_mb"], row["dtype"], row["teacher"] = file.stat().st_size / 1e6, recipe.export.dtype, key
                row["recipes"], row["frames"], row["words"] = [], recipe.student.max_frames, words
                row["backbone"] = recipe.student.backbone
            students[spec]["recipes"].append(recipe.name)
    rows = {f"teacher {k[0]}x{k[1]}": r for k, r in teachers.items()}
    rows |= {f"student {i}": r for i, r in enumerate(students.values())}
    timed = {name: row for name, row in rows.items() if row["frames"] <= args.timed_frames}
    measure(timed, args.rounds, args.round_s)

    print(machine(args) + "; ViT-B/32 seqTransf teachers (224 px), random weights\n")
    print(
        "| model | recipes | frames x tokens | params (M) | "
        + " | ".join(p.replace("_", " ") for p in PART_COLUMNS)
        + f" | GFLOPs / video | GFLOPs / caption | file (MB) | videos/s ({args.videos} a call) "
        f"| captions/s ({args.captions} a call) |"
    )
    print("|---|---|---|" + "---:|" * (len(PART_COLUMNS) + 6))
    for name, r in rows.items():
        label = "teacher (ViT-B/32 seqTransf)" if name.startswith("teacher") else f"student ({r['backbone']})"
        file = (
            f"{r['file_mb']:.1f} fp32, {r['clip4clip_file_mb']:.1f} as CLIP4Clip writes it, "
            f"{r['fp16_file_mb']:.1f} fp16"
            if "fp16_file_mb" in r
            else f"{r['file_mb']:.1f} {r['dtype']}"
        )
        video, caption = speeds(r, args)
        print(
            f"| {label} | {', '.join(r['recipes'])} | {r['frames']} x {r['words']} | {r['params']:.1f} | "
            + " | ".join(f"{r['parts'][p]:.2f}" for p in PART_COLUMNS)
            + f" | {r['video_gflops']:.2f} | {r['caption_gflops']:.3f} | {file} "
            + f"| {shown(video, '.2f')} | {shown(caption, '.0f')} |"
        )
    print("\nEach student against the teacher of its recipes (its tokens; the student's frames may be fewer):\n")
    print(
        "| student | recipes | GFLOPs / video | videos/s | captions/s | file vs fp32 pytorch_model.bin "
        "| file vs CLIP4Clip's own (fp16 CLIP) | file vs the teacher in fp16 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in students.values():
        t = teachers[r["teacher"]]
        (sv, sc), (tv, tc) = speeds(r, args), speeds(t, args)
        print(
            f"| {r['backbone']} | {', '.join(r['recipes'])} | {t['video_gflops'] / r['video_gflops']:.1f}x fewer "
            f"| {shown(sv / tv, '.1f', 'x')} | {shown(sc / tc, '.1f', 'x')} | {r['file_mb'] / t['file_mb']:.3f} "
            f"| {r['file_mb'] / t['clip4clip_file_mb']:.3f} | {r['file_mb'] / t['fp16_file_mb']:.3f} |"
        )


def shown(value: float, spec: str, unit: str = "") -> str:
    return "-" if math.isnan(value) else format(value, spec) + unit


def captions(n: int, words: int):
    from teachers import tokenize

    return tokenize([f"a person is cooking dish number {i} in a kitchen" for i in range(n)], words)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "msrvtt.yaml")
    parser.add_argument("--fullsize", action="store_true", help="every full-size student of the recipes")
    parser.add_argument("--rounds", type=int, default=None, help="default 5, 3 with --fullsize")
    parser.add_argument("--videos", type=int, default=None, help="videos a timed call; default 4, 16 with --fullsize")
    parser.add_argument("--captions", type=int, default=32, help="captions a timed call")
    parser.add_argument(
        "--round-s",
        type=float,
        default=0.25,
        help="seconds a model's video calls, then its caption calls, take a round",
    )
    parser.add_argument(
        "--timed-frames",
        type=int,
        default=16,
        help="--fullsize: models reading more frames a clip get no timing (the paragraph recipes' 64: a call "
        "of 16 ViT-B/32 videos is then 1,024 frames); their cost scales with frames",
    )
    parser.add_argument("overrides", nargs="*", help="dotted.key=value for the recipe")
    args = parser.parse_args()
    args.rounds = args.rounds or (3 if args.fullsize else 5)
    args.videos = args.videos or (16 if args.fullsize else 4)
    if args.fullsize:
        return fullsize(args)

    from students import export_student, round_weights
    from teachers import save_teacher

    recipe, models = recipe_models(args.recipe, args.overrides)
    words = recipe.data.max_words
    ids, ids_mask = captions(args.captions, words)

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            rows[name] = cost_row(model, args.videos, ids, ids_mask)
            file = Path(tmp) / f"{name}.safetensors"
            if name == "teacher":
                save_teacher(model, file)
            else:
                round_weights(model, recipe.export.dtype)
                export_student(model, file, dtype=recipe.export.dtype)
            rows[name]["file_mb"] = file.stat().st_size / 1e6
    measure(rows, args.rounds, args.round_s)

    s = recipe.student
    print(
        f"{machine(args)}; {args.recipe.name}: teacher {recipe.teacher.max_frames} frames at "
        f"{models['teacher'].input_size} px, student {s.max_frames} at {s.image_size} px ({s.backbone}, "
        f"{s.temporal_layers} temporal layers, text {s.text}, {s.text_width} wide x {s.text_layers}, token rank "
        f"{s.token_rank or 'full'}), {words} tokens\n"
    )
    print(
        "| model | params (M) | " + " | ".join(p.replace("_", " ") for p in PART_COLUMNS) + " | GFLOPs / video "
        f"| GFLOPs / caption | file (MB) | videos/s ({args.videos} a call) | captions/s ({args.captions} a call) |"
    )
    print("|---|" + "---:|" * (len(PART_COLUMNS) + 6))
    speed = {name: speeds(r, args) for name, r in rows.items()}
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
