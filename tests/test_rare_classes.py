"""Rare-class sampling: P(c) ∝ exp((1 − f_c)/T), then an image with c; seeded; presence from the data check."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from hf_segformer.data.rare_classes import RareClassSampler, class_probabilities
from hf_segformer.errors import RecipeError


def test_probabilities_by_hand():
    p = class_probabilities([90, 10], temperature=0.1)  # f = 0.9, 0.1 → exp(1), exp(9)
    assert p[1] == pytest.approx(math.exp(9) / (math.exp(1) + math.exp(9)))
    assert class_probabilities([90, 0, 10], 0.1)[1] == 0.0  # a class no image has is never drawn


def test_sampler_draws_images_of_the_rare_class_and_is_seeded():
    image_classes = [[0], [0], [0], [0, 1]]
    sampler = RareClassSampler(image_classes, [990, 10], temperature=0.01, seed=3, num_samples=200)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 200
    assert drawn.count(3) > 190  # P(class 1) = 1 / (1 + exp(-98)): nearly every draw is the rare class's image
    assert list(RareClassSampler(image_classes, [990, 10], 0.01, seed=3, num_samples=200)) == drawn  # every process
    balanced = RareClassSampler(image_classes, [500, 500], temperature=1.0, seed=3, num_samples=400)
    counts = np.bincount(list(balanced), minlength=4)
    # P(c) = 1/2 each; class 0 spreads over all four images, class 1 only image 3: 1/8, 1/8, 1/8, 5/8.
    assert counts[3] == pytest.approx(400 * 5 / 8, abs=40)
    first_epoch = list(balanced)
    balanced.set_epoch(1)
    assert list(balanced) != first_epoch  # a new order each epoch, the same on every process


def test_presence_is_saved_and_the_run_trains(tmp_path, train_tiny, caplog):
    caplog.set_level("INFO", logger="hf_segformer")
    train_tiny(tmp_path, "--check_data", "true", "--rare_class_sampling", "true", "--max_steps", "2",
               "--eval_strategy", "no")
    assert "Rare-class sampling (T=0.01)" in caplog.text
    presence = json.loads((tmp_path / "run" / "class_presence.json").read_text())["train"]
    masks = sorted((tmp_path / "data" / "masks" / "train").glob("*.png"))
    assert len(presence) == len(masks) == 8
    for classes, mask in zip(presence, masks):
        values = np.unique(np.asarray(Image.open(mask)))
        assert classes == [int(v) for v in values if v != 255]


def test_rare_class_sampling_needs_the_data_check(tmp_path, train_tiny):
    with pytest.raises(RecipeError, match="check_data"):
        train_tiny(tmp_path, "--rare_class_sampling", "true")


def test_rare_class_crop_is_centred_on_the_rare_pixels():
    from hf_segformer.data.labels import LabelDecoder
    from hf_segformer.data.transforms import TrainTransform

    values = np.zeros((64, 64), dtype=np.uint8)
    values[40:48, 8:16] = 1  # one 8×8 patch of the rare class in a 64×64 mask
    mask, image = Image.fromarray(values), Image.new("RGB", (64, 64))
    common = dict(crop_size=16, scale=(64, 64), ratio_range=(1.0, 1.0), cat_max_ratio=1.0, hflip_prob=0.0,
                  photometric=False)
    biased = TrainTransform(LabelDecoder(ignore_index=255), rare_class_crop_prob=1.0, rare_classes=(1, 0), **common)
    plain = TrainTransform(LabelDecoder(ignore_index=255), **common)
    assert all((biased.transform(image, mask)[1] == 1).any() for _ in range(20))
    # A uniform 16×16 crop of this mask meets the patch with probability (8+15)² / 49² ≈ 0.22.
    hits = sum(bool((plain.transform(image, mask)[1] == 1).any()) for _ in range(200))
    assert hits < 100
