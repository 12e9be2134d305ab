"""How long a training stage trains and at what learning rate, driven by the validation split.

`train.epochs` (or `train.max_steps`) is the most a stage may train. With `train.patience` > 0 the rule reads
the validation R@1 of the model in training (the mean of t2v and v2t) at every epoch end: after `patience`
epochs without an improvement of at least `min_delta` over the best so far, the learning rate decays to zero
over `decay_epochs` epochs and training stops; the stage then returns the best epoch's weights.

The learning rate is warmup-stable-decay: a linear warmup, the peak held, then a cosine to zero over the
last `decay_epochs` epochs, which start when validation stalls or, at the latest, that many epochs before
the maximum. A cosine over the planned steps cannot serve a rule that moves the end: stopped early, it
leaves the rate high and skips the decay that brings the last gain, and stretched over a generous maximum
it spends most of the run below its peak. WSD holds the rate until the rule decides, and its decay ends
exactly where training ends, whatever the stop; validation still runs during the decay, whose epochs can
be the best. With patience 0 the rule is off: the fixed warmup-cosine over the maximum and the last step's
weights, as recipes trained before the rule.

The rule's state (best score, its step and weights, epochs since, the decay's start) is saved with every
checkpoint (`distill.training.checkpoints`), so a resumed run makes the decisions the uninterrupted one made.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distill.core.files import atomic_text
from distill.core.schema import TrainConfig


def warmup_cosine(total_steps: int, warmup_ratio: float):
    """Linear warmup over `warmup_ratio` of the steps, then cosine decay to zero."""
    warmup = max(1, round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return factor


def monitored(metrics: dict[str, float], view: str) -> float:
    """The figure the rule reads: validation R@1 of the model of `view`, the mean of t2v and v2t."""
    return (metrics[f"val_{view}_t2v_R1"] + metrics[f"val_{view}_v2t_R1"]) / 2


class Schedule:
    """The learning-rate factor of every step and the stopping rule of one stage.

    Args:
        total: the most optimizer steps the stage may take.
        epoch_steps: optimizer steps in an epoch (validation runs at each epoch end).
    """

    def __init__(self, config: TrainConfig, *, total: int, epoch_steps: int):
        self.total, self.epoch_steps = total, epoch_steps
        self.patience, self.min_delta = config.patience, config.min_delta
        self.warmup = max(1, round(total * config.warmup_ratio))
        self.decay = min(total, config.decay_epochs * epoch_steps)
        self.fixed = warmup_cosine(total, config.warmup_ratio)
        self.best: float | None = None  # the best validation score so far (percent)
        self.best_step = 0  # the step whose weights scored it
        self.since = 0  # validations since the last improvement
        self.decay_start = total - self.decay  # moved earlier when validation stalls
        self.stopped = "maximum"
        self.weights: dict[str, torch.Tensor] | None = None  # the best step's weights on the CPU (rule on)

    STATE = ("best", "best_step", "since", "decay_start", "stopped")  # saved with checkpoints, with the weights

    def factor(self, step: int) -> float:
        """What multiplies the peak learning rate at optimizer step `step` (0-based), for `LambdaLR`."""
        if not self.patience:
            return self.fixed(step)
        warmup = min(1.0, (step + 1) / self.warmup)
        if step < self.decay_start:
            return warmup
        return min(warmup, 0.5 * (1 + math.cos(math.pi * (step - self.decay_start) / self.decay)))

    @property
    def end(self) -> int:
        """The step training stops at: the end of the decay when the rule is on."""
        return self.decay_start + self.decay if self.patience else self.total

    def observe(self, step: int, score: float, model: nn.Module) -> None:
        """Takes the validation `score` of `model` after `step` steps (the same on every process): keeps its
        weights when it improves on the best, and starts the decay after `patience` validations without."""
        if self.best is None or (score > self.best and score - self.best >= self.min_delta):
            self.best, self.best_step, self.since = score, step, 0
            if self.patience:
                self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            return
        self.since += 1
        if self.patience and self.since >= self.patience and step < self.decay_start:
            self.decay_start, self.stopped = step, "patience"

    def restore_best(self, model: nn.Module) -> None:
        """Loads the best step's weights into `model` (rule on and validated; else it keeps its last ones)."""
        if self.weights is not None:
            model.load_state_dict(self.weights)

    def summary(self, step: int) -> dict:
        """What the report says of the schedule after training stopped at `step`."""
        return {
            "rule": f"patience {self.patience}, min_delta {self.min_delta}" if self.patience else "fixed",
            "best_epoch": math.ceil(self.best_step / self.epoch_steps),
            "best_step": self.best_step,
            "val_R1": self.best,
            "stopped": self.stopped,
            "epochs": math.ceil(step / self.epoch_steps),
            "steps": step,
            "max_steps": self.total,
            "exported": "best" if self.weights is not None else "last",
        }

    def save(self, folder: Path) -> None:
        """Writes the rule's state to `folder/schedule.json` and the best weights to `folder/best.safetensors`."""
        (folder / "schedule.json").write_text(json.dumps({k: getattr(self, k) for k in self.STATE}, indent=1) + "\n")
        if self.weights is not None:
            save_file({k: v.contiguous() for k, v in self.weights.items()}, folder / "best.safetensors")

    def load(self, folder: Path) -> None:
        """Reads what `save` wrote to `folder`; a checkpoint saved before the rule existed leaves it fresh."""
        if (folder / "schedule.json").is_file():
            for key, value in json.loads((folder / "schedule.json").read_text()).items():
                setattr(self, key, value)
        if (folder / "best.safetensors").is_file():
            self.weights = load_file(folder / "best.safetensors")


def write_summary(summary: dict, run_dir: Path, stage: str) -> Path:
    """`<stage>_schedule.json` in the run folder, which the evaluate stage puts in the report."""
    return atomic_text(run_dir / f"{stage}_schedule.json", json.dumps(summary, indent=1) + "\n")


def read_summaries(run_dir: Path) -> dict[str, dict]:
    """The schedule summary of each training stage (teacher, distill) that left one in `run_dir`."""
    paths = {stage: run_dir / f"{stage}_schedule.json" for stage in ("teacher", "distill")}
    return {stage: json.loads(path.read_text()) for stage, path in paths.items() if path.is_file()}
