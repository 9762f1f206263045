"""Fine-tune SegFormer with the HF Trainer.

    accelerate launch recipes/finetune.py                                   # the offline quickstart
    accelerate launch recipes/finetune.py --config recipes/aerial/segformer-b0.yaml [--field value ...]
"""

import sys
from pathlib import Path

from hf_segformer.cli import run_train

QUICKSTART = Path(__file__).resolve().parent / "quickstart.yaml"

if __name__ == "__main__":
    sys.exit(run_train(sys.argv[1:], default_config=str(QUICKSTART)))
