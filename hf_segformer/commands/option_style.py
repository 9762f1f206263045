"""The one option style of every command: the model folder is `--model`, a boolean takes `--flag`, `--flag true`
or `--flag false` (as the recipe-field commands' do, through HfArgumentParser), and names use underscores.

The spellings of the previous release (a positional model folder, `--export-space`) still work for one release,
each with a one-line deprecation warning. Imports nothing heavy: the light commands use it.
"""

from __future__ import annotations

import argparse
import sys

TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def add_flag(parser: argparse.ArgumentParser, name: str, help: str | None = None) -> None:
    """A boolean option, off unless given: `--name` or `--name true` turns it on, `--name false` off."""
    parser.add_argument(name, type=parse_bool, nargs="?", const=True, default=False, metavar="true|false", help=help)


def deprecated(old: str, new: str) -> None:
    """The one line an old spelling prints (on stderr, so that output meant for a pipe stays clean)."""
    print(f"warning: {old} is deprecated and will stop working in the next release; write {new}.", file=sys.stderr)


def leading_positionals(argv: list[str], command: str, options: tuple[str, ...], rest: str | None = None) -> list[str]:
    """The old spelling `hf-segformer COMMAND MODEL [...] --options ...`: the positional arguments before the first
    option become `options` in order (with `rest`, every further one goes to that option), and one deprecation
    line says how to write it. Arguments that start with an option pass through unchanged."""
    count = next((i for i, arg in enumerate(argv) if arg.startswith("-")), len(argv))
    lead, tail = argv[:count], argv[count:]
    if not lead:
        return argv
    converted: list[str] = []
    for option, value in zip(options, lead):
        converted += [option, value]
    extra = lead[len(options):]
    if extra and rest:
        converted += [rest, *extra]
    elif extra:
        converted += extra  # one positional too many: argparse names it
    names = [option.lstrip("-").upper() for option in options][: len(lead)]
    if extra and rest:
        names.append(rest.lstrip("-").upper() + "...")
    deprecated(f"`hf-segformer {command} {' '.join(names)}` (positional arguments)",
               f"`hf-segformer {command} " + " ".join(f"{o} {n}" for o, n in zip([*options, rest], names)) + "`")
    return converted + tail


def renamed_options(argv: list[str], command: str, renames: dict[str, str]) -> list[str]:
    """Options spelled the old way (`--export-space`) → their names now, each with a deprecation line."""
    converted = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in renames:
            deprecated(f"`hf-segformer {command} {name}`", f"`{renames[name]}`")
            arg = renames[name] + eq + value
        converted.append(arg)
    return converted
