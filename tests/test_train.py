"""The training loop called directly on a tiny in-memory dataset: a NaN or inf loss stops the run after
saving the state, and the run resumes from that state; every log line also goes to Accelerate's trackers."""

from __future__ import annotations

import json
import re

import pytest
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import DataLoaderConfiguration
from safetensors.torch import load_file
from torch import nn
from toy import Pairs, TwoTower

from distill.core.schema import LossConfig, TrainConfig
from distill.training.losses import DistillationLoss
from distill.training.schedule import warmup_cosine
from distill.training.train import param_groups, synchronise_batch_norm, train


class FailingLoss(nn.Module):
    """The contrastive loss, with `value` added to it at call `at`."""

    def __init__(self, at: int, value: float):
        super().__init__()
        self.loss = DistillationLoss(LossConfig(), student_dim=8, teacher_dim=8)
        self.at, self.value, self.calls = at, value, 0

    def forward(self, student, teacher):
        self.calls += 1
        losses = self.loss(student, teacher)
        if self.calls == self.at:
            losses["contrastive_loss"] = losses["contrastive_loss"] + self.value
        return losses


def run(run_dir, loss: nn.Module, model: TwoTower | None = None, settings=None, **config) -> TwoTower:
    """Six steps of 4 pairs from a model seeded with 0, checkpoints every 2 steps; returns the model."""
    torch.manual_seed(0)
    model = model or TwoTower()
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(split_batches=True))
    train(
        model,
        loss,
        Pairs(12),
        TrainConfig(batch_size=4, max_steps=6, checkpoint_every=2, log_every=1, **config),
        accelerator=accelerator,
        view="student",
        seed=0,
        run_dir=run_dir,
        name="distill",
        settings=settings,
    )
    return model


@pytest.mark.parametrize("value, text", [(float("nan"), "nan"), (float("inf"), "inf")])
def test_non_finite_loss_saves_state_then_stops_naming_step_and_term(tmp_path, value, text):
    model = TwoTower()
    with pytest.raises(FloatingPointError) as error:
        run(tmp_path, FailingLoss(at=4, value=value), model)
    saved = tmp_path / "checkpoints" / "distill" / "checkpoint_3"
    assert (
        str(error.value) == f"distill: contrastive_loss is {text} at step 4; the training state before that "
        f"step is saved in {saved}"
    )
    assert sorted(p.name for p in saved.parent.iterdir()) == ["checkpoint_2", "checkpoint_3"]
    weights = load_file(saved / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # no update at step 4
    log = [json.loads(line) for line in (tmp_path / "distill_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]


def test_non_finite_loss_right_after_a_checkpoint_does_not_save_it_again(tmp_path):
    with pytest.raises(FloatingPointError, match=re.escape("contrastive_loss is nan at step 3")) as error:
        run(tmp_path, FailingLoss(at=3, value=float("nan")))
    assert str(error.value).endswith(str(tmp_path / "checkpoints" / "distill" / "checkpoint_2"))
    assert [p.name for p in (tmp_path / "checkpoints" / "distill").iterdir()] == ["checkpoint_2"]


def test_resumes_from_the_state_saved_at_the_failure(tmp_path):
    """After the failure, resume=auto continues from step 3 and ends where an unbroken run ends."""
    with pytest.raises(FloatingPointError):
        run(tmp_path / "broken", FailingLoss(at=4, value=float("nan")))
    resumed = run(tmp_path / "broken", FailingLoss(at=0, value=0.0), resume="auto")
    log = [json.loads(line) for line in (tmp_path / "broken" / "distill_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    unbroken = run(tmp_path / "unbroken", FailingLoss(at=0, value=0.0))
    for name, value in unbroken.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_resume_with_other_settings_stops_naming_them(tmp_path):
    """Every checkpoint keeps the settings it was trained with; a resume with others would continue another
    run, so it stops before loading anything, and resumes once they are set back. A key only one side has (a
    recipe field added since) is not compared; a checkpoint without settings.json resumes as it is."""
    settings = {"seed": 0, "teacher.crop_scale": 0.8, "train.lr": 0.5}
    with pytest.raises(FloatingPointError):
        run(tmp_path / "a", FailingLoss(at=4, value=float("nan")), settings=settings, lr=0.5)
    saved = tmp_path / "a" / "checkpoints" / "distill" / "checkpoint_3"
    assert json.loads((saved / "settings.json").read_text()) == settings
    other = settings | {"teacher.crop_scale": 1.0}
    message = f"{saved} was saved with teacher.crop_scale 0.8 (now 1.0): resuming would continue another run"
    with pytest.raises(ValueError, match=re.escape(message)):
        run(tmp_path / "a", FailingLoss(at=0, value=0.0), settings=other, lr=0.5, resume="auto")
    before = (tmp_path / "a" / "distill_log.jsonl").read_text().splitlines()
    run(tmp_path / "a", FailingLoss(at=0, value=0.0), settings=settings | {"new": 1}, lr=0.5, resume="auto")
    resumed(tmp_path / "a", before)

    with pytest.raises(FloatingPointError):
        run(tmp_path / "b", FailingLoss(at=4, value=float("nan")), settings=settings, lr=0.5)
    (tmp_path / "b" / "checkpoints" / "distill" / "checkpoint_3" / "settings.json").unlink()
    before = (tmp_path / "b" / "distill_log.jsonl").read_text().splitlines()
    run(tmp_path / "b", FailingLoss(at=0, value=0.0), settings=other, lr=0.5, resume="auto")
    resumed(tmp_path / "b", before)


def resumed(run_dir, before: list[str]) -> None:
    """The run went on from step 3: its first three log lines are those written before (a run started over
    rewrites them, with other clips/s), then steps 4-6."""
    after = (run_dir / "distill_log.jsonl").read_text().splitlines()
    assert after[:3] == before == before[:3] and [json.loads(line)["step"] for line in after[3:]] == [4, 5, 6]


class Recorder(GeneralTracker):
    name, requires_logging_directory = "recorder", False

    def __init__(self):
        super().__init__()
        self.logged = []

    @property
    def tracker(self):
        return self

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.logged.append((step, values))


def test_log_lines_go_to_the_trackers(tmp_path):
    """Per-term losses, learning rate and throughput under the stage's name, at the steps of the jsonl log."""
    recorder = Recorder()
    accelerator = Accelerator(
        cpu=True, log_with=[recorder], dataloader_config=DataLoaderConfiguration(split_batches=True)
    )
    accelerator.init_trackers("test")
    torch.manual_seed(0)
    train(
        TwoTower(),
        FailingLoss(at=0, value=0.0),
        Pairs(12),
        TrainConfig(batch_size=4, max_steps=6, log_every=2),
        accelerator=accelerator,
        view="student",
        seed=0,
        run_dir=tmp_path,
        name="distill",
    )
    log = [json.loads(line) for line in (tmp_path / "distill_log.jsonl").read_text().splitlines()]
    assert [step for step, _ in recorder.logged] == [r["step"] for r in log] == [2, 4, 6]
    for (_, values), record in zip(recorder.logged, log):
        assert values == {f"distill/{key}": value for key, value in record.items() if key != "step"}
    assert set(recorder.logged[-1][1]) == {
        "distill/loss",
        "distill/contrastive_loss",
        "distill/lr",
        "distill/clips_per_s",
    }
    assert recorder.logged[-1][1]["distill/clips_per_s"] > 0


class PretrainedText(TwoTower):
    """Its text embedding stands for weights loaded from a pretrained file."""

    def pretrained_parameters(self) -> list[nn.Parameter]:
        return list(self.embedding.parameters())


@pytest.mark.parametrize("coef_lr", [0.0, 0.1])
def test_pretrained_parameters_train_at_lr_times_coef_lr(tmp_path, coef_lr):
    """With coef_lr 0 they stay as loaded. Adam's first step moves a weight by its group's learning rate
    (times g / (|g| + eps), which is 1 but for tiny gradients)."""
    torch.manual_seed(0)
    model = PretrainedText()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(split_batches=True))
    config = TrainConfig(
        batch_size=4, max_steps=1, lr=0.06, coef_lr=coef_lr, weight_decay=0.0, warmup_ratio=1.0, grad_clip=0.0
    )
    train(
        model,
        FailingLoss(at=0, value=0.0),
        Pairs(12),
        config,
        accelerator=accelerator,
        view="student",
        seed=0,
        run_dir=tmp_path,
        name="distill",
    )
    step = {k: (v - before[k]).abs().max().item() for k, v in model.state_dict().items()}
    assert step["video.weight"] == pytest.approx(0.06, rel=1e-4)
    assert step["embedding.weight"] == pytest.approx(0.06 * coef_lr, rel=1e-4)


def test_one_process_keeps_batch_norm_as_it_is():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    accelerator = Accelerator(cpu=True)
    assert synchronise_batch_norm(model, accelerator) is model
    assert isinstance(model[1], nn.BatchNorm1d) and not isinstance(model[1], nn.SyncBatchNorm)


def test_the_prepared_scheduler_steps_once_an_optimizer_step_and_resumes(tmp_path):
    """The logged learning rate is `lr * warmup_cosine(step)` at every step, and a resumed run continues the
    schedule from the checkpoint (accelerate saves the prepared scheduler); with 2 processes the same
    schedule is checked in test_distributed (the logged lr of 1 and 2 processes)."""
    run(tmp_path / "whole", FailingLoss(at=0, value=0.0), lr=0.5)
    with pytest.raises(FloatingPointError):
        run(tmp_path / "broken", FailingLoss(at=5, value=float("nan")), lr=0.5)
    run(tmp_path / "broken", FailingLoss(at=0, value=0.0), lr=0.5, resume="auto")
    factor = warmup_cosine(6, TrainConfig().warmup_ratio)
    for folder in ("whole", "broken"):
        log = [json.loads(line) for line in (tmp_path / folder / "distill_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
        assert [r["lr"] for r in log] == pytest.approx([0.5 * factor(step) for step in range(1, 7)], rel=1e-12)


def test_weight_decay_spares_biases_norms_scales_and_positions():
    from tiny import student_config

    from students import Student

    model = Student(student_config(), max_words=8)
    loss = DistillationLoss(LossConfig(cross_weight=1.0), student_dim=32, teacher_dim=64)
    config = TrainConfig(lr=1e-2, weight_decay=0.5, coef_lr=0.1)
    groups = param_groups(model, loss, config)
    names = {id(p): n for n, p in [*model.named_parameters(), *loss.named_parameters()]}
    spared = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] == 0.5 for p in g["params"]}
    assert len(spared) + len(decayed) == len(names) and not spared & decayed
    assert {"logit_scale_log", "frame_position_embeddings", "backbone.pos_embed", "backbone.cls_token"} <= spared
    assert {"text.positional_embedding", "backbone.norm.weight", "backbone.patch_embed.proj.bias"} <= spared
    assert "cross_scale_log" in spared  # the loss's own parameters are in the groups too
    assert {
        "text.token_embedding.weight",
        "backbone.patch_embed.proj.weight",
        "text_projection.weight",
        "frame_proj.weight",
    } <= decayed
    assert all(g["lr"] == 1e-2 for g in groups)  # no pretrained backbone: nothing at lr * coef_lr
    # One AdamW step with zero gradients moves only the decayed weights, by lr * weight_decay of themselves.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(groups)
    for g in groups:
        for p in g["params"]:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in model.named_parameters():
        scale = 1 - 1e-2 * 0.5 if n in decayed else 1.0
        torch.testing.assert_close(p.detach(), before[n] * scale, rtol=0, atol=1e-7, msg=n)


def test_pretrained_backbone_trains_at_coef_lr_in_both_decay_groups(tmp_path):
    import timm
    from safetensors.torch import save_file
    from tiny import student_config

    from students import Student

    config = student_config()
    backbone = timm.create_model(config.backbone, num_classes=0, **config.backbone_kwargs)
    save_file(backbone.state_dict(), tmp_path / "vit.safetensors")
    model = Student(student_config(pretrained=str(tmp_path / "vit.safetensors")), max_words=8)
    groups = param_groups(model, nn.Identity(), TrainConfig(lr=1e-3, coef_lr=0.1, weight_decay=0.05))
    slow = {id(p) for g in groups if g["lr"] == pytest.approx(1e-4) for p in g["params"]}
    assert slow == {id(p) for p in model.backbone.parameters()}
    assert sorted((g["lr"], g["weight_decay"]) for g in groups) == [
        (1e-4, 0.0),
        (1e-4, 0.05),
        (1e-3, 0.0),
        (1e-3, 0.05),
    ]
