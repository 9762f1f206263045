"""The recipe's model fields (`ModelArguments`): which SegFormer to fine-tune and how it is set up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hf_segformer.config.values import load_mapping_text
from hf_segformer.errors import RecipeError

# PEFT's semantic-segmentation guide: rank and scale 32 on the attention's query and value projections, the decode
# head (new classes) trained in full.
LORA_DEFAULTS: dict[str, Any] = {"r": 32, "alpha": 32, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"],
                                 "modules_to_save": ["decode_head"]}
# transformers 4 named the attention projections query/key/value (PEFT's guide uses those names); 5 renamed them.
LEGACY_ATTENTION_NAMES = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


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
        metadata={"help": "Hub Space (namespace/name) serving this model's demo (`hf-segformer demo --export_space`); "
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
                          "float rounding, same saved model; a faster step (benchmarks/README.md)."},
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
    lora: str | None = field(
        default=None,
        metadata={"help": "Train LoRA adapters (peft) instead of every weight: a mapping {r, alpha, dropout, "
                          "target_modules, modules_to_save} (defaults r 32, alpha 32, dropout 0.1, target_modules "
                          "[query, value], modules_to_save [decode_head]), or true for the defaults. The run saves "
                          "the adapter; `hf-segformer merge-lora` makes a plain SegFormer folder of it. Needs "
                          "model_name_or_path (`pip install hf-segformer[lora]`)."},
    )

    def __post_init__(self) -> None:
        if self.lora is not None:
            self.lora = check_lora(self.lora)
            if self.lora is not None and not self.model_name_or_path:
                raise RecipeError("lora: needs model_name_or_path (a pretrained SegFormer or a trained run's "
                                  "folder): adapters on randomly initialised weights learn almost nothing. Set "
                                  "model_name_or_path, or remove lora.")


def check_lora(value: Any) -> dict[str, Any] | None:
    """The `lora` field read into a complete mapping (defaults filled in); None where it is off (false/none).
    One error naming the key and what it takes."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none", "null", "false", "off"):
            return None
        if text.lower() in ("true", "on", "yes"):
            value = True
        else:
            try:
                value = load_mapping_text(text)
            except ValueError:
                raise RecipeError(f"lora must be a mapping such as {{r: 16, alpha: 16}} or true; got '{text}'.") from None
    if value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise RecipeError(f"lora must be a mapping such as {{r: 16, alpha: 16}} or true; got {value!r}.")
    unknown = sorted(set(map(str, value)) - set(LORA_DEFAULTS))
    if unknown:
        raise RecipeError(f"lora: unknown key(s) {', '.join(unknown)}; it takes {', '.join(LORA_DEFAULTS)}.")
    settings = {**LORA_DEFAULTS, **value}
    r, alpha, dropout = settings["r"], settings["alpha"], settings["dropout"]
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise RecipeError(f"lora.r must be a whole number ≥ 1 (the adapters' rank, e.g. 8, 16, 32); got {r!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise RecipeError(f"lora.alpha must be a number > 0 (the adapters' scale is alpha / r); got {alpha!r}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise RecipeError(f"lora.dropout must be a number in [0, 1); got {dropout!r}.")
    for key in ("target_modules", "modules_to_save"):
        names = settings[key]
        names = [names] if isinstance(names, str) else names
        if (not isinstance(names, list) or not all(isinstance(name, str) and name for name in names)
                or (key == "target_modules" and not names)):
            what = "a non-empty list of module names such as [query, value]" if key == "target_modules" else (
                "a list of module names trained in full, such as [decode_head], or []")
            raise RecipeError(f"lora.{key} must be {what}; got {settings[key]!r}.")
        settings[key] = [LEGACY_ATTENTION_NAMES.get(name, name) for name in names] if key == "target_modules" \
            else list(names)
    settings["alpha"] = float(alpha) if isinstance(alpha, float) else alpha
    settings["dropout"] = float(dropout)
    return settings
