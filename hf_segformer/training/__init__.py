"""Training: the run (recipes/finetune.py), SegformerTrainer, losses, callbacks, the time budget, weight averaging, run checks, the resumable stream."""
