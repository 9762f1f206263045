"""What may appear on a public Hub page: Hub repository ids, never local paths, never a token.

Cards and Spaces pass their text through `public_text`, which redacts any that slip in through user-given names;
a model named in a published file (a LoRA adapter's base) is named by `public_model_name`.
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
# A model folder of the Hub cache (`snapshot_download`, `from_pretrained`): …/models--OWNER--NAME/snapshots/COMMIT.
HUB_CACHE_SNAPSHOT = re.compile(r"(?:^|[/\\])models--(?P<repo>[^/\\]+)[/\\]snapshots[/\\](?P<commit>[0-9a-f]{40})$")
ABSOLUTE_PATH = re.compile(NOT_IN_URL + r"(?:/(?:home|root|tmp|Users|mnt|media|data|work|scratch|var|opt|srv)/"
                           + PATH_TAIL + r"|[A-Za-z]:\\" + PATH_TAIL + ")")


def hub_repo_id(value: str | None) -> str | None:
    """`value` when it names a Hub repository; None for an existing local path or anything else."""
    if not value or os.path.exists(value) or not REPO_ID.match(value):
        return None
    return value


def hub_snapshot(path: str | os.PathLike) -> tuple[str, str] | None:
    """(Hub id, commit) of a folder of the Hub cache: a local path that is an exact copy of a Hub model."""
    match = HUB_CACHE_SNAPSHOT.search(os.path.normpath(os.path.expanduser(str(path))))
    return (match["repo"].replace("--", "/"), match["commit"]) if match else None


def hub_model_id(value: str | None) -> str | None:
    """The Hub id of a model given by its Hub id or by its folder in the Hub cache; None for other local folders."""
    snapshot = hub_snapshot(value) if value else None
    return snapshot[0] if snapshot else hub_repo_id(value)


def public_model_name(value: str) -> str:
    """How a published file names a model: its Hub id where it has one, else only its local folder's name."""
    return hub_model_id(value) or Path(value).resolve().name


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
