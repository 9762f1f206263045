"""The label map saved with a model, so that a saved model scores raw masks without its recipe.

Training writes the recipe's `label_map` and `label_map_default` into the image processor it saves
(preprocessor_config.json: it goes wherever the model goes, the Hub and merged LoRA folders included, and
AutoImageProcessor keeps the two fields as attributes). It is the processor rather than config.json because mask
decoding is the processor's concern in transformers (`do_reduce_labels`), and because the processor is built
afresh from each recipe, whereas config.json's extra fields ride along into a model fine-tuned from this one.
`evaluate` and `deploy-report` read it back when the recipe gives no map.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from transformers import AutoImageProcessor

from hf_segformer.config.data import DataArguments
from hf_segformer.config.values import LABEL_MAP_DEFAULTS, check_choice, check_label_map_targets, parse_label_map
from hf_segformer.errors import RecipeError

logger = logging.getLogger(__name__)

LABEL_MAP = "label_map"  # the processor's attributes, as saved in preprocessor_config.json
LABEL_MAP_DEFAULT = "label_map_default"


def save_label_map(processor: Any, data_args: DataArguments) -> None:
    """Put the recipe's label map (if any) on the processor that training saves with the model."""
    if data_args.label_map_ids:
        setattr(processor, LABEL_MAP, {str(raw): class_id for raw, class_id in sorted(data_args.label_map_ids.items())})
        setattr(processor, LABEL_MAP_DEFAULT, data_args.label_map_default)


def saved_label_map(model: str) -> tuple[dict[int, int], str] | None:
    """The label map and its default saved with `model` (a folder or Hub id); None for a model saved without one."""
    try:
        processor = AutoImageProcessor.from_pretrained(model)
    except (OSError, ValueError):  # no preprocessor_config.json: nothing was saved
        return None
    saved = getattr(processor, LABEL_MAP, None)
    if not saved:
        return None
    try:
        default = getattr(processor, LABEL_MAP_DEFAULT, "ignore")
        check_choice(LABEL_MAP_DEFAULT, default, LABEL_MAP_DEFAULTS)
        return parse_label_map(saved), default
    except RecipeError as err:
        raise RecipeError(f"{model}: the label map saved in its preprocessor_config.json cannot be used: {err} Fix "
                          "the file, or give --label_map.") from err


def with_saved_label_map(data_args: DataArguments, model: str, num_labels: int | None = None) -> DataArguments:
    """The recipe's data arguments, reading masks with the model's saved label map when the recipe gives none.
    A map in the recipe wins; a recipe that decodes masks another way (colour_map, reduce_labels, binary_masks)
    contradicts the saved map and is refused."""
    saved = saved_label_map(model)
    if saved is None:
        return data_args
    label_map, default = saved
    if data_args.label_map_ids is not None:
        if (data_args.label_map_ids, data_args.label_map_default) != (label_map, default):
            logger.warning("Masks are read with the recipe's label_map, not the one saved with %s.", model)
        return data_args
    others = [name for name, value in (("colour_map", data_args.colour_map_rgb),
                                       ("reduce_labels", data_args.reduce_labels),
                                       ("binary_masks", data_args.binary_masks)) if value]
    if others:
        raise RecipeError(f"{model} was trained with a label_map (saved in its preprocessor_config.json) and the "
                          f"recipe sets {others[0]}: both re-map mask values. Drop {others[0]} to read the masks "
                          "with the model's label map, or give --label_map to replace it.")
    try:
        check_label_map_targets(label_map, num_labels, data_args.ignore_index)
    except RecipeError as err:
        raise RecipeError(f"{model}: its saved {err} Set ignore_index as in training, or give --label_map.") from err
    resolved = copy.copy(data_args)
    resolved.label_map_ids, resolved.label_map_default = label_map, default
    logger.info("Masks are read with the label_map saved with %s (%d raw values; others: %s).", model,
                len(label_map), default)
    return resolved
