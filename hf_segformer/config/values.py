"""Recipe values as written in YAML or on the command line — class names, colours, data files, durations,
loss-term mappings, choices among names, the ignore index — read into what the code uses, with one clear error
naming the field.

Imports nothing of the package but its errors (and nothing heavy): the recipe dataclasses (`configs`) and the
light commands (mask conversions, annotation import) that read the same values share these parsers without
importing transformers.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from hf_segformer.errors import DataError, RecipeError


def load_mapping_text(text: str) -> Any:
    """A mapping or list written on the command line: JSON, or the YAML flow form a recipe uses
    (`{0: background, 1: road}`), so both spellings work in both places. JSON's error if neither reads."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise err from None
        if isinstance(value, (dict, list)):
            return value
        raise


def check_choice(field: str, value: Any, choices: tuple[str, ...] | list[str], alternative: str | None = None) -> None:
    """A field that takes one of a few names: refused, naming the field and the names, when it is none of them
    (`alternative`: what else the field takes, e.g. "a list")."""
    if value not in choices:
        among = f"{alternative} or one of" if alternative else "one of"
        raise RecipeError(f"{field} must be {among} {', '.join(choices)}; got '{value}'.")


# Pads label maps of different sizes to one batch (the collator); never a class, so never the ignore index.
LABEL_PAD = -100


def check_ignore_index(ignore_index: int) -> None:
    """The ignore index must not be LABEL_PAD: padded pixels and ignored pixels are told apart by it."""
    if ignore_index == LABEL_PAD:
        raise RecipeError(f"ignore_index={LABEL_PAD} is reserved for padding labels in a batch; use 255 or -1.")


def check_max_image_pixels(max_image_pixels: int | None) -> None:
    """None keeps PIL's limit, 0 lifts it, a positive number of pixels replaces it."""
    if max_image_pixels is not None and max_image_pixels < 0:
        raise RecipeError(f"max_image_pixels must be 0 (no limit) or a number of pixels; got {max_image_pixels}.")


def parse_colour(colour: Any) -> tuple[int, int, int]:
    """Accept '#RRGGBB', 'r,g,b' or [r, g, b]."""
    unreadable = DataError(f"colour_map: cannot read colour {colour!r}; write it as '#RRGGBB' (hex digits 0-9, "
                           "A-F) or 'r,g,b' (0..255 each).")
    if isinstance(colour, str):
        text = colour.strip()
        if text.startswith("#"):
            if len(text) != 7 or not re.fullmatch(r"[0-9a-fA-F]{6}", text[1:]):
                raise unreadable
            return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]
        parts = [p for p in text.replace("(", "").replace(")", "").split(",") if p.strip()]
    else:
        parts = list(colour) if isinstance(colour, (list, tuple)) else []
    if len(parts) != 3:
        raise unreadable
    try:
        rgb = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise unreadable from None
    if not all(0 <= c <= 255 for c in rgb):
        raise DataError(f"colour_map: colour {colour!r} has a channel outside 0..255.")
    return rgb  # type: ignore[return-value]


def parse_colour_map(colour_map: dict | str | None) -> dict[tuple[int, int, int], int] | None:
    """Recipe form `{"#3C1098": 0, "110,193,228": 2}` (or a JSON file of it) → {(r, g, b): class_id}."""
    if colour_map is None:
        return None
    if isinstance(colour_map, str):
        text = Path(colour_map).read_text() if os.path.isfile(colour_map) else colour_map
        try:
            colour_map = load_mapping_text(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise DataError(f"colour_map: cannot read {colour_map!r} as a mapping of colour → class id ({err}); "
                            "write it as {'#RRGGBB': class_id, ...}.") from None
    if not isinstance(colour_map, dict):
        raise DataError(f"colour_map: expected a mapping of colour → class id; got {colour_map!r}.")
    try:
        return {parse_colour(k): int(v) for k, v in colour_map.items()}
    except (TypeError, ValueError):
        raise DataError(f"colour_map: class ids must be integers; got {list(colour_map.values())}.") from None


LABEL_MAP_DEFAULTS = ("ignore", "keep")  # what label_map does with raw values it does not name


def parse_label_map(value: dict | str | None) -> dict[int, int] | None:
    """`label_map` from YAML ({7: 0, 8: 1}), JSON/YAML flow text or a JSON file → {raw mask value: class id}."""
    if value is None:
        return None
    if isinstance(value, str):
        is_file = os.path.isfile(value)
        try:
            value = json.loads(Path(value).read_text()) if is_file else load_mapping_text(value)
        except (json.JSONDecodeError, ValueError) as err:
            raise RecipeError(f"label_map: cannot read {value!r} ({err}); write it as {{raw value: class id}}, "
                              "e.g. {7: 0, 8: 1, 11: 2}.") from err
    if not isinstance(value, dict) or not value:
        raise RecipeError(f"label_map: expected a mapping of raw mask value → class id, e.g. {{7: 0, 8: 1}}; "
                          f"got {value!r}.")
    mapping = {}
    for raw, class_id in value.items():
        try:
            raw_int, id_int = int(str(raw).strip()), int(str(class_id).strip())
        except ValueError:
            raise RecipeError(f"label_map: keys and values must be integers (raw mask value → class id); got "
                              f"{raw!r}: {class_id!r}.") from None
        mapping[raw_int] = id_int
    return mapping


def check_label_map_targets(label_map: dict[int, int] | None, num_labels: int | None, ignore_index: int) -> None:
    """Every class id a label map sends to is a class (0..num_labels-1) or the ignore index."""
    if not label_map or not num_labels:
        return
    bad = {raw: class_id for raw, class_id in label_map.items()
           if class_id != ignore_index and not 0 <= class_id < num_labels}
    if bad:
        shown = ", ".join(f"{raw}: {class_id}" for raw, class_id in list(bad.items())[:8])
        raise RecipeError(f"label_map sends raw values to ids that are not classes ({shown}): targets must be "
                          f"0..{num_labels - 1} or ignore_index={ignore_index}.")


def parse_data_files(value: Any) -> dict[str, list[str]] | None:
    """`data_files` from YAML (mapping, list or string) or the command line (JSON text or a glob) →
    {split: [globs]}."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("{", "[")):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise RecipeError(f"data_files: cannot read {value!r} as JSON ({err}).") from err
    if isinstance(value, (str, list)):
        value = {"train": value}
    if not isinstance(value, dict) or not value:
        raise RecipeError(f"data_files: expected a mapping such as {{train: 'shards/train-*.parquet'}}; got {value!r}.")
    parsed = {}
    for split, globs in value.items():
        globs = [globs] if isinstance(globs, str) else list(globs)
        if not globs or not all(isinstance(g, str) and g for g in globs):
            raise RecipeError(f"data_files: split '{split}' needs one or more paths or globs; got {globs!r}.")
        parsed[str(split)] = globs
    return parsed


def normalise_id2label(id2label: dict | str | None) -> dict[int, str] | None:
    """Recipe value (mapping, JSON or YAML flow text, or the path of a JSON file) → {int id: name}, ids 0..n-1."""
    if id2label is None:
        return None
    where = None
    if isinstance(id2label, str):
        is_file = os.path.isfile(id2label)
        text = id2label.strip()
        if not is_file and not text.startswith(("{", "[")):
            raise DataError(f"id2label: {id2label} is not a file (nor a JSON mapping): give the path of an "
                            "id2label.json, or the mapping itself, e.g. {0: background, 1: road}.")
        where = id2label if is_file else "the id2label value"
        try:
            id2label = json.loads(Path(id2label).read_text()) if is_file else load_mapping_text(text)
        except json.JSONDecodeError as err:
            raise DataError(f"id2label: {where} cannot be read ({err.msg} at line {err.lineno}, column "
                            f"{err.colno}); write it as {{0: background, 1: road}} (or JSON).") from err
    if isinstance(id2label, list):
        id2label = dict(enumerate(id2label))
    if not isinstance(id2label, dict):
        raise DataError(f"id2label: expected a mapping of class id → name; got {type(id2label).__name__}.")
    try:
        mapping = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError) as err:
        reversed_hint = (" It looks reversed (name → id): write it id → name, e.g. {0: background}."
                         if all(isinstance(v, int) or str(v).isdigit() for v in id2label.values()) else "")
        raise DataError(f"id2label: keys must be class ids 0..n-1 (id → name); got {list(id2label)[:5]}."
                        f"{reversed_hint}") from err
    if sorted(mapping) != list(range(len(mapping))):
        raise DataError(f"id2label: class ids must be 0..{len(mapping) - 1} without gaps; got {sorted(mapping)}.")
    seen: dict[str, list[int]] = {}
    for class_id, name in sorted(mapping.items()):
        seen.setdefault(name, []).append(class_id)
    repeated = [f"'{name}' is class {', '.join(map(str, ids))}" for name, ids in seen.items() if len(ids) > 1]
    if repeated:  # the model's label2id (name → id) would keep one of them and lose the others
        raise DataError(f"id2label{'' if where is None else f' ({where})'}: class names must be unique; "
                        f"{'; '.join(repeated)}. Give each class its own name.")
    return mapping


def check_num_labels(num_labels: int | None, id2label: dict[int, str] | None) -> None:
    """num_labels, when given, must match the number of named classes (wherever the names came from)."""
    if num_labels and id2label and len(id2label) != num_labels:
        raise RecipeError(f"num_labels={num_labels} but id2label names {len(id2label)} classes.")


def parse_mapping(value: dict | str, name: str) -> dict[str, float]:
    """A recipe mapping given in YAML (dict) or on the command line (JSON or YAML flow text)."""
    try:
        mapping = load_mapping_text(value) if isinstance(value, str) else dict(value)
        return {str(k): float(v) for k, v in mapping.items()}
    except (ValueError, TypeError, AttributeError) as err:
        raise RecipeError(f"{name}: expected a mapping such as {{\"ce\": 1.0, \"dice\": 0.5}}; got {value!r}.") from err


DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int) -> float:
    """'25m', '2h', '1.5d', '90s', '1h30m' → seconds. A bare number is refused: minutes or hours would both be
    plausible readings (Ultralytics' `time=` is hours)."""
    value = str(text).strip().lower().replace(" ", "")
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)([smhd])", value)
    if not value or not parts or "".join(n + u for n, u in parts) != value:
        raise RecipeError(f"max_time: expected a duration such as 90s, 25m, 2h, 1.5d or 1h30m; got {text!r}.")
    seconds = sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise RecipeError(f"max_time must be positive; got {text!r}.")
    return seconds


SPLIT_ALIASES = {"train": "train", "training": "train", "validation": "validation", "val": "validation",
                 "valid": "validation", "test": "test", "testing": "test"}


def canonical_split(name: str) -> str:
    """A split name as a recipe may write it ('val', 'training') → the name `datasets` uses ('validation')."""
    return SPLIT_ALIASES.get(name.lower(), name)
