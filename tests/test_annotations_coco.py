"""COCO through the import (copies, unannotated images kept out, colours) and the RLE export, with worked answers."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import numpy as np
import pytest
from support.images import read_mask, save_image

from hf_segformer.data.annotations.coco_format import encode_compressed_counts, mask_runs
from hf_segformer.data.annotations.exporter import export_masks
from hf_segformer.data.annotations.importer import import_annotations
from hf_segformer.data.annotations.preannotations import MaskToExport
from hf_segformer.data.coco import decode_compressed_counts
from hf_segformer.errors import DataError

X = 255


def test_compressed_counts_are_the_inverse_of_the_projects_decoder_on_worked_strings():
    # 5 → '5'; 40 = 8 + 1·32 → 'X' (8 with the continuation bit, 0x28 + 48) then '1'; 3 → '3';
    # the 4th run is stored as 10 - 40 = -30: low 5 bits 2 with continuation ('R'), then 31 = -1 with the sign
    # bit and no continuation ('O')
    assert encode_compressed_counts([5, 40, 3, 10]) == "5X13RO"
    assert decode_compressed_counts(encode_compressed_counts([5, 40, 3, 10])) == [5, 40, 3, 10]
    # 24 = 0b11000 has bit 0x10 set, which would read as a sign: it takes a second group ('h' then '0')
    assert encode_compressed_counts([0, 24]) == "0h0"


def test_mask_runs_are_column_major_and_start_with_zeros():
    mask = np.array([[0, 0, 0, 1], [1, 0, 0, 1], [1, 0, 1, 0]], dtype=bool)
    # columns top to bottom: 0 1 1 | 0 0 0 | 0 0 1 | 1 1 0 → 0×1, 1×2, 0×5, 1×3, 0×1
    assert mask_runs(mask) == [1, 2, 5, 3, 1]
    assert mask_runs(np.ones((2, 2), dtype=bool)) == [0, 4]


def write_coco(tmp_path, categories=None):
    images = tmp_path / "images"
    for name in ("a.png", "b.png", "sub/c.png"):
        save_image(images / name, size=(6, 4))
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 6},
                       {"id": 2, "file_name": "b.png", "height": 4, "width": 6},
                       {"id": 3, "file_name": "sub/c.png", "height": 4, "width": 6}],
            "categories": categories or [{"id": 7, "name": "cup", "color": [255, 0, 0]},
                                         {"id": 3, "name": "table", "color": [0, 0, 255]}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0,
                             "segmentation": [[0, 0, 6, 0, 6, 4, 0, 4]]},
                            {"id": 2, "image_id": 1, "category_id": 7, "iscrowd": 0,
                             "segmentation": [[2, 1, 4, 1, 4, 3, 2, 3]]},
                            {"id": 3, "image_id": 3, "category_id": 7, "iscrowd": 0,
                             "segmentation": {"size": [4, 6], "counts": [4, 4, 16]}}]}
    path = tmp_path / "annotations/instances_default.json"
    path.parent.mkdir()
    path.write_text(json.dumps(coco))
    return path


def test_coco_import_keeps_out_images_without_annotations_and_takes_category_colours(tmp_path):
    path = write_coco(tmp_path)  # images/ next to annotations/, found without --images
    import_annotations("coco", [f"train={path}"], tmp_path / "data")
    out = tmp_path / "data"
    assert json.loads((out / "id2label.json").read_text()) == {"0": "background", "1": "table", "2": "cup"}
    assert json.loads((out / "colour_map.json").read_text()) == {"#0000FF": 1, "#FF0000": 2}
    # the cup (2×2) lies on the table (the whole image): the smaller instance is on top (coco.py's rule)
    expected = np.ones((4, 6), dtype=np.uint8)
    expected[1:3, 2:4] = 2
    np.testing.assert_array_equal(read_mask(out / "masks/train/a.png"), expected)
    c = np.zeros((4, 6), dtype=np.uint8)
    c[:, 1] = 2  # RLE runs 4 × 0, 4 × 1, 16 × 0 down the columns: column 1
    np.testing.assert_array_equal(read_mask(out / "masks/train/sub/c.png"), c)
    assert (out / "unannotated.txt").read_text() == "b.png\n"
    assert not (out / "images/train/a.png").is_symlink()


def test_written_rle_file_has_worked_areas_and_boxes_and_imports_back_to_the_same_masks(tmp_path):
    images = tmp_path / "images"
    for name in ("a.png", "sub/c.png"):
        save_image(images / name, size=(4, 3))
    a = np.array([[0, 0, 0, 2], [1, 0, 0, 2], [1, 0, 2, 0]], dtype=np.uint8)
    c = np.array([[2, 2, 2, 2], [2, 2, 2, 2], [2, 2, 2, 2]], dtype=np.uint8)
    items = [MaskToExport(images / "a.png", PurePosixPath("a.png"), a, score=0.5),
             MaskToExport(images / "sub/c.png", PurePosixPath("sub/c.png"), c)]
    out = export_masks("coco", items, tmp_path / "pre.json", {0: "background", 1: "table", 2: "cup"})
    coco = json.loads(out.read_text())
    assert coco["categories"] == [{"id": 1, "name": "table", "supercategory": ""},
                                  {"id": 2, "name": "cup", "supercategory": ""}]
    table, cup, cup_c = coco["annotations"]
    # column-major pixel numbers: (row r, column c) is 3c + r. table: (1,0), (2,0) = 1, 2 → runs 1×0, 2×1, 9×0;
    # cup: (2,2), (0,3), (1,3) = 8, 9, 10 → runs 8×0, 3×1, 1×0
    assert (table["category_id"], table["area"], table["bbox"]) == (1, 2, [0.0, 1.0, 1.0, 2.0])
    assert decode_compressed_counts(table["segmentation"]["counts"]) == [1, 2, 9]
    assert (cup["area"], cup["bbox"], cup["score"]) == (3, [2.0, 0.0, 2.0, 3.0], 0.5)
    assert decode_compressed_counts(cup["segmentation"]["counts"]) == [8, 3, 1]
    assert cup_c["segmentation"] == {"size": [3, 4], "counts": encode_compressed_counts([0, 12])}
    assert "score" not in cup_c and all(a["iscrowd"] == 0 for a in coco["annotations"])

    import_annotations("coco", [out], tmp_path / "back", images=images)
    np.testing.assert_array_equal(read_mask(tmp_path / "back/masks/train/a.png"), a)
    np.testing.assert_array_equal(read_mask(tmp_path / "back/masks/train/sub/c.png"), c)


def test_missing_images_are_listed_before_anything_is_written(tmp_path):
    path = write_coco(tmp_path)
    (tmp_path / "images/sub/c.png").unlink()
    with pytest.raises(DataError, match=r"image sub/c.png \(id 3\) not found"):
        import_annotations("coco", [path], tmp_path / "data", images=tmp_path / "images")
    assert not (tmp_path / "data").exists()
