"""What may appear on a public Hub page: Hub repository ids, never local paths, never a token.

Cards and Spaces pass their text through `public_text`, which redacts any that slip in through user-given names.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")
NOT_IN_URL = r"(?<![\w.:/])"  # a path starts at a word boundary, not inside a URL such as https://data.org/x
PATH_TAIL = r"[^\s)\]`'\"|,;]*"
ABSOLUTE_PATH = re.compile(NOT_IN_URL + r"(?:/(?:home|root|tmp|Users|mnt|media|data|work|scratch|var|opt|srv)/"
                           + PATH_TAIL + r"|[A-Za-z]:\\" + PATH_TAIL + ")")


def hub_repo_id(value: str | None) -> str | None:
    """`value` when it names a Hub repository; None for an existing local path or anything else."""
    if not value or os.path.exists(value) or not REPO_ID.match(value):
        return None
    return value


def public_text(text: str) -> str:
    """Redact tokens and local absolute paths (home, working directory, /tmp, ...) from card text."""
    secrets = {os.environ.get(name) for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")} - {None, ""}
    cleaned = TOKEN.sub("<token>", text)
    for secret in secrets:
        cleaned = cleaned.replace(secret, "<token>")
    for root in {str(Path.cwd()), str(Path.home())} - {"/"}:
        cleaned = re.sub(NOT_IN_URL + re.escape(root) + PATH_TAIL, "<local path>", cleaned)
    cleaned = ABSOLUTE_PATH.sub("<local path>", cleaned)
    if cleaned != text:
        warnings.warn("A card contained a token or a local path; it was redacted.", stacklevel=2)
    return cleaned
