"""Gradient accumulation keeps the losses over the whole batch: the same training as one pass over the
batch, with dropout replayed identically and running statistics updated once per micro-batch."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch import nn
from toy import Pairs, TwoTower

from distill.core.schema import LossConfig, TrainConfig
from distill.training.gradcache import GradCache, split_batch
from distill.training.losses import DistillationLoss
from distill.training.train import OnlineTeacher, train


def accelerator(mixed_precision: str = "no") -> Accelerator:
    return Accelerator(
        cpu=True, mixed_precision=mixed_precision, dataloader_config=DataLoaderConfiguration(split_batches=True)
    )


def distill(run_dir, accumulate: int, mixed_precision: str = "no") -> tuple[TwoTower, list[dict]]:
    """Six steps of 8 pairs with every loss term and a frozen teacher; the student and the log."""
    run_dir.mkdir()
    torch.manual_seed(1)
    teacher = TwoTower().requires_grad_(False)
    torch.manual_seed(0)
    student = TwoTower()
    loss = DistillationLoss(LossConfig(kl_temperature=2.0), student_dim=8, teacher_dim=8)
    train(
        student,
        loss,
        Pairs(16),
        TrainConfig(batch_size=8, max_steps=6, log_every=1, lr=1e-2, accumulate=accumulate),
        accelerator=accelerator(mixed_precision),
        view="student",
        seed=0,
        run_dir=run_dir,
        name="distill",
        teacher=OnlineTeacher(teacher),
    )
    return student, [json.loads(line) for line in (run_dir / "distill_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("accumulate", [2, 8])
def test_accumulated_training_equals_whole_batches(tmp_path, accumulate):
    whole, whole_log = distill(tmp_path / "whole", 1)
    micro, micro_log = distill(tmp_path / "micro", accumulate)
    assert {"contrastive_loss", "kl_loss", "feature_loss"} <= whole_log[0].keys()
    for a, b in zip(whole_log, micro_log, strict=True):
        assert all(b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-6) for key in a if key != "clips_per_s")
    assert whole_log[-1]["loss"] < 0.9 * whole_log[0]["loss"]  # it trains, so the equality means something
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(micro.state_dict()[name], value, rtol=0, atol=1e-6, msg=name)


def test_accumulated_training_under_bf16_autocast_stays_within_bf16_rounding(tmp_path, bf16):
    """The replay runs under the same autocast as the first pass; bf16 rounds micro-batches and whole
    batches differently, by about 1e-3 here."""
    whole, whole_log = distill(tmp_path / "whole", 1, bf16)
    micro, micro_log = distill(tmp_path / "micro", 4, bf16)
    for a, b in zip(whole_log, micro_log, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=2e-3)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(micro.state_dict()[name], value, rtol=0, atol=2e-3, msg=name)


def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_replay_draws_the_same_dropout_and_updates_running_statistics_once():
    """With dropout and BatchNorm, the gradients equal those of a graph kept over every micro-batch (the
    same random draws in the same order), and the running statistics move once per micro-batch."""
    batch = {key: torch.stack([Pairs(16)[i][key] for i in range(8)]) for key in Pairs(16)[0]}
    micro = split_batch(batch, 4)
    loss_fn = DistillationLoss(LossConfig(), student_dim=8, teacher_dim=8)
    models, draws = [], []
    for cached in (False, True):
        torch.manual_seed(0)
        model = TwoTower(dropout=0.5, batch_norm=True).train()
        torch.manual_seed(5)
        if cached:
            grad_cache = GradCache(model, "student", accelerator())
            grad_cache.backward(sum(loss_fn(grad_cache.forward(micro), None).values()))
        else:
            parts = [model(b["input_ids"], b["attention_mask"], b["student_video"], b["student_mask"]) for b in micro]
            out = {
                "text_features": torch.cat([p["text_features"] for p in parts]),
                "video_features": torch.cat([p["video_features"] for p in parts]),
                "logit_scale": parts[0]["logit_scale"],
            }
            sum(loss_fn(out, None).values()).backward()
        models.append(model)
        draws.append(torch.rand(3))  # the replay leaves the random state where the first pass left it
    direct, cached = models
    assert torch.equal(draws[0], draws[1])
    for name, grad in gradients(direct).items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(gradients(cached)[name], grad, rtol=0, atol=1e-6, msg=name)
    assert int(cached.norm.num_batches_tracked) == 4
    torch.testing.assert_close(cached.norm.running_mean, direct.norm.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(cached.norm.running_var, direct.norm.running_var, rtol=0, atol=0)


def test_batch_must_split_into_micro_batches(tmp_path):
    loss = DistillationLoss(LossConfig(), student_dim=8, teacher_dim=8)
    with pytest.raises(
        ValueError,
        match=r"^distill: batch_size: 8 is the global batch and must split evenly over "
        r"the 1 processes and 3 micro-batches \(accumulate\)$",
    ):
        train(
            TwoTower(),
            loss,
            Pairs(16),
            TrainConfig(batch_size=8, max_steps=1, accumulate=3),
            accelerator=accelerator(),
            view="student",
            seed=0,
            run_dir=tmp_path,
            name="distill",
        )
