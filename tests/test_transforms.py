"""Training/evaluation transforms: image and mask stay aligned, masks are never interpolated, padding is ignore."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image, JpegImagePlugin

from hf_segformer.data.image_cache import DecodedImageCache, plan_cache
from hf_segformer.data.images import rescale_factor
from hf_segformer.data.labels import LabelDecoder
from hf_segformer.data.transforms import EvalTransform, SegmentationCollator, TrainTransform
from hf_segformer.logits import LABEL_PAD

IGNORE = 255
CLASSES = (0, 2, 4, 6)  # gaps between ids: any interpolated label value would be a value not in this set


def class_colour(k: int) -> tuple[int, int, int]:
    return (255, 255, 255) if k == IGNORE else (40 * k, 255 - 40 * k, 20 * k)


PALETTE_IDS = np.array([*CLASSES, IGNORE])
PALETTE = np.array([class_colour(k) for k in PALETTE_IDS], dtype=np.float32)


def block_scene(height: int = 64, width: int = 96, block: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(image H×W×3, mask H×W): big blocks of classes (and one ignore block); colour = f(class)."""
    values = [*CLASSES, IGNORE]
    by, bx = np.mgrid[0:height, 0:width] // block
    mask = np.asarray(values)[(by * 3 + bx * 2 + (by * bx) % 3) % len(values)].astype(np.uint8)
    lookup = np.zeros((256, 3), dtype=np.uint8)
    for k in values:
        lookup[k] = class_colour(k)
    image = lookup[mask]
    return image, mask


def classes_from_colour(pixels: torch.Tensor) -> np.ndarray:
    """Nearest class colour for each pixel of a 3×H×W uint8 tensor."""
    rgb = pixels.permute(1, 2, 0).numpy().astype(np.float32)
    distance = ((rgb[:, :, None, :] - PALETTE[None, None]) ** 2).sum(-1)
    return PALETTE_IDS[distance.argmin(-1)]


def interior(label: np.ndarray) -> np.ndarray:
    """Pixels whose 3×3 neighbourhood has one label (away from block borders and from padding)."""
    padded = np.pad(label, 1, constant_values=-1)
    same = np.ones_like(label, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            same &= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]] == label
    return same


def agreement(pixels: torch.Tensor, label: torch.Tensor) -> tuple[float, int]:
    label = label.numpy()
    keep = interior(label)
    recovered = classes_from_colour(pixels)
    return float((recovered[keep] == label[keep]).mean()), int(keep.sum())


def make_transform(**kwargs) -> TrainTransform:
    defaults = dict(decoder=LabelDecoder(), crop_size=32, scale=(96, 64), ratio_range=(0.5, 2.0),
                    cat_max_ratio=0.75, hflip_prob=0.5, photometric=False, ignore_index=IGNORE)
    return TrainTransform(**{**defaults, **kwargs})


def run(transform: TrainTransform, image: Image.Image, mask: Image.Image, seed: int):
    random.seed(seed)
    return transform.transform(image, mask)


@pytest.fixture(scope="module")
def scene() -> tuple[Image.Image, Image.Image]:
    image, mask = block_scene()
    return Image.fromarray(image, "RGB"), Image.fromarray(mask, "L")


def test_scene_helpers_recover_the_mask_from_the_image(scene):
    image, mask = scene
    pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    np.testing.assert_array_equal(classes_from_colour(pixels), np.asarray(mask))
    assert set(np.unique(np.asarray(mask))) == {*CLASSES, IGNORE}


def test_train_transform_keeps_image_and_mask_aligned(scene):
    transform = make_transform()
    values = set()
    for seed in range(40):
        pixels, label = run(transform, *scene, seed)
        assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.uint8
        assert label.shape == (32, 32) and label.dtype == torch.int64
        score, kept = agreement(pixels, label)
        assert kept > 100, seed
        assert score >= 0.99, f"seed {seed}: only {score:.3f} of interior pixels agree"
        values |= set(label.unique().tolist())
    assert values <= {*CLASSES, IGNORE}  # nearest-neighbour only: never a value between two classes
    assert values == {*CLASSES, IGNORE}


def test_misaligned_label_would_be_detected(scene):
    """Guard for the alignment check above: a one-pixel shift of the label fails it."""
    pixels, label = run(make_transform(ratio_range=(1.0, 1.0)), *scene, seed=0)
    score, _ = agreement(pixels[:, :, 2:], label[:, :-2])
    assert score < 0.95


def test_sixteen_bit_and_reduced_labels_are_not_interpolated():
    rng = np.random.default_rng(0)
    values = np.array([1, 300, 1000, 40000])
    mask16 = values[rng.integers(0, 4, (12, 18))].repeat(4, 0).repeat(4, 1)  # 48×72, 4-px cells
    mask = Image.fromarray(mask16.astype(np.uint16))
    image = Image.fromarray(rng.integers(0, 256, (48, 72, 3), dtype=np.uint8))
    transform = make_transform(crop_size=24, scale=(72, 48), decoder=LabelDecoder(ignore_index=65535),
                               ignore_index=65535)
    for seed in range(10):
        _, label = run(transform, image, mask, seed)
        assert set(label.unique().tolist()) <= {*values.tolist(), 65535}
    transform = make_transform(crop_size=24, scale=(72, 48), decoder=LabelDecoder(reduce_labels=True))
    small = Image.fromarray((mask16 % 7).astype(np.uint8))
    for seed in range(10):
        _, label = run(transform, image, small, seed)
        assert set(label.unique().tolist()) <= {*(np.unique(mask16 % 7) - 1).tolist(), IGNORE} - {-1}


def test_photometric_distortion_changes_pixels_not_labels(scene):
    off, on = make_transform(hflip_prob=0.0), make_transform(hflip_prob=0.0, photometric=True)
    changed = 0
    for seed in range(20):
        pixels_off, label_off = run(off, *scene, seed)
        pixels_on, label_on = run(on, *scene, seed)
        assert torch.equal(label_on, label_off)
        assert set(label_on.unique().tolist()) <= {*CLASSES, IGNORE}
        changed += not torch.equal(pixels_on, pixels_off)
    assert changed >= 15


def test_photometric_distortion_keeps_label_values(scene):
    transform = make_transform(photometric=True, hflip_prob=0.5)
    seen = set()
    for seed in range(30):
        _, label = run(transform, *scene, seed)
        seen |= set(label.unique().tolist())
    assert seen == {*CLASSES, IGNORE}


def test_small_image_is_padded_with_ignore_and_black():
    image, mask = block_scene(height=24, width=36, block=6)
    image[mask == IGNORE] = class_colour(0)
    mask[mask == IGNORE] = 0
    transform = make_transform(crop_size=32, scale=(36, 24), ratio_range=(1.0, 1.0))
    pixels, label = run(transform, Image.fromarray(image), Image.fromarray(mask), seed=0)
    assert pixels.shape == (3, 32, 32) and label.shape == (32, 32)
    assert (label[24:] == IGNORE).all()
    assert (pixels[:, 24:] == 0).all()
    assert not (label[:24] == IGNORE).any()  # the 32×24 crop itself has only classes
    score, _ = agreement(pixels[:, :24], label[:24])
    assert score >= 0.99


def test_hflip_flips_image_and_label_together(scene):
    kwargs = dict(ratio_range=(1.0, 1.0), cat_max_ratio=1.0)
    for seed in range(5):
        pixels, label = run(make_transform(hflip_prob=0.0, **kwargs), *scene, seed)
        flipped_pixels, flipped_label = run(make_transform(hflip_prob=1.0, **kwargs), *scene, seed)
        assert not torch.equal(label, flipped_label)
        assert torch.equal(flipped_label, label.flip(-1))
        assert torch.equal(flipped_pixels, pixels.flip(-1))


def test_the_resampled_window_is_the_crop_of_the_whole_resized_image():
    """Only the crop window is resampled (its cost does not grow with the scale): the same pixels as resizing the
    whole image and cropping, within 2 grey levels of bilinear rounding; each label pixel is the source pixel under
    its sample point or (PIL's coordinate rounding) its neighbour, as in the whole-image resize."""
    rs = np.random.RandomState(0)
    image = Image.fromarray(rs.randint(0, 256, (150, 210, 3), dtype=np.uint8))
    mask_array = (rs.randint(0, 4, (150, 210)) * 2).astype(np.uint8)
    mask = Image.fromarray(mask_array)
    transform = make_transform(crop_size=48, scale=(400, 100), cat_max_ratio=1.0, hflip_prob=0.0)
    same = total = 0
    for seed in range(30):
        pixels, label = transform.transform(image, mask, rng=random.Random(seed))
        draws = random.Random(seed)  # the transform's draws: scale factor, then the window's corner
        factor = rescale_factor(210, 150, (400, 100)) * draws.uniform(0.5, 2.0)
        new_w, new_h = round(210 * factor), round(150 * factor)
        crop_w, crop_h = min(48, new_w), min(48, new_h)
        x0, y0 = draws.randint(0, new_w - crop_w), draws.randint(0, new_h - crop_h)
        window = (slice(y0, y0 + crop_h), slice(x0, x0 + crop_w))
        whole = np.asarray(image.resize((new_w, new_h), Image.BILINEAR))[window].astype(int)
        assert np.abs(pixels[:, :crop_h, :crop_w].permute(1, 2, 0).numpy().astype(int) - whole).max() <= 2, seed
        label = label[:crop_h, :crop_w].numpy()
        whole_label = np.asarray(mask.resize((new_w, new_h), Image.NEAREST))[window]
        same, total = same + (label == whole_label).sum(), total + label.size
        rows = (y0 + np.arange(crop_h) + 0.5) * 150 / new_h
        cols = (x0 + np.arange(crop_w) + 0.5) * 210 / new_w
        near = np.zeros_like(label, dtype=bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                r, c = np.clip(rows.astype(int) + dy, 0, 149), np.clip(cols.astype(int) + dx, 0, 209)
                near |= mask_array[np.ix_(r, c)] == label
        exact = mask_array[np.ix_(rows.astype(int), cols.astype(int))] == label
        assert near.all() and exact.mean() > 0.9, seed
    assert same / total > 0.9


def test_cat_max_ratio_retries_reduce_single_class_crops():
    mask = np.zeros((64, 96), dtype=np.uint8)
    mask[8:40, 56:88] = 1  # one 32×32 object in a background of class 0
    image = Image.fromarray(np.zeros((64, 96, 3), dtype=np.uint8))
    mask_image = Image.fromarray(mask)

    def dominated_share(cat_max_ratio: float) -> float:
        transform = make_transform(crop_size=24, scale=(96, 64), ratio_range=(1.0, 1.0), cat_max_ratio=cat_max_ratio)
        dominated = 0
        for seed in range(200):
            _, label = run(transform, image, mask_image, seed)
            counts = np.bincount(label.numpy().ravel(), minlength=2)
            dominated += counts.max() / counts.sum() >= 0.75
        return dominated / 200

    without, with_retries = dominated_share(1.0), dominated_share(0.75)
    assert without > 0.6
    assert with_retries < without / 2


def test_eval_transform_keeps_label_at_native_resolution(tmp_path, write_image, write_mask, stripes):
    write_image(tmp_path / "x.png", size=(36, 24))
    values = stripes(24, 36, values=(0, 1, 2, 255))
    write_mask(tmp_path / "x_mask.png", values)
    entries = {"image": [{"path": str(tmp_path / "x.png"), "bytes": None}],
               "label": [{"path": str(tmp_path / "x_mask.png"), "bytes": None}]}
    out = EvalTransform(LabelDecoder(reduce_labels=True), size=16)(entries)
    (pixels,), (label,) = out["pixel_values"], out["labels"]
    assert pixels.shape == (3, 16, 16) and pixels.dtype == torch.uint8
    assert label.shape == (24, 36) and label.dtype == torch.int64
    expected = np.where((values == 0) | (values == 255), 255, values - 1)
    np.testing.assert_array_equal(label.numpy(), expected)


def test_collator_pads_labels_and_normalises_pixels():
    first = torch.tensor([[[0, 255], [51, 102]]] * 3, dtype=torch.uint8)
    second = torch.full((3, 2, 2), 255, dtype=torch.uint8)
    labels = [torch.arange(6).view(2, 3), torch.full((3, 1), 7)]
    collator = SegmentationCollator(image_mean=(0.5, 0.2, 0.0), image_std=(0.5, 0.25, 1.0))
    batch = collator([{"pixel_values": first, "labels": labels[0]}, {"pixel_values": second, "labels": labels[1]}])

    assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].shape == (2, 3, 2, 2)
    expected_first = torch.tensor([[0.0, 1.0], [0.2, 0.4]])
    torch.testing.assert_close(batch["pixel_values"][0, 0], (expected_first - 0.5) / 0.5)
    torch.testing.assert_close(batch["pixel_values"][0, 1], (expected_first - 0.2) / 0.25)
    torch.testing.assert_close(batch["pixel_values"][1, 2], torch.ones(2, 2))

    assert batch["labels"].shape == (2, 3, 3) and batch["labels"].dtype == torch.long
    assert LABEL_PAD == -100
    assert torch.equal(batch["labels"][0], torch.tensor([[0, 1, 2], [3, 4, 5], [-100, -100, -100]]))
    assert torch.equal(batch["labels"][1], torch.tensor([[7, -100, -100], [7, -100, -100], [7, -100, -100]]))
    assert "labels" not in collator([{"pixel_values": first}])


def test_large_jpeg_uses_draft_decoding_and_stays_aligned(tmp_path, write_image, write_mask, monkeypatch):
    image, mask = block_scene(height=768, width=1024, block=128)
    image_path = write_image(tmp_path / "big.jpg", array=image, quality=95)
    mask_path = write_mask(tmp_path / "big.png", mask)

    drafted = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = original_draft(self, mode, size)
        drafted.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    transform = make_transform(crop_size=64, scale=(128, 96), ratio_range=(0.9, 1.1))
    values = set()
    for seed in range(6):
        random.seed(seed)
        pixels, label = transform({"image": [{"path": str(image_path), "bytes": None}],
                                   "label": [{"path": str(mask_path), "bytes": None}]}).values()
        pixels, label = pixels[0], label[0]
        assert pixels.shape == (3, 64, 64) and label.shape == (64, 64)
        score, kept = agreement(pixels, label)
        assert kept > 500 and score >= 0.99, f"seed {seed}: {score:.3f}"
        values |= set(label.unique().tolist())
    assert values <= {*CLASSES, IGNORE}
    assert len(drafted) == 6 and all(size[0] <= 256 for size in drafted)  # decoded at ≤ 1/4 scale


@pytest.mark.parametrize("width", [
    1000,
    1001,
])
def test_draft_decoding_is_sub_pixel_aligned(tmp_path, write_image, write_mask, width):
    """A vertical black/white edge at x=960: the image edge must land where the label edge is."""
    height, edge = 64, 960
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:, edge:] = 255
    mask = (np.arange(width) >= edge).astype(np.uint8)[None].repeat(height, 0)
    image_path = write_image(tmp_path / "edge.jpg", array=image, quality=100)
    mask_path = write_mask(tmp_path / "edge.png", mask)
    # factor 0.1 < 0.5: decoded with draft() at 1/8 scale; the whole 100×6 resized image fits in the crop
    transform = make_transform(crop_size=128, scale=(width / 10, height / 10), ratio_range=(1.0, 1.0),
                               cat_max_ratio=1.0, hflip_prob=0.0)
    random.seed(0)
    pixels, label = transform.transform(Image.open(image_path), Image.open(mask_path))
    crop_w = int((label[0] != IGNORE).sum())
    crop_h = int((label[:, 0] != IGNORE).sum())
    dark_columns = (255 - pixels[0, :crop_h, :crop_w].double()).sum(1).mean().item() / 255
    assert dark_columns == pytest.approx(edge * crop_w / width, abs=0.15)


@pytest.fixture
def upside_down_photo(tmp_path, write_exif_rotated, write_mask):
    """A phone-style JPEG stored rotated 180° with EXIF Orientation=3; its mask is drawn upright."""
    image, mask = block_scene()
    return write_exif_rotated(tmp_path / "photo.jpg", image, orientation=3), write_mask(tmp_path / "photo.png", mask)


def test_exif_orientation_is_applied_like_datasets_image(upside_down_photo):
    image_path, mask_path = upside_down_photo
    batch = {"image": [{"path": str(image_path), "bytes": None}], "label": [{"path": str(mask_path), "bytes": None}]}
    random.seed(0)
    out = make_transform()(batch)
    score, _ = agreement(out["pixel_values"][0], out["labels"][0])
    assert score >= 0.99
    out = EvalTransform(LabelDecoder(), size=48)(batch)
    small = Image.fromarray(out["labels"][0].numpy().astype(np.uint8)).resize((48, 48), Image.NEAREST)
    score, _ = agreement(out["pixel_values"][0], torch.from_numpy(np.asarray(small).astype(np.int64)))
    assert score >= 0.99


def entries(*paths) -> list[dict]:
    return [{"path": str(path), "bytes": None} for path in paths]


def test_cached_images_give_the_crops_of_a_cache_that_holds_nothing(tmp_path, write_image, write_mask,
                                                                      upside_down_photo):
    """cache_images: a pair decoded once is reused, and a crop does not depend on whether its image was in the cache
    (hit, or missed because the cache was full): runs stay reproducible however much memory there was."""
    image, mask = block_scene(height=768, width=1024, block=128)
    big = (write_image(tmp_path / "big.jpg", array=image, quality=95), write_mask(tmp_path / "big.png", mask))
    batch = {"image": entries(big[0], upside_down_photo[0]), "label": entries(big[1], upside_down_photo[1])}
    roomy = make_transform(crop_size=64, scale=(128, 96), ratio_range=(0.5, 1.5))
    roomy.cache = DecodedImageCache(None)
    full = make_transform(crop_size=64, scale=(128, 96), ratio_range=(0.5, 1.5))
    full.cache = DecodedImageCache(0)
    for seed in range(4):
        random.seed(seed)
        first = roomy(batch)
        random.seed(seed)
        second = full(batch)
        for a, b in zip(first["pixel_values"] + first["labels"], second["pixel_values"] + second["labels"]):
            assert torch.equal(a, b)
        score, _ = agreement(first["pixel_values"][1], first["labels"][1])  # EXIF orientation still applied
        assert score >= 0.99
    assert len(roomy.cache) == 2 and roomy.cache.bytes == 1024 * 768 * 4 + 96 * 64 * 4
    assert len(full.cache) == 0
    cached_image, cached_mask = roomy.cache.pair(*entries(big[0], big[1]))
    assert cached_image is roomy.cache.pair(*entries(big[0], big[1]))[0]  # decoded once, not per draw
    assert cached_image.mode == "RGB" and cached_mask.size == (1024, 768)


def test_cache_plan_follows_the_setting_and_the_memory():
    sizes = [(1000, 500)] * 10  # ~20 MB decoded (4 bytes per pixel)
    cache, why = plan_cache("auto", sizes, available_bytes=10**9, sharers=2)
    assert cache is not None and cache.max_bytes == 125_000_000 and "fits" in why
    cache, why = plan_cache("auto", sizes, available_bytes=10**8, sharers=2)
    assert cache is None and "does not fit" in why
    assert plan_cache("auto", sizes, 10**9, 1, workers_restart=True)[0] is None
    assert plan_cache("auto", None, 10**9, 1)[0] is None  # no data check: no sizes to decide on
    assert plan_cache("false", sizes, 10**12, 1)[0] is None
    assert plan_cache("true", None, None, 4)[0].max_bytes is None


@pytest.mark.parametrize("value, streaming, message", [("sometimes", False, "auto, true or false"),
                                                       (True, True, "streaming")])
def test_cache_setting_errors_name_the_field(value, streaming, message):
    from hf_segformer.config.data import DataArguments
    from hf_segformer.errors import RecipeError

    with pytest.raises(RecipeError, match=message) as error:
        DataArguments(data_dir="data", cache_images=value, streaming=streaming)
    assert "cache_images" in str(error.value)
