"""Evaluations inside a time budget are bounded by their cost: the in-loop set (eval_subset_size: auto) is cut to the
images whose planned evaluations take about a tenth of max_time, from a small timing evaluation's seconds per pixel
and each image's pixels at the evaluation scale; the final evaluation still reads the whole split."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from datasets import Dataset
from support.images import save_image

from hf_segformer.data.images import keep_ratio_size
from hf_segformer.data.loading import spread_indices
from hf_segformer.training.budget import (
    EVAL_SHARE,
    TimeBudgetCallback,
    images_within,
    interval_steps,
    model_pixels,
    periodic_count,
    steps_that_fit,
)


def test_the_largest_spread_subset_whose_evaluations_fit_the_allowance():
    def per_pixel(pixels):
        return lambda count: 0.01 * sum(pixels[i] for i in spread_indices(len(pixels), count))

    assert images_within(per_pixel([100] * 10), 10, evaluations=4, allowance_s=20.0) == 5  # 4 × 5 images × 1 s
    assert images_within(per_pixel([100] * 10), 10, evaluations=4, allowance_s=100.0) == 10  # all fit
    assert images_within(per_pixel([100] * 10), 10, evaluations=4, allowance_s=1.0) == 1  # never fewer than one
    # large images cost more: the subset's own pixels decide, not its count
    big_last = [100] * 9 + [2000]
    count = images_within(per_pixel(big_last), 10, evaluations=1, allowance_s=15.0)
    assert per_pixel(big_last)(count) <= 15.0 < per_pixel(big_last)(count + 1)


def test_fractional_eval_steps_count_as_a_share_of_the_run():
    # eval_steps 0.25 of a 100-step run: steps 25, 50, 75, 100 (the Trainer's own reading), not none
    assert periodic_count("steps", 0.25, 0, 100, float("inf")) == 4
    assert periodic_count("steps", 0.25, 30, 100, float("inf")) == 3
    args = SimpleNamespace(eval_strategy="steps", eval_steps=0.25, save_strategy="no", save_steps=None)
    # 100 s holds 100 steps of 1 s without evaluations; their evaluations of 10 s are reserved too
    steps = steps_that_fit(100.0, 0, 1.0, 10.0, 0.0, args, float("inf"), None)
    assert steps < 100 and steps + 10.0 * periodic_count("steps", 0.25, 0, steps, float("inf")) <= 100.0


def test_model_pixels_are_the_evaluation_resize_of_each_image(tmp_path):
    paths = [save_image(tmp_path / f"{i}.png", size=size) for i, size in enumerate([(64, 32), (40, 40)])]
    split = Dataset.from_dict({"image": [{"path": str(p), "bytes": None} for p in paths]})
    assert model_pixels(split, lambda w, h: keep_ratio_size(w, h, (128, 64))) == [128 * 64, 64 * 64]
    broken = Dataset.from_dict({"image": [{"path": str(tmp_path / "missing.png"), "bytes": None}] * 3})
    assert model_pixels(broken, lambda w, h: (w, h)) == [1, 1, 1]  # unknown sizes: equal cost per image


class FakeEvaluations:
    """Evaluation timings without a model: the first call pays `cold_s` once, every call `fixed_s` plus `per_image_s`
    for each image of the trainer's evaluation set (all images the same size)."""

    def __init__(self, callback: TimeBudgetCallback, cold_s: float, fixed_s: float, per_image_s: float):
        self.callback, self.cold_s, self.fixed_s, self.per_image_s = callback, cold_s, fixed_s, per_image_s
        self.calls: list[int] = []

    def true_s(self, images: int) -> float:
        return self.fixed_s + self.per_image_s * images

    def __call__(self) -> float:
        images = len(self.callback.trainer.eval_dataset)
        self.calls.append(images)
        return self.true_s(images) + (self.cold_s if len(self.calls) == 1 else 0.0)


def bounded(images: int, budget_s: float, args: SimpleNamespace, cold_s: float, fixed_s: float, per_image_s: float,
            step: int = 5) -> tuple[TimeBudgetCallback, FakeEvaluations, Dataset]:
    """The budget's real pilot and bounding at its first decision (`step` steps of 1 s done), with fake timings."""
    callback = TimeBudgetCallback(budget_s, eval_pixels=[1000] * images)
    loop_set = Dataset.from_dict({"index": list(range(images))})
    callback.trainer = SimpleNamespace(eval_dataset=loop_set)
    fake = FakeEvaluations(callback, cold_s, fixed_s, per_image_s)
    callback._measure_eval_s = fake
    pilot = callback._pilot_evaluation_set()
    callback.eval_s = fake()  # the timing evaluation, as _decide runs it
    callback._bound_evaluations(args, SimpleNamespace(global_step=step, epoch=1.0), 1.0, *pilot)
    return callback, fake, loop_set


def args_with(**changes) -> SimpleNamespace:
    return SimpleNamespace(**{"eval_strategy": "steps", "eval_steps": 100, "save_strategy": "no", "save_steps": None,
                              "load_best_model_at_end": False, "world_size": 1, **changes})


def planned_evaluations(callback: TimeBudgetCallback, args: SimpleNamespace, budget_s: float) -> int:
    """In-loop evaluations of the run the budget plans (the last one at the end included), steps of 1 s."""
    left = budget_s - callback.spent_s() - callback._final_s(args) - max(callback.margin * budget_s, 1.0)
    total = 5 + steps_that_fit(left, 5, 1.0, callback.eval_s, 0.0, args, float("inf"), None)
    return periodic_count("steps", args.eval_steps, 5, total, float("inf")) + int(total % interval_steps(args.eval_steps, total) != 0)


@pytest.mark.parametrize("eval_steps", [100, 0.25])
def test_in_loop_evaluations_take_at_most_a_tenth_of_the_budget_with_the_timing_ones(eval_steps):
    args = args_with(eval_steps=eval_steps)
    callback, fake, _ = bounded(20, 600.0, args, cold_s=5.0, fixed_s=0.5, per_image_s=1.0)
    assert fake.calls == [1, 2]  # timed cold on one image, warm on two: the one-time costs not multiplied up
    count = callback.eval_images
    assert 1 < count < 20
    assert callback.trainer.eval_dataset["index"] == spread_indices(20, count)  # fixed, spread over the set
    assert callback.eval_s >= fake.true_s(count)  # never an underestimate
    assert callback.final_eval_scale * callback.eval_s >= fake.true_s(20)  # the final one: the whole split
    evaluations = planned_evaluations(callback, args, 600.0)
    assert evaluations >= 4  # (eval_steps 0.25: four, not one)
    timing_s = fake.true_s(1) + fake.cold_s + fake.true_s(2)
    assert timing_s + evaluations * fake.true_s(count) <= EVAL_SHARE * 600.0


def test_the_cold_first_evaluation_does_not_inflate_the_estimate():
    callback, fake, _ = bounded(8, 1500.0, args_with(eval_steps=0.25), cold_s=20.0, fixed_s=0.0, per_image_s=1.0)
    assert callback.eval_images == 8 and callback.eval_s == pytest.approx(fake.true_s(8))


def test_where_one_image_each_is_too_many_the_run_evaluates_less_often():
    args = args_with(eval_steps=0.25)
    callback, fake, _ = bounded(8, 200.0, args, cold_s=1.0, fixed_s=3.0, per_image_s=1.0)
    assert callback.eval_images == 1 and args.eval_steps >= 1  # one image, at fewer evaluations
    evaluations = planned_evaluations(callback, args, 200.0)
    assert 2 <= evaluations < 4
    assert fake.true_s(1) + fake.cold_s + fake.true_s(2) + evaluations * fake.true_s(1) <= EVAL_SHARE * 200.0


def test_where_only_the_last_evaluation_fits_it_reads_the_whole_split_and_stands_for_the_final_one():
    args = args_with(eval_steps=0.25)
    callback, _, loop_set = bounded(8, 60.0, args, cold_s=1.0, fixed_s=3.0, per_image_s=1.0)
    assert callback.trainer.eval_dataset is loop_set and callback.final_eval_scale == 1.0
    assert planned_evaluations(callback, args, 60.0) == 1


def test_a_cheap_evaluation_set_is_kept_whole():
    callback, _, loop_set = bounded(6, 600.0, args_with(), cold_s=0.5, fixed_s=0.05, per_image_s=0.05)
    assert callback.trainer.eval_dataset is loop_set and callback.eval_images == 6 and callback.final_eval_scale == 1.0


def test_no_cut_without_in_loop_evaluations():
    callback, _, loop_set = bounded(20, 600.0, args_with(eval_strategy="no"), cold_s=1.0, fixed_s=0.0,
                                       per_image_s=1.0)  # the whole set (20 s) is over a tenth on its own
    assert callback.trainer.eval_dataset is loop_set and callback.final_eval_scale == 1.0


@pytest.mark.slow
def test_a_budgeted_run_times_one_then_two_images_and_evaluates_within_its_share(tmp_path, train_tiny,
                                                                                 evaluations_read, monkeypatch):
    from hf_segformer.training import budget

    monkeypatch.setattr(budget, "EVAL_SHARE", 1e-6)  # no in-loop evaluation fits: only the last, on the whole split
    train_tiny(tmp_path, "--max_time", "10m", "--max_steps", "6", "--eval_strategy", "steps", "--eval_steps", "3",
               "--save_strategy", "no")
    # step 3 (before the budget decides), its timing evaluations at step 5 (cold on one image, warm on two), then
    # not step 6's periodic one: the last, on the whole split, which stands for the final evaluation
    assert evaluations_read == [4, 1, 2, 4]
    train = json.loads((tmp_path / "run" / "train_results.json").read_text())
    assert train["budget_eval_images"] == 4 and train["budget_final_evaluations"] == 0
