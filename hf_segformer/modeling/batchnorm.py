"""BatchNorm over the global batch under DDP, on GPUs and on CPU processes alike.

SegFormer's only BatchNorm is in the decode head (after the fusing 1×1 convolution). Under DDP each process
normalises its own per-device batch, so 8 GPUs × batch 2 train with statistics of 2 images; MMSegmentation's
SegFormer configs use SyncBN. torch's `SyncBatchNorm` only runs on GPUs; `AllReduceBatchNorm2d` does the same
with differentiable all-reduces (gloo on CPU), which is also what lets a 2-process CPU run train exactly like
one process with the whole batch.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce

logger = logging.getLogger(__name__)


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are the mean and variance over every process's batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        # One all-reduce of [count, Σx, Σx²] per channel; all_reduce from torch.distributed.nn carries the
        # gradient back through the other processes, as SyncBatchNorm's backward does.
        x32 = x.float()
        count = torch.full((1, x.shape[1]), float(x.numel() // x.shape[1]), device=x.device)
        stats = all_reduce(torch.cat([count, x32.sum(dim=(0, 2, 3))[None], (x32 * x32).sum(dim=(0, 2, 3))[None]]))
        total = stats[0]
        mean = stats[1] / total
        var = (stats[2] / total - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * total / (total - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        scale = torch.rsqrt(var + self.eps)
        weight = scale if self.weight is None else scale * self.weight
        shift = -mean * weight if self.bias is None else self.bias - mean * weight
        return (x32 * weight[None, :, None, None] + shift[None, :, None, None]).to(x.dtype)


def convert_sync_batchnorm(model: nn.Module, on_gpu: bool) -> nn.Module:
    """Every BatchNorm2d of `model` → torch's SyncBatchNorm (GPUs) or `AllReduceBatchNorm2d` (CPU), weights kept."""
    if on_gpu:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = AllReduceBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                          child.track_running_stats)
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced.to(next(child.buffers()).device))
        else:
            convert_sync_batchnorm(child, on_gpu=False)
    return model
