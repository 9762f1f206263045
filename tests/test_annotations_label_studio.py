"""Label Studio JSON exports (brush RLE, polygons, rectangles) → class-id masks, and masks → predictions, on
hand-made exports whose masks are worked out by hand."""

from __future__ import annotations

import copy
import json
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from support.images import read_mask, save_image

from hf_segformer.data.annotations import brush_rle
from hf_segformer.data.annotations.exporter import export_masks
from hf_segformer.data.annotations.importer import import_annotations
from hf_segformer.data.annotations.label_studio import image_candidates, parse_label_config
from hf_segformer.data.annotations.preannotations import LabelStudioOptions, MaskToExport
from hf_segformer.errors import DataError

W, H = 8, 4  # 8 × 4 images: 25% of the width is 2 pixels, 25% of the height 1 pixel, exactly
X = 255  # ignore_index

CAT_BRUSH = np.zeros((H, W), dtype=bool)
CAT_BRUSH[0:2, 0:3] = True  # rows 0-1, columns 0-2

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="dog" background="#00ff00"/><Label value="cat" background="red"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="dog" background="#00ff00"/></PolygonLabels>
</View>"""


def region(rid: str, kind: str, label: str, **value) -> dict:
    return {"id": rid, "type": kind, "from_name": "tag", "to_name": "image", "original_width": W,
            "original_height": H, "image_rotation": 0, "value": {**value, kind: [label]}}


def export_tasks() -> list[dict]:
    brush = region("r1", "brushlabels", "cat", format="rle", rle=brush_rle.encode_mask(CAT_BRUSH))
    # x 25%..62.5% of 8 = pixels 2..5, y 25%..75% of 4 = 1..3: covers columns 2-4 of rows 1-2
    polygon = region("r2", "polygonlabels", "dog", points=[[25, 25], [62.5, 25], [62.5, 75], [25, 75]])
    choice = {"id": "c1", "type": "choices", "from_name": "q", "to_name": "image", "value": {"choices": ["ok"]}}
    everything_dog = region("r5", "rectanglelabels", "dog", x=0, y=0, width=100, height=100, rotation=0)
    left_half_cat = region("r6", "rectanglelabels", "cat", x=0, y=0, width=50, height=100, rotation=0)
    return [
        {"id": 1, "data": {"image": "/data/upload/3/1a2b3c4d-a.png"}, "file_upload": "1a2b3c4d-a.png",
         "annotations": [{"id": 11, "was_cancelled": False, "result": [brush, polygon, choice]}]},
        {"id": 2, "data": {"image": "/data/upload/3/deadbeef-c.png"},
         "annotations": [{"id": 21, "was_cancelled": True, "result": [copy.deepcopy(polygon)]}]},
        {"id": 3, "data": {"image": "/data/local-files/?d=photos/b.png"},
         "annotations": [{"id": 32, "updated_at": "2024-02-01T10:00:00Z", "result": [left_half_cat]},
                         {"id": 31, "updated_at": "2024-01-01T10:00:00Z", "result": [everything_dog]}]},
    ]


@pytest.fixture
def export(tmp_path) -> tuple[Path, Path]:
    store = tmp_path / "store"
    save_image(store / "a.png", size=(W, H), seed=1)
    save_image(store / "photos/b.png", size=(W, H), seed=2)
    save_image(store / "c.png", size=(W, H), seed=3)
    path = tmp_path / "project.json"
    path.write_text(json.dumps(export_tasks()))
    return path, store


def test_brush_polygon_and_rectangle_regions_become_the_worked_masks(export, tmp_path):
    path, store = export
    summary = import_annotations("label-studio", [path], tmp_path / "data", images=store)
    out = tmp_path / "data"
    assert json.loads((out / "id2label.json").read_text()) == {"0": "cat", "1": "dog"}  # sorted names
    # cat brush on rows 0-1 × columns 0-2, dog polygon on rows 1-2 × columns 2-4: pixel (1, 2) is claimed by
    # both and ignored; nothing else is painted, and unpainted pixels are ignored by default.
    np.testing.assert_array_equal(read_mask(out / "masks/train/a.png"), [[0, 0, 0, X, X, X, X, X],
                                                                         [0, 0, X, 1, 1, X, X, X],
                                                                         [X, X, 1, 1, 1, X, X, X],
                                                                         [X] * 8])
    # task 3: the later of two annotations (left half cat), from local storage (d=photos/b.png)
    np.testing.assert_array_equal(read_mask(out / "masks/train/photos/b.png"), [[0] * 4 + [X] * 4] * 4)
    assert (out / "images/train/a.png").read_bytes() == (store / "a.png").read_bytes()
    assert not (out / "images/train/a.png").is_symlink()
    assert (out / "unannotated.txt").read_text() == "/data/upload/3/deadbeef-c.png\n"  # only a cancelled annotation
    report = json.loads((out / "import_report.json").read_text())
    assert report["counters"] == {"tasks": 3, "tasks with several annotations": 1, "contested pixels": 1,
                                  "results skipped (not regions)": 1}
    assert summary.images_per_split == {"train": 2} and summary.ignored_pixels == 32 - 10 + 16
    assert not (out / "colour_map.json").exists()  # no label config: Label Studio's colours are unknown


def test_label_config_gives_class_order_and_colours_and_smaller_region_wins(export, tmp_path):
    path, store = export
    (tmp_path / "config.xml").write_text(CONFIG)
    import_annotations("label-studio", [path], tmp_path / "data", images=store,
                       label_config=str(tmp_path / "config.xml"), unlabelled="background", overlaps="smaller")
    out = tmp_path / "data"
    assert json.loads((out / "id2label.json").read_text()) == {"0": "background", "1": "dog", "2": "cat"}
    assert json.loads((out / "colour_map.json").read_text()) == {"#00FF00": 1, "#FF0000": 2}
    # cat and dog both cover 6 pixels: on equal sizes the later region (the dog polygon) is on top
    np.testing.assert_array_equal(read_mask(out / "masks/train/a.png"), [[2, 2, 2, 0, 0, 0, 0, 0],
                                                                         [2, 2, 1, 1, 1, 0, 0, 0],
                                                                         [0, 0, 1, 1, 1, 0, 0, 0],
                                                                         [0] * 8])
    from PIL import Image

    palette = Image.open(out / "masks/train/a.png").getpalette()
    assert palette[3:9] == [0, 255, 0, 255, 0, 0] and palette[255 * 3 : 256 * 3] == [255, 255, 255]


def test_image_references_of_uploads_local_storage_and_urls():
    assert image_candidates("/data/upload/3/1a2b3c4d-a.png") == ["1a2b3c4d-a.png", "a.png"]
    assert image_candidates("/data/local-files/?d=photos/sub/b%201.png") == ["photos/sub/b 1.png", "b 1.png"]
    assert image_candidates("https://bucket.example/x/photo.jpg?X-Amz=1") == ["photo.jpg"]


@pytest.mark.parametrize("edit, message", [
    (lambda t: t[0]["annotations"][0]["result"][1]["value"].update(polygonlabels=["horse"]),
     r"task 1, result r2: label 'horse' is not one of the classes \['dog', 'cat'\] of the label config"),
    (lambda t: t[0]["annotations"][0]["result"][0].update(original_width=9),
     r"task 1, result r1: drawn on a 9×4 image, but .*a.png is 8×4"),
    (lambda t: t[0]["annotations"][0]["result"][1]["value"].update(polygonlabels=["dog", "cat"]),
     r"task 1, result r2: a region needs exactly one label .* \['dog', 'cat'\]"),
    (lambda t: t[0].update(data={"image": "/data/upload/3/1a2b3c4d-missing.png"}, file_upload="1a2b3c4d-missing.png"),
     r"task 1: image /data/upload/3/1a2b3c4d-missing.png not found"),
])
def test_a_bad_export_is_an_error_naming_the_task_and_result(export, tmp_path, edit, message):
    path, store = export
    tasks = export_tasks()
    edit(tasks)
    path.write_text(json.dumps(tasks))
    (tmp_path / "config.xml").write_text(CONFIG)
    with pytest.raises(DataError, match=message):
        import_annotations("label-studio", [path], tmp_path / "data", images=store,
                           label_config=str(tmp_path / "config.xml"))
    assert not (tmp_path / "data").exists()


def test_a_region_that_fails_while_writing_leaves_no_output_and_an_existing_output_is_refused(export, tmp_path):
    path, store = export
    tasks = export_tasks()
    brush = tasks[0]["annotations"][0]["result"][0]["value"]
    brush["rle"] = brush["rle"][:7]
    path.write_text(json.dumps(tasks))
    with pytest.raises(DataError, match="task 1, result r1: the brush RLE ends"):
        import_annotations("label-studio", [path], tmp_path / "data", images=store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project.json", "store"]  # no partial folder left

    (tmp_path / "data").mkdir()
    (tmp_path / "data/notes.txt").write_text("mine")
    path.write_text(json.dumps(export_tasks()))
    with pytest.raises(DataError, match="already exists; choose a new output or pass --overwrite"):
        import_annotations("label-studio", [path], tmp_path / "data", images=store)
    import_annotations("label-studio", [path], tmp_path / "data", images=store, overwrite=True)
    assert (tmp_path / "data/notes.txt").read_text() == "mine" and (tmp_path / "data/masks/train/a.png").is_file()


def test_overwrite_never_writes_through_a_link_to_the_users_file(export, tmp_path):
    path, store = export
    out = tmp_path / "data"
    (out / "images/train").mkdir(parents=True)
    (out / "images/train/a.png").symlink_to(store / "c.png")  # a link left there, pointing at a user's image
    before = (store / "c.png").read_bytes()
    import_annotations("label-studio", [path], out, images=store, overwrite=True)
    assert (store / "c.png").read_bytes() == before
    assert not (out / "images/train/a.png").is_symlink()
    assert (out / "images/train/a.png").read_bytes() == (store / "a.png").read_bytes()


def test_predictions_json_holds_the_worked_rle_model_version_score_and_a_matching_config(tmp_path):
    mask = np.array([[0, 1, 1], [1, 1, 0]], dtype=np.uint8)  # class 1 where the worked 2×3 brush region is
    item = MaskToExport(tmp_path / "a.png", PurePosixPath("sub/a.png"), mask, score=0.25)
    out = export_masks("label-studio", [item], tmp_path / "pre.json", {0: "background", 1: "cat"},
                       model_version="run-7",
                       label_studio=LabelStudioOptions(image_url_prefix="/data/local-files/?d=p/"))
    (task,) = json.loads(out.read_text())
    assert task["data"] == {"image": "/data/local-files/?d=p/sub/a.png"}
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == "run-7" and prediction["score"] == 0.25
    (result,) = prediction["result"]  # background is not a region
    assert (result["type"], result["from_name"], result["to_name"]) == ("brushlabels", "tag", "image")
    assert (result["original_width"], result["original_height"]) == (3, 2)
    assert result["value"] == {"format": "rle", "brushlabels": ["cat"],
                               "rle": [0, 0, 0, 24, 57, 27, 252, 96, 23, 255, 227, 0]}  # test_brush_rle's worked bytes
    names, _ = parse_label_config(tmp_path / "pre.label_config.xml")
    assert names == ["cat"]
    with pytest.raises(DataError, match="already exists"):
        export_masks("label-studio", [item], tmp_path / "pre.json", {0: "background", 1: "cat"})
