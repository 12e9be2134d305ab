"""Gathering a batch's embeddings from every process, with gradients, for losses over the global batch.

How the gradients come out equal to one process holding the whole batch: every process computes the
same loss over the gathered global batch. The backward of the gather sums the gradient that every process
computed for a slice and hands the sum to the process that owns it: `world_size` times the one-process
gradient of that slice. DDP then averages the parameter gradients over the processes, which divides the
factor back out. Parameters used after the gather (the logit scale, the loss's projections) see the whole
batch on every process, get the one-process gradient everywhere, and the average leaves it unchanged.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        ctx.rows = len(local)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # The adjoint of all_gather is reduce_scatter; all_reduce then slice also works on gloo.
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(local: torch.Tensor) -> torch.Tensor:
    """Concatenates `local [n, ...]` of every process in rank order: `[world_size * n, ...]`.

    Every process must pass the same shape (the training loader splits a global batch evenly). Gradients
    reach each process's own rows, summed over the processes; without a process group it is the identity.
    """
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return local
    return _GatherWithGrad.apply(local)
