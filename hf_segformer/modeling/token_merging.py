"""Token merging inside SegFormer's efficient self-attention, switchable on a loaded model (SegFormer++).

SegFormer++ (Kienzle et al., MIPR 2024) cuts the attention cost at high resolution without retraining by
attending with fewer tokens: keys/values and/or queries are merged by bipartite soft matching (ToMe, Bolya
et al. 2023, with destinations on a fixed 2-D grid as ToMe for Stable Diffusion) or pooled on a grid, and merged
queries are copied back to every position they stand for after the attention. Only the attention sees fewer
tokens; the Mix-FFN, the residual stream and the decode head keep the full resolution.

`apply_token_merging(model, "hq")` replaces the `forward` of every `SegformerAttention` of the stages that merge
(the class's own forward stays untouched) and `remove_token_merging(model)` restores it. No weights change, so
the model saves, loads and trains as before; the matching is deterministic (no random destinations), so
gradient checkpointing recomputes the same merge.
"""

from __future__ import annotations

import functools
import json
import math
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.segformer.modeling_segformer import (
    SegformerAttention,
    SegformerStage,
    eager_attention_forward,
)

from hf_segformer.errors import RecipeError

MODES = ("none", "bsm", "pool")
# What the replacement forward uses of transformers' SegformerAttention (checked before patching).
_ATTENTION_ATTRIBUTES = ("q_proj", "k_proj", "v_proj", "o_proj", "sequence_reduction_ratio", "num_attention_heads",
                         "head_dim", "scaling", "attention_dropout", "config")
_STATE = "_token_merging"  # attribute of a patched attention module: its StageMerging
_PREVIOUS_FORWARD = "_forward_before_token_merging"


@dataclass(frozen=True)
class StageMerging:
    """How the attention of one encoder stage reduces its queries and its keys/values.

    Modes: "none"; "bsm" (bipartite soft matching: one destination token per `stride` cell, the `ratio`
    fraction of the stage's tokens that best match a destination are merged into it, capped at the number of
    non-destination tokens); "pool" (mean of each `stride` cell; `ratio` unused). Keys/values are reduced after
    SegFormer's own sequence reduction; queries are restored to full length after the attention (merged
    positions get their destination's result, pooled cells are upsampled by nearest neighbour).
    `proportional_attention` adds log(tokens merged) to the attention logits of merged keys (ToMe), so that a
    key standing for k tokens weighs as k keys; off in the published presets.
    """

    query: str = "none"
    query_ratio: float = 0.0
    query_stride: tuple[int, int] = (2, 2)
    kv: str = "none"
    kv_ratio: float = 0.0
    kv_stride: tuple[int, int] = (2, 2)
    proportional_attention: bool = False

    def __post_init__(self) -> None:
        for role in ("query", "kv"):
            mode, ratio = getattr(self, role), getattr(self, f"{role}_ratio")
            if mode not in MODES:
                raise RecipeError(f"token_merging: unknown {role} mode {mode!r}; use one of {', '.join(MODES)}.")
            if not 0.0 <= float(ratio) <= 1.0:
                raise RecipeError(f"token_merging: {role}_ratio must be in [0, 1]; got {ratio}.")
            if mode != "bsm" and ratio:
                raise RecipeError(f"token_merging: {role}_ratio={ratio} needs {role}: bsm ({role} is {mode!r}; "
                                  "pooling takes only a stride).")
            object.__setattr__(self, f"{role}_stride", _stride_pair(getattr(self, f"{role}_stride"), role))

    @property
    def active(self) -> bool:
        return self.query != "none" or self.kv != "none"


def _stride_pair(stride: int | Sequence[int], role: str) -> tuple[int, int]:
    pair = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if len(pair) != 2 or not all(isinstance(s, int) and s >= 1 for s in pair):
        raise RecipeError(f"token_merging: {role}_stride must be a positive integer or [rows, columns]; "
                          f"got {stride!r}.")
    return pair


def _merge_kv(ratio: float, stride: int) -> StageMerging:
    return StageMerging(kv="bsm", kv_ratio=ratio, kv_stride=(stride, stride))


def _merge_queries(ratio: float, stride: int) -> StageMerging:
    return StageMerging(query="bsm", query_ratio=ratio, query_stride=(stride, stride))


# SegFormer++'s settings, one entry per encoder stage (the paper's table for MiT-B5 on Cityscapes).
PRESETS: dict[str, tuple[StageMerging, ...]] = {
    "none": (StageMerging(),) * 4,
    "hq": (_merge_kv(0.6, 2), _merge_kv(0.6, 2), _merge_queries(0.8, 4), _merge_queries(0.8, 4)),
    "fast": (_merge_kv(0.9, 4), _merge_kv(0.9, 4), _merge_queries(0.9, 4), _merge_queries(0.9, 4)),
    "2x2": (StageMerging(query="pool", query_stride=(2, 2)),) * 4,
}

TokenMergingSpec = str | Sequence[StageMerging | Mapping]


def resolve_token_merging(spec: TokenMergingSpec | None, num_stages: int = 4) -> tuple[StageMerging, ...]:
    """A preset name, a JSON list, or one StageMerging / mapping per stage → one StageMerging per stage."""
    if spec is None:
        spec = "none"
    if isinstance(spec, str) and not spec.lstrip().startswith("["):
        key = spec.strip().lower()
        if key not in PRESETS:
            raise RecipeError(f"token_merging: unknown preset {spec!r}; use one of {', '.join(PRESETS)} "
                              "or a list with one {query, kv, ...} mapping per encoder stage.")
        stages = PRESETS[key]
    else:
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as err:
                raise RecipeError(f"token_merging: {spec!r} is neither a preset nor a JSON list ({err}).") from err
        stages = tuple(_stage_from(entry) for entry in spec)
    if len(stages) != num_stages:
        raise RecipeError(f"token_merging: the model has {num_stages} encoder stages but {len(stages)} stage "
                          "settings were given; give one per stage.")
    return stages


def _stage_from(entry: StageMerging | Mapping) -> StageMerging:
    if isinstance(entry, StageMerging):
        return entry
    if not isinstance(entry, Mapping):
        raise RecipeError(f"token_merging: each stage is a mapping such as {{kv: bsm, kv_ratio: 0.6}}; got {entry!r}.")
    known = {f.name for f in fields(StageMerging)}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise RecipeError(f"token_merging: unknown stage key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}.")
    return StageMerging(**entry)


# ---------------------------------------------------------------------------------------------------------------
# Bipartite soft matching on a 2-D token grid
# ---------------------------------------------------------------------------------------------------------------

def _gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b, i]] for (B, N, C) tokens and (B, M) positions."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@functools.lru_cache(maxsize=64)
def grid_split(height: int, width: int, stride: tuple[int, int], device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the destination tokens (the top-left token of every stride cell, partial border cells
    included, so that with odd sizes every token has a destination nearby) and of the source tokens (the rest).
    Cached (every block of a stage asks for the same grid), hence made as normal tensors even under inference
    mode: a later training forward saves them for backward."""
    with torch.inference_mode(False):
        is_destination = torch.zeros(height, width, dtype=torch.bool, device=device)
        is_destination[:: stride[0], :: stride[1]] = True
        is_destination = is_destination.flatten()
        return is_destination.nonzero().squeeze(1), (~is_destination).nonzero().squeeze(1)


@dataclass
class Matching:
    """Which tokens of a (B, N, C) sequence merge into which: the result of `bipartite_soft_matching`.

    The merged sequence is [the K unmerged source tokens, the D destination tokens], K + D = N - r.
    """

    kept: torch.Tensor  # (B, K) positions of the source tokens left alone
    moved: torch.Tensor  # (B, r) positions of the source tokens merged away
    into: torch.Tensor  # (B, r) destination (0..D-1) each moved token joins
    destinations: torch.Tensor  # (D,) positions of the destination tokens

    @property
    def num_tokens(self) -> int:
        return self.kept.shape[1] + self.moved.shape[1] + self.destinations.numel()

    def destination_sizes(self) -> torch.Tensor:
        """(B, D) how many original tokens each destination stands for after the merge."""
        counts = torch.ones(self.kept.shape[0], self.destinations.numel(), device=self.into.device)
        return counts.scatter_add_(1, self.into, torch.ones(self.into.shape, device=self.into.device))

    def sizes(self) -> torch.Tensor:
        """(B, N - r) how many original tokens each merged-sequence token stands for."""
        return torch.cat([torch.ones(self.kept.shape, device=self.kept.device), self.destination_sizes()], dim=1)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) → (B, N - r, C); each destination becomes the size-weighted mean of itself and the tokens
        merged into it (every input token has size 1: merging starts afresh in each attention)."""
        destinations = x.index_select(1, self.destinations)
        index = self.into.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        sums = destinations.scatter_add(1, index, _gather_tokens(x, self.moved))
        counts = self.destination_sizes().unsqueeze(-1).to(sums.dtype)
        return torch.cat([_gather_tokens(x, self.kept), sums / counts], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, N - r, C) → (B, N, C): every original position takes the row of the token it was merged into."""
        batch, num_kept = self.kept.shape
        source = torch.empty(batch, self.num_tokens, dtype=torch.long, device=y.device)
        source.scatter_(1, self.kept, torch.arange(num_kept, device=y.device).expand(batch, -1))
        source[:, self.destinations] = num_kept + torch.arange(self.destinations.numel(), device=y.device)
        source.scatter_(1, self.moved, num_kept + self.into)
        return _gather_tokens(y, source)


def bipartite_soft_matching(metric: torch.Tensor, height: int, width: int, ratio: float,
                            stride: tuple[int, int]) -> Matching | None:
    """Match (B, H·W, C) tokens for merging, or None when there is nothing to merge.

    Destinations: one per stride cell (`grid_split`); every other token is a source and is matched to
    its most similar destination by cosine similarity of `metric`; the int(ratio · H·W) sources with the most
    similar matches (at most all of them) are merged. Indices only: no gradient flows through the choice.
    """
    batch, num_tokens, _ = metric.shape
    if num_tokens != height * width:
        raise ValueError(f"{num_tokens} tokens do not form a {height}×{width} grid.")
    destinations, sources = grid_split(height, width, stride, metric.device)
    num_merged = min(math.floor(ratio * num_tokens + 1e-9), sources.numel())
    if num_merged <= 0:
        return None
    with torch.no_grad():
        unit = F.normalize(metric, dim=-1)
        similarity = unit.index_select(1, sources) @ unit.index_select(1, destinations).transpose(1, 2)
        best, best_destination = similarity.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
    moved = order[:, :num_merged]
    return Matching(kept=sources[order[:, num_merged:]], moved=sources[moved],
                    into=best_destination.gather(1, moved), destinations=destinations)


# ---------------------------------------------------------------------------------------------------------------
# Grid pooling
# ---------------------------------------------------------------------------------------------------------------

def pool_tokens(x: torch.Tensor, height: int, width: int, stride: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
    """(B, H·W, C) → (B, h·w, C) means of stride cells (partial border cells average what they hold)."""
    batch, _, channels = x.shape
    grid = x.transpose(1, 2).reshape(batch, channels, height, width)
    pooled = F.avg_pool2d(grid, kernel_size=stride, stride=stride, ceil_mode=True)
    return pooled.flatten(2).transpose(1, 2), pooled.shape[2], pooled.shape[3]


def unpool_tokens(y: torch.Tensor, pooled_hw: tuple[int, int], height: int, width: int,
                  stride: tuple[int, int]) -> torch.Tensor:
    """Inverse of `pool_tokens` by nearest upsampling: every position takes its cell's row."""
    batch, _, channels = y.shape
    grid = y.transpose(1, 2).reshape(batch, channels, *pooled_hw)
    grid = grid.repeat_interleave(stride[0], dim=2).repeat_interleave(stride[1], dim=3)[:, :, :height, :width]
    return grid.flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------
# The attention forward with merging
# ---------------------------------------------------------------------------------------------------------------

def _reduce(tokens: torch.Tensor, height: int, width: int, mode: str, ratio: float, stride: tuple[int, int]
            ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None, Matching | None]:
    """Fewer tokens, the function restoring full length (None: nothing reduced) and the matching (for sizes)."""
    if mode == "bsm":
        matching = bipartite_soft_matching(tokens, height, width, ratio, stride)
        if matching is None:
            return tokens, None, None
        return matching.merge(tokens), matching.unmerge, matching
    if mode == "pool" and stride != (1, 1):
        pooled, pooled_h, pooled_w = pool_tokens(tokens, height, width, stride)
        return pooled, lambda y: unpool_tokens(y, (pooled_h, pooled_w), height, width, stride), None
    return tokens, None, None


def _merging_attention_forward(self: SegformerAttention, hidden_states: torch.Tensor, height: int, width: int,
                               attention_mask: torch.Tensor | None = None,
                               **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SegformerAttention.forward with reduced queries and/or keys/values (same operations when nothing merges,
    so that ratio 0 reproduces the unmerged model bit for bit)."""
    stage: StageMerging = getattr(self, _STATE)
    batch = hidden_states.shape[0]
    queries, restore_queries, _ = _reduce(hidden_states, height, width, stage.query, stage.query_ratio,
                                          stage.query_stride)
    kv_tokens, kv_height, kv_width = hidden_states, height, width
    if self.sequence_reduction_ratio > 1:
        kv_tokens = self.sequence_reduction(hidden_states, height, width)
        kv_height, kv_width = height // self.sequence_reduction_ratio, width // self.sequence_reduction_ratio
    kv_tokens, _, kv_matching = _reduce(kv_tokens, kv_height, kv_width, stage.kv, stage.kv_ratio, stage.kv_stride)

    query_states = self.q_proj(queries).view(batch, queries.shape[1], -1, self.head_dim).transpose(1, 2)
    kv_shape = (batch, kv_tokens.shape[1], -1, self.head_dim)
    key_states = self.k_proj(kv_tokens).view(kv_shape).transpose(1, 2)
    value_states = self.v_proj(kv_tokens).view(kv_shape).transpose(1, 2)
    if stage.proportional_attention and kv_matching is not None:
        size_bias = kv_matching.sizes().log()[:, None, None, :].to(query_states.dtype)
        attention_mask = size_bias if attention_mask is None else attention_mask + size_bias

    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, eager_attention_forward)
    attn_output, attn_weights = attention_interface(
        self, query_states, key_states, value_states, attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout, scaling=self.scaling, **kwargs)
    attn_output = self.o_proj(attn_output.reshape(batch, queries.shape[1], -1).contiguous())
    if restore_queries is not None:  # o_proj acts per token: restoring after it is the same and cheaper
        attn_output = restore_queries(attn_output)
    return attn_output, attn_weights


# ---------------------------------------------------------------------------------------------------------------
# Switching it on and off
# ---------------------------------------------------------------------------------------------------------------

def encoder_stages(model: nn.Module) -> list[SegformerStage]:
    """The encoder stages of a SegFormer model (segmentation, classification or bare encoder), in order."""
    stages = [module for module in model.modules() if isinstance(module, SegformerStage)]
    if not stages:
        raise RecipeError(f"token_merging needs a transformers SegFormer model; {type(model).__name__} has no "
                          "SegformerStage.")
    return stages


def apply_token_merging(model: nn.Module, spec: TokenMergingSpec | None) -> tuple[StageMerging, ...]:
    """Switch token merging on (or change it) in place: a preset ("hq", "fast", "2x2", "none") or one
    StageMerging / mapping per encoder stage. Returns the per-stage settings in effect. Apply it before
    wrapping the model (DDP, torch.compile)."""
    stages = encoder_stages(model)
    settings = resolve_token_merging(spec, len(stages))
    remove_token_merging(model)
    patches = [(block.attention, setting) for stage, setting in zip(stages, settings) if setting.active
               for block in stage.blocks]
    for attention, _ in patches:
        missing = [name for name in _ATTENTION_ATTRIBUTES if not hasattr(attention, name)]
        if missing:
            raise RecipeError(f"token_merging does not know this transformers version's SegFormer attention "
                              f"({type(attention).__name__} lacks {', '.join(missing)}); use transformers 5.")
    for attention, setting in patches:
        setattr(attention, _PREVIOUS_FORWARD, attention.__dict__.get("forward"))
        setattr(attention, _STATE, setting)
        attention.forward = types.MethodType(_merging_attention_forward, attention)
    return settings


def remove_token_merging(model: nn.Module) -> None:
    """Restore every patched attention's forward (a no-op on a model without token merging)."""
    for module in model.modules():
        if _STATE not in module.__dict__:
            continue
        previous = module.__dict__.pop(_PREVIOUS_FORWARD)
        del module.__dict__[_STATE]
        if previous is None:
            del module.__dict__["forward"]
        else:
            module.forward = previous


def has_token_merging(model: nn.Module) -> bool:
    """Whether any attention of `model` runs with token merging."""
    return any(_STATE in module.__dict__ for module in model.modules())
