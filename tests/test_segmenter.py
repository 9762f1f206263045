"""`Segmenter`: masks at each image's own size, identical to `pipeline("image-segmentation")` in whole mode;
sliding windows averaged where they overlap, in batches no larger than the cap; test-time augmentation;
any image mode; saved models load with transformers' own classes; a config without class names."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from hf_segformer.errors import RecipeError
from hf_segformer.inference.segmenter import InferenceSettings, Segmenter, window_starts
from hf_segformer.logits import upsample_logits

ID2LABEL = {0: "background", 1: "road", 2: "car"}
SIZES = [(48, 32), (32, 32), (70, 41), (20, 90)]  # (width, height)


def noise(size: tuple[int, int], seed: int = 0, mode: str = "RGB") -> Image.Image:
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode)


def pipeline_mask(segments: list[dict], size: tuple[int, int], label2id: dict[str, int]) -> np.ndarray:
    """The pipeline's per-class PIL masks put back together as one class-id map."""
    mask = np.full((size[1], size[0]), -1)
    for segment in segments:
        mask[np.asarray(segment["mask"]) > 0] = label2id[segment["label"]]
    return mask


def test_saved_model_works_with_pipeline_and_auto_classes_and_masks_match_exactly(saved_model):
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

    folder = saved_model(ID2LABEL)
    auto = AutoModelForSemanticSegmentation.from_pretrained(folder)
    assert type(auto).__name__ == "SegformerForSemanticSegmentation" and auto.config.id2label == ID2LABEL
    assert AutoImageProcessor.from_pretrained(folder).size["height"] == 32

    images = [noise(size, seed) for seed, size in enumerate(SIZES)]
    images += [images[0].convert("L"), images[1].convert("RGBA")]  # the pipeline converts both to RGB too
    segmenter = Segmenter.from_pretrained(folder)
    ours = segmenter(images, batch_size=4)
    # The same batches on both sides: batched matrix products may round differently from one image at a time.
    theirs = pipeline("image-segmentation", model=str(folder))(images, batch_size=4)
    label2id = {name: i for i, name in ID2LABEL.items()}
    for image, mask, segments in zip(images, ours, theirs):
        assert mask.shape == (image.height, image.width)
        np.testing.assert_array_equal(mask, pipeline_mask(segments, image.size, label2id))
    assert any(len(np.unique(mask)) > 1 for mask in ours), "test premise: masks with several classes"


def test_config_without_class_names_falls_back_to_numbered_classes_with_a_warning(tiny_segformer, caplog):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = tiny_segformer(ID2LABEL).config.to_dict()
    for key in ("id2label", "label2id"):
        config.pop(key)
    model = SegformerForSemanticSegmentation(SegformerConfig(**config, num_labels=3))
    with caplog.at_level(logging.WARNING, logger="hf_segformer"):
        segmenter = Segmenter(model, device="cpu")
    assert segmenter.id2label == {0: "class_0", 1: "class_1", 2: "class_2"}  # as training names them
    assert "no class names" in caplog.text
    assert segmenter(noise((32, 32))).shape == (32, 32)


def test_other_image_modes_are_converted_and_said_once_per_mode(saved_model, caplog):
    segmenter = Segmenter.from_pretrained(saved_model(ID2LABEL))
    grey = np.random.default_rng(1).integers(0, 256, (40, 36), dtype=np.uint8)
    sixteen_bit = Image.fromarray((grey.astype(np.uint16) * 257))  # 16-bit PNG content: scaled back to 8 bits
    palette = Image.fromarray(grey, "L").convert("P")
    with caplog.at_level(logging.WARNING, logger="hf_segformer"):
        masks = segmenter([Image.fromarray(grey, "L"), sixteen_bit, Image.fromarray(grey, "L"), palette,
                           np.dstack([grey] * 3 + [grey])])  # an RGBA array
    assert [m.shape for m in masks] == [(40, 36)] * 5
    np.testing.assert_array_equal(masks[1], masks[0])  # the 16-bit image is the same picture
    converted = [r for r in caplog.records if "converted to 8-bit RGB" in r.getMessage()]
    assert sorted(r.args[1] for r in converted) == sorted({"I;16", "L", "P", "RGBA"})  # once per mode


@pytest.mark.parametrize("length, crop, stride", [(100, 32, 20), (32, 32, 20), (96, 32, 32), (33, 32, 1)])
def test_windows_cover_the_image_and_stay_inside(length, crop, stride):
    starts = window_starts(length, crop, stride)
    covered = np.zeros(length, dtype=bool)
    for start in starts:
        assert 0 <= start <= length - crop
        covered[start : start + crop] = True
    assert covered.all() and starts[-1] == length - crop
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))


def test_slide_averages_overlapping_windows(saved_model):
    """Image 32×56, windows 32×32 at x = 0 and 24: columns 24..31 get the mean of both windows' logits."""
    folder = saved_model(ID2LABEL)
    segmenter = Segmenter.from_pretrained(folder, InferenceSettings(mode="slide", slide_crop=[32], slide_stride=[24]))
    image = noise((56, 32), seed=3)
    slide = next(segmenter.logits([image]))

    native = Segmenter.from_pretrained(folder, InferenceSettings(scale=[32, 32]))  # a 32×32 crop at its own size
    left, right = (upsample_logits(next(native.logits([image.crop(box)]))[None], (32, 32))[0]
                   for box in ((0, 0, 32, 32), (24, 0, 56, 32)))
    assert slide.shape == (3, 32, 56)
    torch.testing.assert_close(slide[..., :24], left[..., :24])
    torch.testing.assert_close(slide[..., 24:32], (left[..., 24:] + right[..., :8]) / 2)
    torch.testing.assert_close(slide[..., 32:], right[..., 8:])


def test_slide_windows_go_through_the_model_in_batches_no_larger_than_the_cap(saved_model):
    image = noise((90, 70), seed=4)
    results, batch_sizes = {}, []
    for cap in (2, 16):
        segmenter = Segmenter.from_pretrained(saved_model(ID2LABEL), InferenceSettings(
            mode="slide", slide_crop=[32], slide_stride=[20], window_batch=cap))
        batch_sizes.clear()
        segmenter.model.segformer.register_forward_pre_hook(lambda module, args, kwargs: batch_sizes.append(
            (args[0] if args else kwargs["pixel_values"]).shape[0]), with_kwargs=True)  # the encoder: every path
        results[cap] = next(segmenter.logits([image]))
        assert sum(batch_sizes) == 4 * 3 and max(batch_sizes) <= cap  # 3 rows × 4 columns of windows
    torch.testing.assert_close(results[2], results[16])  # batching changes nothing but the memory


def test_slide_pads_images_smaller_than_the_window(saved_model):
    segmenter = Segmenter.from_pretrained(saved_model(ID2LABEL), InferenceSettings(mode="slide", slide_crop=[64]))
    assert segmenter(noise((40, 20), seed=5)).shape == (20, 40)


def test_flip_augmentation_averages_the_image_and_its_mirror(saved_model):
    folder = saved_model(ID2LABEL)
    plain = Segmenter.from_pretrained(folder)
    flipped = Segmenter.from_pretrained(folder, InferenceSettings(flip=True))
    image = noise((48, 32), seed=6)
    expected = (next(plain.logits([image])) + next(plain.logits([image.transpose(Image.FLIP_LEFT_RIGHT)])).flip(-1)) / 2
    torch.testing.assert_close(next(flipped.logits([image])), expected)


def test_multi_scale_logits_are_averaged_on_the_largest_views_grid(saved_model):
    folder = saved_model(ID2LABEL)
    segmenter = Segmenter.from_pretrained(folder, InferenceSettings(tta_scales=[1.0, 2.0, 1.5]))
    image = noise((70, 41), seed=7)
    logits = next(segmenter.logits([image]))
    assert logits.shape[-2:] == (16, 16)  # the 2.0 view: 64×64 input → 16×16 logits
    views = [next(Segmenter.from_pretrained(folder, InferenceSettings(tta_scales=[s])).logits([image]))
             for s in (2.0, 1.5, 1.0)]
    expected = sum(upsample_logits(v[None], (16, 16))[0] for v in views) / 3
    torch.testing.assert_close(logits, expected)
    assert segmenter(image).shape == (41, 70)


def test_bf16_autocast_runs_the_model_in_bf16(saved_model):
    segmenter = Segmenter.from_pretrained(saved_model(ID2LABEL), precision="bf16")
    pixels = segmenter._pixels([noise((32, 32))])
    assert segmenter._forward_logits(pixels).dtype == torch.bfloat16
    assert segmenter(noise((50, 30))).shape == (30, 50)


@pytest.mark.parametrize("settings, field", [
    ({"mode": "sliding"}, "mode"), ({"scale": [512]}, "scale"), ({"slide_stride": [0]}, "slide_stride"),
    ({"tta_scales": []}, "tta_scales")])
def test_bad_settings_name_the_field(settings, field):
    with pytest.raises(RecipeError, match=field):
        InferenceSettings(**settings)
