"""`recipes/finetune.py`, except that the process SIGKILLs itself when training reaches `--kill_at_step`.

Used by tests/test_faults.py to interrupt a real run the hardest way (no cleanup, no final save), mid-epoch,
with checkpoints behind it; the test then resumes it with `--resume_from_checkpoint last`.

    python tests/scripts/killed_run_script.py --kill_at_step 7 --config RECIPE [--field value ...]
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import TrainerCallback

import hf_segformer.training.run
from hf_segformer.cli import run_command


class KillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    argv = sys.argv[1:]
    at = argv.index("--kill_at_step")
    kill_step = int(argv[at + 1])
    del argv[at : at + 2]
    trainer_class = hf_segformer.training.run.SegformerTrainer

    class KilledTrainer(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(KillAt(kill_step))

    hf_segformer.training.run.SegformerTrainer = KilledTrainer
    sys.exit(run_command("train", argv))
