"""The report's figures (PNG): Recall@K curves of teacher and student in both directions, and the training
curves of the run's stages. Drawn on matplotlib `Figure` objects, never through pyplot: no window, no
global backend, nothing changed for a caller who plots too."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from distill.core.files import atomic_write

DIRECTIONS = (("t2v", "Text to video"), ("v2t", "Video to text"))
TICKS = (1, 2, 5, 10, 20, 50)  # K marked on the Recall@K axis
STAGES = (("teacher", "teacher_log.jsonl"), ("distill", "distill_log.jsonl"))  # stage, log file in the run folder


def plot_recall(curves: dict[str, dict[str, list[float]]], path: Path, *, gallery: int) -> Path:
    """R@K against K (log scale) for every model of `curves` (`report["recall_curves"]`), one panel a
    direction; `gallery` videos in the test split, for the title."""
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for ax, (direction, title) in zip(axes, DIRECTIONS):
        for model, curve in curves.items():
            values = curve[direction]
            ax.plot(range(1, len(values) + 1), values, marker="o", markersize=2.5, label=model)
        ax.set_xscale("log")
        ax.set_xticks([k for k in TICKS if k <= max(len(c[direction]) for c in curves.values())])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("K")
        ax.set_title(f"{title} ({gallery} videos)")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("R@K (%)")
    axes[0].set_ylim(0, 100)
    axes[0].legend(loc="lower right")
    return atomic_write(path, lambda p: figure.savefig(p, format="png", dpi=110))


def read_logs(run_dir: Path) -> dict[str, list[dict]]:
    """The log records of each training stage that left a log in `run_dir`."""
    logs = {}
    for stage, name in STAGES:
        if (run_dir / name).is_file():
            logs[stage] = [json.loads(line) for line in (run_dir / name).read_text().splitlines() if line.strip()]
    return logs


def plot_training(logs: dict[str, list[dict]], path: Path, schedules: dict[str, dict] | None = None) -> Path:
    """One row a stage: the loss and each of its terms against the optimizer step, and the validation R@1
    (both directions, the model in training and the frozen teacher) at each epoch end, with the best epoch
    marked and why training stopped when `schedules` (`report["schedule"]`) has the stage."""
    figure = Figure(figsize=(9, 3.2 * len(logs)), layout="constrained")
    axes = figure.subplots(len(logs), 2, squeeze=False)
    for (stage, records), (loss_ax, val_ax) in zip(logs.items(), axes):
        terms = sorted({key for r in records for key in r if key == "loss" or key.endswith("_loss")})
        for term in terms:
            points = [(r["step"], r[term]) for r in records if term in r]
            loss_ax.plot(*zip(*points), label=term, linewidth=2 if term == "loss" else 1)
        loss_ax.set_title(f"{stage}: training loss")
        loss_ax.set_xlabel("step")
        loss_ax.legend(fontsize="small")
        loss_ax.grid(alpha=0.3)
        keys = sorted({key for r in records for key in r if key.startswith("val_")})
        for key in keys:
            points = [(r["step"], r[key]) for r in records if key in r]
            val_ax.plot(*zip(*points), marker="o", label=key.removeprefix("val_").replace("_R1", ""))
        val_ax.set_title(f"{stage}: validation R@1 (%)" if keys else f"{stage}: no validation split")
        if schedule := (schedules or {}).get(stage):
            best = f"best epoch {schedule['best_epoch']} ({schedule['val_R1']:.1f})"
            val_ax.axvline(schedule["best_step"], color="grey", linestyle="--", linewidth=1, label=best)
            val_ax.set_title(f"{stage}: validation R@1 (%)\n{best}; stopped: {schedule['stopped']}")
        val_ax.set_xlabel("step")
        val_ax.grid(alpha=0.3)
        if keys:
            val_ax.legend(fontsize="small")
    return atomic_write(path, lambda p: figure.savefig(p, format="png", dpi=110))
