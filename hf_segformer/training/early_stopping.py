"""Early stopping (`early_stopping_patience`): transformers' `EarlyStoppingCallback` on the metric for best model,
and what the run records of it in train_results.json (whether and where it stopped, the best evaluation), so that
a run that ended before its planned length, a time-budgeted one above all, says so.
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import EarlyStoppingCallback

logger = logging.getLogger("hf_segformer")


def early_stopping_callback(args: Any) -> EarlyStoppingCallback | None:
    """The Trainer's own callback when the recipe sets early_stopping_patience (its argument checks are in
    `SegformerTrainingArguments`), else None."""
    if args.early_stopping_patience is None:
        return None
    return EarlyStoppingCallback(args.early_stopping_patience, args.early_stopping_threshold)


def stopped_early(callback: EarlyStoppingCallback) -> bool:
    return callback.early_stopping_patience_counter >= callback.early_stopping_patience


def add_early_stopping_metrics(metrics: dict, callback: EarlyStoppingCallback | None, trainer: Any,
                               planned_steps: int | None) -> None:
    """After `train()` (nothing without early stopping): whether it stopped the run, at which step, the best
    metric and its step. `planned_steps`: the length the run was set for (the time budget's, when it has one); a
    stop before it leaves the learning-rate schedule part-decayed, which is logged and recorded."""
    if callback is None:
        return
    args, state = trainer.args, trainer.state
    name = args.metric_for_best_model
    stopped = stopped_early(callback)
    metrics.update({"early_stopping_patience": callback.early_stopping_patience,
                    "early_stopping_threshold": callback.early_stopping_threshold,
                    "early_stopping_metric": name, "early_stopped": stopped})
    if state.best_metric is not None:
        metrics["best_metric"] = round(float(state.best_metric), 6)
        metrics["best_step"] = state.best_global_step
    if not stopped:
        return
    metrics["early_stopping_step"] = state.global_step
    logger.info("Early stopping: %s did not improve by more than %g for %d evaluations; stopped at step %d. The "
                "saved model is the best evaluation's (step %s, %s %.4f).", name, callback.early_stopping_threshold,
                callback.early_stopping_patience, state.global_step, state.best_global_step, name,
                state.best_metric if state.best_metric is not None else float("nan"))
    if planned_steps and state.global_step < planned_steps:
        lr = trainer.lr_scheduler.get_last_lr()[0] if trainer.lr_scheduler is not None else None
        metrics["early_stopping_planned_steps"] = planned_steps
        if lr is not None:
            metrics["early_stopping_learning_rate"] = float(f"{lr:.4g}")
        logger.warning("Early stopping ended the run at step %d of the %d %s: the learning-rate schedule had not "
                       "finished decaying (learning rate %s at the stop, %.0f%% of the planned steps run).",
                       state.global_step, planned_steps,
                       "its time budget planned" if getattr(args, "max_time_s", None) else "planned",
                       f"{lr:.3g}" if lr is not None else "unknown", 100 * state.global_step / planned_steps)
