"""A wall-clock budget for training (`max_time: 25m`): the run measures its own step and evaluation cost, then
fixes `max_steps` so that warm-up and the polynomial decay end at the budget, with the last evaluation and the
save inside it.

How: the Trainer starts with a provisional `max_steps` (the recipe's `max_steps` as an upper bound, or a large
number). After a few steady steps (`skip_steps` slow first steps excluded, then `measure_steps` timed), the main
process times one real evaluation and the save, solves for the number of steps that still fits (keeping `margin`
of the time left in reserve) and broadcasts it; the LR scheduler is rebuilt for that total and fast-forwarded to
the current step (the Trainer builds its scheduler once, from `max_steps`, in `_prepare_for_training`). It fits
again every eighth of the steps left, from the steps and evaluations seen so far. A guard stops early if the
steps turn out slower than measured. The time spent is stored in the checkpoint's trainer state, so a resumed
run only gets what is left.

Evaluations are bounded by cost (`eval_pixels`, given for eval_subset_size: auto): the timing evaluation reads one
image of the in-loop set (paying the first evaluation's one-time costs), a second, timed one two images; from its
seconds per pixel at the evaluation scale the set is cut to the images that the planned in-loop evaluations read in
about a tenth of the budget (large images at a large eval_scale cost more than their count says). Where even one
image each is too many, the run evaluates less often.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import Trainer
from transformers.trainer_callback import ExportableState

from hf_segformer.data.images import open_image
from hf_segformer.data.loading import spread_indices
from hf_segformer.data.prepare import build_label_decoder
from hf_segformer.data.transforms import EvalTransform
from hf_segformer.training.callbacks import TrainerBound

logger = logging.getLogger("hf_segformer")


def interval_steps(every: float | None, max_steps: int) -> int:
    """`eval_steps`/`save_steps` in steps: below 1, a share of the run's `max_steps` (as the Trainer's state
    resolves it)."""
    every = every or 0
    return math.ceil(max_steps * every) if 0 < every < 1 else int(every)


def periodic_count(strategy: Any, every: float | None, start: int, end: int, steps_per_epoch: float) -> int:
    """How many evaluations (or saves) a strategy makes between optimizer steps start (excluded) and end, `end`
    being the run's last step (a fractional `every` is a share of it)."""
    strategy = getattr(strategy, "value", strategy)
    if end <= start or strategy in ("no", None):
        return 0
    if strategy == "epoch":
        per_epoch = max(steps_per_epoch, 1.0)
        return int(end // per_epoch) - int(start // per_epoch)
    every = interval_steps(every, end)
    return (end // every - start // every) if every > 0 else 0


def steps_that_fit(left_s: float, start: int, step_s: float, eval_s: float, save_s: float, args: Any,
                   steps_per_epoch: float, cap: int | None) -> int:
    """The largest number of further steps whose training, periodic evaluations and saves fit in `left_s`."""
    if step_s <= 0:
        raise ValueError("step time must be positive")

    def cost(n: int) -> float:
        end = start + n
        evals = periodic_count(args.eval_strategy, args.eval_steps, start, end, steps_per_epoch)
        saves = periodic_count(args.save_strategy, args.save_steps, start, end, steps_per_epoch)
        return n * step_s + evals * eval_s + saves * save_s

    high = int(left_s // step_s) + 1
    if cap is not None:
        high = min(high, max(cap - start, 0))
    low = 0
    while low < high:  # cost is increasing in n
        mid = (low + high + 1) // 2
        if cost(mid) <= left_s:
            low = mid
        else:
            high = mid - 1
    return low


def rebuild_scheduler(trainer: Any, total_steps: int, current_step: int, warmup_steps: int | None = None) -> None:
    """Replace the Trainer's LR scheduler by one for `total_steps` (decay from the recipe; warm-up from the recipe,
    or `warmup_steps` when given), positioned at `current_step`. The optimizer groups keep their `initial_lr`, so
    per-group multipliers survive."""
    trainer.lr_scheduler = None
    args, recipe_warmup = trainer.args, getattr(trainer.args, "warmup_steps", None)
    if warmup_steps is not None:
        args.warmup_steps = warmup_steps
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": a repositioning
            scheduler = trainer.create_scheduler(num_training_steps=max(total_steps, 1), optimizer=trainer.optimizer)
            scheduler.last_epoch = current_step - 1
            scheduler.step()
    finally:
        if warmup_steps is not None:
            args.warmup_steps = recipe_warmup


def _broadcast(values: list[float], args: Any) -> list[float]:
    """The main process's numbers on every process (DDP must agree on the step count)."""
    if args.world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    torch.distributed.broadcast(tensor, src=0)
    return tensor.tolist()


class TimeBudgetCallback(TrainerBound, ExportableState):
    """Fixes `max_steps` from a wall-clock budget (see the module docstring); `results()` says how.

    `final_eval`: whether the run evaluates once more after `train()` (training/run.py does when it has an
    evaluation split); that evaluation and the final save are reserved from the budget. It needs the Trainer (to
    time an evaluation and a save, and rebuild the scheduler): bound when the Trainer is built, which starts the
    clock.
    """

    def __init__(self, budget_s: float, max_steps_cap: int | None = None, final_eval: bool = True,
                 skip_steps: int = 2, measure_steps: int = 3, margin: float = 0.03, final_eval_scale: float = 1.0,
                 eval_pixels: list[int] | None = None):
        self.budget_s = float(budget_s)
        self.max_steps_cap = max_steps_cap
        self.final_eval = final_eval
        # the final evaluation's images over the in-loop evaluations' (`eval_subset`): its cost, from theirs
        self.final_eval_scale = float(final_eval_scale)
        # set (eval_subset_size: auto): the pixels the model reads for each image of the in-loop evaluation set; the
        # set is then cut to what fits in EVAL_SHARE of the budget (`_bound_evaluations`)
        self.eval_pixels = eval_pixels
        self.eval_images: int | None = None  # images per in-loop evaluation once bounded
        self.timings: list[tuple[str, float]] = []  # ("evaluation" | "final evaluation" | "save", seconds)
        self._training_ended = False
        self.skip_steps = skip_steps
        self.measure_steps = measure_steps
        self.margin = margin
        self.spent_before_s = 0.0  # from earlier train() calls, read back from the checkpoint on resume
        self.budget_steps: int | None = None
        # Fixed at the first decision: a warm-up ratio that followed every re-fit would move the warm-up's end
        # (a lengthened run went back below the peak rate it had reached).
        self.warmup_steps: int | None = None
        self.step_s: float | None = None
        self.eval_s = 0.0
        self.save_s = 0.0
        self.report_s = 0.0
        self.stopped_early = False
        self._start = time.monotonic()
        self._clean: list[float] = []  # seconds per steady step
        self._busy: list[float] = []  # a step with the evaluation and/or save that followed the step before
        self._last_end = self._start
        self._last_busy = False
        self.first_step = 0
        self._decided_at = 0
        self._replan_every = 1

    def bind(self, trainer: Trainer) -> None:
        """The clock starts when the Trainer takes the budget (just before `train()`): the Trainer's set-up in
        `train()` counts, the run's data and model preparation before it does not."""
        super().bind(trainer)
        self._start = self._last_end = time.monotonic()
        trainer.evaluate = self._timed(trainer.evaluate, "evaluation")
        for name in ("_save_checkpoint", "save_model_atomically"):  # checkpoints, and the model saved at the end
            if hasattr(trainer, name):
                setattr(trainer, name, self._timed(getattr(trainer, name), "save"))

    def _timed(self, method: Any, kind: str) -> Any:
        """`method`, its seconds recorded for the budget's report (an evaluation after training is the final one)."""
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.monotonic()
            try:
                return method(*args, **kwargs)
            finally:
                final = kind == "evaluation" and self._training_ended
                self.timings.append(("final evaluation" if final else kind, time.monotonic() - start))
        return timed

    # ExportableState: written into trainer_state.json with every checkpoint.
    def state(self) -> dict:
        return {"args": {"budget_s": self.budget_s, "max_steps_cap": self.max_steps_cap},
                "attributes": {"spent_s": self.spent_s(), "budget_steps": self.budget_steps,
                               "warmup_steps": self.warmup_steps}}

    def spent_s(self) -> float:
        return self.spent_before_s + (time.monotonic() - self._start)

    def on_train_begin(self, args, state, control, **kwargs):
        # The clock started when the Trainer took the callback (just before `train()`): the Trainer's set-up counts.
        self._last_end = time.monotonic()
        self.first_step = state.global_step
        stored = (state.stateful_callbacks or {}).get(type(self).__name__)
        if state.global_step > 0 and isinstance(stored, dict):  # a resume: only the budget left counts
            attributes = stored.get("attributes", {})
            self.spent_before_s = float(attributes.get("spent_s") or 0.0)
            previous = attributes.get("budget_steps")
            if attributes.get("warmup_steps") is not None:
                self.warmup_steps = int(attributes["warmup_steps"])
            if previous:
                self._apply(int(previous), state, args)
            logger.info("Time budget: %.0f s of %.0f s spent before this resume.", self.spent_before_s, self.budget_s)

    def on_step_end(self, args, state, control, **kwargs):
        interval = time.monotonic() - self._last_end
        steps_here = state.global_step - self.first_step
        if steps_here > self.skip_steps:  # the first steps are slow (allocations, loader start-up)
            (self._busy if self._last_busy else self._clean).append(interval)
        # An evaluation or save after this step lands in the next interval: keep it out of the step timing.
        self._last_busy = bool(control.should_evaluate or control.should_save)
        if self.step_s is None:  # not decided yet in this train() call (a resume decides again)
            if steps_here >= self.skip_steps + self.measure_steps:
                self._decide(args, state, control)
        elif state.global_step < state.max_steps:
            if (state.global_step - self._decided_at) % self._replan_every == 0:
                self._decide(args, state, control)  # the step time drifts on a shared machine: fit again
            else:
                self._guard(args, state, control)
        self._last_end = time.monotonic()  # the budget's own timing work is not a step
        return control

    def _intervals(self) -> tuple[list[float], list[float]]:
        """Steady step intervals, and intervals that also held an evaluation or a save."""
        return self._clean, self._busy

    def _steady_step_s(self) -> float:
        clean, busy = self._intervals()
        intervals = clean or busy
        return max(sum(intervals) / len(intervals), 1e-6)

    def _final_s(self, args: Any) -> float:
        """Reserved for the end: the last in-loop evaluation and checkpoint, then run.py's save and evaluation (which
        reuses the in-loop one unless load_best_model_at_end reloads other weights)."""
        in_loop = getattr(args.eval_strategy, "value", args.eval_strategy) != "no"
        on_subset = self.final_eval_scale != 1.0  # the final evaluation reads the whole split: never reused
        final = self.final_eval and (not in_loop or args.load_best_model_at_end or on_subset)
        return (int(in_loop) + self.final_eval_scale * int(final)) * self.eval_s + 2 * self.save_s + self.report_s

    def _decide(self, args: Any, state: Any, control: Any) -> None:
        step_s = self._steady_step_s()
        first = self.step_s is None
        if first:
            pilot = self._pilot_evaluation_set()
            self.eval_s = self._measure_eval_s() if (self.final_eval or args.eval_strategy != "no") else 0.0
            self.save_s = self._measure_save_s()
            self.report_s = self._measure_report_s()
            if pilot is not None:
                self._bound_evaluations(args, state, step_s, *pilot)
        else:
            busy = self._intervals()[1]
            if busy:  # evaluations (and saves) seen so far, less the step they followed
                self.eval_s = max(sum(busy) / len(busy) - step_s, 0.0)
        spent = self.spent_s()
        per_epoch = state.global_step / state.epoch if state.epoch else float("inf")
        # The reserve covers step-time drift until the next fit, so it shrinks with the time left (a share of the
        # whole budget left ~45 s of a 25-minute run unused).
        reserve = max(self.margin * (self.budget_s - spent), step_s)
        left = self.budget_s - spent - self._final_s(args) - reserve
        more = steps_that_fit(left, state.global_step, step_s, self.eval_s, self.save_s, args, per_epoch,
                              self.max_steps_cap) if left > 0 else 0
        if first and more == 0 and self.eval_s > 0 and pilot is None:  # (the pilot times a warm one already)
            # The first evaluation ever pays one-time costs (kernels for its shapes, the first figure): seconds on
            # a CPU whose steps take milliseconds. Before stopping on it, time a warm one.
            cold = self.eval_s
            self.eval_s = min(cold, self._measure_eval_s())
            logger.info("Time budget: the first evaluation took %.2f s, a second %.2f s.", cold, self.eval_s)
            spent = self.spent_s()
            reserve = max(self.margin * (self.budget_s - spent), step_s)
            left = self.budget_s - spent - self._final_s(args) - reserve
            more = steps_that_fit(left, state.global_step, step_s, self.eval_s, self.save_s, args, per_epoch,
                                  self.max_steps_cap) if left > 0 else 0
        step_s, total = _broadcast([step_s, float(state.global_step + more)], args)
        self.step_s, total = step_s, int(total)
        self._decided_at = state.global_step
        self._replan_every = max(5, (total - state.global_step) // 8)
        if total != self.budget_steps:
            self._apply(total, state, args)
        if total <= state.global_step:
            self.stopped_early = True  # no room left for another step: the decay did not reach its end
            control.should_training_stop = True
            if first:
                logger.warning("Time budget: max_time %.0f s leaves no room for training after the measured step "
                               "(%.3f s), evaluation (%.2f s) and save (%.2f s): the run stops at step %d, untrained. "
                               "Raise max_time, or evaluate less often or on fewer images.", self.budget_s, step_s,
                               self.eval_s, self.save_s, state.global_step)
        if first:
            logger.info("Time budget %.0f s: %.0f s spent, steady step %.3f s, evaluation %.2f s, save %.2f s → "
                        "max_steps %d (schedule rebuilt to end there).", self.budget_s, spent, step_s, self.eval_s,
                        self.save_s, self.budget_steps)
        else:
            logger.debug("Time budget: step %.3f s, max_steps %d.", step_s, self.budget_steps)

    def _pilot_evaluation_set(self) -> tuple[Any, list[int]] | None:
        """With `eval_pixels`: the timing evaluations read `PILOT_IMAGES` of the in-loop set (spread over it), so
        that timing a costly set does not itself spend the evaluations' share; the first, cold one (one-time costs:
        first-call allocations, kernels for the shapes) only the first of them. (The whole set, the pilot's indices.)"""
        trainer = self.trainer
        if self.eval_pixels is None or trainer is None or len(self.eval_pixels) != len(trainer.eval_dataset or []):
            return None
        loop_set = trainer.eval_dataset
        pilot = spread_indices(len(loop_set), PILOT_IMAGES)
        trainer.eval_dataset = loop_set.select(pilot[:1])
        return loop_set, pilot

    def _bound_evaluations(self, args: Any, state: Any, step_s: float, loop_set: Any, pilot: list[int]) -> None:
        """Time a warm evaluation of the pilot images, then cut the in-loop set to the images whose planned
        evaluations fit in EVAL_SHARE of the budget (the timing ones included), or evaluate less often where one
        image each does not fit; set the cost of one evaluation (and of the final one, on the whole split)."""
        pixels, cold_s = self.eval_pixels, self.eval_s
        self.trainer.eval_dataset = loop_set.select(pilot)
        warm_s = self._measure_eval_s()
        logger.info("Time budget: the first evaluation (%d image) took %.2f s, a second (%d images) %.2f s.", 1,
                    cold_s, len(pilot), warm_s)
        pilot_pixels = sum(pixels[i] for i in pilot)

        def cost_s(count: int) -> float:
            """An evaluation of `count` images spread over the set: the warm pilot's seconds per pixel, its fixed
            costs counted as pixels (an overestimate for larger sets; a smaller set counts as the pilot)."""
            return warm_s * max(sum(pixels[i] for i in spread_indices(len(pixels), count)), pilot_pixels) / pilot_pixels

        allowance = EVAL_SHARE * self.budget_s - cold_s - warm_s
        per_epoch = state.global_step / state.epoch if state.epoch else float("inf")
        self.eval_s = cost_s(1)  # the most steps, the most evaluations: the count they plan is an upper bound
        left = self.budget_s - self.spent_s() - self._final_s(args) - max(self.margin * self.budget_s, step_s)
        total = state.global_step + (steps_that_fit(left, state.global_step, step_s, self.eval_s, self.save_s, args,
                                                    per_epoch, self.max_steps_cap) if left > 0 else 0)
        # the periodic evaluations, and the one the Trainer makes at the last step where it is not one of them
        evaluations = periodic_count(args.eval_strategy, args.eval_steps, state.global_step, total, per_epoch) + 1
        count = images_within(cost_s, len(pixels), evaluations, allowance)
        fewer = evaluations * cost_s(count) > allowance and getattr(args.eval_strategy, "value",
                                                                     args.eval_strategy) == "steps"
        recipe_every = args.eval_steps
        if fewer:  # even one image each is too many: evaluate less often (the last evaluation stays)
            evaluations = max(int(allowance // cost_s(1)), 1)
            args.eval_steps = math.ceil(total / evaluations) if evaluations > 1 else 10 ** 9
        if evaluations <= 1 and not args.load_best_model_at_end:
            count = len(pixels)  # only the last: on the whole split it is the final evaluation too
        count = int(_broadcast([float(count)], args)[0])  # every process evaluates the same images
        chosen = spread_indices(len(pixels), count)
        self.trainer.eval_dataset = loop_set.select(chosen) if count < len(pixels) else loop_set
        self.eval_images = count
        self.eval_s = cost_s(count)
        self.final_eval_scale *= cost_s(len(pixels)) / max(self.eval_s, 1e-9)
        logger.info("Time budget: in-loop evaluations on %d of %d images (~%.1f s each, ~%d of them, %s: at most "
                    "%.0f%% of max_time with the timing ones).", count, len(pixels), self.eval_s, evaluations,
                    f"eval_steps {recipe_every} raised to {args.eval_steps}, one image each being too many"
                    if fewer and evaluations > 1 else f"only the last, one image each at eval_steps {recipe_every} "
                    "being too many" if fewer else f"eval_steps {recipe_every}", 100 * EVAL_SHARE)

    def _apply(self, total: int, state: Any, args: Any) -> None:
        self.budget_steps = total
        state.max_steps = total
        state.compute_steps(args, total)  # ratio-valued logging/eval/save steps follow the real length
        if self.warmup_steps is None:
            self.warmup_steps = args.get_warmup_steps(total)
        if self.trainer is not None and self.trainer.optimizer is not None:
            rebuild_scheduler(self.trainer, total, state.global_step, self.warmup_steps)
        if self.trainer is not None:  # the progress bar was sized from the provisional length: thousands of hours
            for callback in self.trainer.callback_handler.callbacks:
                bar = getattr(callback, "training_bar", None)
                if bar is not None:
                    bar.total = total
                    bar.refresh()

    def _guard(self, args: Any, state: Any, control: Any) -> None:
        """Stop before the budget if steps run slower than measured (the final evaluation and save still fit)."""
        next_end = self.spent_s() + self._steady_step_s() + self._final_s(args)
        stop = _broadcast([float(next_end > self.budget_s)], args)[0] > 0
        if stop:
            logger.warning("Time budget: stopping at step %d of %d (steps slower than measured) to evaluate and "
                           "save within %.0f s.", state.global_step, state.max_steps, self.budget_s)
            self.stopped_early = True
            control.should_training_stop = True
            self._apply(state.global_step, state, args)  # the length the budget gave the run, the bar's too

    def _measure_eval_s(self) -> float:
        """One real evaluation, timed with everything that runs with it (metrics, sample grid, loggers): the
        evaluation split is small next to the training budget, and an estimate from one batch missed the
        callbacks by a factor of five. It shows in the logs as an evaluation at the timing step."""
        trainer = self.trainer
        if trainer is None or trainer.eval_dataset is None:
            return 0.0
        should_log = trainer.control.should_log  # evaluate()'s own log resets it: the step's line would be lost
        start = time.monotonic()
        trainer.evaluate()
        trainer.model.train()
        trainer.control.should_log = should_log
        return time.monotonic() - start

    def _measure_report_s(self) -> float:
        """The per-class report after the last evaluation draws a confusion matrix with matplotlib (seconds on
        a first draw): draw one of this size now, inside the timed part, and reserve that time."""
        if not self.final_eval or self.trainer is None:
            return 0.0
        from hf_segformer.evaluation.reports import plot_confusion_matrix

        labels = self.trainer.model.config.id2label
        start = time.monotonic()
        with tempfile.TemporaryDirectory() as folder:
            try:
                plot_confusion_matrix(np.eye(len(labels), dtype=np.int64), labels, Path(folder) / "timing.png",
                                      title="timing")
            except Exception:  # noqa: BLE001 - the report treats a failed figure as a warning too
                pass
        return time.monotonic() - start

    def _measure_save_s(self) -> float:
        """Serialising the weights to memory, × 4 for a checkpoint's optimizer moments and the files."""
        from safetensors.torch import save as to_bytes

        if self.trainer is None:
            return 0.0
        start = time.monotonic()
        to_bytes({k: v.detach().contiguous() for k, v in self.trainer.model.state_dict().items()})
        return 4 * (time.monotonic() - start) + 0.3

    def on_train_end(self, args, state, control, **kwargs):
        self.spent_train_s = self.spent_s()
        self._training_ended = True
        self.steps_run = state.global_step - self.first_step

    def time_spent(self) -> dict[str, Any]:
        """How the budget went: steps, evaluations and saves, each with its count and seconds; the rest is the
        Trainer's set-up, logging and the sample grid."""
        spent: dict[str, Any] = {}
        for kind in ("evaluation", "final evaluation", "save"):
            seconds = [s for k, s in self.timings if k == kind]
            key = kind.replace(" ", "_")
            spent[f"budget_{key}s"], spent[f"budget_{key}_s"] = len(seconds), round(sum(seconds), 1)
        steps = getattr(self, "steps_run", 0)
        spent["budget_steps_run"] = steps
        spent["budget_steps_s"] = round(steps * (self.step_s or 0.0), 1)
        spent["budget_spent_s"] = round(self.spent_s(), 1)
        spent["budget_other_s"] = round(spent["budget_spent_s"] - spent["budget_steps_s"] - spent["budget_evaluation_s"]
                                        - spent["budget_final_evaluation_s"] - spent["budget_save_s"], 1)
        return spent

    def results(self) -> dict[str, Any]:
        """What train_results.json records: how the budget decided the run's length, or that it never did (the run
        ended, at max_steps or the end of the data, before the budget had measured a step)."""
        if self.budget_steps is None:
            return {"budget_max_time_s": round(self.budget_s, 1), "budget_decided": False,
                    "budget_spent_s": round(self.spent_s(), 1)}
        return {"budget_max_time_s": round(self.budget_s, 1), "budget_decided": True,
                "budget_steps": self.budget_steps, "budget_step_time_s": round(self.step_s or 0.0, 4),
                "budget_eval_time_s": round(self.eval_s, 2), "budget_warmup_steps": self.warmup_steps,
                **({"budget_eval_images": self.eval_images} if self.eval_images is not None else {}),
                "budget_stopped_early": self.stopped_early, "budget_spent_s": round(self.spent_s(), 1)}


def total_train_batch(args: Any) -> int:
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size


def fixed_speed_metrics(metrics: dict, args: Any, steps_trained: int) -> dict:
    """The Trainer's samples/s assume the provisional length; recompute them from the steps actually run."""
    runtime = metrics.get("train_runtime") or 0.0
    if runtime > 0:
        metrics["train_samples_per_second"] = round(steps_trained * total_train_batch(args) / runtime, 3)
        metrics["train_steps_per_second"] = round(steps_trained / runtime, 3)
    return metrics


def add_budget_metrics(metrics: dict, budget: TimeBudgetCallback | None, args: Any, global_step: int) -> None:
    """After `train()` (nothing without a budget): the speeds from the steps actually run, how the budget fixed the
    run's length, and `args.max_steps` set to that length (the model card's max_steps)."""
    if budget is None:
        return
    fixed_speed_metrics(metrics, args, global_step - budget.first_step)
    metrics.update(budget.results())
    if budget.budget_steps is None:
        logger.warning("Time budget: the run ended at step %d, before the budget had measured its steps (it decides "
                       "after %d): max_steps or the data set the length, not max_time.", global_step,
                       budget.skip_steps + budget.measure_steps)
    args.max_steps = budget.budget_steps or global_step


def save_budget_spent(trainer: Trainer, budget: TimeBudgetCallback | None, train_metrics: dict,
                      results: dict) -> None:
    """After the final evaluation (nothing without a budget): the whole budgeted span, that evaluation included,
    into the run's results and train_results.json."""
    if budget is None:
        return
    spent = budget.time_spent()
    results.update(spent)
    trainer.save_metrics("train", {**train_metrics, **spent})
    logger.info("Time budget %.0f s spent %.0f s: %d steps (%.0f s), %d evaluations (%.0f s), %d saves (%.0f s), "
                "%d final evaluation (%.0f s), other %.0f s.", budget.budget_s, spent["budget_spent_s"],
                spent["budget_steps_run"], spent["budget_steps_s"], spent["budget_evaluations"],
                spent["budget_evaluation_s"], spent["budget_saves"], spent["budget_save_s"],
                spent["budget_final_evaluations"], spent["budget_final_evaluation_s"], spent["budget_other_s"])


EVAL_SUBSET_AUTO = 64  # images per in-loop evaluation under a budget (eval_subset_size: auto), at most
EVAL_SHARE = 0.1  # ... and no more of them than the in-loop evaluations can read in this share of max_time
PILOT_IMAGES = 2  # the budget's timing evaluation reads this many of them


def images_within(cost_s: Any, images: int, evaluations: int, allowance_s: float) -> int:
    """How many of `images` (picked spread evenly, as the subset is) `evaluations` evaluations can read in
    `allowance_s`, an evaluation of `count` of them taking `cost_s(count)`; at least one."""
    for count in range(images, 1, -1):
        if evaluations * cost_s(count) <= allowance_s:
            return count
    return 1


def model_pixels(raw_split: Any, input_size: Any) -> list[int]:
    """Pixels the model reads for each image of an undecoded split, `input_size(width, height)` being the
    evaluation's resize (image headers only); each image counts as 1 where a size cannot be read (band stacks)."""
    pixels = []
    for entry in raw_split["image"]:
        try:
            with open_image(entry) as image:
                width, height = input_size(*image.size)
        except Exception:  # noqa: BLE001 - a size is an estimate: equal cost per image
            return [1] * len(raw_split)
        pixels.append(width * height)
    return pixels


def loop_eval_pixels(data_args: Any, raw_eval: Any, budgeted: bool) -> list[int] | None:
    """Under a budget with eval_subset_size: auto, the pixels the model reads for each image of the in-loop
    evaluation set (`TimeBudgetCallback` cuts the set by them); None otherwise."""
    if not budgeted or raw_eval is None or data_args.eval_subset_size != "auto":
        return None
    scale = tuple(data_args.eval_scale) if data_args.eval_scale else None
    input_size = EvalTransform(build_label_decoder(data_args), data_args.eval_size, scale).input_size
    return model_pixels(eval_subset(raw_eval, data_args.eval_subset_size, budgeted), input_size)


def eval_subset(dataset: Any, size: int | str, budgeted: bool) -> Any:
    """The evaluation split the training loop reads (eval_subset_size): a fixed subset spread evenly over it, or
    the whole split; the evaluation after training reads the whole split."""
    if dataset is None:
        return None
    count = (EVAL_SUBSET_AUTO if budgeted else 0) if size == "auto" else int(size)
    if count <= 0 or count >= len(dataset):
        return dataset
    return dataset.select(spread_indices(len(dataset), count))
