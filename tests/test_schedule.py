"""The validation-driven schedule (distill.training.schedule): a run whose validation stalls stops `patience`
epochs after its best one (then the decay's epochs), its learning rate ending its decay at the stop, and
keeps the best epoch's weights; a run resumed in the middle of the patience window continues the same run;
two processes stop where one does, and the report says which epoch was kept and why training stopped.

The loop tests script the validation score of each epoch (the `validate` callback is the loop's input, as a
dataset is): what they check is what the rule does with the scores, wherever they come from. The
command-line test reads the real validation R@1 of a tiny student.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from safetensors.torch import load_file
from test_distributed import launch
from tiny import TINY
from torch import nn
from toy import Pairs, TwoTower

from distill.core.config import RecipeError
from distill.core.schema import LossConfig, SyntheticConfig, TeacherConfig, TrainConfig
from distill.data.synthetic import generate_synthetic
from distill.recipe import load_recipe
from distill.training.losses import DistillationLoss
from distill.training.train import train
from teachers import CLIP4Clip, save_teacher
from teachers.archs import teacher_arch

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo.yaml"
EPOCH = 3  # optimizer steps an epoch: 12 pairs in batches of 4
# Validation R@1 at the end of epochs 1, 2, ...: the best is epoch 3 (30.0); epoch 4 gains less than
# min_delta 1, epoch 5 loses, so with patience 2 the decay starts after epoch 5 and lasts one epoch (6).
STALLS = [10.0, 20.0, 30.0, 30.5, 25.0, 29.0, 45.0, 50.0, 55.0, 60.0]
RULE = {"patience": 2, "min_delta": 1.0, "decay_epochs": 1}


class Scores:
    """A `validate` callback that gives `scores[k]` (t2v 2 above it, v2t 2 below) at its k-th call, counting
    from `start` (the epochs a resumed run has already validated)."""

    def __init__(self, scores: list[float], start: int = 0):
        self.scores, self.calls = scores, start

    def __call__(self, model: nn.Module) -> dict[str, float]:
        score = self.scores[self.calls]
        self.calls += 1
        return {"val_student_t2v_R1": score + 2, "val_student_v2t_R1": score - 2}


class NanAt(nn.Module):
    """The contrastive loss, NaN at call `at` (0: never): the run stops there after saving its state."""

    def __init__(self, at: int = 0):
        super().__init__()
        self.loss = DistillationLoss(LossConfig(), student_dim=8, teacher_dim=8)
        self.at, self.calls = at, 0

    def forward(self, student, teacher):
        self.calls += 1
        losses = self.loss(student, teacher)
        if self.calls == self.at:
            losses["contrastive_loss"] = losses["contrastive_loss"] * float("nan")
        return losses


def train_toy(run_dir: Path, validate: Scores | None, loss: nn.Module | None = None, **config) -> TwoTower:
    """At most 10 epochs of the toy model at lr 0.1, a checkpoint each epoch; returns the trained model."""
    torch.manual_seed(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(split_batches=True))
    settings = {"epochs": 10, **config}
    return train(
        TwoTower(),
        loss or NanAt(),
        Pairs(12),
        TrainConfig(batch_size=4, lr=0.1, checkpoint_every=EPOCH, log_every=1, **settings),
        accelerator=accelerator,
        view="student",
        seed=0,
        run_dir=run_dir,
        name="distill",
        validate=validate,
    )


def read_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "distill_log.jsonl").read_text().splitlines()]


def assert_weights_equal(state: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    assert state.keys() == saved.keys()
    for name in state:
        assert torch.equal(state[name], saved[name]), name  # bitwise: the same tensors


def test_a_stalled_run_stops_after_patience_and_keeps_the_best_epoch(tmp_path):
    model = train_toy(tmp_path, Scores(STALLS), **RULE)
    log = read_log(tmp_path)
    assert log[-1]["step"] == 6 * EPOCH  # best epoch 3 + patience 2 + decay 1
    assert [r["step"] for r in log if "val_student_t2v_R1" in r] == [EPOCH * e for e in range(1, 7)]
    summary = json.loads((tmp_path / "distill_schedule.json").read_text())
    assert summary == {
        "rule": "patience 2, min_delta 1.0",
        "best_epoch": 3,
        "best_step": 3 * EPOCH,
        "val_R1": 30.0,
        "stopped": "patience",
        "epochs": 6,
        "steps": 6 * EPOCH,
        "max_steps": 10 * EPOCH,
        "exported": "best",
    }
    checkpoints = tmp_path / "checkpoints" / "distill"
    assert sorted(int(p.name.split("_")[1]) for p in checkpoints.iterdir()) == [EPOCH * e for e in range(1, 7)]
    assert_weights_equal(model.state_dict(), load_file(checkpoints / f"checkpoint_{3 * EPOCH}" / "model.safetensors"))
    last = load_file(checkpoints / f"checkpoint_{6 * EPOCH}" / "model.safetensors")
    assert not torch.equal(model.video.weight, last["video.weight"])  # the decay epochs moved it on

    # Warmup (10% of the 30 most steps), the peak held, then a cosine over the decay's 3 steps that ends at
    # zero on the last step. The logged rate is the one for the next step (the scheduler has stepped).
    lr = {r["step"]: r["lr"] for r in log}
    assert [lr[s] for s in (1, 2)] == pytest.approx([0.1 * 2 / 3, 0.1])
    assert all(lr[s] == pytest.approx(0.1) for s in range(2, 5 * EPOCH + 1))
    assert [lr[s] for s in (16, 17, 18)] == pytest.approx([0.1 * 0.75, 0.1 * 0.25, 0.0], abs=1e-12)


def test_a_run_still_learning_decays_over_the_last_epochs_of_the_maximum(tmp_path):
    rising = [10.0 * e for e in range(1, 11)]
    model = train_toy(tmp_path, Scores(rising), epochs=4, patience=1, decay_epochs=2)
    log = read_log(tmp_path)
    lr = {r["step"]: r["lr"] for r in log}
    assert log[-1]["step"] == 4 * EPOCH
    assert lr[2 * EPOCH] == pytest.approx(0.1) and lr[4 * EPOCH] == 0.0
    assert lr[2 * EPOCH + 1] == pytest.approx(0.1 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 6)).item()))
    summary = json.loads((tmp_path / "distill_schedule.json").read_text())
    assert (summary["stopped"], summary["best_epoch"], summary["val_R1"]) == ("maximum", 4, 40.0)
    last = tmp_path / "checkpoints" / "distill" / f"checkpoint_{4 * EPOCH}" / "model.safetensors"
    assert_weights_equal(model.state_dict(), load_file(last))


def test_a_run_resumed_mid_patience_is_the_uninterrupted_run(tmp_path):
    """Stopped at step 13 (a NaN loss: the state of step 12 is saved), after epoch 4 counted one epoch
    without improvement; resumed, it stops where the whole run stopped, with the same best weights, from
    the checkpoint's rule state and best weights (epoch 3's, before the checkpoint)."""
    whole = train_toy(tmp_path / "whole", Scores(STALLS), **RULE)
    broken = tmp_path / "broken"
    with pytest.raises(FloatingPointError, match="at step 13"):
        train_toy(broken, Scores(STALLS), NanAt(at=13), **RULE)
    saved = broken / "checkpoints" / "distill" / f"checkpoint_{4 * EPOCH}"
    assert json.loads((saved / "schedule.json").read_text()) == {
        "best": 30.0,
        "best_step": 3 * EPOCH,
        "since": 1,
        "decay_start": 30 - EPOCH,  # not moved yet: the decay of the maximum's last epoch
        "stopped": "maximum",
    }
    assert_weights_equal(
        load_file(saved / "best.safetensors"), load_file(saved.parent / "checkpoint_9" / "model.safetensors")
    )
    resumed = train_toy(broken, Scores(STALLS, start=4), resume="auto", **RULE)
    assert_weights_equal(resumed.state_dict(), whole.state_dict())
    a, b = read_log(tmp_path / "whole"), read_log(broken)
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, 6 * EPOCH + 1))
    for x, y in zip(a, b, strict=True):
        assert {k: v for k, v in x.items() if k != "clips_per_s"} == {k: v for k, v in y.items() if k != "clips_per_s"}
    assert (broken / "distill_schedule.json").read_text() == (tmp_path / "whole" / "distill_schedule.json").read_text()


def test_patience_needs_the_validation_split(tmp_path):
    with pytest.raises(ValueError, match="distill: patience 2 reads the validation split, and this run has none"):
        train_toy(tmp_path, None, **RULE)
    with pytest.raises(RecipeError, match=r"^train\.patience: the stopping rule reads the validation split"):
        load_recipe(DEMO, ["data.val_fraction=0"])  # the demo's own rule
    with pytest.raises(RecipeError, match=r"^teacher\.train\.patience: the stopping rule reads the validation"):
        load_recipe(DEMO, ["train.patience=0", "teacher.train.patience=2", "eval.val_pairs=0"])
    with pytest.raises(RecipeError, match=r"train\.patience: must be zero or more, got -1"):
        load_recipe(DEMO, ["train.patience=-1"])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A tiny student distilled from a random tiny teacher for at most 8 epochs with patience 1, then
    evaluated, with 1 and with 2 processes."""
    tmp = tmp_path_factory.mktemp("schedule")
    data = generate_synthetic(tmp / "data", SyntheticConfig(num_train=56, num_test=16, size=32, seconds=4))  # tiny.DATA
    torch.manual_seed(0)
    config = TeacherConfig(
        max_frames=4, image_size=16, vision_width=64, vision_layers=1, text_width=64, text_layers=1, cross_layers=1
    )
    save_teacher(CLIP4Clip(teacher_arch(config, max_words=32)), tmp / "teacher.safetensors")
    for processes in (1, 2):
        done = launch(
            REPO / "distill" / "run.py",
            str(REPO / "recipes" / "demo.yaml"),
            f"data.root={data}",
            f"teacher.source={tmp / 'teacher.safetensors'}",
            f"output_dir={tmp / str(processes)}",
            "stages=[distill,evaluate]",
            *TINY,
            "train.max_steps=null",
            "train.epochs=8",
            "train.patience=1",
            "train.decay_epochs=1",
            "train.lr=3e-3",
            processes=processes,
            cwd=tmp,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"distill: at most 24 steps of 16 pairs split over {processes} process(es)" in done.stdout
    return tmp


def test_two_processes_stop_at_the_step_of_one(runs):
    one, two = (json.loads((runs / p / "report.json").read_text())["schedule"]["distill"] for p in ("1", "2"))
    assert one["stopped"] == "patience" and one["steps"] < 24
    assert two == one
    steps = [
        [json.loads(line)["step"] for line in (runs / p / "distill_log.jsonl").read_text().splitlines()] for p in "12"
    ]
    assert steps[0] == steps[1] and steps[0][-1] == one["steps"]


def test_the_report_says_which_epoch_was_kept_and_why_training_stopped(runs):
    s = json.loads((runs / "1" / "report.json").read_text())["schedule"]["distill"]
    log = [json.loads(line) for line in (runs / "1" / "distill_log.jsonl").read_text().splitlines()]
    scores = {
        r["step"]: (r["val_student_t2v_R1"] + r["val_student_v2t_R1"]) / 2 for r in log if "val_student_t2v_R1" in r
    }
    assert s["val_R1"] == scores[s["best_step"]] == max(scores.values())
    assert s["best_step"] == min(step for step, score in scores.items() if score == s["val_R1"])
    best, stall = None, None  # the first epoch end that does not beat the best so far (patience 1)
    for step, score in sorted(scores.items()):
        if best is not None and score <= best:
            stall = step
            break
        best = score
    assert s["steps"] == stall + 3  # then one epoch (3 steps) of decay
    report = (runs / "1" / "report.md").read_text()
    assert (
        f"- distill (patience 1, min_delta 0.0): trained {s['steps']} of at most 24 steps ({s['steps'] // 3} epochs), "
        f"stopped because validation stalled for `patience` epochs; best validation R@1 (mean of t2v and v2t) "
        f"{s['val_R1']:.1f} at epoch {s['best_epoch']} (step {s['best_step']}): its weights are the ones evaluated."
    ) in report
    assert (runs / "1" / "training_curves.png").stat().st_size > 0
