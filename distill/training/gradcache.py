"""A model's outputs for a step's global batch, and their backward pass, over any number of micro-batches.

Gradient accumulation (`train.accumulate` micro-batches per step) keeps the losses over the whole global
batch (every caption against every video of the step), as in GradCache (Gao et al., 2021): a first pass
embeds the micro-batches without a graph, the losses and their gradients with respect to the embeddings
are computed over the whole batch, then each micro-batch runs again with a graph and back-propagates its
slice of those gradients. The gradients equal those of one pass over the whole batch, for one extra
forward pass; batch-statistics layers (BatchNorm) see micro-batch statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from accelerate import Accelerator
from torch import nn

from distill.training.gather import gather_with_grad

# Outputs with one row per pair, gathered over the processes (embeddings, or a cross encoder's inputs); any
# other output (the logit scale) is shared.
PER_SAMPLE = frozenset({"text_features", "video_features", "frame_features", "video_mask"})


def gather_outputs(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The outputs of the global batch: per-pair rows gathered from every process, shared values as they are."""
    return {key: gather_with_grad(value) if key in PER_SAMPLE else value for key, value in outputs.items()}


def concat_outputs(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The outputs of a step's micro-batches as one batch: rows concatenated, shared values taken once."""
    return {
        key: torch.cat([part[key] for part in parts]) if key in PER_SAMPLE else value for key, value in parts[0].items()
    }


def split_batch(batch: dict[str, torch.Tensor], parts: int) -> list[dict[str, torch.Tensor]]:
    """`parts` equal micro-batches of a local batch, in order."""
    pieces = {key: value.chunk(parts) for key, value in batch.items()}
    return [{key: pieces[key][i] for key in batch} for i in range(parts)]


def rng_states() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None


def set_rng_states(states: tuple) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state_all(states[1])


class GradCache:
    """`forward(micro_batches)` gives the model's outputs for the step's global batch (micro-batch by
    micro-batch, rank order within each); `backward(loss)` back-propagates a loss computed from them.

    One micro-batch: the outputs carry the graph and `backward` is `accelerator.backward`. Several: the
    outputs are leaves computed without a graph, and `backward` runs each micro-batch again with the random
    state of its first pass and back-propagates its slice of the outputs' gradients through the model.

    Args:
        view: which clip view of the batch the model reads ("teacher" or "student").
    """

    def __init__(self, model: nn.Module, view: str, accelerator: Accelerator):
        self.model, self.view, self.accelerator = model, view, accelerator
        self.batches: list[dict[str, torch.Tensor]] = []
        self.states: list[tuple] = []
        self.outputs: dict[str, torch.Tensor] = {}

    def run(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        v = self.view
        return self.model(batch["input_ids"], batch["attention_mask"], batch[f"{v}_video"], batch[f"{v}_mask"])

    def forward(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        self.batches, self.states = batches, []
        if len(batches) == 1:
            return gather_outputs(self.run(batches[0]))
        parts = []
        buffers = [b.clone() for b in self.model.buffers()]  # the replay updates running statistics once
        with torch.no_grad():
            for batch in batches:
                self.states.append(rng_states())
                parts.append(gather_outputs(self.run(batch)))
        for saved, buffer in zip(buffers, self.model.buffers()):
            buffer.copy_(saved)
        self.outputs = {
            key: value.detach().requires_grad_(value.is_floating_point())
            for key, value in concat_outputs(parts).items()
        }
        return self.outputs

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)
        if len(self.batches) == 1:
            return
        world, rank, n = self.accelerator.num_processes, self.accelerator.process_index, len(self.batches)
        after = rng_states()
        for i, (batch, state) in enumerate(zip(self.batches, self.states)):
            rows = len(batch["input_ids"])
            start = (i * world + rank) * rows  # this process's rows of micro-batch i in the global batch
            set_rng_states(state)
            # Gradients are averaged over the processes once, after the last micro-batch.
            with self.accelerator.no_sync(self.model) if i < n - 1 else contextlib.nullcontext():
                tensors, grads = [], []
                for key, value in self.run(batch).items():
                    grad = self.outputs[key].grad
                    if grad is None or not value.requires_grad:
                        continue
                    tensors.append(value)
                    # Per-pair rows: the gradient scaled by the process count as `gather_with_grad` does (DDP
                    # averages it back); a shared value: its gradient spread over the micro-batches.
                    grads.append(grad[start : start + rows] * world if key in PER_SAMPLE else grad / n)
                torch.autograd.backward(tensors, grads)
        set_rng_states(after)
        self.outputs = {}
