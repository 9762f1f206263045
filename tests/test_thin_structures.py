"""Thin structures: the data check measures how thin each class is, the scale is chosen from it when the recipe
leaves it to auto (explicit values win), and a budgeted run evaluates on a fixed subset, the whole split once at
the end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_segformer.config.data import DataArguments
from hf_segformer.data.preflight import DataReport, SplitReport
from hf_segformer.data.scale_choice import FALLBACK, choose_scale, scale_line, settle_scale
from hf_segformer.data.thinness import ClassThinness, Thinness, half_width_counts, summarise
from hf_segformer.errors import RecipeError


def stripes(widths: tuple[int, ...], gap: int = 12, length: int = 40) -> np.ndarray:
    """Horizontal stripes of class 1, 2, 3... with these widths, on class 0, `gap` rows apart."""
    mask = np.zeros((gap + sum(w + gap for w in widths), length), dtype=np.int64)
    row = gap
    for class_id, width in enumerate(widths, start=1):
        mask[row:row + width] = class_id
        row += width + gap
    return mask


def test_stripes_of_1_3_and_9_pixels_measure_their_half_widths():
    thinness = summarise([half_width_counts(stripes((1, 3, 9)), num_labels=4)])
    for class_id, width in ((1, 1), (2, 3), (3, 9)):
        measured = thinness.classes[class_id]
        assert (measured.median, measured.p10) == (width / 2, width / 2)  # edges included: every pixel of a stripe
        assert measured.pixels == width * 40
    assert thinness.thinnest()[0] == 1
    # a 9 px stripe drawn diagonally measures the same, within the octagonal distance's error
    rows, cols = np.mgrid[:120, :120]
    diagonal = (np.abs(rows - cols) / np.sqrt(2) < 4.5).astype(np.int64)
    assert summarise([half_width_counts(diagonal, 2)]).classes[1].median == pytest.approx(4.5, abs=0.5)


def test_ignored_pixels_are_a_boundary_and_the_image_border_is_not():
    mask = np.zeros((30, 40), dtype=np.int64)
    mask[:, 5:14] = 1  # 9 px wide between ignored pixels
    mask[:, :5] = mask[:, 14:20] = 255
    mask[:, 35:] = 2  # 5 px wide at the image's edge: it may continue past the frame, so it counts as 2 × 5 wide
    measured = summarise([half_width_counts(mask, 3)]).classes
    assert measured[1].median == 4.5 and measured[2].median == 4.5


def thin(p10: float, median: float | None = None, class_id: int = 1) -> Thinness:
    return Thinness({0: ClassThinness(15.5, 15.5, 10_000), class_id: ClassThinness(median or p10, p10, 500)}, 8)


@pytest.mark.parametrize("half_width, sizes, train_short, eval_short", [
    (0.5, [(565, 584)] * 4, 576, 768),  # 1 px vessels: kept at the native size (never zoomed in for width)
    (1.5, [(512, 512)] * 4, 512, 704),  # 3 px membranes: not zoomed out (4 px would need ×1.33)
    (2.5, [(512, 512)] * 4, 416, 576),  # 5 px membranes: zoomed out as far as keeps them 4 px wide
    (0.5, [(240, 320)] * 4, 384, 512),  # 1 px cracks in small photographs: up to the 384 context scale only
    (20.0, [(512, 512)] * 4, 384, 512),  # wide regions: zoomed out to a 384 short side for context
    (0.5, [(64, 64)] * 4, 256, 352),  # tiny images: at most 4× upsampled
    (3.0, [(2000, 1500)] * 4, 1024, 1024),  # large images, 6 px structures: down to where they are 4 px wide
])
def test_the_thinnest_class_keeps_four_pixels_at_the_training_scale_within_the_caps(half_width, sizes, train_short,
                                                                                     eval_short):
    choice = choose_scale(thin(half_width), sizes)
    assert choice.train_scale == [4 * train_short, train_short]
    assert choice.eval_scale == [4 * eval_short, eval_short]
    assert choice.crop_size == min(256, train_short)
    short = min(sizes[0])
    limited = train_short in (1024, 4 * short) or train_short >= max(short, 384)  # a cap, or no zoom-in
    assert 2 * half_width * train_short / short >= 4.0 or limited  # the width is kept, or a limit decided


def test_explicit_values_win_and_auto_is_filled_from_the_data():
    data_args = DataArguments(crop_size=128, train_scale="auto", eval_scale=["auto"])
    assert data_args.auto_scale_fields == ("train_scale", "eval_scale")
    choice = settle_scale(data_args, thin(1.5), [(512, 512)])
    assert (data_args.crop_size, data_args.train_scale, data_args.eval_scale) == (128, [2048, 512], [2816, 704])
    assert "crop_size 128 (the recipe)" in scale_line(data_args, choice)
    fixed = DataArguments(crop_size=256, train_scale=[1024, 256], eval_scale=[2048, 512])
    settle_scale(fixed, thin(0.5), [(512, 512)])
    assert (fixed.crop_size, fixed.train_scale, fixed.eval_scale) == (256, [1024, 256], [2048, 512])
    # without a measurement (no data check): the values chosen for the scratch recipe by experiment
    unmeasured = DataArguments(crop_size="auto", train_scale="auto", eval_scale="auto")
    settle_scale(unmeasured, None, [])
    assert (unmeasured.crop_size, unmeasured.train_scale, unmeasured.eval_scale) == tuple(FALLBACK.values())


def test_the_command_line_overrides_the_recipes_auto(tmp_path):
    from hf_segformer.training.arguments import parse_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data_dir: d\ncrop_size: auto\ntrain_scale: auto\neval_scale: auto\n")
    data_args, _, _ = parse_recipe(["--config", str(recipe), "--train_scale", "1024", "256", "--crop_size", "192"])
    assert (data_args.crop_size, data_args.train_scale, data_args.eval_scale) == (192, [1024, 256], "auto")
    assert data_args.auto_scale_fields == ("eval_scale",)
    with pytest.raises(RecipeError, match="train_scale takes two numbers"):
        DataArguments(train_scale=["big", "small"])
    with pytest.raises(RecipeError, match="crop_size takes a whole number of pixels or auto"):
        DataArguments(crop_size="large")


def test_the_reports_json_and_text_hold_the_measurement_and_the_choice(tmp_path):
    report = DataReport(2, 255, {0: "background", 1: "vessel"},
                        {"train": SplitReport(4, [9000, 1000, 0], [(565, 584)] * 4)})
    report.thinness = thin(0.5)
    report.scale_choice = scale_line(DataArguments(train_scale="auto"), choose_scale(report.thinness, [(565, 584)],
                                                                                      report.id2label))
    report.save(tmp_path)
    payload = json.loads((tmp_path / "class_histogram.json").read_text())
    assert payload["thinness"]["classes"]["1"] == {"median_half_width": 0.5, "p10_half_width": 0.5, "pixels": 500}
    loaded = DataReport.load(tmp_path / "class_histogram.json")
    assert loaded.thinness == report.thinness and loaded.scale_choice == report.scale_choice
    text = (tmp_path / "class_histogram.md").read_text()
    assert "| 1 vessel | 0.5 | 0.5 | 1 |" in text and "train: short side 565–565" in text
    assert "thinnest class 1 'vessel'" in text and "train_scale [2304, 576]" in text


def test_in_loop_evaluations_read_a_fixed_subset_under_a_budget():
    from datasets import Dataset

    from hf_segformer.training.budget import EVAL_SUBSET_AUTO, eval_subset

    split = Dataset.from_dict({"index": list(range(100))})
    assert len(eval_subset(split, "auto", budgeted=True)) == EVAL_SUBSET_AUTO
    assert eval_subset(split, "auto", budgeted=False) is split and eval_subset(split, 0, budgeted=True) is split
    chosen = eval_subset(split, 5, budgeted=False)["index"]
    assert chosen == [0, 25, 50, 74, 99]  # spread over the split, the same every time


@pytest.mark.slow
def test_a_budgeted_run_evaluates_a_subset_then_the_whole_split_once(tmp_path, train_tiny, evaluations_read):
    # max_steps caps the length the budget decides (at step 5): the test need not spend the budget
    results = train_tiny(tmp_path, "--max_time", "10m", "--max_steps", "6", "--eval_strategy", "steps",
                         "--eval_steps", "3", "--eval_subset_size", "2", "--save_strategy", "no")
    assert evaluations_read == [2, 2, 2, 4]  # steps 3 and 6, the budget's timing one at step 5; then the whole split
    train = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert (train["budget_evaluations"], train["budget_final_evaluations"]) == (3, 1)
    assert train["budget_steps_run"] == 6 and train["budget_saves"] == 1  # the model saved at the end
    parts = ("budget_steps_s", "budget_evaluation_s", "budget_final_evaluation_s", "budget_save_s", "budget_other_s")
    assert sum(train[key] for key in parts) == pytest.approx(train["budget_spent_s"], abs=0.3)
    assert "eval_mean_iou" in results
