"""Pre-flight data check: each kind of bad input is reported (naming the file), the histogram is exact."""

from __future__ import annotations

import re

import numpy as np
import pytest

from hf_segformer import cli
from hf_segformer.config.data import DataArguments
from hf_segformer.config.values import parse_colour_map
from hf_segformer.data.labels import LabelDecoder
from hf_segformer.data.loading import load_data
from hf_segformer.data.preflight import DataReport, check_data, check_split
from hf_segformer.errors import DataError


def run_check(root, num_labels: int = 3, decoder: LabelDecoder | None = None, **data_kwargs) -> DataReport:
    data = load_data(DataArguments(data_dir=str(root), **data_kwargs))
    id2label = {i: f"c{i}" for i in range(num_labels)}
    return check_data(data, decoder or LabelDecoder(), num_labels, id2label, num_proc=1)


def check_error(root, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        run_check(root, **kwargs)
    return str(err.value)


def test_good_data_passes_and_reports_every_split(data_root, make_pairs):
    make_pairs(data_root, ["a", "b"], split="train")
    make_pairs(data_root, ["v"], split="val")
    report = run_check(data_root)
    assert sorted(report.splits) == ["train", "validation"]
    assert report.splits["train"].num_samples == 2 and report.splits["validation"].num_samples == 1
    assert report.splits["train"].image_sizes == [(48, 32), (48, 32)]


def test_missing_mask_names_the_image(data_root, make_pairs, write_image):
    make_pairs(data_root, ["a"])
    write_image(data_root / "images" / "nomask.png")
    message = check_error(data_root)
    assert "nomask.png" in message


def test_mask_file_gone_after_loading_is_reported(data_root, make_pairs):
    make_pairs(data_root, ["a", "b"])
    data = load_data(DataArguments(data_dir=str(data_root)))
    (data_root / "masks" / "b.png").unlink()
    with pytest.raises(DataError) as err:
        check_split(data["train"], "train", LabelDecoder(), 3, num_proc=1)
    assert "b.png" in str(err.value) and "cannot be decoded" in str(err.value)


def test_size_mismatch_names_both_files_and_sizes(data_root, make_pairs, write_mask, stripes):
    make_pairs(data_root, ["a", "b"])
    write_mask(data_root / "masks" / "b.png", stripes(32, 40))
    message = check_error(data_root)
    assert "1 problem)" in message
    line = next(x for x in message.splitlines() if "b.png" in x)
    assert "masks/b.png" in line and "images/b.png" in line
    assert "40×32" in line and "48×32" in line


def test_out_of_range_value_names_file_and_value(data_root, make_pairs, write_mask, stripes):
    make_pairs(data_root, ["a", "b"], mask=stripes(values=(0, 1, 255)))  # 255 = ignore_index: allowed
    write_mask(data_root / "masks" / "b.png", stripes(values=(0, 2, 7)))
    message = check_error(data_root)
    assert "1 problem)" in message
    line = next(x for x in message.splitlines() if "b.png" in x)
    assert "values 7 " in line and "3 classes" in line


def test_value_equal_to_num_labels_is_out_of_range(data_root, make_pairs, stripes):
    make_pairs(data_root, ["a"], mask=stripes(values=(0, 3)))
    assert "values 3 " in check_error(data_root, num_labels=3)


@pytest.mark.parametrize("name,damage", [("garbage.png", "garbage"), ("cut.jpg", "truncate"), ("cut.png", "truncate")])
def test_corrupt_image_is_reported_by_name(data_root, make_pairs, write_image, write_mask, stripes, name, damage):
    make_pairs(data_root, ["good"])
    path = write_image(data_root / "images" / name, size=(48, 32))
    write_mask(data_root / "masks" / (name.split(".")[0] + ".png"), stripes())
    content = path.read_bytes()
    path.write_bytes(b"this is not an image at all" * 20 if damage == "garbage" else content[: len(content) // 2])
    message = check_error(data_root)
    assert "1 problem)" in message
    assert name in message and "cannot be decoded" in message


def test_corrupt_mask_is_reported_by_name(data_root, make_pairs):
    make_pairs(data_root, ["a", "b"])
    (data_root / "masks" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"broken" * 10)
    message = check_error(data_root)
    assert "masks/b.png" in message and "cannot be decoded" in message


def test_palette_masks_pass_with_index_histogram(data_root, make_pairs, stripes):
    make_pairs(data_root, ["a", "b"], mask_mode="P")  # palette colours are far from 0, 1, 2 as grey levels
    report = run_check(data_root)
    expected = np.bincount(stripes().ravel(), minlength=3) * 2
    assert report.splits["train"].pixel_counts == [*expected.tolist(), 0]


def test_unknown_rgb_colour_names_file_and_colour(data_root, make_pairs, stripes):
    colours = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255)], dtype=np.uint8)
    rgb = colours[stripes()]
    make_pairs(data_root, ["a"], mask_mode="RGB", mask=rgb)
    rgb[0, 0] = (1, 2, 3)
    make_pairs(data_root, ["b"], mask_mode="RGB", mask=rgb)
    decoder = LabelDecoder(parse_colour_map({"#FF0000": 0, "0,255,0": 1, "#0000FF": 2}))
    message = check_error(data_root, decoder=decoder)
    assert "1 problem)" in message
    line = next(x for x in message.splitlines() if "b.png" in x)
    assert "#010203" in line


def test_empty_folder_is_an_error(data_root):
    (data_root / "images").mkdir()
    (data_root / "masks").mkdir()
    assert "No images" in check_error(data_root)


def test_empty_split_is_an_error(data_root, make_pairs):
    make_pairs(data_root, ["a"])
    data = load_data(DataArguments(data_dir=str(data_root)))
    with pytest.raises(DataError, match="'train' is empty"):
        check_split(data["train"].select([]), "train", LabelDecoder(), 3)


def test_more_than_20_problems_lists_20_and_counts_the_rest(data_root, make_pairs, stripes):
    make_pairs(data_root, [f"bad{i:02d}" for i in range(25)], mask=stripes(4, 6, values=(0, 9)), size=(6, 4))
    message = check_error(data_root)
    listed = [x for x in message.splitlines() if x.startswith("  - ")]
    assert len(listed) == 20
    assert "(25 problems)" in message and "and 5 more" in message
    assert all(re.search(r"bad\d\d\.png: values 9 ", x) for x in listed)


# --- histogram -------------------------------------------------------------------------------------------------


def hand_made_mask() -> np.ndarray:
    mask = np.zeros((4, 6), dtype=np.uint8)  # 24 pixels
    mask[0, :] = 1  # 6 × class 1
    mask[1, :2] = 2  # 2 × class 2
    mask[3, 3:] = 255  # 3 × ignore
    return mask  # class 0: 24 - 6 - 2 - 3 = 13


def test_class_histogram_counts_are_exact(data_root, make_pairs):
    make_pairs(data_root, ["a", "b", "c"], mask=hand_made_mask(), size=(6, 4))
    report = run_check(data_root)
    assert report.splits["train"].pixel_counts == [39, 18, 6, 9]
    assert report.splits["train"].image_sizes == [(6, 4)] * 3
    table = report.class_table()
    assert "| 0 c0 | 39 | 61.90% |" in table  # share of the 63 labelled pixels
    assert "| 255 (ignored) | 9 |" in table


def test_custom_ignore_index_is_counted_as_ignored(data_root, make_pairs):
    mask = np.array([[0, 1, 9, 9], [2, 2, 2, 0]], dtype=np.uint8)
    make_pairs(data_root, ["a"], mask=mask, size=(4, 2))
    report = run_check(data_root, decoder=LabelDecoder(ignore_index=9))
    assert report.splits["train"].pixel_counts == [2, 1, 3, 2] and report.ignore_index == 9
    assert "| 9 (ignored) | 2 |" in report.class_table()
    mask[0, 0] = 255  # no longer the ignore index: out of range
    make_pairs(data_root, ["a"], mask=mask, size=(4, 2))
    assert "values 255 " in check_error(data_root, decoder=LabelDecoder(ignore_index=9))


def test_reduce_labels_in_the_histogram(data_root, make_pairs):
    mask = np.array([[0, 1, 1, 2], [3, 3, 3, 255]], dtype=np.uint8)
    make_pairs(data_root, ["a"], mask=mask, size=(4, 2))
    report = run_check(data_root, decoder=LabelDecoder(reduce_labels=True))
    assert report.splits["train"].pixel_counts == [2, 1, 3, 2]  # 0 and 255 → ignore, k → k-1
    # without reduce_labels the 3s are out of range for 3 classes
    assert "values 3 " in check_error(data_root)


def test_report_save_load_round_trip(data_root, make_pairs, tmp_path):
    make_pairs(data_root, ["a", "b"], split="train", mask=hand_made_mask(), size=(6, 4))
    make_pairs(data_root, ["v"], split="validation", mask=hand_made_mask(), size=(6, 4))
    report = run_check(data_root)
    report.save(tmp_path / "out")
    written = (tmp_path / "out" / "class_histogram.md").read_text()
    assert written.startswith(report.class_table()) and "Image sizes: train: short side 4–4" in written
    loaded = DataReport.load(tmp_path / "out" / "class_histogram.json")
    assert loaded == report
    assert loaded.id2label == {0: "c0", 1: "c1", 2: "c2"}


# --- CLI -------------------------------------------------------------------------------------------------------


def test_check_data_cli_passes_and_writes_histogram(data_root, make_pairs, tmp_path, capsys):
    make_pairs(data_root, ["a", "b"], mask=hand_made_mask(), size=(6, 4))
    out = tmp_path / "out"
    code = cli.main(["check-data", "--data_dir", str(data_root), "--num_labels", "3", "--output_dir", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    assert "Data check passed: train 2 pairs" in captured.out
    table = (out / "class_histogram.md").read_text()
    assert "| 0 class_0 | 26 |" in table and "| 255 (ignored) | 6 |" in table
    assert (out / "class_histogram.json").is_file()


def test_check_data_cli_fails_with_clear_message(data_root, make_pairs, tmp_path, capsys):
    make_pairs(data_root, ["a", "b"], mask=hand_made_mask(), size=(6, 4))
    (data_root / "masks" / "b.png").write_bytes(b"junk")
    code = cli.main(["check-data", "--data_dir", str(data_root), "--num_labels", "3",
                     "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: " in err and "masks/b.png" in err and "pre-flight check" in err
    assert not (tmp_path / "out" / "class_histogram.md").exists()


@pytest.fixture
def portrait_photo(data_root, write_exif_rotated, write_mask, stripes):
    """A 48×32 (as displayed) JPEG stored as 32×48 with EXIF Orientation=6, and its 48×32 mask."""
    (data_root / "images").mkdir()
    yy, xx = np.mgrid[0:32, 0:48]
    rgb = np.stack([xx * 5, yy * 7, np.full_like(xx, 100)], axis=-1)  # smooth, and not symmetric
    write_exif_rotated(data_root / "images" / "p.jpg", rgb, orientation=6)
    write_mask(data_root / "masks" / "p.png", stripes())
    return data_root


def test_exif_rotated_photo_is_checked_at_its_displayed_size(portrait_photo):
    report = run_check(portrait_photo)
    assert report.splits["train"].image_sizes == [(48, 32)]
