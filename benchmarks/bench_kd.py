"""Does distillation pay? The same student trained on the same labelled clips and budget, with and without
the teacher, over seeds; R@1 on the validation split.

    python benchmarks/bench_kd.py [--labelled 400] [--seeds 0 1 2] [--variants gt kl all kd] [--split val]
                                  [--style shapes] [--teacher key=value ...] [--student-init TEMPLATE]
                                  [--teacher-extra N] [--fixed]
                                  [--out runs/bench_kd]
                                  [dotted.key=value ...]

As in real use, the teacher knows more than the student's labelled data: it is the demo teacher, trained on
the demo's whole pool of synthetic clips (1,600, less the validation videos held out of them), and the
student sees only the first `--labelled` of those clips (their captions and the teacher's outputs on them).
The first clips of a synthetic dataset are the same for every `num_train` (one seed, one stream), and the
validation split is held out by file name, so the student's validation videos are among the teacher's
validation videos: neither model trains on them. Every student is scored on the pool's validation split
(about 160 videos), the teacher on it once. `--split test` scores the test split instead: for the final
table only, after the choices were made on validation.

Every student trains on the validation-driven schedule (docs/schedule.md): at most 4x the demo's ~150 steps
of 64 (in epochs of its smaller split), stopped by `train.patience` (a fifth of the ~150 steps' epochs, at
least 3) on its own validation videos (a tenth of its labelled clips, among the pool's validation split
it is scored on: the score of a stopped student is a little optimistic), the best epoch kept. `--fixed`
trains the fixed warmup-cosine over the ~150 steps instead (the schedule before the rule), in folders
named `..._fixed`, for the same table on the old budget. kdpool has no validation split: it keeps the
fixed schedule.

Variants (the loss weights; everything else is the demo recipe with the schedule above):
  gt     ground-truth contrastive only: the teacher-free twin
  kl     + similarity KL (both directions)
  feat   + feature matching
  cross  + cross-model contrastive
  all    contrastive + KL + feature matching + cross-model
  kd     distillation alone: KL + feature matching, no ground-truth term
  kdpool kd on the labelled clips and every other pool clip (not the validation ones) with its caption
         swapped for another clip's: clips and captions without their pairs, which kd never reads; the
         epochs scaled down to the same number of steps
  kl50, kl100   contrastive + KL with the teacher's cosines at a fixed logit scale of 50 or 100 (its own
                learned scale is about 15), TinyCLIP's and MobileCLIP's sharper targets
  all100 contrastive + KL at teacher scale 100 + feature matching
  klmeanP  contrastive + KL from a meanP teacher (the demo recipe with teacher.sim_header=meanP)
  ens    contrastive + KL from both teachers, their distributions averaged (teacher.ensemble)
  allT24 all, from the demo's teacher trained 4x longer (24 epochs, 528 steps)
  all_s50, all_s100  all, the KL's teacher targets at a fixed logit scale of 50 or 100 (all100 has no
                cross-model term: it predates it)
  all_gt02  all with the ground-truth term at 0.2 (TeachCLIP's weight)
  all_fd4   all with feature matching at 4 (CLIP-KD's 2000 on the per-element mean of 512-wide
            embeddings, summed over images and texts, is 7.8 on our per-vector sum averaged over both)
  all_pear  all with the KL replaced by TeachCLIP's per-row Pearson form (`loss.kl_form=pearson`; TeachCLIP
            sums the two directions where we average them, so its weight 1 is our 2)
  all_gt0   all without the ground-truth term (MobileCLIP's weight for its small students)
  all_gt02_fd4  all_gt02 and all_fd4 together
Sizes (student overrides of the demo recipe, every size key pinned; `--sizes`):
  wide   the demo's student before issue 11: ViT-Tiny blocks 192 wide, 2 deep, at 32 px, text 96 wide x 2
  small  the same with 96-wide ViT blocks and a rank-16 factorised token embedding
  tiny   64-wide ViT blocks and a 64-wide text tower, rank-16 token embedding (the demo's student now)
  mnv3   timm's MobileNetV3-Small 0.5 frame encoder at 64 px (the clips' own size), text 96 wide, rank 16
  effvit timm's EfficientViT-M0 narrowed to 32/64/96 channels with 2 heads, at 64 px; tiny's text tower
  rn10t  timm's ResNet-10-T (plain convolutions, no depthwise ones) narrowed to 16/32/64/128 channels and an
         8-wide stem, at 64 px; tiny's text tower
  rn10t32  rn10t at 32 px, as the ViT students read the clips
  tiny128  tiny with a text tower of the teacher's width (128, 2 heads), 2 layers, rank 16
  inherit  tiny128 inherited from the teacher's text tower (`student.text=inherit`: its first and last
           layers, its embeddings factorised to rank 16 by SVD)
Extra `dotted.key=value` arguments apply to every student run (e.g. student.temporal_layers=2), `--teacher`
ones to every teacher's training (e.g. teacher.image_size=64), `--style` (`data.synthetic.style`) to both.
`--teacher` takes every key=value after it (give student overrides before it; its `teacher.max_frames`
also goes to the student runs and the scoring, which read the teacher); a teacher already trained
in `--out` is reused when `--style`, `--teacher` and `--teacher-extra` are those it was trained with
(teacher_args.json in its folder; training stops when they differ, `--score-only` warns, and a folder
without the file is reused with a warning), so other teacher settings need another `--out`.
`--student-init` starts every student from an export (`student.init`), its path with `{size}` and `{seed}`
filled in: e.g. students of a `--style shapes` run, so that on scenes the twin and the distilled student
both start from a student pretrained without a teacher, as the teacher is (`--teacher teacher.init=...`).
`--teacher-extra N` trains the teacher on N more clips besides the pool: a second synthetic dataset of the
same style from another seed (its validation videos held out as well, and its clips with a caption of the
pool's validation split left out), as a real teacher has seen far more than any student's labelled data.
The students and the scores stay on the pool.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POOL = 1600  # the demo's train clips: what the teacher trains on
ALL = {"contrastive_weight": 1.0, "kl_weight": 1.0, "feature_weight": 1.0, "cross_weight": 1.0}
KL = {**ALL, "feature_weight": 0.0, "cross_weight": 0.0}
VARIANTS = {
    "gt": {"contrastive_weight": 1.0, "kl_weight": 0.0, "feature_weight": 0.0, "cross_weight": 0.0},
    "kl": KL,
    "feat": {"contrastive_weight": 1.0, "kl_weight": 0.0, "feature_weight": 1.0, "cross_weight": 0.0},
    "cross": {"contrastive_weight": 1.0, "kl_weight": 0.0, "feature_weight": 0.0, "cross_weight": 1.0},
    "all": ALL,
    "kd": {"contrastive_weight": 0.0, "kl_weight": 1.0, "feature_weight": 1.0, "cross_weight": 0.0},
    "kdpool": {"contrastive_weight": 0.0, "kl_weight": 1.0, "feature_weight": 1.0, "cross_weight": 0.0, "pool": 1},
    "kl50": {**KL, "teacher_logit_scale": 50.0},
    "kl100": {**KL, "teacher_logit_scale": 100.0},
    "all100": {**KL, "feature_weight": 1.0, "teacher_logit_scale": 100.0},
    "klmeanP": {**KL, "teachers": ["meanP"]},
    "ens": {**KL, "teachers": ["seqTransf", "meanP"]},
    "allT24": {**ALL, "teachers": ["seqTransf24"]},
    "all_s50": {**ALL, "teacher_logit_scale": 50.0},
    "all_s100": {**ALL, "teacher_logit_scale": 100.0},
    "all_gt02": {**ALL, "contrastive_weight": 0.2},
    "all_fd4": {**ALL, "feature_weight": 4.0},
    "all_pear": {**ALL, "kl_form": "pearson"},
    "all_gt0": {**ALL, "contrastive_weight": 0.0},
    "all_gt02_fd4": {**ALL, "contrastive_weight": 0.2, "feature_weight": 4.0},
}
# The teachers a variant may name (default: seqTransf, the demo's), each the demo recipe on the pool.
TEACHERS = {"seqTransf": [], "meanP": ["teacher.sim_header=meanP"], "seqTransf24": ["teacher.train.epochs=24"]}

# Each size pins every student key it depends on, so a row means the same student when the demo recipe
# changes (the demo's student is `tiny` now; `wide` was the demo's before issue 11).
VIT = "student.backbone_kwargs={{img_size: 32, patch_size: 8, depth: 2, embed_dim: {}, num_heads: {}}}"
TEXT128 = ["student.text_width=128", "student.text_heads=2", "student.text_layers=2", "student.token_rank=16"]
TEXT128 += ["student.embed_dim=96"]  # not the teacher's 128: an inherited tower keeps its own projection
RN10T = ["student.backbone=resnet10t", "student.backbone_kwargs={channels: [16, 32, 64, 128], stem_width: 8}"]
RN10T += ["student.text_width=64", "student.text_heads=2", "student.token_rank=16"]  # tiny's text tower
SIZES = {
    "wide": [VIT.format(192, 3), "student.text_width=96", "student.text_heads=4", "student.token_rank=0"],
    "small": [VIT.format(96, 3), "student.text_width=96", "student.text_heads=4", "student.token_rank=16"],
    "tiny": [VIT.format(64, 2), "student.text_width=64", "student.text_heads=2", "student.token_rank=16"],
    "mnv3": [
        "student.backbone=mobilenetv3_small_050",
        "student.backbone_kwargs={}",
        "student.image_size=64",
        "student.text_width=96",
        "student.text_heads=4",
        "student.token_rank=16",
    ],
    "tiny128": [VIT.format(64, 2), *TEXT128],
    "inherit": [VIT.format(64, 2), *TEXT128, "student.text=inherit"],
    "effvit": [
        "student.backbone=efficientvit_m0",
        "student.backbone_kwargs={img_size: 64, embed_dim: [32, 64, 96], num_heads: [2, 2, 2]}",
        "student.image_size=64",
        "student.text_width=64",
        "student.text_heads=2",
        "student.token_rank=16",
    ],
    "rn10t": [*RN10T, "student.image_size=64"],
    "rn10t32": [*RN10T, "student.image_size=32"],
}


def run(args: list[str], log: Path) -> None:
    """`distill/run.py recipes/demo.yaml ARGS`, its output in `log`; stops the benchmark when it fails."""
    command = [sys.executable, str(REPO / "distill" / "run.py"), str(REPO / "recipes" / "demo.yaml"), *args]
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(command)}; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labelled", type=int, default=400, help="first clips of the pool the student trains on")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--split", choices=["val", "test"], default="val")
    parser.add_argument("--style", choices=["shapes", "scenes"], default="shapes", help="data.synthetic.style")
    parser.add_argument("--teacher", nargs="+", default=[], help="dotted.key=value for every teacher's training")
    parser.add_argument("--student-init", help="student.init for every student, with {size} and {seed} filled in")
    parser.add_argument("--teacher-extra", type=int, default=0, help="clips of a second dataset for the teacher")
    parser.add_argument("--out", type=Path, help="default runs/bench_kd, runs/bench_kd_scenes for --style scenes")
    parser.add_argument("--score-only", action="store_true", help="train nothing; score the students there are")
    parser.add_argument("--fixed", action="store_true", help="the fixed cosine over ~150 steps, not the rule")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value for every student run")
    args = parser.parse_args()
    if any(o.startswith("teacher.init=") for o in args.teacher) and any(
        VARIANTS[v].get("teachers", ["seqTransf"]) != ["seqTransf"] for v in args.variants
    ):
        sys.exit("--teacher teacher.init=...: every teacher is fine-tuned from it with its own head; no meanP one")
    out = (args.out or REPO / "runs" / ("bench_kd" if args.style == "shapes" else f"bench_kd_{args.style}")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    style = [f"data.synthetic.style={args.style}"]

    def teacher(name: str) -> Path:
        """The demo's teacher with the TEACHERS overrides of `name`, trained on the whole pool, or the one
        trained in `out` before with the same arguments (kept in teacher_args.json next to it)."""
        path = out / f"teacher_{name}" / "teacher.safetensors"
        wanted = {"style": args.style, "teacher": args.teacher, "teacher_extra": args.teacher_extra}
        recorded = path.parent / "teacher_args.json"
        if path.is_file():
            found = json.loads(recorded.read_text()) if recorded.is_file() else None
            if found is None:
                print(f"warning: {path} has no teacher_args.json (trained before bench_kd kept one); reused as is")
            elif found != wanted:
                differ = ", ".join(
                    f"{key} {found.get(key)!r} (now {value!r})"
                    for key, value in wanted.items()
                    if found.get(key) != value
                )
                if not args.score_only:
                    sys.exit(f"{path} was trained with other arguments: {differ}; give another --out")
                print(f"warning: {path} was trained with other arguments: {differ}; scored as it is")
            return path
        started = time.perf_counter()
        path.parent.mkdir(exist_ok=True)
        overrides = [f"output_dir={path.parent}", f"data.root={out / 'pool'}", "stages=[data,teacher]", *style]
        if args.teacher_extra:
            synthetic = [o for o in args.teacher if o.startswith("data.synthetic.")]
            overrides += teacher_data(out, [*style, *synthetic], args.teacher_extra)
        run([*overrides, *args.teacher, *TEACHERS[name]], path.parent / "teacher.log")
        recorded.write_text(json.dumps(wanted, indent=1) + "\n")
        print(f"teacher {name}: {path} ({time.perf_counter() - started:.0f} s)", flush=True)
        return path

    # The students: the first --labelled clips; the demo's ~150 steps of 64 whatever their number (--fixed),
    # or at most 4x that, stopped by the rule.
    budget = max(1, round(150 * 64 / (0.9 * args.labelled)))
    schedule = ["train.patience=0", "eval.val_pairs=0"]
    if not args.fixed:
        budget, patience, decay = 4 * budget, max(3, round(budget / 5)), max(1, round(budget / 10))
        schedule = [f"train.patience={patience}", f"train.decay_epochs={decay}"]
    epochs = next((int(o.split("=")[1]) for o in args.overrides if o.startswith("train.epochs=")), budget)
    common = [
        f"data.root={out / f'labelled_{args.labelled}'}",
        f"data.synthetic.num_train={args.labelled}",
        "stages=[data,cache,distill,export]",
        f"train.epochs={epochs}",
        *schedule,
        *style,
        *teacher_view(args),
        *args.overrides,
    ]
    caches: dict[tuple[str, bool], Path] = {}  # (teacher, pool) -> a cache of it on that data, for later runs
    for size, variant, seed in product(args.sizes, args.variants, args.seeds):
        folder = out / f"{size}_{variant}_seed{seed}{'_fixed' if args.fixed else ''}"
        if (folder / "student.safetensors").is_file() or args.score_only:
            continue
        folder.mkdir(exist_ok=True)
        loss = dict(VARIANTS[variant])
        names, pool = loss.pop("teachers", ["seqTransf"]), bool(loss.pop("pool", 0))
        folders = [folder / ("teacher_cache" if i == 0 else f"teacher_cache_{i}") for i in range(len(names))]
        for name, cache in zip(names, folders):
            if (name, pool) in caches and not cache.exists():
                shutil.copytree(caches[name, pool], cache)  # one teacher, one split: the same cache
        sources = [
            f"teacher.source={teacher(names[0])}",
            f"teacher.ensemble=[{','.join(map(str, map(teacher, names[1:])))}]",
        ]
        data = unpaired_pool(out, args.labelled) if pool else []  # after teacher(): it makes the pool
        weights = [f"loss.{key}={value}" for key, value in loss.items()]
        if args.student_init:
            weights.append(f"student.init={args.student_init.format(size=size, seed=seed)}")
        started = time.perf_counter()
        run(
            [*common, *data, *sources, *SIZES[size], f"output_dir={folder}", f"seed={seed}", *weights],
            folder / "run.log",
        )
        caches.update(zip([(name, pool) for name in names], folders))
        print(f"{size} {variant} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)

    score(args, out, {name: teacher(name) for name in TEACHERS if (out / f"teacher_{name}").is_dir()}, epochs)


def teacher_data(out: Path, synthetic: list[str], extra: int) -> list[str]:
    """Overrides for a teacher dataset (jsonl under `out`) of the pool and `extra` clips of a synthetic
    dataset from seed 1 (in `out/extra`), both generated here if they are not yet. Validation videos are
    held out by file name (or group), so the pool's are held out as in every other run, the extra
    dataset's by their own names. Extra clips whose caption is a pool validation caption are left out:
    within one synthetic split captions are distinct, so no training clip of the pool carries one, and the
    extra clips do not either. Test captions are not left out (the pool's training clips carry 343 of the
    500 as well). `synthetic`: the `data.synthetic.*` overrides of the pool, as the teacher's run gets them."""
    from dataclasses import replace

    from distill.data.splits import held_out
    from distill.data.synthetic import generate_synthetic
    from distill.recipe import load_recipe

    data = load_recipe(REPO / "recipes" / "demo.yaml", synthetic).data
    generate_synthetic(out / "pool", data.synthetic)
    generate_synthetic(out / "extra", replace(data.synthetic, num_train=extra, num_test=1, seed=1))
    read = {
        (folder, split): [json.loads(line) for line in (out / folder / f"{split}.jsonl").read_text().splitlines()]
        for folder, split in (("pool", "train"), ("pool", "test"), ("extra", "train"))
    }
    val = {p["caption"] for p in read["pool", "train"] if held_out(p["video"], data.val_fraction, p.get("group"))}
    read["extra", "train"] = [p for p in read["extra", "train"] if p["caption"] not in val]
    files = {}
    for split in ("train", "test"):
        lines = [
            {**p, "video": f"{folder}/{p['video']}"} for (folder, s), pairs in read.items() if s == split for p in pairs
        ]
        files[split] = out / f"teacher_{split}.jsonl"
        files[split].write_text("".join(json.dumps(line) + "\n" for line in lines))
    return [
        "data.format=jsonl",
        f"data.train={files['train']}",
        f"data.test={files['test']}",
        f"data.video_root={out}",
    ]


def unpaired_pool(out: Path, labelled: int) -> list[str]:
    """Overrides for a student dataset (jsonl) of the pool's first `labelled` clips with their captions and
    every later pool clip outside the validation split with the caption of the next such clip (a fixed
    shuffle, then a shift by one: no clip keeps its own), and `train.epochs` for the demo's ~150 steps."""
    import random

    from distill.data.splits import held_out
    from distill.recipe import load_recipe

    root = out / "pool"
    fraction = load_recipe(REPO / "recipes" / "demo.yaml").data.val_fraction
    lines = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    kept = [not held_out(line["video"], fraction, line.get("group")) for line in lines]
    paired = [line for line, keep in zip(lines[:labelled], kept) if keep]
    rest = [line for line, keep in zip(lines[labelled:], kept[labelled:]) if keep]
    order = list(range(len(rest)))
    random.Random(0).shuffle(order)
    swapped = [{"video": rest[order[i]]["video"], "caption": rest[order[i - 1]]["caption"]} for i in range(len(rest))]
    path = out / f"pool_unpaired_{labelled}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in paired + swapped))
    epochs = max(1, round(150 * 64 / (len(paired) + len(rest))))
    return [
        "data.format=jsonl",
        f"data.train={path}",
        f"data.test={root / 'test.jsonl'}",
        f"data.video_root={root}",
        "data.val_fraction=0",
        f"train.epochs={epochs}",
        "train.patience=0",  # no validation split to read
        "eval.val_pairs=0",
    ]


def teacher_view(args: argparse.Namespace) -> list[str]:
    """The `--teacher` keys that say how the teacher reads a clip (its frames), which every run that reads
    the teacher must share (`distill.context.check_frames` stops a run that does not)."""
    return [o for o in args.teacher if o.startswith("teacher.max_frames=")]


def score(args: argparse.Namespace, out: Path, teachers: dict[str, Path], epochs: int) -> None:
    """R@1 of every teacher and every student on the pool's `--split`, and the table."""
    import torch

    from distill.context import open_datasets, start_run
    from distill.data.dataset import VideoTextDataset, View
    from distill.evaluation.evaluate import efficiency, model_metrics
    from distill.recipe import load_recipe
    from students import load_student
    from teachers import load_teacher

    torch.set_num_threads(os.cpu_count() or 1)
    first = teachers["seqTransf"]
    overrides = [f"data.root={out / 'pool'}", f"output_dir={out / 'score'}", "stages=[evaluate]"]
    overrides += [f"data.synthetic.style={args.style}", *teacher_view(args)]
    run_ = start_run(load_recipe(REPO / "recipes" / "demo.yaml", [*overrides, f"teacher.source={first}"]))
    data = open_datasets(run_)[args.split]

    views: dict[tuple, VideoTextDataset] = {}  # the split at each student's own frames and size

    def r1(model, view: str) -> tuple[float, float]:
        pairs = data
        if view == "student":
            p = model.preprocessing
            key = (p.max_frames, p.image_size)
            if key not in views:
                pairs = list(zip(data.video_ids, data.captions))
                sampling = {"framerate": p.framerate, "slice_framepos": p.slice_framepos}
                views[key] = VideoTextDataset(pairs, {"student": View(*key)}, max_words=p.max_words, **sampling)
            pairs = views[key]
        metrics = model_metrics({view: model}, pairs, batch_size=100, accelerator=run_.accelerator)[view]
        return metrics["t2v"]["R1"], metrics["v2t"]["R1"]

    rows, cost = {}, {}
    for name, path in teachers.items():
        model = load_teacher(path)
        rows[f"teacher {name}", ""] = [r1(model, "teacher")]
        cost[f"teacher {name}"] = efficiency(model, data, "teacher")
    for size, variant in product(args.sizes, args.variants):
        exports = [
            out / f"{size}_{variant}_seed{seed}{'_fixed' if args.fixed else ''}" / "student.safetensors"
            for seed in args.seeds
        ]
        if not all(path.is_file() for path in exports):  # --score-only: a combination not trained
            continue
        rows[size, variant] = []
        for path in exports:
            student = load_student(path)
            rows[size, variant].append(r1(student, "student"))
            p = student.preprocessing
            cost.setdefault(size, efficiency(student, views[p.max_frames, p.image_size], "student"))
    # Rows of earlier invocations (other variants) stay in the file; this one's replace theirs.
    path = out / f"results_{args.split}.json"
    results = json.loads(path.read_text()) if path.is_file() else {"rows": {}, "cost": {}}
    results["rows"].update({f"{size} {variant}".strip(): r for (size, variant), r in rows.items()})
    results["cost"].update(cost)
    path.write_text(json.dumps(results, indent=1))

    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"teacher on the {POOL}-clip pool{f' and {args.teacher_extra} more clips' if args.teacher_extra else ''}, "
        f"students on its first {args.labelled} clips for "
        + (f"{epochs} epochs " if args.fixed else f"at most {epochs} epochs, stopped by the validation rule ")
        + "(kdpool: the fixed ~150 steps over more clips); "
        f"R@1 on the pool's {args.split} split ({len(data)} captions of {len(set(data.video_ids))} videos), "
        f"mean ± std over seeds {args.seeds}\n"
    )
    print(
        "| model | loss | t2v R@1 | v2t R@1 | t2v vs gt | params (M) | GFLOPs / video | teacher / student GFLOPs |"
        "\n|---|---|---:|---:|---:|---:|---:|---:|"
    )
    t = cost["teacher seqTransf"]
    for (size, variant), scores in rows.items():
        t2v, v2t = [s[0] for s in scores], [s[1] for s in scores]
        gt = rows.get((size, "gt"))
        delta = (
            "" if gt is None or variant == "gt" else f"{statistics.mean(t2v) - statistics.mean(s[0] for s in gt):+.1f}"
        )
        c = cost[size]
        print(
            f"| {size} | {variant} | {mean_std(t2v)} | {mean_std(v2t)} | {delta} | {c['params_M']:.2f} "
            f"| {c['gflops_per_video']:.3f} | {t['gflops_per_video'] / c['gflops_per_video']:.1f}x |"
        )


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


if __name__ == "__main__":
    main()
