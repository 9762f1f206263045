"""Loading image/mask pairs: mask formats, folder layouts, pairing by stem, validation carving, disk datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature
from PIL import Image

from hf_segformer.config.data import DataArguments
from hf_segformer.data.labels import LabelDecoder
from hf_segformer.data.loading import load_data, load_folder_dataset, pair_files
from hf_segformer.data.prepare import build_label_decoder
from hf_segformer.data.transforms import EvalTransform
from hf_segformer.errors import DataError


def undecoded(ds: Dataset) -> Dataset:
    return ds.cast_column("image", ImageFeature(decode=False)).cast_column("label", ImageFeature(decode=False))


def paths(ds: Dataset, column: str) -> list[str]:
    return [Path(e["path"]).name for e in undecoded(ds)[column]]


def decoded_labels(ds: Dataset, decoder: LabelDecoder | None = None) -> list[np.ndarray]:
    """Labels as the training/eval code sees them (native resolution, through the LabelDecoder)."""
    ds = undecoded(ds).with_transform(EvalTransform(decoder or LabelDecoder(), size=8))
    return [ds[i]["labels"].numpy() for i in range(len(ds))]


# --- mask formats ------------------------------------------------------------------------------------------


def test_grey_png_masks_load_as_their_values(data_root, make_pairs, stripes):
    make_pairs(data_root, ["a", "b"])
    data = load_data(DataArguments(data_dir=str(data_root)))
    assert list(data) == ["train"] and data["train"].column_names == ["image", "label"]
    for label in decoded_labels(data["train"]):
        np.testing.assert_array_equal(label, stripes())


def test_palette_masks_decode_to_indices_not_colours(data_root, make_pairs, stripes):
    make_pairs(data_root, ["a", "b"], mask_mode="P")
    data = load_data(DataArguments(data_dir=str(data_root)))
    raw = data["train"][0]["label"]
    assert raw.mode == "P"
    # guard: the palette colours are not grey levels, so a colour/grey decode would give other values
    assert not np.array_equal(np.asarray(raw.convert("L")), stripes())
    for label in decoded_labels(data["train"]):
        np.testing.assert_array_equal(label, stripes())


def test_16_bit_masks_keep_values_above_255(data_root, make_pairs, stripes):
    values = stripes(values=(0, 300, 1000, 40000))
    make_pairs(data_root, ["a"], mask_mode="I;16", mask=values)
    data = load_data(DataArguments(data_dir=str(data_root)))
    (label,) = decoded_labels(data["train"])
    np.testing.assert_array_equal(label, values)


@pytest.mark.parametrize("values", [(0, 1, 2), (0, 7, 511)], ids=["8bit", "16bit"])
def test_npy_masks_load_as_labels(data_root, make_pairs, stripes, values):
    make_pairs(data_root, ["a", "b"], mask_ext=".npy", mask=stripes(values=values))
    data = load_data(DataArguments(data_dir=str(data_root)))
    assert paths(data["train"], "label") == ["a.npy", "b.npy"]
    for label in decoded_labels(data["train"]):
        np.testing.assert_array_equal(label, stripes(values=values))


@pytest.mark.parametrize("bad", [np.full((4, 4), 0.5), np.full((4, 4), -1), np.zeros((4, 4, 2), dtype=int)],
                         ids=["float", "negative", "3d"])
def test_invalid_npy_mask_is_a_data_error_naming_the_file(data_root, make_pairs, write_image, write_mask, bad):
    make_pairs(data_root, ["a"])
    write_image(data_root / "images" / "b.png")
    write_mask(data_root / "masks" / "b.npy", bad)
    with pytest.raises(DataError, match=r"b\.npy"):
        load_data(DataArguments(data_dir=str(data_root)))


def test_reduce_labels_maps_zero_to_ignore_and_shifts_the_rest():
    mask = np.array([[0, 1, 2], [3, 255, 1]], dtype=np.uint8)
    decoded = LabelDecoder(reduce_labels=True, ignore_index=255)(mask)
    np.testing.assert_array_equal(decoded, [[255, 0, 1], [2, 255, 0]])


# --- colour masks --------------------------------------------------------------------------------------------

COLOUR_MAP = {"#3C1098": 0, "110,193,228": 1, "#FEDD3A": 2}
COLOURS = [(0x3C, 0x10, 0x98), (110, 193, 228), (0xFE, 0xDD, 0x3A)]


def colour_mask(stripes) -> tuple[np.ndarray, np.ndarray]:
    ids = stripes()
    return np.asarray(COLOURS, dtype=np.uint8)[ids], ids


def test_rgb_colour_masks_map_to_class_ids(data_root, make_pairs, stripes):
    rgb, ids = colour_mask(stripes)
    make_pairs(data_root, ["a", "b"], mask_mode="RGB", mask=rgb)
    args = DataArguments(data_dir=str(data_root), colour_map=COLOUR_MAP)
    for label in decoded_labels(load_data(args)["train"], build_label_decoder(args)):
        np.testing.assert_array_equal(label, ids)


def test_unknown_colour_is_a_data_error_naming_file_and_colour(data_root, make_pairs, stripes):
    rgb, _ = colour_mask(stripes)
    rgb[3, 5] = (0x12, 0xAB, 0xEF)
    make_pairs(data_root, ["a"], mask_mode="RGB", mask=rgb)
    args = DataArguments(data_dir=str(data_root), colour_map=COLOUR_MAP)
    with pytest.raises(DataError) as err:
        decoded_labels(load_data(args)["train"], build_label_decoder(args))
    assert "a.png" in str(err.value) and "#12ABEF" in str(err.value)


def test_rgb_mask_without_colour_map_asks_for_one(data_root, make_pairs, stripes):
    make_pairs(data_root, ["a"], mask_mode="RGB", mask=colour_mask(stripes)[0])
    with pytest.raises(DataError, match="colour_map"):
        decoded_labels(load_data(DataArguments(data_dir=str(data_root)))["train"])


# --- layouts -------------------------------------------------------------------------------------------------


def test_flat_folder_is_a_single_train_split(data_root, make_pairs):
    make_pairs(data_root, ["a", "b", "c"])
    data = load_data(DataArguments(data_dir=str(data_root)))
    assert list(data) == ["train"]
    assert paths(data["train"], "image") == ["a.png", "b.png", "c.png"]


@pytest.mark.parametrize("val_folder", ["val", "validation"])
def test_split_folders_become_train_and_validation(data_root, make_pairs, val_folder):
    make_pairs(data_root, ["a", "b", "c"], split="train")
    make_pairs(data_root, ["v1", "v2"], split=val_folder)
    make_pairs(data_root, ["t1"], split="test")
    data = load_data(DataArguments(data_dir=str(data_root)))
    assert sorted(data) == ["test", "train", "validation"]
    assert paths(data["train"], "image") == ["a.png", "b.png", "c.png"]
    assert paths(data["validation"], "label") == ["v1.png", "v2.png"]
    assert len(data["test"]) == 1


def test_image_dir_and_mask_dir_can_be_given_separately(tmp_path, make_pairs):
    root = make_pairs(tmp_path / "somewhere", ["a", "b"])
    data = load_data(DataArguments(image_dir=str(root / "images"), mask_dir=str(root / "masks")))
    assert len(data["train"]) == 2


@pytest.mark.parametrize("image_split, mask_split", [("val", "validation"), ("validation", "val")])
def test_validation_split_folders_pair_whatever_their_spelling(data_root, make_pairs, image_split, mask_split):
    make_pairs(data_root, ["a"], split="train")
    make_pairs(data_root, ["v"], split=image_split)
    (data_root / "masks" / image_split).rename(data_root / "masks" / mask_split)
    data = load_data(DataArguments(data_dir=str(data_root)))
    assert paths(data["validation"], "label") == ["v.png"]


def test_split_folder_without_mask_folder_is_an_error(data_root, make_pairs):
    make_pairs(data_root, ["a"], split="train")
    make_pairs(data_root, ["v"], split="val")
    for f in (data_root / "masks" / "val").iterdir():
        f.unlink()
    (data_root / "masks" / "val").rmdir()
    with pytest.raises(DataError, match="val"):
        load_data(DataArguments(data_dir=str(data_root)))


# --- pairing -------------------------------------------------------------------------------------------------


def test_pairs_by_stem_not_by_sort_order(data_root, write_image, write_mask, stripes):
    # sorted file names: images a.jpg < a0.jpg, masks a0_gt.npy < a_gt.png ('0' < '_'): a zip would mis-pair
    images, masks = data_root / "images", data_root / "masks"
    for i, stem in enumerate(["a", "a0", "b"]):
        write_image(images / f"{stem}.jpg", seed=i)
    write_mask(masks / "a_gt.png", stripes(values=(0, 1, 2)))
    write_mask(masks / "a0_gt.npy", stripes(values=(3, 4, 5)))
    write_mask(masks / "b_gt.bmp", stripes(values=(6, 7, 8)), mode="L")
    assert sorted(p.name for p in masks.iterdir())[0] == "a0_gt.npy"

    pairs = pair_files(images, masks, mask_suffix="_gt")
    assert [(i.name, m.name) for i, m in pairs] == [("a.jpg", "a_gt.png"), ("a0.jpg", "a0_gt.npy"),
                                                   ("b.jpg", "b_gt.bmp")]
    data = load_data(DataArguments(data_dir=str(data_root), mask_suffix="_gt"))
    labels = decoded_labels(data["train"])
    assert [sorted(np.unique(x)) for x in labels] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_image_and_mask_suffixes_are_dropped_before_pairing(data_root, write_image, write_mask, stripes):
    for city in ["aachen_000001", "bonn_000002"]:
        write_image(data_root / "images" / f"{city}_leftImg8bit.png")
        write_mask(data_root / "masks" / f"{city}_gtFine_labelTrainIds.png", stripes())
        # Cityscapes ships other products beside the train-id masks; with a mask_suffix they are not masks.
        write_mask(data_root / "masks" / f"{city}_gtFine_color.png", stripes())
        write_mask(data_root / "masks" / f"{city}_gtFine_instanceIds.png", stripes())
    args = DataArguments(data_dir=str(data_root), image_suffix="_leftImg8bit", mask_suffix="_gtFine_labelTrainIds")
    data = load_data(args)
    assert paths(data["train"], "image") == ["aachen_000001_leftImg8bit.png", "bonn_000002_leftImg8bit.png"]
    assert paths(data["train"], "label") == ["aachen_000001_gtFine_labelTrainIds.png",
                                             "bonn_000002_gtFine_labelTrainIds.png"]
    with pytest.raises(DataError, match="do not pair up"):
        load_data(DataArguments(data_dir=str(data_root)))


def test_image_without_mask_is_an_error_naming_it(data_root, make_pairs, write_image):
    make_pairs(data_root, ["a", "b"])
    write_image(data_root / "images" / "lonely.jpg")
    with pytest.raises(DataError) as err:
        load_data(DataArguments(data_dir=str(data_root)))
    assert "lonely.jpg" in str(err.value) and "no mask" in str(err.value)


def test_mask_without_image_is_an_error_naming_it(data_root, make_pairs, write_mask, stripes):
    make_pairs(data_root, ["a", "b"])
    write_mask(data_root / "masks" / "orphan.png", stripes())
    with pytest.raises(DataError) as err:
        load_data(DataArguments(data_dir=str(data_root)))
    assert "orphan.png" in str(err.value) and "without an image" in str(err.value)


def test_two_masks_with_the_same_stem_are_an_error(data_root, make_pairs, write_mask, stripes):
    make_pairs(data_root, ["a"])
    write_mask(data_root / "masks" / "a.npy", stripes())
    with pytest.raises(DataError, match=r"a\.npy"):
        load_data(DataArguments(data_dir=str(data_root)))


def test_empty_folders_are_an_error(data_root):
    (data_root / "images").mkdir()
    (data_root / "masks").mkdir()
    with pytest.raises(DataError, match="No images"):
        load_data(DataArguments(data_dir=str(data_root)))


def test_missing_folder_is_an_error(data_root):
    with pytest.raises(DataError, match="does not exist"):
        load_folder_dataset(data_root / "images", data_root / "masks")


# --- validation_split ------------------------------------------------------------------------------------------


def test_validation_split_carves_a_seeded_validation_set(data_root, make_pairs):
    names = [f"{i:02d}" for i in range(20)]
    make_pairs(data_root, names, size=(8, 6))
    args = DataArguments(data_dir=str(data_root), validation_split=0.25)

    first, again, other = load_data(args, seed=1), load_data(args, seed=1), load_data(args, seed=2)
    assert len(first["train"]) == 15 and len(first["validation"]) == 5
    train, val = paths(first["train"], "image"), paths(first["validation"], "image")
    assert sorted(train + val) == [f"{n}.png" for n in names]
    assert paths(again["validation"], "image") == val and paths(again["train"], "image") == train
    assert sorted(paths(other["validation"], "image")) != sorted(val)
    # the carved pairs still line up
    assert paths(first["validation"], "label") == val


def test_validation_split_leaves_an_existing_validation_split_alone(data_root, make_pairs):
    make_pairs(data_root, ["a", "b", "c", "d"], split="train", size=(8, 6))
    make_pairs(data_root, ["v"], split="val", size=(8, 6))
    data = load_data(DataArguments(data_dir=str(data_root), validation_split=0.5))
    assert len(data["train"]) == 4 and paths(data["validation"], "image") == ["v.png"]


# --- Hub / save_to_disk datasets -------------------------------------------------------------------------------


@pytest.fixture
def disk_dataset(tmp_path, stripes) -> Path:
    """A `save_to_disk` DatasetDict with custom column names and an extra column."""
    rng = np.random.default_rng(0)

    def split(n: int) -> Dataset:
        images = [Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)) for _ in range(n)]
        masks = [Image.fromarray(stripes(6, 8, values=(0, i % 3)).astype(np.uint8)) for i in range(n)]
        return Dataset.from_dict({"pixel_values": images, "annotation": masks, "city": ["x"] * n}).cast_column(
            "pixel_values", ImageFeature()).cast_column("annotation", ImageFeature())

    path = tmp_path / "saved"
    DatasetDict({"train": split(3), "val": split(2)}).save_to_disk(str(path))
    return path


def test_save_to_disk_dataset_with_custom_columns(disk_dataset, stripes):
    args = DataArguments(dataset_name=str(disk_dataset), image_column="pixel_values", label_column="annotation")
    data = load_data(args)
    assert sorted(data) == ["train", "validation"]
    assert len(data["train"]) == 3 and len(data["validation"]) == 2
    for ds in data.values():
        assert ds.column_names == ["image", "label"]
        assert isinstance(ds.features["image"], ImageFeature) and isinstance(ds.features["label"], ImageFeature)
    np.testing.assert_array_equal(decoded_labels(data["train"])[1], stripes(6, 8, values=(0, 1)))


def test_save_to_disk_single_dataset_becomes_train(tmp_path, stripes):
    image = Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8))
    mask = Image.fromarray(stripes(6, 8).astype(np.uint8))
    Dataset.from_dict({"image": [image], "label": [mask]}).cast_column("image", ImageFeature()).cast_column(
        "label", ImageFeature()).save_to_disk(str(tmp_path / "one"))
    data = load_data(DataArguments(dataset_name=str(tmp_path / "one")))
    assert list(data) == ["train"] and data["train"].column_names == ["image", "label"]


def test_wrong_column_name_lists_the_available_columns(disk_dataset):
    args = DataArguments(dataset_name=str(disk_dataset), image_column="pixel_values", label_column="mask")
    with pytest.raises(DataError) as err:
        load_data(args)
    message = str(err.value)
    assert "'mask'" in message
    for column in ("pixel_values", "annotation", "city"):
        assert column in message


def test_non_image_label_column_is_an_error(disk_dataset):
    args = DataArguments(dataset_name=str(disk_dataset), image_column="pixel_values", label_column="city")
    with pytest.raises(DataError, match="not datasets.Image"):
        load_data(args)


def test_max_samples_truncate(data_root, make_pairs):
    make_pairs(data_root, ["a", "b", "c"], split="train", size=(8, 6))
    make_pairs(data_root, ["v1", "v2"], split="val", size=(8, 6))
    data = load_data(DataArguments(data_dir=str(data_root), max_train_samples=2, max_eval_samples=1))
    assert len(data["train"]) == 2 and len(data["validation"]) == 1
