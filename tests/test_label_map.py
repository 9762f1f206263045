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
    _, raw_counts = decoder.decode_counted(Image.open(path))
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


def test_a_model_trained_with_a_label_map_evaluates_the_raw_masks_without_its_recipe(tmp_path: Path,
                                                                                      raw_data: Path) -> None:
    """The map travels in preprocessor_config.json: `evaluate --model RUN --data_dir RAW` scores the raw masks as
    training's own evaluation did (fp32 both), where without it the raw ids would be out of range."""
    from transformers import AutoImageProcessor

    from hf_segformer.cli import main
    from hf_segformer.training.arguments import parse_recipe
    from hf_segformer.training.run import main as train

    run = tmp_path / "run"
    results = train(*parse_recipe([
        "--data_dir", str(raw_data), "--id2label", json.dumps(ID2LABEL), "--label_map", json.dumps(LABEL_MAP),
        "--output_dir", str(run), "--model_variant", "b0", "--precision", "fp32", "--max_steps", "2",
        "--crop_size", "32", "--eval_size", "32", "--train_scale", str(WIDTH), str(HEIGHT), "--cat_max_ratio", "1",
        "--per_device_train_batch_size", "3", "--per_device_eval_batch_size", "2", "--learning_rate", "0.01",
        "--report_to", "none", "--dataloader_num_workers", "0", "--check_num_proc", "1"]))
    processor = AutoImageProcessor.from_pretrained(run)
    assert processor.label_map == {str(k): v for k, v in LABEL_MAP.items()}
    assert processor.label_map_default == "ignore"

    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(run), "--data_dir", str(raw_data), "--eval_output_dir", str(out)]) == 0
    evaluated = json.loads((out / "eval_results.json").read_text())
    assert evaluated["eval_mean_iou"] == pytest.approx(results["eval_mean_iou"], abs=1e-6)
    masks = [np.asarray(Image.open(raw_data / f"masks/validation/{i}.png")) for i in range(2)]
    mapped = np.concatenate([expected_ids(m).ravel() for m in masks])
    confusion = np.load(out / "eval_confusion_matrix.npy")  # reference rows: the mapped ids, 26 and 0 ignored
    assert confusion.sum(axis=1).tolist() == [int((mapped == c).sum()) for c in range(3)]


@pytest.fixture
def model_with_map(saved_model) -> Path:
    """A tiny saved model whose processor carries LABEL_MAP, as training saves it."""
    from hf_segformer.modeling.build import build_image_processor
    from hf_segformer.modeling.saved_label_map import save_label_map

    model = saved_model(ID2LABEL)
    processor = build_image_processor(32)
    save_label_map(processor, DataArguments(id2label=json.dumps(ID2LABEL), label_map=json.dumps(LABEL_MAP)))
    processor.save_pretrained(model)
    return model


def test_the_recipe_map_wins_over_the_saved_one_and_another_decoding_is_refused(model_with_map: Path,
                                                                                raw_data: Path,
                                                                                saved_model) -> None:
    from hf_segformer.modeling.saved_label_map import with_saved_label_map

    used = with_saved_label_map(DataArguments(data_dir=str(raw_data)), str(model_with_map), num_labels=3)
    assert (used.label_map_ids, used.label_map_default) == (LABEL_MAP, "ignore")
    recipe = DataArguments(data_dir=str(raw_data), label_map={7: 1, 8: 0}, label_map_default="keep")
    assert with_saved_label_map(recipe, str(model_with_map)) is recipe
    without = DataArguments(data_dir=str(raw_data))
    assert with_saved_label_map(without, str(saved_model(ID2LABEL, "plain"))) is without
    with pytest.raises(RecipeError, match=r"trained with a label_map.*recipe sets reduce_labels.*--label_map"):
        with_saved_label_map(DataArguments(data_dir=str(raw_data), reduce_labels=True), str(model_with_map))
    with pytest.raises(RecipeError, match="not classes.*Set ignore_index as in training"):
        with_saved_label_map(DataArguments(data_dir=str(raw_data), ignore_index=0), str(model_with_map), 3)


def test_evaluate_refuses_a_contradiction_before_reading_the_data(model_with_map: Path, raw_data: Path,
                                                                  tmp_path: Path, capsys) -> None:
    from hf_segformer.cli import main

    assert main(["evaluate", "--model", str(model_with_map), "--data_dir", str(raw_data), "--binary_masks", "true",
                 "--eval_output_dir", str(tmp_path / "eval")]) == 2
    assert "recipe sets binary_masks" in capsys.readouterr().err
    assert not (tmp_path / "eval").exists()


@pytest.mark.slow  # the deploy report's row workers / a quantized export, through the command
def test_deploy_report_reads_the_raw_masks_with_the_saved_map(model_with_map: Path, raw_data: Path, tmp_path: Path,
                                                             row_workers_in_process) -> None:
    """deploy-report's mIoU on raw masks with only --data_dir is evaluate's (both read the model's saved map)."""
    from hf_segformer.cli import main
    from hf_segformer.commands.deploy_report import main as deploy_report_command

    assert main(["evaluate", "--model", str(model_with_map), "--data_dir", str(raw_data),
                 "--eval_output_dir", str(tmp_path / "eval")]) == 0
    evaluated = json.loads((tmp_path / "eval/eval_results.json").read_text())["eval_mean_iou"]
    assert deploy_report_command([str(model_with_map), "--data_dir", str(raw_data), "--rows", "pytorch-fp32",
                                  "--threads", "1", "--repeats", "1", "--agreement_images", "0",
                                  "--output_dir", str(tmp_path / "deploy")]) == 0
    rows = json.loads((tmp_path / "deploy/deploy_report.json").read_text())["rows"]
    assert rows[0]["miou"] == pytest.approx(evaluated, abs=1e-4)
