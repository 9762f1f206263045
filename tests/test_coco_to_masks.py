"""COCO → semantic masks on hand-made annotations whose answers are worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_segformer.data.coco import (
    CATEGORY_MAP_FILE,
    CategoryMap,
    convert_coco,
    decode_compressed_counts,
    decode_rle,
    polygon_mask,
    semantic_mask,
)
from hf_segformer.errors import DataError

CATEGORIES = [{"id": 7, "name": "cup", "supercategory": "kitchen"}, {"id": 3, "name": "table", "supercategory": "furniture"}]


def test_box_polygon_covers_exactly_its_width_times_height():
    mask = polygon_mask([[1, 1, 4, 1, 4, 3, 1, 3]], height=5, width=6)
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:3, 1:4] = True
    np.testing.assert_array_equal(mask, expected)


def test_triangle_takes_the_pixels_whose_centre_is_inside():
    # Hypotenuse x + y = 4: centres (c + .5, r + .5) with c + r + 1 < 4 are inside; centres on it are not.
    mask = polygon_mask([[0, 0, 4, 0, 0, 4]], height=4, width=4)
    expected = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(mask, expected)


def test_polygons_of_one_annotation_are_united_not_xored():
    mask = polygon_mask([[0, 0, 3, 0, 3, 2, 0, 2], [2, 0, 5, 0, 5, 2, 2, 2]], height=3, width=6)
    expected = np.zeros((3, 6), dtype=bool)
    expected[0:2, 0:5] = True
    np.testing.assert_array_equal(mask, expected)


def test_polygon_outside_the_image_is_clipped():
    mask = polygon_mask([[-2, -2, 2, -2, 2, 2, -2, 2]], height=4, width=4)
    assert mask.sum() == 4 and mask[:2, :2].all()


def test_uncompressed_rle_runs_are_column_major_starting_with_zeros():
    # 0×1, 1×2, 0×5, 1×3, 0×1 over the columns of a 3×4 image, top to bottom then left to right.
    mask = decode_rle({"size": [3, 4], "counts": [1, 2, 5, 3, 1]}, height=3, width=4)
    expected = np.array([[0, 0, 0, 1], [1, 0, 0, 1], [1, 0, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(mask, expected)


def test_compressed_rle_string_decodes_multi_character_and_negative_delta_runs():
    # Runs [5, 40, 3, 10] encode as '5', 'X1' (40 = 8 + 1·32, continuation bit set on 'X'),
    # '3', and for the 4th run its difference to the 2nd, 10 - 40 = -30: 'R' then 'O' (sign group).
    assert decode_compressed_counts("5X13RO") == [5, 40, 3, 10]
    assert decode_compressed_counts(b"324") == [3, 2, 4]
    mask = decode_rle({"size": [2, 29], "counts": "5X13RO"}, height=2, width=29)
    assert mask.sum() == 50
    assert not mask[0, 2] and mask[1, 2]  # pixel 4 is the last 0 of the first run, pixel 5 the first 1
    assert mask[0, 22] and not mask[1, 22] and not mask[:, 23].any()  # pixel 44 is the last 1, then three 0s
    assert mask[:, 24:].all()


def test_rle_that_does_not_fit_the_image_is_an_error_naming_the_annotation():
    with pytest.raises(DataError, match="annotation 9.*RLE size"):
        semantic_mask([{"id": 9, "image_id": 1, "category_id": 3, "segmentation": {"size": [4, 4], "counts": [16]}}],
                      3, 4, CategoryMap.from_categories(CATEGORIES))
    with pytest.raises(DataError, match="sum to"):
        decode_rle({"size": [3, 4], "counts": [1, 2]}, 3, 4)


def test_categories_become_contiguous_ids_in_category_id_order():
    with_background = CategoryMap.from_categories(CATEGORIES)
    assert with_background.category_to_class == {3: 1, 7: 2}
    assert with_background.id2label == {0: "background", 1: "table", 2: "cup"}
    without = CategoryMap.from_categories(CATEGORIES, background=None)
    assert without.category_to_class == {3: 0, 7: 1} and without.id2label == {0: "table", 1: "cup"}
    mask = semantic_mask([], 2, 2, without)
    assert (mask == 255).all()  # nothing annotated and no background class: all ignored


def test_smaller_instance_is_on_top_whatever_the_order_and_ties_go_to_the_later_one():
    category_map = CategoryMap.from_categories(CATEGORIES)
    table = {"id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [[0, 0, 6, 0, 6, 4, 0, 4]]}
    cup = {"id": 2, "category_id": 7, "iscrowd": 0, "segmentation": [[2, 1, 4, 1, 4, 3, 2, 3]]}
    expected = np.ones((5, 6), dtype=np.uint8)
    expected[4] = 0
    expected[1:3, 2:4] = 2
    for order in ([table, cup], [cup, table]):
        np.testing.assert_array_equal(semantic_mask(order, 5, 6, category_map), expected)
    same_size_table = {**table, "segmentation": [[2, 1, 4, 1, 4, 3, 2, 3]]}
    assert (semantic_mask([cup, same_size_table], 5, 6, category_map)[1:3, 2:4] == 1).all()
    assert (semantic_mask([same_size_table, cup], 5, 6, category_map)[1:3, 2:4] == 2).all()


def test_crowd_regions_are_ignored_except_where_an_instance_lies_on_them():
    category_map = CategoryMap.from_categories(CATEGORIES)
    crowd = {"id": 1, "category_id": 7, "iscrowd": 1, "segmentation": {"size": [2, 4], "counts": [0, 8]}}
    cup = {"id": 2, "category_id": 7, "iscrowd": 0, "segmentation": [[0, 0, 1, 0, 1, 2, 0, 2]]}
    table = {"id": 3, "category_id": 3, "iscrowd": 0, "segmentation": [[3, 0, 4, 0, 4, 1, 3, 1]]}
    mask = semantic_mask([cup, crowd, table], 2, 4, category_map)
    np.testing.assert_array_equal(mask, [[2, 255, 255, 1], [2, 255, 255, 255]])


def test_unknown_category_is_an_error():
    with pytest.raises(DataError, match="category_id 5"):
        semantic_mask([{"id": 4, "category_id": 5, "segmentation": [[0, 0, 1, 0, 1, 1]]}], 2, 2,
                      CategoryMap.from_categories(CATEGORIES))


def _write_split(root: Path, name: str, annotations: list[dict]) -> tuple[Path, Path]:
    image_dir = root / f"coco_{name}"
    images = []
    for image_id, file_name in ((1, "a.jpg"), (2, "sub/b.jpg")):
        (image_dir / file_name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 6, 3), 40 * image_id, dtype=np.uint8)).save(image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": 4, "width": 6})
    path = root / f"instances_{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path, image_dir


def test_converted_folder_is_a_data_dir_that_loads_and_passes_the_data_check(tmp_path):
    from hf_segformer.config.data import DataArguments
    from hf_segformer.config.values import normalise_id2label
    from hf_segformer.data.labels import LabelDecoder, find_id2label_file
    from hf_segformer.data.loading import load_data
    from hf_segformer.data.preflight import check_data

    cup = {"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0, "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]}
    crowd = {"id": 2, "image_id": 2, "category_id": 3, "iscrowd": 1,
             "segmentation": {"size": [4, 6], "counts": "0h0"}}  # runs [0, 24]: 24 needs two groups, 'h' '0'
    # (a lone group 24 = 0b11000 would read as negative: its 0x10 bit is the sign bit of a last group)
    splits = {"train": _write_split(tmp_path, "train", [cup]), "validation": _write_split(tmp_path, "val", [crowd])}
    out = tmp_path / "converted"
    summaries = convert_coco(splits, out)
    assert [(s.split, s.images, s.crowd_annotations) for s in summaries] == [("train", 2, 0), ("validation", 2, 1)]

    mask_a = np.asarray(Image.open(out / "masks" / "train" / "a.png"))
    assert mask_a.dtype == np.uint8 and (mask_a[:2, :2] == 2).all() and mask_a.sum() == 8
    assert (np.asarray(Image.open(out / "masks" / "train" / "sub" / "b.png")) == 0).all()  # no annotation: background
    assert (np.asarray(Image.open(out / "masks" / "validation" / "sub" / "b.png")) == 255).all()
    mapping = json.loads((out / CATEGORY_MAP_FILE).read_text())
    assert [(c["category_id"], c["class_id"], c["name"]) for c in mapping["categories"]] == [(3, 1, "table"), (7, 2, "cup")]
    assert set(mapping["rules"]) == {"coverage", "overlaps", "crowd"}

    data = load_data(DataArguments(data_dir=str(out)))
    id2label = normalise_id2label(find_id2label_file(out))
    assert id2label == {0: "background", 1: "table", 2: "cup"}
    report = check_data(data, LabelDecoder(), len(id2label), id2label, num_proc=1)
    assert report.splits["train"].pixel_counts == [44, 0, 4, 0]
    assert report.splits["validation"].pixel_counts == [24, 0, 0, 24]


def test_splits_with_different_categories_or_missing_images_are_refused(tmp_path):
    train = _write_split(tmp_path, "train", [])
    other_path, other_images = _write_split(tmp_path, "val", [])
    coco = json.loads(other_path.read_text())
    coco["categories"] = coco["categories"][:1]
    other_path.write_text(json.dumps(coco))
    with pytest.raises(DataError, match="other categories"):
        convert_coco({"train": train, "validation": (other_path, other_images)}, tmp_path / "out")
    (other_images / "a.jpg").unlink()
    with pytest.raises(DataError, match="not found.*a.jpg"):
        convert_coco({"validation": (other_path, other_images)}, tmp_path / "out2")
