"""Fine-tune SegFormer with the HF Trainer.

    accelerate launch --config_file accelerate_configs/default.yaml recipes/finetune.py   # the offline quickstart
    accelerate launch --config_file accelerate_configs/default.yaml recipes/finetune.py --config recipes/aerial/segformer-b0.yaml [--field value ...]

The short form, which starts the processes itself: hf-segformer train --config RECIPE.yaml [--num_processes N].
"""

import os
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parent / "quickstart.yaml"
# matplotlib (the sample grids, the confusion-matrix PNG) would write its font cache to ~/.cache/matplotlib:
# keep it in the project's git-ignored .cache/ unless the user chose a place.
os.environ.setdefault("MPLCONFIGDIR", str(QUICKSTART.parent.parent / ".cache" / "matplotlib"))

from hf_segformer.cli import run_command  # noqa: E402  (after MPLCONFIGDIR)

if __name__ == "__main__":
    sys.exit(run_command("train", sys.argv[1:], default_config=str(QUICKSTART)))  # hf_segformer/commands/train.py
