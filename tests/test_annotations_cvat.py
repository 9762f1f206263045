"""CVAT "Segmentation mask 1.1" exports → class-id masks, and masks → an archive CVAT imports, on hand-made
exports whose answers are worked out by hand."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from PIL import Image
from support.images import read_mask, save_image, save_mask

from hf_segformer.data.annotations.cvat_mask import parse_labelmap
from hf_segformer.data.annotations.exporter import export_masks
from hf_segformer.data.annotations.importer import import_annotations
from hf_segformer.data.annotations.preannotations import MaskToExport
from hf_segformer.errors import DataError

X = 255
LABELMAP = "# label:color_rgb:parts:actions\nbackground:0,0,0::\nroad:128,64,128::\ncar:0,0,142::\n"
K, R, C = (0, 0, 0), (128, 64, 128), (0, 0, 142)  # background, road, car
FRAME_0 = [[K, K, R, R], [R, R, R, C], [C, C, K, K]]
FRAME_2 = [[C, C, C, C], [C, C, C, C], [C, C, C, K]]


def write_export(root: Path, frame_0=FRAME_0, labelmap: str = LABELMAP) -> Path:
    (root / "ImageSets/Segmentation").mkdir(parents=True)
    (root / "labelmap.txt").write_text(labelmap)
    (root / "ImageSets/Segmentation/Train.txt").write_text("frame_000\nframe_001\n")  # frame_001: no shapes
    (root / "ImageSets/Segmentation/Validation.txt").write_text("frame_002\n")
    save_mask(root / "SegmentationClass/frame_000.png", np.array(frame_0), "RGB")
    save_mask(root / "SegmentationClass/frame_002.png", np.array(FRAME_2), "RGB")
    save_mask(root / "SegmentationObject/frame_000.png", np.zeros((3, 4, 3)), "RGB")
    return root


@pytest.fixture
def frames(tmp_path) -> Path:
    for name in ("frame_000.png", "frame_001.png", "frame_002.jpg"):
        save_image(tmp_path / "frames" / name, size=(4, 3))
    return tmp_path / "frames"


def test_subsets_become_splits_colours_become_class_ids_and_shapeless_images_are_listed(tmp_path, frames):
    summary = import_annotations("cvat-mask", [write_export(tmp_path / "export")], tmp_path / "data", images=frames)
    out = tmp_path / "data"
    assert json.loads((out / "id2label.json").read_text()) == {"0": "background", "1": "road", "2": "car"}
    assert json.loads((out / "colour_map.json").read_text()) == {"#000000": 0, "#804080": 1, "#00008E": 2}
    np.testing.assert_array_equal(read_mask(out / "masks/train/frame_000.png"), [[0, 0, 1, 1], [1, 1, 1, 2],
                                                                                [2, 2, 0, 0]])
    np.testing.assert_array_equal(read_mask(out / "masks/validation/frame_002.png"), [[2] * 4, [2] * 4, [2, 2, 2, 0]])
    assert (out / "images/validation/frame_002.jpg").read_bytes() == (frames / "frame_002.jpg").read_bytes()
    assert (out / "unannotated.txt").read_text() == "frame_001\n"
    assert summary.images_per_split == {"train": 1, "validation": 1}
    assert summary.pixels_per_class == {"background": 5, "road": 5, "car": 14}


def test_the_zip_cvat_downloads_gives_the_same_data_and_unlabelled_can_be_ignored(tmp_path, frames):
    folder = write_export(tmp_path / "task_7_export")
    archive = tmp_path / "task_7.zip"
    with zipfile.ZipFile(archive, "w") as zipped:  # zipped with its folder, as people re-zip exports
        for path in folder.rglob("*"):
            zipped.write(path, path.relative_to(tmp_path).as_posix())
    import_annotations("cvat-mask", [archive], tmp_path / "data", images=frames, unlabelled="ignore")
    out = tmp_path / "data"
    assert json.loads((out / "id2label.json").read_text()) == {"0": "road", "1": "car"}
    np.testing.assert_array_equal(read_mask(out / "masks/train/frame_000.png"), [[X, X, 0, 0], [0, 0, 0, 1],
                                                                                [1, 1, X, X]])



def _damage(archive: Path, member: str, how: str) -> None:
    """Overwrite the middle of a member's compressed bytes, or cut a PNG short before zipping it again."""
    with zipfile.ZipFile(archive) as zipped:
        info = zipped.getinfo(member)
        contents = {name: zipped.read(name) for name in zipped.namelist()}
    if how == "truncated png":
        contents[member] = contents[member][: len(contents[member]) // 2]
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
            for name, data in contents.items():
                zipped.writestr(name, data)
        return
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start : start + info.compress_size] = bytes(b ^ 0x5A for b in data[start : start + info.compress_size])
    archive.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["garbled", "truncated png"])
def test_a_damaged_zip_is_one_error_naming_the_archive_and_the_member(tmp_path, frames, how, capsys):
    from hf_segformer import cli

    folder = write_export(tmp_path / "export")
    archive = tmp_path / "task_7.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(folder.rglob("*")):
            zipped.write(path, path.relative_to(folder).as_posix())
    _damage(archive, "SegmentationClass/frame_000.png", how)
    argv = ["import-annotations", "--format", "cvat-mask", "--src", str(archive), "--out", str(tmp_path / "data"),
            "--images", str(frames)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"{archive}: member SegmentationClass/frame_000.png" in err[-1]
    assert "download" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "data").exists()
    archive.write_bytes(archive.read_bytes()[:-200])  # cut short: its zip directory is gone
    assert cli.main(argv) == 2
    assert f"{archive}: not a folder nor a zip archive" in capsys.readouterr().err


def test_an_ignore_index_past_255_gives_16_bit_masks_with_the_same_values(tmp_path, frames):
    import_annotations("cvat-mask", [write_export(tmp_path / "export")], tmp_path / "data", images=frames,
                       unlabelled="ignore", ignore_index=1000)
    with Image.open(tmp_path / "data/masks/train/frame_000.png") as mask:
        assert mask.mode.startswith("I")  # a palette PNG cannot hold 1000
    np.testing.assert_array_equal(read_mask(tmp_path / "data/masks/train/frame_000.png"),
                                  [[1000, 1000, 0, 0], [0, 0, 0, 1], [1, 1, 1000, 1000]])

def test_labelmap_without_colours_means_the_voc_colour_map_and_grey_masks_hold_label_indices(tmp_path, frames):
    root = write_export(tmp_path / "export", labelmap="background:::\ncat:::\ndog:::\n")
    # VOC colours by label index: 0 black, 1 (128, 0, 0), 2 (0, 128, 0)
    save_mask(root / "SegmentationClass/frame_000.png",
              np.array([[(128, 0, 0)] * 4, [(0, 128, 0)] * 4, [(0, 0, 0)] * 4]), "RGB")
    Image.fromarray(np.array([[2, 2, 1, 0]] * 3, dtype=np.uint8), "L").save(root / "SegmentationClass/frame_002.png")
    import_annotations("cvat-mask", [root], tmp_path / "data", images=frames)
    np.testing.assert_array_equal(read_mask(tmp_path / "data/masks/train/frame_000.png"), [[1] * 4, [2] * 4, [0] * 4])
    np.testing.assert_array_equal(read_mask(tmp_path / "data/masks/validation/frame_002.png"), [[2, 2, 1, 0]] * 3)


@pytest.mark.parametrize("setup, message", [
    (lambda root, frames: save_mask(root / "SegmentationClass/frame_000.png",
                                    np.array([[K, K, R, (1, 2, 3)]] * 3), "RGB"),
     r"frame_000.png: colour\(s\) #010203 are not declared in .*labelmap.txt"),
    (lambda root, frames: (root / "labelmap.txt").write_text(LABELMAP + "bus:1,2,3:\n"),
     r"labelmap.txt line 5: 'bus:1,2,3:' has 3 ':'-separated fields"),
    (lambda root, frames: (root / "labelmap.txt").write_text(LABELMAP + "truck:0,0,142::\n"),
     r"labels 'car' and 'truck' share the colour \(0, 0, 142\)"),
    (lambda root, frames: (frames / "frame_002.jpg").unlink(),
     r"item frame_002: no image frame_002\.<"),
])
def test_a_bad_export_is_an_error_naming_the_file(tmp_path, frames, setup, message):
    root = write_export(tmp_path / "export")
    setup(root, frames)
    with pytest.raises(DataError, match=message):
        import_annotations("cvat-mask", [root], tmp_path / "data", images=frames)
    assert not (tmp_path / "data").exists()


def test_written_archive_has_the_worked_labelmap_colours_and_instances_and_reads_back(tmp_path, frames):
    id2label = {0: "background", 1: "road", 2: "car"}
    mask = np.array([[0, 0, 1, 1], [1, 1, 1, 2], [2, 2, 0, 0]], dtype=np.uint8)
    only_car = np.array([[2, 2, 2, 2], [2, 2, 2, 2], [2, 2, 2, X]], dtype=np.uint8)
    items = [MaskToExport(frames / "frame_000.png", PurePosixPath("frame_000.png"), mask),
             MaskToExport(frames / "frame_002.jpg", PurePosixPath("frame_002.jpg"), only_car)]
    out = export_masks("cvat-mask", items, tmp_path / "pre", id2label, colours={0: K, 1: R, 2: C})
    assert (out / "labelmap.txt").read_text() == LABELMAP
    assert (out / "ImageSets/Segmentation/default.txt").read_text() == "frame_000\nframe_002\n"
    np.testing.assert_array_equal(read_mask(out / "SegmentationClass/frame_000.png"), np.array(FRAME_0))
    # instances numbered per image in class order, in the VOC colour map: 1 (128, 0, 0), 2 (0, 128, 0)
    objects = read_mask(out / "SegmentationObject/frame_000.png")
    assert tuple(objects[0, 2]) == (128, 0, 0) and tuple(objects[1, 3]) == (0, 128, 0) and not objects[0, 0].any()
    assert tuple(read_mask(out / "SegmentationObject/frame_002.png")[0, 0]) == (128, 0, 0)  # car is instance 1 here
    assert tuple(read_mask(out / "SegmentationClass/frame_002.png")[2, 3]) == K  # ignored → unlabelled

    import_annotations("cvat-mask", [out], tmp_path / "back", images=frames)
    np.testing.assert_array_equal(read_mask(tmp_path / "back/masks/train/frame_000.png"), mask)

    archive = export_masks("cvat-mask", items, tmp_path / "pre.zip", id2label, colours={0: K, 1: R, 2: C})
    with zipfile.ZipFile(archive) as zipped:
        assert sorted(zipped.namelist()) == sorted(str(p.relative_to(out).as_posix()) for p in out.rglob("*")
                                                   if p.is_file())


def test_classes_without_usable_colours_get_distinct_non_black_ones(tmp_path, frames):
    # road would take VOC colour 0 (black, CVAT's background): it gets the next free one, (128, 0, 0); car's own
    # VOC colour 1 is then taken, so it gets (0, 128, 0)
    items = [MaskToExport(frames / "frame_000.png", PurePosixPath("frame_000.png"), np.zeros((3, 4), np.uint8))]
    out = export_masks("cvat-mask", items, tmp_path / "pre", {0: "road", 1: "car"}, background_class=None)
    assert parse_labelmap(out / "labelmap.txt") == [("background", (0, 0, 0)), ("road", (128, 0, 0)),
                                                    ("car", (0, 128, 0))]


def test_keep_unannotated_imports_shapeless_images_as_all_background(tmp_path, frames):
    import_annotations("cvat-mask", [write_export(tmp_path / "export")], tmp_path / "data", images=frames,
                       keep_unannotated=True, split="train")
    out = tmp_path / "data"
    np.testing.assert_array_equal(read_mask(out / "masks/train/frame_001.png"), np.zeros((3, 4)))
    assert sorted(p.name for p in (out / "masks/train").iterdir()) == ["frame_000.png", "frame_001.png",
                                                                      "frame_002.png"]  # --split: all in train
    assert not (out / "unannotated.txt").exists()
