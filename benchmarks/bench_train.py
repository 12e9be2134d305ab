"""Training throughput at the demo recipe's sizes: the student alone (contrastive loss), distillation with
the teacher online, and distillation from the teacher cache, whole batches and in 4 accumulated
micro-batches, measured in one run.

    python benchmarks/bench_train.py [--rounds 3] [--steps 12] [dotted.key=value ...]

The modes run in turn, `--rounds` times (interleaved, so a slow spell of a shared machine hits them
alike), `--steps` optimizer steps each; the throughput of every step but the first two of a run (read from
the `clips_per_s` of the training log) goes into the median. The teacher has the demo's architecture and
random weights (its cost does not depend on them); the data is the demo's (`data.root`, generated if
missing), held decoded in memory as the demo recipe asks. Target (issue 5): distillation from the cache at
least 0.9x the student-only throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from pinned import restart_pinned  # benchmarks/pinned.py

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per mode and round (at least 4)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value for recipes/demo.yaml")
    args = parser.parse_args()
    if args.steps < 4:
        parser.error("--steps: at least 4 (the first two steps of a run are not counted)")

    import torch
    from accelerate.utils import set_seed

    from distill.context import build_student, open_datasets, start_run
    from distill.core.schema import LossConfig, TrainConfig
    from distill.data.synthetic import generate_synthetic
    from distill.recipe import load_recipe
    from distill.stages import cache_teacher, teacher_outputs
    from distill.training.losses import DistillationLoss
    from distill.training.train import OnlineTeacher, train
    from teachers import CLIP4Clip, load_teacher, save_teacher
    from teachers.archs import teacher_arch

    with tempfile.TemporaryDirectory() as tmp:
        recipe = load_recipe(REPO / "recipes" / "demo.yaml", [f"output_dir={tmp}", *args.overrides])
        r = recipe
        if r.data.format == "synthetic":
            generate_synthetic(r.data.root, r.data.synthetic)
        run = start_run(recipe)
        set_seed(r.seed)
        # Saved and loaded as a run loads a teacher: its precision (bf16 autocast on CUDA) is the run's.
        save_teacher(CLIP4Clip(teacher_arch(r.teacher, r.data.max_words)), Path(tmp) / "teacher.safetensors")
        run.teacher = load_teacher(
            Path(tmp) / "teacher.safetensors", device=run.accelerator.device, precision=r.teacher.precision
        )
        run.data = open_datasets(run)
        pairs = len(run.data["train"])
        start = time.perf_counter()
        cache_teacher(run)  # also decodes every clip once, which the demo keeps in memory (data.keep_decoded)
        cache_seconds = time.perf_counter() - start
        cached, student_views = teacher_outputs(run)

        modes = {  # mode: loss, teacher outputs, views read, micro-batches a step
            "student only (contrastive)": (
                LossConfig(kl_weight=0, feature_weight=0, contrastive_weight=1),
                None,
                ("student",),
                1,
            ),
            "distill, online teacher": (r.loss, OnlineTeacher(run.teacher), ("teacher", "student"), 1),
            "distill, teacher cache": (r.loss, cached, student_views, 1),
            "distill, teacher cache, train.accumulate=4": (r.loss, cached, student_views, 4),
        }
        config = TrainConfig(**{**asdict(r.train), "max_steps": args.steps, "log_every": 1, "checkpoint_every": 0})
        rates: dict[str, list[float]] = {mode: [] for mode in modes}
        for round_ in range(args.rounds):
            for mode, (loss_config, teacher, views, accumulate) in modes.items():
                set_seed(r.seed)
                student = build_student(r, run.teacher)
                loss = DistillationLoss(loss_config, student_dim=r.student.embed_dim, teacher_dim=run.teacher.embed_dim)
                folder = Path(tmp) / f"{round_}-{list(modes).index(mode)}"
                folder.mkdir()
                train(
                    student,
                    loss,
                    run.data["train"].select_views(views),
                    replace(config, accumulate=accumulate),
                    accelerator=run.accelerator,
                    view="student",
                    seed=r.seed,
                    run_dir=folder,
                    name="bench",
                    teacher=teacher,
                    num_workers=r.data.num_workers,
                )
                records = [json.loads(line) for line in (folder / "bench_log.jsonl").read_text().splitlines()]
                rates[mode] += [record["clips_per_s"] for record in records[2:]]
        run.accelerator.end_training()

    batch = r.train.batch_size
    base = statistics.median(rates["student only (contrastive)"])
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{run.accelerator.device}; demo sizes: batch {batch}, teacher {r.teacher.max_frames} frames at "
        f"{r.teacher.image_size} px, student {r.student.max_frames} frames at {r.student.image_size} px; "
        f"{args.rounds} rounds of {args.steps} steps, medians over {args.rounds * (args.steps - 2)} steps; "
        f"5-minute load average {os.getloadavg()[1]:.1f}, this run's own included\n"
    )
    print("| mode | steps/s | clips/s | clips/s, quartiles | vs student only |\n|---|---:|---:|---:|---:|")
    for mode, values in rates.items():
        clips = statistics.median(values)
        low, _, high = statistics.quantiles(values, n=4)
        print(f"| {mode} | {clips / batch:.2f} | {clips:.0f} | {low:.0f}-{high:.0f} | {clips / base:.2f}x |")
    print(f"\nteacher cache: {pairs} train pairs in {cache_seconds:.1f} s (one pass of the teacher, decoding included)")


if __name__ == "__main__":
    restart_pinned()
    main()
