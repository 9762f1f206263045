"""The recipe's model fields (`ModelArguments`): which SegFormer to fine-tune and how it is set up."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelArguments:
    """Which SegFormer to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or local folder (e.g. nvidia/mit-b0). Unset: build `model_variant` from config."},
    )
    model_variant: str = field(
        default="b0", metadata={"help": "MiT variant b0..b5 built from config with random weights (offline)."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Allow a checkpoint whose head has another number of classes."}
    )
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    model_license: str | None = field(
        default=None,
        metadata={"help": "Hub licence id for the model card. Unset: NVIDIA's SegFormer licence (non-commercial) when "
                          "fine-tuning nvidia/mit-* or nvidia/segformer-* weights, otherwise none declared."},
    )
    hub_space_id: str | None = field(
        default=None,
        metadata={"help": "Hub Space (namespace/name) serving this model's demo (`hf-segformer demo --export-space`); "
                          "the model card written by push_to_hub links to it."},
    )
    token_merging: str | None = field(
        default=None,
        metadata={"help": "Token merging in the encoder's attention (SegFormer++): hq, fast, 2x2, none, or one "
                          "{query, query_ratio, query_stride, kv, kv_ratio, kv_stride, proportional_attention} "
                          "mapping per stage. Applies to a loaded model without retraining; see benchmarks/README.md."},
    )
    fuse_decode_head: bool = field(
        default=True,
        metadata={"help": "Train the decode head in its exact reordered form: each stage's projection and its slice "
                          "of the 1×1 fusion applied as one map before upsampling, summed, then BatchNorm (the "
                          "4·D-channel tensor at 1/4 resolution is never built). Same logits and gradients up to "
                          "float rounding, same saved model; a faster step (README, \"Measured\")."},
    )
    channels_last: bool = field(
        default=False,
        metadata={"help": "Train with channels-last memory format (often faster on GPUs with tensor cores)."},
    )
    drop_path_rate: float | None = field(
        default=None, metadata={"help": "Stochastic depth in the encoder (config default 0.1, as MMSegmentation)."}
    )
    classifier_dropout_prob: float | None = field(
        default=None, metadata={"help": "Dropout before the decode head's classifier (config default 0.1)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads are stored."})
