"""`recipes/finetune.py`, except that the process signals itself when training reaches `--kill_at_step` (SIGKILL)
or `--term_at_step` (SIGTERM); with `--during_save`, in the middle of that step's checkpoint save instead (the
weights written, the optimizer state not yet).

Used by tests/test_faults.py to interrupt a real run the hardest way (no cleanup, no final save), or as a
pre-emption does; the test then resumes it with `--resume_from_checkpoint last`.

    python tests/scripts/killed_run_script.py --kill_at_step 7 [--during_save] --config RECIPE [--field value ...]
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import TrainerCallback

import hf_segformer.training.run
from hf_segformer.cli import run_command


class SignalAt(TrainerCallback):
    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def take_option(argv: list[str], name: str) -> str | None:
    if name not in argv:
        return None
    at = argv.index(name)
    value = argv[at + 1]
    del argv[at : at + 2]
    return value


if __name__ == "__main__":
    argv = sys.argv[1:]
    during_save = "--during_save" in argv
    if during_save:
        argv.remove("--during_save")
    kill, term = take_option(argv, "--kill_at_step"), take_option(argv, "--term_at_step")
    step, signum = (int(kill), signal.SIGKILL) if kill is not None else (int(term), signal.SIGTERM)
    trainer_class = hf_segformer.training.run.SegformerTrainer

    class SignalledTrainer(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if not during_save:
                self.add_callback(SignalAt(step, signum))

        def _save_optimizer_and_scheduler(self, output_dir):
            if during_save and self.state.global_step == step:
                os.kill(os.getpid(), signum)
            super()._save_optimizer_and_scheduler(output_dir)

    hf_segformer.training.run.SegformerTrainer = SignalledTrainer
    sys.exit(run_command("train", argv))
