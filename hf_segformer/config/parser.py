"""YAML recipe + command-line overrides → config dataclasses.

`--config recipe.yaml` sets the defaults, any `--field value` on the command line wins, and a key in the
YAML that no dataclass knows is an error naming the key (a typo must not be silently ignored). The parser is
given the dataclasses it fills: a training run's are `training.arguments.RECIPE_DATACLASSES`.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from hf_segformer.config.data import TRAINING_ONLY_DATA_FIELDS, DataArguments
from hf_segformer.errors import RecipeError


def load_recipe(path: str | Path, dataclass_types: tuple) -> dict[str, Any]:
    """Read a YAML recipe and check every key against the dataclasses' fields."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"Recipe {path} does not exist.")
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise RecipeError(f"Recipe {path} is not valid YAML{where}: {problem}. Fix that line "
                          "(indent with spaces, write each field as `name: value`).") from None
    if not isinstance(recipe, dict):
        raise RecipeError(f"Recipe {path} must be a mapping of field: value; got {type(recipe).__name__}.")
    known = {f.name for dc in dataclass_types for f in fields(dc) if f.init}
    unknown = [key for key in recipe if key not in known]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise RecipeError(f"Recipe {path}: unknown key(s) {', '.join(hints)}.")
    return _words_read_as_booleans(recipe, dataclass_types, path)


# Fields whose choices include "no", which YAML reads unquoted as False (transformers' interval/save strategies).
NO_CHOICE_TYPES = ("IntervalStrategy", "SaveStrategy")


def _words_read_as_booleans(recipe: dict[str, Any], dataclass_types: tuple, path: Path) -> dict[str, Any]:
    """YAML reads unquoted no/yes/off/on as booleans: `eval_strategy: no` arrives as False. For a field that takes
    "no", False means "no"; any other boolean given to a strategy is an error naming the field. (Text fields that
    take true/false themselves, such as cache_images, read booleans on their own.)"""
    types = {f.name: str(f.type) for dc in dataclass_types for f in fields(dc) if f.init}
    for key, value in recipe.items():
        kind = types[key]
        if not isinstance(value, bool) or "Strategy" not in kind:
            continue
        if value is False and any(name in kind for name in NO_CHOICE_TYPES):
            recipe[key] = "no"
        else:
            raise RecipeError(f"Recipe {path}: {key} is {value}: YAML reads an unquoted yes/no/on/off/true/false "
                              f"as a boolean, and {key} takes a word. Quote it, e.g. {key}: \"no\".")
    return recipe


def parse_args(argv: list[str] | None, dataclass_types: tuple, default_config: str | Path | None = None) -> tuple:
    """Parse `--config file.yaml` plus overrides into one instance per dataclass type."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config = default_config
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise RecipeError("--config needs a path to a YAML recipe.")
        config = argv[i + 1]
        del argv[i : i + 2]
    elif any(a.startswith("--config=") for a in argv):
        arg = next(a for a in argv if a.startswith("--config="))
        config = arg.split("=", 1)[1]
        argv.remove(arg)
    parser = HfArgumentParser(dataclass_types)
    if config is not None:
        recipe = load_recipe(config, dataclass_types)
        parser.set_defaults(**recipe)
    parsed = _parse_checked(parser, argv, dataclass_types)
    for instance in parsed:  # where the recipe came from: a run must never move it aside (training.run_folder.claim_output_dir)
        instance.recipe_file = None if config is None else str(config)
    return parsed


NULL_WORDS = ("null", "none", "~")


def _optional_fields(dataclass_types: tuple) -> set[str]:
    return {f.name for dc in dataclass_types for f in fields(dc)
            if f.init and ("None" in str(f.type) or f.default is None)}


def _take_nulls(argv: list[str], dataclass_types: tuple) -> tuple[list[str], dict[str, None]]:
    """`--field null` (or none, ~) for an Optional field unsets it, even when the recipe sets it."""
    optional = _optional_fields(dataclass_types)
    rest, nulls, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name in optional and eq and value.lower() in NULL_WORDS:
            nulls[name] = None
        elif (name in optional and not eq and i + 1 < len(argv) and argv[i + 1].lower() in NULL_WORDS
              and (i + 2 >= len(argv) or argv[i + 2].startswith("--"))):
            nulls[name] = None
            i += 1
        else:
            rest.append(arg)
        i += 1
    return rest, nulls


def _parse_checked(parser: HfArgumentParser, argv: list[str], dataclass_types: tuple) -> tuple:
    """Parse the command line; an option no dataclass knows is an error with a "did you mean" (as a recipe key)."""
    argv, nulls = _take_nulls(argv, dataclass_types)
    if nulls:
        parser.set_defaults(**nulls)
    *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        known = [option for action in parser._actions for option in action.option_strings if option.startswith("--")]
        hints = []
        options = [arg for arg in remaining if arg.startswith("-")]  # not the values that follow them
        for arg in options or remaining:
            option = arg.split("=", 1)[0]
            close = difflib.get_close_matches(option, known, n=1) if option.startswith("--") else []
            hints.append(f"'{arg}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise RecipeError(f"Unknown command-line option(s) {', '.join(hints)}; `--help` lists them all.")
    return tuple(parsed)


def parse_command(argv: list[str], dataclass_types: tuple, recipe_types: tuple) -> tuple:
    """Options of a command that runs on a training recipe's data (evaluate, predict): `--config recipe.yaml`
    is optional; its keys that belong to `dataclass_types` become defaults (the command line wins), its other
    keys must be fields of `recipe_types` (a typo is still an error) and are returned as the last item, a dict."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    recipe = load_recipe(known.config, recipe_types + dataclass_types) if known.config else {}
    own = {f.name for dc in dataclass_types for f in fields(dc) if f.init}
    parser = command_parser(dataclass_types)
    parser.set_defaults(**{k: v for k, v in recipe.items() if k in own})
    return (*_parse_checked(parser, rest, dataclass_types), {k: v for k, v in recipe.items() if k not in own})


def command_parser(dataclass_types: tuple) -> HfArgumentParser:
    """The parser of a command that runs on a trained model (evaluate, predict, demo), with a --help that shows
    only what the command uses: one group per dataclass (its `_argument_group_name`), `--config`, and none of
    the training-only data fields (`config.data.TRAINING_ONLY_DATA_FIELDS`), which a training recipe given by
    --config may still hold and the command line still accepts."""
    parser = HfArgumentParser(dataclass_types)
    # Read before this parser by parse_command; SUPPRESS keeps it out of the namespace (no extra dataclass).
    parser.add_argument("--config", metavar="RECIPE.yaml", default=argparse.SUPPRESS,
                        help="A training recipe: its fields are the defaults (the model: its output_dir, the data: "
                             "its data fields); the command line wins.")
    if DataArguments in dataclass_types:
        for action in parser._actions:
            if action.dest in TRAINING_ONLY_DATA_FIELDS:
                action.help = argparse.SUPPRESS
    return parser
