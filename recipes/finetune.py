"""Fine-tune SegFormer with the HF Trainer.

    accelerate launch recipes/finetune.py                                   # the offline quickstart
    accelerate launch recipes/finetune.py --config recipes/aerial/segformer-b0.yaml [--field value ...]
"""

from pathlib import Path

from hf_segformer.parser import parse_recipe
from hf_segformer.train import main

QUICKSTART = Path(__file__).resolve().parent / "quickstart.yaml"

if __name__ == "__main__":
    main(*parse_recipe(default_config=QUICKSTART))
