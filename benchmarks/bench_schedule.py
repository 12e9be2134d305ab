"""Does the validation-driven schedule pay? The demo's student distilled from one demo teacher with the fixed
warmup-cosine over `E` epochs and with the stopping rule (warmup-stable-decay) at most `E` epochs, for each
maximum `E`; validation R@1 (mean of t2v and v2t) of the weights each run keeps, and the wall time.

    python benchmarks/bench_schedule.py [--max-epochs 6 20] [--patience 3] [--decay-epochs 2] [--seed 0]
                                        [--out runs/bench_schedule] [dotted.key=value ...]

The teacher (the demo recipe's, trained once in `--out/teacher`) and its cache are shared by every student.
Each student run is `distill/run.py recipes/demo.yaml` with only the schedule keys changed, the distill stage
alone, one process (one thread per process unless OMP_NUM_THREADS says otherwise); all of them run side by side,
so that their wall times see the same load on a shared machine. The fixed schedule keeps
the last step's weights: its "kept" column is its last validation; the rule keeps its best epoch: its
"kept" column is the best of its validations, a maximum over epochs of the same split, so optimistic by
the split's noise. The test split is never read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start(args: list[str], log: Path) -> tuple[subprocess.Popen, float]:
    """Starts `distill/run.py recipes/demo.yaml ARGS`, its output in `log`: the process and its start time."""
    command = [sys.executable, str(REPO / "distill" / "run.py"), str(REPO / "recipes" / "demo.yaml"), *args]
    env = {"OMP_NUM_THREADS": "1", **os.environ}
    with log.open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env), time.perf_counter()


def wait(runs: dict[Path, tuple[subprocess.Popen, float]]) -> dict[Path, float]:
    """Waits for every `start`ed run: its wall time in seconds, taken when it ends; stops the benchmark if one
    failed."""
    walls: dict[Path, float] = {}
    while len(walls) < len(runs):
        for key, (process, started) in runs.items():
            if key not in walls and process.poll() is not None:
                if process.returncode:
                    sys.exit(f"failed ({process.returncode}): {' '.join(process.args)}")
                walls[key] = time.perf_counter() - started
        time.sleep(0.5)
    return walls


def validation_scores(folder: Path) -> list[float]:
    """The student's validation R@1 (mean of t2v and v2t) at each epoch end of the run in `folder`."""
    lines = [json.loads(line) for line in (folder / "distill_log.jsonl").read_text().splitlines()]
    return [(r["val_student_t2v_R1"] + r["val_student_v2t_R1"]) / 2 for r in lines if "val_student_t2v_R1" in r]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, nargs="+", default=[6, 20])
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--decay-epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_schedule")
    args, overrides = parser.parse_known_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    teacher = out / "teacher"
    common = [f"data.root={out / 'data'}", f"seed={args.seed}", *overrides]
    if not (teacher / "teacher_cache" / "manifest.json").is_file():
        run = start([*common, f"output_dir={teacher}", "stages=[data,teacher,cache]"], out / "teacher.log")
        print(f"teacher and its cache: {wait({teacher: run})[teacher]:.0f} s", flush=True)
    folders = {(rule, e): out / f"{rule}{e}_seed{args.seed}" for e in args.max_epochs for rule in ("rule", "fixed")}
    runs = {}
    for (rule, epochs), folder in folders.items():
        if (folder / "distill_schedule.json").is_file():
            continue
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(teacher / "teacher_cache", folder / "teacher_cache")
        schedule = ["train.patience=0"]
        if rule == "rule":
            schedule = [f"train.patience={args.patience}", f"train.decay_epochs={args.decay_epochs}"]
        keys = [f"teacher.source={teacher / 'teacher.safetensors'}", f"train.epochs={epochs}", *schedule]
        runs[folder] = start([*common, f"output_dir={folder}", "stages=[distill]", *keys], folder.with_suffix(".log"))
    for folder, seconds in wait(runs).items():
        (folder / "wall_s").write_text(f"{seconds:.1f}\n")
    rows = []
    for (rule, epochs), folder in folders.items():
        summary = json.loads((folder / "distill_schedule.json").read_text())
        scores = validation_scores(folder)
        kept = summary["val_R1"] if summary["exported"] == "best" else scores[-1]
        rows.append(
            f"| {rule} | {epochs} | {summary['epochs']} | {summary['stopped']} | {summary['best_epoch']} "
            f"| {summary['val_R1']:.1f} | {scores[-1]:.1f} | **{kept:.1f}** "
            f"| {float((folder / 'wall_s').read_text()):.0f} |"
        )
        print(f"{folder.name}: validation R@1 by epoch {[round(s, 1) for s in scores]}", flush=True)
    print(
        "\n| schedule | max epochs | epochs trained | stopped | best epoch | best val R@1 | last val R@1 "
        "| kept val R@1 | wall s |\n|---|---:|---:|---|---:|---:|---:|---:|---:|"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
