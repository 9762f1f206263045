"""The recipes against the real datasets in ../shared (skipped with the reason where they are absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_segformer.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
AERIAL = ROOT.parent / "shared/datasets/dubai_aerial"


@pytest.mark.skipif(not AERIAL.is_dir(), reason=f"{AERIAL} is absent (the shared datasets sit beside the project)")
def test_aerial_recipe_passes_the_data_check_with_the_documented_histogram(tmp_path):
    code = cli(["check-data", "--config", str(ROOT / "recipes/aerial/segformer-b0.yaml"), "--data_dir", str(AERIAL),
                "--output_dir", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "class_histogram.json").read_text())
    assert {name: split["num_samples"] for name, split in report["splits"].items()} == \
        {"train": 56, "validation": 8, "test": 8}
    counts = report["splits"]["train"]["pixel_counts"]
    # INFO.txt: 0:10.5M 1:38.0M 2:7.3M 3:9.3M 4:10.9M 5:0.44M 255:0.55M
    expected = [10.5e6, 38.0e6, 7.3e6, 9.3e6, 10.9e6, 0.44e6, 0.55e6]
    assert counts == pytest.approx(expected, rel=0.03)
