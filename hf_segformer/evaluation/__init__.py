"""Evaluation: confusion-matrix metrics with evaluate's mean_iou semantics, per-class reports, the evaluate command, the deploy report."""
