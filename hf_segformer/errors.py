"""The user-facing error types, raised before any training step is spent; the CLI prints them plainly."""

from __future__ import annotations

import importlib

MAX_LISTED = 20
USER_ERROR_EXIT = 2  # bad input (data, recipe, paths): fix it and launch again
CRASH_EXIT = 1  # a run that could not go on, or a bug


class DataError(ValueError):
    """Bad input found by the loaders or the pre-flight check; the message says what to fix."""


class RecipeError(ValueError):
    """A recipe (YAML or command line) that cannot be used as written."""


class TrainingError(RuntimeError):
    """A run that cannot go on (NaN/Inf losses, out of memory); the message names the step and the knobs."""


def as_raised(err: Exception) -> str:
    """An error's message as it was raised. torch's DataLoader re-raises an error from a loader worker as
    `type(err)("Caught ... in DataLoader worker process N. Original Traceback ...")`, the worker's traceback ending
    in the original `module.Type: message`: that message is what the user needs, not the traceback."""
    text = str(err)
    if not (text.startswith("Caught ") and "DataLoader worker process" in text and "\nOriginal Traceback" in text):
        return text
    marker = f"\n{type(err).__module__}.{type(err).__qualname__}: "
    at = text.rfind(marker)
    return text[at + len(marker):].strip() if at >= 0 else text


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
