"""The Accelerate training loop shared by teacher fine-tuning (contrastive only) and distillation.

The global batch is split across processes (`split_batches=True`), so `batch_size` and the order of the
samples in each global batch do not depend on the process count. The sampler's order is drawn from the
seed and the epoch only, which also makes the data position resumable. Every process gathers the
embeddings of the whole global batch (`distill.training.gather`) and computes the same losses over it, so losses
and gradients equal those of one process holding the whole batch; `train.accumulate` micro-batches keep
that (`distill.training.gradcache`). How long it trains and at what learning rate is the stage's
`distill.training.schedule`: the validation at each epoch end can stop it early, on every process at the
same step (the main process's score decides).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from distill.core.schema import TrainConfig
from distill.core.scorers import scorer_for
from distill.training.checkpoints import resume, save_checkpoint
from distill.training.gradcache import GradCache, concat_outputs, gather_outputs, split_batch
from distill.training.schedule import Schedule, monitored, write_summary
from distill.training.steplog import StepLog


class EpochSampler(Sampler[int]):
    """A random permutation per epoch, drawn from `(seed, epoch)` alone."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def training_loader(
    dataset: Dataset, batch_size: int, seed: int, *, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Batches in the `EpochSampler` order: the same batches whatever the number of workers (the items hold
    no randomness). Workers stay alive between epochs; pinned memory speeds up copies to a GPU."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed),
        drop_last=True,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


# The teacher's outputs for a step from its micro-batches: `OnlineTeacher` or `distill.training.cache.TeacherCache`.
TeacherOutputs = Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]]


class OnlineTeacher:
    """Runs the frozen teacher on the "teacher" view of a step's micro-batches and gathers its outputs over
    the processes, in the order of `GradCache.forward` (micro-batch by micro-batch, rank order within each),
    as its scorer gives them to the losses (a cross encoder scores every pair of the step)."""

    def __init__(self, teacher: nn.Module):
        self.teacher, self.scorer = teacher, scorer_for(teacher)

    @torch.no_grad()
    def __call__(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        parts = [
            self.teacher(b["input_ids"], b["attention_mask"], b["teacher_video"], b["teacher_mask"]) for b in batches
        ]
        return self.scorer.loss_inputs(concat_outputs([gather_outputs(part) for part in parts]))


class TeacherEnsemble:
    """Several teachers' outputs for a step (each an `OnlineTeacher` or a `TeacherCache`): the first's, with
    the others' as a list under "ensemble", whose distributions the KL term averages with the first's."""

    def __init__(self, members: list[TeacherOutputs]):
        self.members = members

    def __call__(self, batches: list[dict[str, torch.Tensor]]) -> dict:
        first, *others = [member(batches) for member in self.members]
        return {**first, "ensemble": others}


def check_split(key: str, batch_size: int, processes: int, accumulate: int = 1) -> None:
    """A batch is global (`split_batches`): it must split evenly over the processes and micro-batches."""
    if batch_size % (processes * accumulate):
        raise ValueError(
            f"{key}: {batch_size} is the global batch and must split evenly over the {processes} "
            f"processes" + (f" and {accumulate} micro-batches (accumulate)" if accumulate > 1 else "")
        )


# Parameters spared weight decay besides those of fewer than two dimensions (biases, norm gains, logit
# scales): position embeddings and class tokens, as open_clip and timm train (the original CLIP4Clip decays
# every parameter but the biases).
NO_DECAY = ("pos_embed", "position", "cls_token")


def param_groups(model: nn.Module, loss_fn: nn.Module, config: TrainConfig) -> list[dict]:
    """The trainable parameters of `model` and `loss_fn` in optimizer groups: `train.lr` for every parameter
    but the model's `pretrained_parameters()` (a backbone loaded from pretrained weights), which train at
    `lr * coef_lr`, as CLIP4Clip trains CLIP under its new heads; `train.weight_decay` on weight matrices only
    (not on biases, norms, logit scales, position embeddings and class tokens)."""
    pretrained = {id(p) for p in getattr(model, "pretrained_parameters", list)()}
    named = [(n, p) for n, p in [*model.named_parameters(), *loss_fn.named_parameters()] if p.requires_grad]
    groups = []
    for lr, is_pretrained in ((config.lr, False), (config.lr * config.coef_lr, True)):
        for decays in (True, False):
            params = [
                p
                for n, p in named
                if (id(p) in pretrained) == is_pretrained
                and (p.ndim >= 2 and not any(k in n for k in NO_DECAY)) == decays
            ]
            if params:
                groups.append({"params": params, "lr": lr, "weight_decay": config.weight_decay if decays else 0.0})
    return groups


def synchronise_batch_norm(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    """BatchNorm layers that compute their statistics over the global batch when several GPU processes
    train (torch's SyncBatchNorm), so N processes train the model one process would. torch synchronises
    on GPUs only: CPU processes keep per-process statistics, with a warning."""
    if accelerator.num_processes == 1 or not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
    ):
        return model
    if accelerator.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    accelerator.print(
        f"warning: BatchNorm statistics stay per process on CPU (SyncBatchNorm needs GPUs): "
        f"{accelerator.num_processes} processes train a slightly different model than one"
    )
    return model


def end_training(accelerator: Accelerator) -> None:
    """Ends the trackers and the process group (callers that finished their work wait for every process
    first: one that tears the group down while another still uses it can abort).

    A DDP wrapper sits in a reference cycle; freed by the garbage collector after the process group is
    destroyed, it aborts the process now and then ("terminate called without an active exception", about
    1 exit in 10 of 2 CPU processes). Releasing the prepared objects and collecting first prevents that.
    """
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


def non_finite(losses: dict[str, torch.Tensor]) -> str:
    """`"kl_loss is nan, ..."` for the terms that are not finite; empty when all are."""
    return ", ".join(f"{term} is {value.item()}" for term, value in losses.items() if not torch.isfinite(value))


def train(
    model: nn.Module,
    loss_fn: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    *,
    accelerator: Accelerator,
    view: str,
    seed: int,
    run_dir: Path,
    name: str,
    teacher: TeacherOutputs | None = None,
    num_workers: int = 0,
    validate: Callable[[nn.Module], dict[str, float]] | None = None,
    augment: Callable[[dict[str, torch.Tensor], int], dict[str, torch.Tensor]] | None = None,
    settings: dict | None = None,
) -> nn.Module:
    """Trains `model` (and the learnable parts of `loss_fn`) and returns the unwrapped model.

    Args:
        view: which clip view of the batch the model reads ("teacher" or "student").
        name: names the stage in the progress bar, the log file and the checkpoint folder.
        teacher: gives the teacher's outputs for `loss_fn`: a frozen teacher run online on its own view
            (`OnlineTeacher`), or its outputs read from the teacher cache (`distill.training.cache.TeacherCache`).
        num_workers: DataLoader worker processes (`data.num_workers`).
        validate: metrics of the model (in eval mode, on every process) at the end of each epoch and of
            training, added to that step's log line; the random state is kept around it. Its
            `val_<view>_t2v_R1` and `val_<view>_v2t_R1` drive the stopping rule (`train.patience`), which
            needs it.
        augment: `(batch, epoch) -> batch`, applied to this process's part of every batch before the model
            reads it (`distill.training.augment.random_crops`).
        settings: JSON values saved with every checkpoint; resuming from one saved with others stops
            (`distill.training.checkpoints`).
    """
    loader = training_loader(
        dataset, config.batch_size, seed, num_workers=num_workers, pin_memory=accelerator.device.type == "cuda"
    )
    check_split(f"{name}: batch_size", config.batch_size, accelerator.num_processes, config.accumulate)
    scorer = scorer_for(model)
    if config.accumulate > 1 and scorer.pairwise:
        raise ValueError(
            f"{name}: train.accumulate must be 1 for a cross-encoder (tightTransf) model: it scores pairs, so "
            "there are no embeddings to accumulate over micro-batches"
        )
    if len(loader) == 0:
        raise ValueError(f"{name}: {len(dataset)} training pairs cannot fill one batch of {config.batch_size}")
    if config.patience and validate is None:
        raise ValueError(
            f"{name}: patience {config.patience} reads the validation split, and this run has none (data.val_fraction "
            "held out no video, or eval.val_pairs is 0); hold out more videos, or set patience to 0"
        )
    total = config.max_steps or config.epochs * len(loader)
    schedule = Schedule(config, total=total, epoch_steps=len(loader))
    optimizer = torch.optim.AdamW(param_groups(model, loss_fn, config))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # Prepared: with split_batches it steps once per optimizer step (not once per process), skips the steps
    # a mixed-precision scaler skipped, and is saved with the checkpoints.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    model, optimizer, scheduler, loader = accelerator.prepare(
        synchronise_batch_norm(model, accelerator), optimizer, scheduler, loader
    )
    if any(p.requires_grad for p in loss_fn.parameters()):
        # Only then: on CPU accelerate wraps every module in DDP, which refuses one without parameters.
        loss_fn = accelerator.prepare(loss_fn)

    checkpoints = run_dir / "checkpoints" / name
    step, latest = resume(accelerator, checkpoints, settings, schedule) if config.resume == "auto" else (0, None)
    saved = step if latest else None  # the step of the newest checkpoint `latest`
    if latest:
        accelerator.print(f"{name}: resumed from {latest} at step {step}")
    accelerator.print(
        f"{name}: {'at most ' if config.patience else ''}{total} steps of {config.batch_size} pairs split over "
        f"{accelerator.num_processes} process(es)"
    )
    log = StepLog(accelerator, run_dir / f"{name}_log.jsonl", name, step=step, batch_size=config.batch_size)
    student = GradCache(model, view, accelerator)
    bar = tqdm(total=schedule.end, initial=step, desc=name, unit="step", disable=not accelerator.is_local_main_process)
    model.train()
    while step < schedule.end:
        epoch, skip = divmod(step, len(loader))
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        batches.set_epoch(epoch)  # a prepared loader would otherwise set the sampler to its own epoch count
        for batch in batches:
            if augment is not None:
                batch = augment(batch, epoch)
            micro = split_batch(batch, config.accumulate)
            teacher_out = teacher(micro) if teacher is not None else None  # in the teacher's own precision
            losses = loss_fn(scorer.loss_inputs(student.forward(micro)), teacher_out)
            # Every process holds the same global losses, so all of them stop here together.
            if bad := non_finite(losses):
                if saved != step:
                    latest = save_checkpoint(accelerator, checkpoints, step, settings, schedule)
                raise FloatingPointError(
                    f"{name}: {bad} at step {step + 1}; the training state before that step is saved in {latest}"
                )
            loss = sum(losses.values())
            student.backward(loss)
            if config.grad_clip:
                accelerator.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)

            validating = validate is not None and (step % len(loader) == 0 or step == schedule.end)
            if step % config.log_every == 0 or step == schedule.end or validating:
                record = {
                    "loss": loss.item(),
                    "lr": scheduler.get_last_lr()[0],
                    **{term: value.item() for term, value in losses.items()},
                }
                bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.endswith("loss")})
                if validating:
                    # A DataLoader seeds its workers from the global generator: validation must not move it.
                    cuda = [accelerator.device] if accelerator.device.type == "cuda" else []
                    with log.paused(), torch.random.fork_rng(devices=cuda):
                        model.eval()
                        record.update(validate(accelerator.unwrap_model(model)))
                        model.train()
                    # The main process's score decides, so every process stops at the same step.
                    score = broadcast_object_list([monitored(record, view)])[0]
                    schedule.observe(step, score, accelerator.unwrap_model(model))
                    bar.total = schedule.end
                log.write(step, record)
            if step == schedule.end or (config.checkpoint_every and step % config.checkpoint_every == 0):
                latest, saved = save_checkpoint(accelerator, checkpoints, step, settings, schedule), step
            if step == schedule.end:
                break
    bar.close()
    model = accelerator.unwrap_model(model).eval()
    schedule.restore_best(model)
    if schedule.best is not None and accelerator.is_main_process:  # validated (or resumed from a run that did)
        summary = schedule.summary(step)
        path = write_summary(summary, run_dir, name)
        print(
            f"{name}: stopped at step {step} ({summary['stopped']}); best validation R@1 {summary['val_R1']:.1f} "
            f"at epoch {summary['best_epoch']}, the {summary['exported']} weights kept ({path.name})"
        )
    accelerator.free_memory()  # the next stage's checkpoints hold only its own models
    return model
