"""label_map: raw mask values → class ids (merged, dropped to ignore, or kept), applied where masks are decoded.

A user relies on: training's transforms, the pre-flight check and `hf-segformer evaluate` reading the raw masks
the same way; the check showing which raw values were found, mapped and dropped; the published dataset's card
saying so; recipe mistakes refused when the recipe is read; the Cityscapes recipe's 34 label ids → 19 train ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.images import HEIGHT, WIDTH, save_image, save_mask

from hf_segformer.config.data import DataArguments
from hf_segformer.data.labels import LabelDecoder
from hf_segformer.data.prepare import build_label_decoder, prepare_data, run_data_check
from hf_segformer.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]
ID2LABEL = {0: "road", 1: "sidewalk", 2: "structure"}
# 7 → road, 8 → sidewalk, 11 and 12 merged into structure, 26 dropped by name; 0 and 255 not named: ignored
LABEL_MAP = {7: 0, 8: 1, 11: 2, 12: 2, 26: 255}
RAW_VALUES = [0, 7, 8, 11, 12, 26, 255]


def expected_ids(raw: np.ndarray, default_ignore: bool = True) -> np.ndarray:
    return np.vectorize(lambda v: LABEL_MAP.get(int(v), 255 if default_ignore else int(v)))(raw)


def raw_mask(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(RAW_VALUES, size=(HEIGHT, WIDTH))


@pytest.fixture
def raw_data(tmp_path: Path) -> Path:
    """Three training and two validation pairs whose masks hold raw values (Cityscapes-style label ids)."""
    for split, count in (("train", 3), ("validation", 2)):
        for i in range(count):
            save_image(tmp_path / f"data/images/{split}/{i}.png", seed=i)
            save_mask(tmp_path / f"data/masks/{split}/{i}.png", raw_mask(10 * (split == "train") + i))
    return tmp_path / "data"


def data_args(data_dir: Path, **fields) -> DataArguments:
    return DataArguments(data_dir=str(data_dir), id2label=json.dumps(ID2LABEL), label_map=json.dumps(LABEL_MAP),
                         check_num_proc=1, **fields)


@pytest.mark.parametrize("mode", ["L", "P", "I;16"])
def test_the_decoder_maps_merges_and_drops_raw_values(tmp_path: Path, mode: str) -> None:
    raw = raw_mask(0)
    full_palette = [(i, 255 - i, 7 * i % 256) for i in range(256)]  # a short one would have PIL renumber indices
    path = save_mask(tmp_path / "mask.png", raw, mode=mode, palette=full_palette)
    decoder = LabelDecoder(label_map=LABEL_MAP)
    np.testing.assert_array_equal(decoder(Image.open(path)), expected_ids(raw))
    label, raw_counts = decoder.decode_counted(Image.open(path))
    assert raw_counts == {v: int((raw == v).sum()) for v in RAW_VALUES if (raw == v).any()}


def test_keep_leaves_the_values_the_map_does_not_name() -> None:
    raw = np.array([[0, 7], [2, 11]], dtype=np.uint8)
    np.testing.assert_array_equal(LabelDecoder(label_map={7: 0, 11: 1}, label_map_default="keep")(raw),
                                  [[0, 0], [2, 1]])
    np.testing.assert_array_equal(LabelDecoder(label_map={7: 0, 11: 1}, ignore_index=-1)(raw.astype(np.int32)),
                                  [[-1, 0], [-1, 1]])


def test_training_evaluation_and_the_check_read_the_raw_masks_alike(tmp_path: Path, raw_data: Path,
                                                                    saved_model, capsys) -> None:
    from hf_segformer.cli import main
    from hf_segformer.data.training_data import build_datasets
    from hf_segformer.training.arguments import parse_recipe

    recipe = ["--data_dir", str(raw_data), "--id2label", json.dumps(ID2LABEL), "--label_map", json.dumps(LABEL_MAP),
              "--check_num_proc", "1"]
    args, _, training_args = parse_recipe([*recipe, "--output_dir", str(tmp_path / "run"), "--precision", "fp32",
                                           "--crop_size", "32", "--eval_size", "32", "--hflip_prob", "0",
                                           "--train_scale", str(WIDTH), str(HEIGHT), "--ratio_range", "1", "1",
                                           "--photometric_distortion", "false", "--cat_max_ratio", "1",
                                           "--cache_images", "false", "--dataloader_num_workers", "0"])
    data, id2label = prepare_data(args, seed=0)
    report = run_data_check(data, args, id2label)
    masks = {split: [np.asarray(Image.open(raw_data / f"masks/{split}/{i}.png")) for i in range(n)]
             for split, n in (("train", 3), ("validation", 2))}
    for split, raws in masks.items():  # the check's histogram counts the mapped ids
        mapped = np.concatenate([expected_ids(r).ravel() for r in raws])
        assert report.splits[split].pixel_counts == [int((mapped == c).sum()) for c in (0, 1, 2, 255)]

    train, evaluation, _ = build_datasets(data, args, training_args, report, num_labels=len(id2label))
    for i, raw in enumerate(masks["validation"]):  # evaluation's transform: native size, every value mapped
        np.testing.assert_array_equal(np.asarray(evaluation[i]["labels"]), expected_ids(raw))
    for i in range(3):  # training's transform: a crop of the mapped mask, never a raw value
        values = set(np.unique(np.asarray(train[i]["labels"])).tolist())
        assert values <= {0, 1, 2, 255} and values & {0, 1, 2}

    model, out = saved_model(ID2LABEL), tmp_path / "eval"
    assert main(["evaluate", "--model", str(model), *recipe, "--eval_output_dir", str(out)]) == 0
    confusion = np.load(out / "eval_confusion_matrix.npy")
    assert confusion.sum(axis=1).tolist() == report.splits["validation"].pixel_counts[:3]  # reference rows


def test_the_check_reports_raw_values_found_mapped_and_dropped(tmp_path: Path, raw_data: Path, capsys) -> None:
    args = data_args(raw_data, label_map_default="ignore")
    args.label_map_ids[99] = 1  # named by the map, in no mask
    data, id2label = prepare_data(args, seed=0)
    report = run_data_check(data, args, id2label)
    printed = capsys.readouterr().out
    assert report.label_map_targets == {0: 255, 7: 0, 8: 1, 11: 2, 12: 2, 26: 255, 99: 1, 255: 255}
    raw = np.concatenate([np.asarray(Image.open(p)).ravel() for p in sorted((raw_data / "masks/train").glob("*"))])
    assert report.splits["train"].raw_counts == {v: int((raw == v).sum()) for v in RAW_VALUES}
    summary = ("Label map: 7 raw values found, 4 mapped onto 3 classes, 3 dropped (ignored); named by the map but "
               "in no mask: 99.")
    assert summary in printed
    assert f"| 11 | 2 structure | {int((raw == 11).sum()):,} |" in printed
    assert "| 26 | 255 (dropped: ignored) |" in printed
    report.save(tmp_path / "out")
    assert summary in (tmp_path / "out/class_histogram.md").read_text()
    from hf_segformer.data.preflight import DataReport
    assert DataReport.load(tmp_path / "out/class_histogram.json") == report


def test_the_dataset_card_carries_the_label_map(raw_data: Path) -> None:
    from hf_segformer.hub.dataset_card import build_dataset_card

    args = data_args(raw_data)
    data, id2label = prepare_data(args, seed=0)
    card = str(build_dataset_card(run_data_check(data, args, id2label), "user/roads", license="cc-by-4.0"))
    assert "mapped from the source's raw mask values by a label map" in card
    assert "| 12 | 2 structure |" in card and "| 0 | 255 (dropped: ignored) |" in card


@pytest.mark.parametrize("fields, named", [
    ({"label_map": {7: 3}}, r"not classes \(7: 3\)"),  # id2label has 3 classes
    ({"label_map": {"road": 0}}, "keys and values must be integers"),
    ({"label_map": {7: 0}, "label_map_default": "drop"}, "label_map_default must be one of ignore, keep"),
    ({"label_map": {7: 0}, "colour_map": {"#FF0000": 0}}, "label_map and colour_map"),
    ({"label_map": {7: 0}, "reduce_labels": True}, "label_map and reduce_labels"),
    ({"label_map": {7: 0}, "binary_masks": True}, r"label_map and binary_masks.*\{0: 0, 255: 1\}"),
    ({"label_map": "[1, 2]"}, "expected a mapping"),
])
def test_recipe_mistakes_are_refused_when_read(fields: dict, named: str) -> None:
    with pytest.raises(RecipeError, match=named):
        DataArguments(id2label=json.dumps(ID2LABEL), **fields)


def test_keys_written_as_text_and_the_ignore_index_as_a_target_are_accepted() -> None:
    args = DataArguments(id2label=json.dumps(ID2LABEL), label_map='{"7": 0, "26": 255}')
    assert args.label_map_ids == {7: 0, 26: 255}
    assert DataArguments(num_labels=2, ignore_index=-1, label_map={5: -1, 6: 1}).label_map_ids == {5: -1, 6: 1}


def test_a_target_outside_the_classes_named_by_id2label_json_is_refused_before_the_check(raw_data: Path) -> None:
    (raw_data / "id2label.json").write_text(json.dumps(ID2LABEL))
    with pytest.raises(RecipeError, match="not classes"):
        prepare_data(DataArguments(data_dir=str(raw_data), label_map={7: 0, 8: 5}), seed=0)


CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                        26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def test_the_cityscapes_recipe_maps_the_34_label_ids_to_19_train_ids() -> None:
    from hf_segformer.training.arguments import parse_recipe

    args, _, _ = parse_recipe(["--config", str(ROOT / "recipes/cityscapes/segformer-b0.yaml"),
                               "--output_dir", "unused", "--precision", "fp32"])
    assert args.mask_suffix == "_gtFine_labelIds"
    decoded = build_label_decoder(args)(np.arange(34, dtype=np.uint8)[None])[0]
    assert decoded.tolist() == [CITYSCAPES_TRAIN_IDS.get(i, 255) for i in range(34)]
    assert len(args.id2label_map) == 19
