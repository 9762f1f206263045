"""A run folder uploaded as it may be published: the one upload path of `push_model` and of the Trainer's own pushes
during training (`hub_strategy`).

A LoRA run's adapter_config.json names its base model by the path it was loaded from, which local loading needs and
the Hub must not see: the uploaded copy names the base by its Hub id (a Hub id, or a folder of the Hub cache, whose
commit becomes the config's `revision`), else by the local folder's name only (the model card then says how to
publish the base and point the adapter at it). The file on disk is left as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi

from hf_segformer.hub.redaction import hub_snapshot, public_model_name
from hf_segformer.modeling.lora import ADAPTER_CONFIG


def public_adapter_config(folder: str | os.PathLike) -> bytes | None:
    """The folder's adapter_config.json as it is published, or None when the folder holds no adapter."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    base = config.get("base_model_name_or_path")
    if base:
        snapshot = hub_snapshot(base)
        if snapshot is not None and not config.get("revision"):
            config["revision"] = snapshot[1]  # the base's exact version, as the cache held it
        config["base_model_name_or_path"] = public_model_name(base)
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def upload_run_folder(api: HfApi, *, repo_id: str, folder_path: str | os.PathLike, commit_message: str,
                      path_in_repo: str | None = None, ignore_patterns: list[str] | None = None,
                      revision: str | None = None, token: str | None = None, **kwargs: Any) -> Any:
    """`api.upload_folder` (same arguments) with the folder's adapter_config.json replaced by its published form,
    committed right after the folder's other files."""
    adapter = public_adapter_config(folder_path)
    ignore = [*(ignore_patterns or []), *([ADAPTER_CONFIG] if adapter is not None else [])]
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder_path, commit_message=commit_message,
                               path_in_repo=path_in_repo, ignore_patterns=ignore, revision=revision, token=token,
                               **kwargs)
    if adapter is None:
        return commit
    in_repo = f"{str(path_in_repo).strip('/')}/{ADAPTER_CONFIG}" if path_in_repo else ADAPTER_CONFIG
    return api.create_commit(repo_id=repo_id, revision=revision, token=token,
                             commit_message=f"{commit_message}: {ADAPTER_CONFIG}",
                             operations=[CommitOperationAdd(in_repo, adapter)])


class PublicUploads:
    """An `HfApi` whose `upload_folder` is `upload_run_folder` (in the background with `run_as_future`, as the
    Trainer asks): handed to the Trainer's own pushes so that they upload what `push_model` would."""

    def __init__(self, api: HfApi):
        self.api = api

    def upload_folder(self, *, run_as_future: bool = False, **kwargs: Any) -> Any:
        if run_as_future:
            return self.api.run_as_future(upload_run_folder, self.api, **kwargs)
        return upload_run_folder(self.api, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)
