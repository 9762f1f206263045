"""`hf-segformer train` (and `recipes/finetune.py`): fine-tune from a recipe,
`--config recipe.yaml [--field value ...]` (`training.run`)."""

from __future__ import annotations

from hf_segformer.training.arguments import parse_recipe
from hf_segformer.training.run import main as train


def main(argv: list[str], default_config: str | None = None) -> int:
    """`default_config`: the recipe read when no --config is given (the quickstart, for recipes/finetune.py)."""
    train(*parse_recipe(argv, default_config=default_config))
    return 0
