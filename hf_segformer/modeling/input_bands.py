"""A pretrained RGB SegFormer given N input bands: its first patch embedding widened in a stated way.

The first overlapping patch embedding is the only layer that sees the bands. Its pretrained kernel [D, 3, k, k] is
widened to [D, N, k, k]: the RGB filters are kept, each extra band's filter is the mean of the three RGB filters, and
the whole kernel is scaled by 3/N. Every band is normalised to zero mean and unit variance, so a filter bank applied
to N such bands instead of 3 would sum N terms instead of 3; the scale keeps the initial activations at the
pretrained scale, and the extra bands start as "one more grey channel" that fine-tuning then specialises.
"""

from __future__ import annotations

import torch
from torch import nn

from hf_segformer.errors import RecipeError


def widened_kernel(rgb_kernel: torch.Tensor, num_channels: int) -> torch.Tensor:
    """[D, 3, k, k] → [D, N, k, k]: RGB filters kept, extra bands = mean of the RGB filters, all scaled by 3/N."""
    extra = rgb_kernel.mean(dim=1, keepdim=True).expand(-1, num_channels - 3, -1, -1)
    return torch.cat([rgb_kernel, extra], dim=1) * (3.0 / num_channels) if num_channels > 3 else \
        rgb_kernel[:, :num_channels] * (3.0 / num_channels)


def first_patch_embedding(model: nn.Module) -> nn.Module:
    """The first overlapping patch embedding (transformers 5 names it stages.0, 4 encoder.patch_embeddings.0)."""
    segformer = model.segformer
    return segformer.stages[0].patch_embeddings if hasattr(segformer, "stages") else \
        segformer.encoder.patch_embeddings[0]


def widen_patch_embedding(model: nn.Module, num_channels: int, source: str = "model_name_or_path") -> bool:
    """Give a SegFormer built for 3 bands `num_channels` (config.num_channels updated); True when it changed.
    Fewer than three bands keep the first filters, scaled the same way. A checkpoint for another band count is
    one RecipeError."""
    config = model.config
    current = getattr(config, "num_channels", 3)
    if current == num_channels:
        return False
    if current != 3:
        raise RecipeError(f"{source} takes {current} input bands, the data {num_channels}: fine-tune from an RGB "
                          f"checkpoint or one trained on {num_channels} bands.")
    stage = first_patch_embedding(model)
    projection: nn.Conv2d = stage.proj
    widened = nn.Conv2d(num_channels, projection.out_channels, projection.kernel_size, projection.stride,
                        projection.padding, bias=projection.bias is not None).to(projection.weight.device,
                                                                                   projection.weight.dtype)
    with torch.no_grad():
        widened.weight.copy_(widened_kernel(projection.weight, num_channels))
        if projection.bias is not None:
            widened.bias.copy_(projection.bias)
    stage.proj = widened
    config.num_channels = num_channels
    return True
