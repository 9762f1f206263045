"""Tiny SegFormers (milliseconds per image) built from config, and saved as training saves them."""

from __future__ import annotations

from pathlib import Path


def build_tiny_segformer(id2label: dict[int, str], seed: int = 0):
    """A from-config SegFormer with four one-block stages of width 8..32 (seeded random weights, eval mode):
    milliseconds per 32×32 image, yet spatially varied predictions."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(seed)
    config = SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 1],
                             decoder_hidden_size=16, num_labels=len(id2label), id2label=dict(id2label),
                             label2id={name: i for i, name in id2label.items()}, semantic_loss_ignore_index=255)
    return SegformerForSemanticSegmentation(config).eval()


TINY_ID2LABEL = {0: "sky", 1: "road", 2: "car"}


def save_tiny_model(folder: Path, id2label: dict[int, str] = TINY_ID2LABEL, eval_size: int = 64, seed: int = 0) -> Path:
    """A tiny SegFormer saved with its image processor as training saves it; for module-scoped fixtures (the
    ONNX and INT8 tests export once per file)."""
    from hf_segformer.modeling.build import build_image_processor

    build_tiny_segformer(id2label, seed).save_pretrained(folder)
    build_image_processor(eval_size).save_pretrained(folder)
    return folder


def save_tiny_band_model(folder: Path, num_channels: int = 4, id2label: dict[int, str] = TINY_ID2LABEL,
                         eval_size: int = 32, mean: float = 1000.0, std: float = 500.0, seed: int = 0,
                         display_bands: list[int] | None = None) -> Path:
    """A tiny SegFormer widened to `num_channels` input bands, saved as a band-stack run saves it (its processor
    holding num_channels, display_bands and per-band mean/std in the data's units): what `Segmenter` reads
    .npy/TIFF stacks with."""
    from hf_segformer.modeling.build import build_image_processor
    from hf_segformer.modeling.input_bands import widen_patch_embedding

    model = build_tiny_segformer(id2label, seed)
    widen_patch_embedding(model, num_channels)
    model.save_pretrained(folder)
    build_image_processor(eval_size, image_mean=[mean] * num_channels, image_std=[std] * num_channels,
                          num_channels=num_channels, display_bands=display_bands).save_pretrained(folder)
    return folder
