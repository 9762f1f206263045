"""An exact, cheaper SegFormer decode head for inference: the 1×1 fusion folded into each stage's projection.

SegFormer's all-MLP head projects each encoder stage to D channels, upsamples all four to 1/4 resolution,
concatenates them (4·D channels) and fuses them with a 1×1 convolution back to D, then BatchNorm, ReLU and
the classifier. Projection, fusion and (in eval mode) BatchNorm are linear maps on the channels, and bilinear
upsampling is a linear map on the positions, so they commute: the head equals

    ReLU( Σ_i upsample(A_i · x_i) + b )    with A_i = s ⊙ (F_i · P_i),  b = s ⊙ (Σ_i F_i · p_i − μ) + β

(F_i: the fusion's block for stage i, P_i / p_i: its projection, s = γ / √(σ² + ε), μ, β: BatchNorm). Each
stage is mapped straight to D channels at its own resolution, and the 4·D-channel tensor at 1/4 resolution —
the largest activation of a B0 forward and the most expensive convolution at high resolution — is never
built. Results equal the original head up to float rounding. Inference only: BatchNorm is folded with its
running statistics.

Both heads upsample in channels-last layout: PyTorch's CPU bilinear kernel is vectorised over channels there, and
on contiguous [B, C, h, w] maps it was several times slower, forward and backward, at B0's 256 channels
(benchmarks/bench_train_step.py). The training head hands BatchNorm a contiguous sum again: torch's CPU BatchNorm
on channels-last input computed its statistics with ~20× the float error (2-process SyncBN and 1-process runs then
drifted apart, tests/test_multi_node.py). The logits leave both heads contiguous.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.models.segformer.modeling_segformer import SegformerDecodeHead


def upsampled(mapped: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """A stage's D-channel map at the head's 1/4 resolution, channels-last (the sum of the stages stays so)."""
    mapped = mapped.contiguous(memory_format=torch.channels_last)
    if mapped.shape[2:] == size:
        return mapped
    return F.interpolate(mapped, size=size, mode="bilinear", align_corners=False)


class FoldedDecodeHead(nn.Module):
    """The eval-mode `SegformerDecodeHead` with fusion and BatchNorm folded into per-stage 1×1 maps."""

    def __init__(self, head: SegformerDecodeHead, as_conv: bool = False):
        super().__init__()
        self.as_conv = as_conv  # 1×1 Conv instead of einsum: the op ONNX Runtime's quantizer makes INT8 (an export)
        if head.training:
            raise ValueError("fold_decode_head needs the model in eval mode (BatchNorm is folded with running stats).")
        bn, fuse = head.batch_norm, head.linear_fuse.weight[:, :, 0, 0].double()  # [D, 4·D]
        dim, stages = fuse.shape[0], len(head.linear_projections)
        scale = (bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps))
        bias = bn.bias.double() - scale * bn.running_mean.double()
        weights = []
        for i, projection in enumerate(head.linear_projections):
            block = fuse[:, (stages - 1 - i) * dim : (stages - i) * dim]  # the concatenation is in reverse order
            weights.append((scale[:, None] * (block @ projection.proj.weight.double())).float())
            bias = bias + scale * (block @ projection.proj.bias.double())
        self.stage_weights = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w in weights)
        self.bias = nn.Parameter(bias.float(), requires_grad=False)
        self.classifier = head.classifier
        self.config = head.config

    def forward(self, encoder_hidden_states: tuple[torch.Tensor, ...], **kwargs) -> torch.Tensor:
        size = encoder_hidden_states[0].shape[2:]
        fused = None
        for hidden, weight in zip(encoder_hidden_states, self.stage_weights):
            weight = weight.to(hidden.dtype)
            mapped = F.conv2d(hidden, weight[:, :, None, None]) if self.as_conv else torch.einsum(
                "oc,bchw->bohw", weight, hidden)
            mapped = upsampled(mapped, size)
            fused = mapped if fused is None else fused + mapped
        logits = self.classifier(torch.relu(fused + self.bias.to(fused.dtype)[None, :, None, None]))
        return logits.contiguous()


class FoldedSegformer(nn.Module):
    """`SegformerForSemanticSegmentation` for inference with a folded head, sharing (not copying or changing) the
    model's encoder: the model itself keeps its head, so it can go on training."""

    def __init__(self, model: nn.Module, as_conv: bool = False):
        super().__init__()
        if not can_fold(model):
            raise ValueError("Head folding expects transformers' SegformerDecodeHead with 4-D stage outputs.")
        self.segformer = model.segformer
        self.decode_head = FoldedDecodeHead(model.decode_head, as_conv).to(next(model.decode_head.parameters()).device)

    def forward(self, pixel_values: torch.Tensor) -> SemanticSegmenterOutput:
        hidden_states = self.segformer(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
        return SemanticSegmenterOutput(logits=self.decode_head(hidden_states))


def can_fold(model: nn.Module) -> bool:
    """Whether `model` is a SegFormer whose head can be folded (stage outputs as 4-D maps, the default)."""
    head = getattr(model, "decode_head", None)
    return (isinstance(head, SegformerDecodeHead) and hasattr(model, "segformer")
            and getattr(head.config, "reshape_last_stage", True) is not False)


def fused_head_forward(self: SegformerDecodeHead, encoder_hidden_states: tuple[torch.Tensor, ...],
                       **kwargs) -> torch.Tensor:
    """`SegformerDecodeHead.forward` reordered for training, with the same parameters and the same result.

    The fusion 1×1 convolution has no bias, so for each stage its block F_i composed with the stage's projection
    (P_i, p_i) is one linear map applied before upsampling: Σ_i up(F_i P_i x_i + F_i p_i) equals the stock
    fuse(concat(up(P_i x_i + p_i))). BatchNorm, ReLU, dropout and the classifier then run on that sum as before,
    in training mode (batch statistics), so gradients reach P_i, p_i and F_i exactly as in the stock head. The
    composed weight is rebuilt at every forward (D × D × C_i multiply-adds, negligible)."""
    size = encoder_hidden_states[0].shape[2:]
    fuse = self.linear_fuse.weight[:, :, 0, 0]
    dim, stages = fuse.shape[0], len(self.linear_projections)
    fused = None
    for i, (hidden, projection) in enumerate(zip(encoder_hidden_states, self.linear_projections)):
        block = fuse[:, (stages - 1 - i) * dim : (stages - i) * dim]  # the stock head concatenates in reverse
        weight, bias = block @ projection.proj.weight, block @ projection.proj.bias
        mapped = upsampled(F.conv2d(hidden, weight[:, :, None, None], bias), size)
        fused = mapped if fused is None else fused + mapped
    return self.classifier(self.dropout(self.activation(self.batch_norm(fused.contiguous()))))


def fuse_decode_head_for_training(model: nn.Module) -> bool:
    """Run the model's decode head in the reordered form above (this instance only: the class, the parameters and
    the saved model are untouched). Returns False, leaving the head as it is, where it cannot be reordered."""
    if not can_fold(model) or model.decode_head.linear_fuse.bias is not None:
        return False
    model.decode_head.forward = fused_head_forward.__get__(model.decode_head)
    return True
