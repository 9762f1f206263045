"""Finding what an export refers to: the image files behind its names, and the export itself inside a zip."""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from hf_segformer.config.values import canonical_split
from hf_segformer.data.images import IMAGE_EXTENSIONS, is_image_file
from hf_segformer.errors import DataError

DEFAULT_SUBSET = "default"  # CVAT's subset name when a task has none


def split_name(subset: str, forced: str | None = None) -> str:
    """The data_dir split of an export's subset: `forced` if given, CVAT's 'default' → train, else the project's
    aliases (val → validation, ...)."""
    if forced:
        return canonical_split(forced)
    return "train" if subset == DEFAULT_SUBSET else canonical_split(subset)


def find_image_by_stem(stem: PurePosixPath, roots: list[Path]) -> tuple[Path | None, str]:
    """The image `<root>/<stem>.<ext>` in the first root that has one; (None, why) when none or several."""
    for root in roots:
        base = root / Path(*stem.parts)
        if not base.parent.is_dir():
            continue
        found = [p for p in base.parent.iterdir() if is_image_file(p)
                 and p.name == base.name + p.suffix]
        if len(found) > 1:
            return None, f"several images named {stem}.* in {base.parent}: {sorted(p.name for p in found)}"
        if found:
            return found[0], ""
    return None, f"no image {stem}.<{'|'.join(sorted(e.lstrip('.') for e in IMAGE_EXTENSIONS))}> in " + \
        (", ".join(str(r) for r in roots) or "(no image folder given)")


@contextlib.contextmanager
def export_folder(source: str | os.PathLike) -> Iterator[Path]:
    """An export given as a folder, or as the .zip the tool downloads (unpacked into a temporary folder for the
    duration; a member that would land outside it is an error)."""
    source = Path(source)
    if source.is_dir():
        yield source
        return
    if not source.is_file():
        raise DataError(f"{source}: no such export (give the folder or the .zip the tool downloaded).")
    if not zipfile.is_zipfile(source):
        raise DataError(f"{source}: not a folder nor a zip archive (a download cut short has no zip directory at its "
                        "end): download the export again.")
    with tempfile.TemporaryDirectory(prefix="hf-segformer-export-") as temporary:
        root = Path(temporary).resolve()
        with zipfile.ZipFile(source) as archive:
            for member in archive.namelist():
                target = (root / member).resolve()
                if root not in target.parents and target != root:
                    raise DataError(f"{source}: member {member!r} would be unpacked outside the export folder.")
            for member in archive.namelist():
                try:
                    archive.extract(member, root)
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
                    kind = "zlib.error" if isinstance(err, zlib.error) else type(err).__name__
                    raise DataError(f"{source}: member {member} cannot be unpacked ({kind}: {err}); "
                                    "the archive is damaged or cut short: download the export again.") from err
        entries = [p for p in root.iterdir() if not p.name.startswith(("__MACOSX", "."))]
        # an archive holding a single folder (zipped from its parent) is that folder
        yield entries[0] if len(entries) == 1 and entries[0].is_dir() else root
