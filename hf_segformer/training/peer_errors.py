"""An error with a one-line message (DataError, RecipeError, TrainingError) in one process of a multi-process run
(DDP): the others stop with it, quietly.

The process that meets it leaves its message and exit code in the process group's key-value store, which the
launcher hosts, so it outlives that process. A peer whose next collective then fails on the closed connection finds
them there and exits with the same code, without a traceback of its own: the user reads the one `error:` line. A
peer that fails with no such message is a real crash and goes on as raised."""

from __future__ import annotations

import sys
from typing import Any

STORE_KEY = "hf_segformer/user_error"


def _group() -> tuple[Any, int] | None:
    """The default process group's store and this process's rank in a run of several processes; None otherwise
    (torch never imported here: the light commands stay without it)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return None
    return dist.distributed_c10d._get_default_store(), dist.get_rank()


def publish_error(message: str, code: int) -> bool:
    """Leave `message` and the exit `code` for the peers; False when a peer left the same message first (its
    process prints it)."""
    group = _group()
    if group is None:
        return True
    store, rank = group
    mine = f"{rank}\n{code}\n{message}"
    try:
        first = store.compare_set(STORE_KEY, "", mine).decode(errors="replace")  # set unless a peer did first
    except Exception:  # noqa: BLE001 (the launcher's store already gone: nobody left to tell)
        return True
    return first == mine or first.split("\n", 2)[-1] != message


def peer_error_code() -> int | None:
    """The exit code of another process of this run that stopped on an error it printed; None if none did."""
    group = _group()
    if group is None:
        return None
    try:
        if not group[0].check([STORE_KEY]):
            return None
        return int(group[0].get(STORE_KEY).decode(errors="replace").split("\n", 2)[1])
    except Exception:  # noqa: BLE001 (the launcher's store gone: cannot tell, so not a user error)
        return None
