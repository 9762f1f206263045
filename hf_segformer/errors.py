"""The user-facing error types, raised before any training step is spent; the CLI prints them plainly."""

from __future__ import annotations

import importlib

MAX_LISTED = 20


class DataError(ValueError):
    """Bad input found by the loaders or the pre-flight check; the message says what to fix."""


class RecipeError(ValueError):
    """A recipe (YAML or command line) that cannot be used as written."""


class TrainingError(RuntimeError):
    """A run that cannot go on (NaN/Inf losses, out of memory); the message names the step and the knobs."""


def problems_message(title: str, problems: list[str], hint: str = "") -> str:
    """Format a list of offending files: the first 20, then a count of the rest."""
    lines = [f"{title} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):"]
    lines += [f"  - {p}" for p in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    if hint:
        lines.append(hint)
    return "\n".join(lines)


def require_extra(module: str, extra: str, purpose: str, packages: str):
    """An optional dependency, imported; where it is missing, one error saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise RecipeError(f"{purpose} needs the '{module}' package: pip install 'hf-segformer[{extra}]' "
                          f"({packages}).") from err
