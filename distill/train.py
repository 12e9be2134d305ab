"""The Accelerate training loop shared by teacher fine-tuning (contrastive only) and distillation.

The global batch is split across processes (`split_batches=True`), so `batch_size` and the order of the
samples in each global batch do not depend on the process count. The sampler's order is drawn from the
seed and the epoch only, which also makes the data position resumable. Every process gathers the
embeddings of the whole global batch (`distill.gather`) and computes the same losses over it, so losses
and gradients equal those of one process holding the whole batch.

Gradient accumulation (`train.accumulate` micro-batches per step) keeps the losses over the whole global
batch (every caption against every video of the step), as in GradCache (Gao et al., 2021): a first pass
embeds the micro-batches without a graph, the losses and their gradients with respect to the embeddings
are computed over the whole batch, then each micro-batch runs again with a graph and back-propagates its
slice of those gradients. The gradients equal those of one pass over the whole batch, for one extra
forward pass of the student; batch-statistics layers (BatchNorm) see micro-batch statistics.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from distill.gather import gather_with_grad
from distill.recipe import TrainConfig


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


def training_loader(dataset: Dataset, batch_size: int, seed: int, *, num_workers: int = 0,
                    pin_memory: bool = False) -> DataLoader:
    """Batches in the `EpochSampler` order: the same batches whatever the number of workers (the items hold
    no randomness). Workers stay alive between epochs; pinned memory speeds up copies to a GPU."""
    return DataLoader(dataset, batch_size=batch_size, sampler=EpochSampler(len(dataset), seed), drop_last=True,
                      num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0)


def warmup_cosine(total_steps: int, warmup_ratio: float):
    """Linear warmup over `warmup_ratio` of the steps, then cosine decay to zero."""
    warmup = max(1, round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

    return factor


def newest_checkpoint(checkpoint_dir: Path) -> Path | None:
    found = sorted(checkpoint_dir.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, checkpoint_dir: Path, step: int, scheduler) -> Path:
    """Saves the full training state to `checkpoint_<step>`, written under a temporary name and renamed,
    so a kill during a save never leaves a newest checkpoint that cannot be loaded.

    Accelerate saves models, optimizer and RNG states; `progress.json` adds the step and the scheduler.
    """
    final = checkpoint_dir / f"checkpoint_{step}"
    partial = checkpoint_dir / f"partial_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # what a save killed half-way left
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        (partial / "progress.json").write_text(json.dumps({"step": step, "scheduler": scheduler.state_dict()}))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    accelerator.wait_for_everyone()
    return final


def gather_outputs(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model outputs of the global batch: features gathered from every process; the logit scale is
    a shared parameter and stays as it is."""
    return {key: gather_with_grad(value) if key.endswith("_features") else value for key, value in outputs.items()}


def concat_outputs(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The outputs of a step's micro-batches as one batch: features concatenated, shared values (the logit
    scale) taken once."""
    return {key: torch.cat([part[key] for part in parts]) if key.endswith("_features") else value
            for key, value in parts[0].items()}


def split_batch(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """`parts` equal micro-batches of a local batch, in order."""
    pieces = {key: value.chunk(parts) for key, value in batch.items()}
    return [{key: pieces[key][i] for key in batch} for i in range(parts)]


# The teacher's outputs for a step from its micro-batches: `OnlineTeacher` or `distill.cache.TeacherCache`.
TeacherOutputs = Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]]


class OnlineTeacher:
    """Runs the frozen teacher on the "teacher" view of a step's micro-batches and gathers its outputs over
    the processes, in the order of `student_outputs`: micro-batch by micro-batch, rank order within each.

    A cross encoder (tightTransf) has no embeddings: its text and frame features are gathered and it scores
    every pair of the step itself.
    """

    def __init__(self, teacher: nn.Module):
        self.teacher = teacher

    @torch.no_grad()
    def __call__(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        teacher = self.teacher
        if teacher.is_tight:
            text = torch.cat([gather_with_grad(teacher.text_features(b["input_ids"])) for b in batches])
            frames = torch.cat([gather_with_grad(teacher.frame_features(b["teacher_video"])) for b in batches])
            mask = torch.cat([gather_with_grad(b["teacher_mask"]) for b in batches])
            return {"logits": teacher.cross_scores(text, frames, mask)}
        return concat_outputs([gather_outputs(teacher(b["input_ids"], b["attention_mask"], b["teacher_video"],
                                                      b["teacher_mask"])) for b in batches])


def rng_states() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None


def set_rng_states(states: tuple) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state_all(states[1])


def student_outputs(model: nn.Module, batches: list[dict[str, torch.Tensor]], view: str,
                    accelerator: Accelerator) -> tuple[dict[str, torch.Tensor], Callable[[], None]]:
    """The model's outputs for the step's global batch, and `replay`, to call after the backward pass of
    the losses computed from them.

    One micro-batch: the outputs carry the graph and `replay` does nothing. Several: the outputs are leaves
    computed without a graph (GradCache, see the module docstring); `replay` runs each micro-batch again
    with the same random state and back-propagates the outputs' gradients through the model.
    """
    def forward(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return model(b["input_ids"], b["attention_mask"], b[f"{view}_video"], b[f"{view}_mask"])

    if len(batches) == 1:
        return gather_outputs(forward(batches[0])), lambda: None
    states, parts = [], []
    buffers = [b.clone() for b in model.buffers()]  # the replay updates running statistics (BatchNorm) once
    with torch.no_grad():
        for b in batches:
            states.append(rng_states())
            parts.append(gather_outputs(forward(b)))
    for saved, buffer in zip(buffers, model.buffers()):
        buffer.copy_(saved)
    out = {key: value.detach().requires_grad_(value.is_floating_point())
           for key, value in concat_outputs(parts).items()}

    def replay() -> None:
        world, rank = accelerator.num_processes, accelerator.process_index
        after = rng_states()
        for i, (b, state) in enumerate(zip(batches, states)):
            rows = len(b["input_ids"])
            start = (i * world + rank) * rows  # this process's rows of micro-batch i in the global batch
            set_rng_states(state)
            with accelerator.no_sync(model) if i < len(batches) - 1 else contextlib.nullcontext():
                live = forward(b)
                tensors, grads = [], []
                for key, value in live.items():
                    if out[key].grad is None or not value.requires_grad:
                        continue
                    tensors.append(value)
                    # The features' gradient is scaled by the process count as `gather_with_grad` does (DDP
                    # averages it back); a shared value gets its gradient spread over the micro-batches.
                    grads.append(out[key].grad[start:start + rows] * world if key.endswith("_features")
                                 else out[key].grad / len(batches))
                torch.autograd.backward(tensors, grads)
        set_rng_states(after)

    return out, replay


def check_split(key: str, batch_size: int, processes: int, accumulate: int = 1) -> None:
    """A batch is global (`split_batches`): it must split evenly over the processes and micro-batches."""
    if batch_size % (processes * accumulate):
        raise ValueError(f"{key}: {batch_size} is the global batch and must split evenly over the {processes} "
                         f"processes" + (f" and {accumulate} micro-batches (accumulate)" if accumulate > 1 else ""))


def param_groups(model: nn.Module, params: list[nn.Parameter], config: TrainConfig) -> list[dict]:
    """`train.lr` for every parameter but the model's `pretrained_parameters()` (a backbone loaded from
    pretrained weights), which train at `lr * coef_lr`, as CLIP4Clip trains CLIP under its new heads."""
    pretrained = {id(p) for p in getattr(model, "pretrained_parameters", list)()}
    groups = [{"params": [p for p in params if id(p) not in pretrained], "lr": config.lr},
              {"params": [p for p in params if id(p) in pretrained], "lr": config.lr * config.coef_lr}]
    return [group for group in groups if group["params"]]


def synchronise_batch_norm(model: nn.Module, accelerator: Accelerator) -> nn.Module:
    """BatchNorm layers that compute their statistics over the global batch when several GPU processes
    train (torch's SyncBatchNorm), so N processes train the model one process would. torch synchronises
    on GPUs only: CPU processes keep per-process statistics, with a warning."""
    if accelerator.num_processes == 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                 for m in model.modules()):
        return model
    if accelerator.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    accelerator.print(f"warning: BatchNorm statistics stay per process on CPU (SyncBatchNorm needs GPUs): "
                      f"{accelerator.num_processes} processes train a slightly different model than one")
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


def train(model: nn.Module, loss_fn: nn.Module, dataset: Dataset, config: TrainConfig, *,
          accelerator: Accelerator, view: str, seed: int, run_dir: Path, name: str,
          teacher: TeacherOutputs | None = None, num_workers: int = 0,
          validate: Callable[[nn.Module], dict[str, float]] | None = None) -> nn.Module:
    """Trains `model` (and the learnable parts of `loss_fn`) and returns the unwrapped model.

    Args:
        view: which clip view of the batch the model reads ("teacher" or "student").
        name: names the stage in the progress bar, the log file and the checkpoint folder.
        teacher: gives the teacher's outputs for `loss_fn`: a frozen teacher run online on its own view
            (`OnlineTeacher`), or its outputs read from the teacher cache (`distill.cache.TeacherCache`).
        num_workers: DataLoader worker processes (`data.num_workers`).
        validate: metrics of the model (in eval mode, on every process) at the end of each epoch and of
            training, added to that step's log line; it leaves the random state as it found it.
    """
    loader = training_loader(dataset, config.batch_size, seed, num_workers=num_workers,
                             pin_memory=accelerator.device.type == "cuda")
    check_split(f"{name}: batch_size", config.batch_size, accelerator.num_processes, config.accumulate)
    if config.accumulate > 1 and getattr(model, "is_tight", False):
        raise ValueError(f"{name}: train.accumulate must be 1 for a tightTransf model: its cross encoder scores "
                         "pairs, so there are no embeddings to accumulate over micro-batches")
    if len(loader) == 0:
        raise ValueError(f"{name}: {len(dataset)} training pairs cannot fill one batch of {config.batch_size}")
    total = config.max_steps or config.epochs * len(loader)
    params = [p for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, params, config), weight_decay=config.weight_decay)
    # Not prepared: a prepared scheduler steps once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, config.warmup_ratio))
    model, optimizer, loader = accelerator.prepare(synchronise_batch_norm(model, accelerator), optimizer, loader)
    if any(p.requires_grad for p in loss_fn.parameters()):
        # Only then: on CPU accelerate wraps every module in DDP, which refuses one without parameters.
        loss_fn = accelerator.prepare(loss_fn)

    step, saved, latest = 0, None, None  # saved: the step of the newest checkpoint `latest`
    checkpoint_dir = run_dir / "checkpoints" / name
    if config.resume == "auto" and (latest := newest_checkpoint(checkpoint_dir)) is not None:
        accelerator.load_state(str(latest))
        progress = json.loads((latest / "progress.json").read_text())
        step = saved = progress["step"]
        scheduler.load_state_dict(progress["scheduler"])
        accelerator.print(f"{name}: resumed from {latest} at step {step}")

    accelerator.print(f"{name}: {total} steps of {config.batch_size} pairs split over "
                      f"{accelerator.num_processes} process(es)")
    log_path = run_dir / f"{name}_log.jsonl"
    if accelerator.is_main_process and log_path.is_file():
        # Drop the lines of the steps that run again: after the checkpoint resumed from, or all when starting over.
        lines = [line for line in log_path.read_text().splitlines() if json.loads(line)["step"] <= step]
        log_path.write_text("".join(f"{line}\n" for line in lines))
    bar = tqdm(total=total, initial=step, desc=name, unit="step",
               disable=not accelerator.is_local_main_process)
    model.train()
    clock = (time.perf_counter(), step)  # when the last log line was written, at which step
    while step < total:
        epoch, skip = divmod(step, len(loader))
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        batches.set_epoch(epoch)  # a prepared loader would otherwise set the sampler to its own epoch count
        for batch in batches:
            micro = split_batch(batch, config.accumulate)
            teacher_out = None
            if teacher is not None:
                teacher_out = teacher(micro)  # the teacher computes in its own precision
            out, replay = student_outputs(model, micro, view, accelerator)
            losses = loss_fn(out, teacher_out)
            # Every process holds the same global losses, so all of them stop here together.
            bad = {term: value.item() for term, value in losses.items() if not torch.isfinite(value)}
            if bad:
                if saved != step:
                    latest = save_checkpoint(accelerator, checkpoint_dir, step, scheduler)
                terms = ", ".join(f"{term} is {value}" for term, value in bad.items())
                raise FloatingPointError(f"{name}: {terms} at step {step + 1}; the training state before that "
                                         f"step is saved in {latest}")
            loss = sum(losses.values())
            accelerator.backward(loss)
            replay()
            if config.grad_clip:
                accelerator.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            record = {"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                      **{term: value.item() for term, value in losses.items()}}
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in record.items() if k.endswith("loss")})
            end_of_epoch = step % len(loader) == 0 or step == total
            validating = validate is not None and end_of_epoch
            if validating:
                started, states = time.perf_counter(), rng_states()  # a DataLoader seeds from the global generator
                model.eval()
                record.update(validate(accelerator.unwrap_model(model)))
                model.train()
                set_rng_states(states)
                clock = (clock[0] + time.perf_counter() - started, clock[1])  # not training time
            if step % config.log_every == 0 or step == total or validating:
                # Training throughput since the previous line: data, teacher, student and optimizer, and any
                # save; not the validation.
                now = time.perf_counter()
                record["clips_per_s"] = (step - clock[1]) * config.batch_size / (now - clock[0])
                clock = (now, step)
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                accelerator.log({f"{name}/{key}": value for key, value in record.items() if key != "step"}, step=step)
            if step == total or (config.checkpoint_every and step % config.checkpoint_every == 0):
                latest, saved = save_checkpoint(accelerator, checkpoint_dir, step, scheduler), step
            if step == total:
                break
    bar.close()
    model = accelerator.unwrap_model(model).eval()
    accelerator.free_memory()  # the next stage's checkpoints hold only its own models
    return model
