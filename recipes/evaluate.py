"""Evaluate a saved SegFormer on a dataset split (whole, slide or test-time augmented inference), on one or
several processes:

    accelerate launch recipes/evaluate.py --config recipes/aerial/segformer-b0.yaml --mode slide
    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml recipes/evaluate.py --model outputs/run \\
        --data_dir my_data --tta_scales 0.75 1.0 1.25 --flip true
"""

import sys

from hf_segformer.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("evaluate", sys.argv[1:]))  # hf_segformer/commands/evaluate.py
