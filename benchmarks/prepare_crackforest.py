r"""Convert the CrackForest pavement-crack dataset (Shi et al. 2016; github.com/cuilimeng/CrackForest-dataset) into the
project's folder layout, for the thin-structure harness (bench_thin.py --sets crackforest).

The source: 118 photographs of road surface (480×320 JPEG, `image/NNN.jpg`) with Matlab ground truth
(`groundTruth/NNN.mat`: `groundTruth.Segmentation`, 1 = background, 2 = crack; cracks 1–5 px wide, ~1.6 % of the
pixels); the repository's other 38 images have no ground truth and are left out. 22 of the masks also hold segments
3 and 4 (0.7 % of all pixels; blobs up to 70 px wide, which the source does not describe): they become the ignore
value 255, neither trained on nor scored. Licence (its README): free for
non-commercial research only; cite the papers it names.

Split, fixed by the sorted ids (0-based position i among the 118): i % 10 == 8 → val, i % 10 == 9 → test, the rest
→ train (96 / 11 / 11). No setting is chosen on test: it is read once, after training, by the harness.

    git clone https://github.com/cuilimeng/CrackForest-dataset                # or any snapshot of it, bare or not
    python benchmarks/prepare_crackforest.py --source CrackForest-dataset     # → ../bench-data/crackforest

Writes images/{train,val,test}/NNN.jpg (the JPEG bytes as stored), masks/{train,val,test}/NNN.png (8-bit, 0
background, 1 crack, 255 ignore: use ignore_index 255), id2label.json and INFO.txt, into a folder that does not
exist yet (or is empty).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT.parent / "bench-data" / "crackforest"
ID2LABEL = {"0": "background", "1": "crack"}
SOURCE_VALUES = {1: 0, 2: 1, 3: 255, 4: 255}  # groundTruth.Segmentation → mask value (1 background, 2 crack)


class Snapshot:
    """The dataset's files from a folder (a clone) or a bare git directory (read at HEAD)."""

    def __init__(self, source: Path):
        self.source = source
        self.bare = not (source / "groundTruth").is_dir() and (source / "HEAD").is_file()
        if not self.bare and not (source / "groundTruth").is_dir():
            sys.exit(f"{source}: neither a CrackForest folder (no groundTruth/) nor a bare git snapshot of one.")

    def names(self, folder: str) -> list[str]:
        if not self.bare:
            return sorted(path.name for path in (self.source / folder).iterdir())
        listing = subprocess.run(["git", "--git-dir", str(self.source), "ls-tree", "--name-only", f"HEAD:{folder}"],
                                 check=True, capture_output=True, text=True).stdout
        return sorted(listing.split())

    def read(self, path: str) -> bytes:
        if not self.bare:
            return (self.source / path).read_bytes()
        return subprocess.run(["git", "--git-dir", str(self.source), "show", f"HEAD:{path}"], check=True,
                              capture_output=True).stdout


def crack_mask(mat_bytes: bytes, name: str) -> np.ndarray:
    """0 background, 1 crack, 255 the source's undescribed segments 3 and 4, from a groundTruth .mat."""
    from scipy.io import loadmat

    segmentation = loadmat(io.BytesIO(mat_bytes))["groundTruth"][0, 0]["Segmentation"]
    values = set(np.unique(segmentation).tolist())
    if not values <= set(SOURCE_VALUES):
        sys.exit(f"{name}: Segmentation holds {sorted(values)}; expected {sorted(SOURCE_VALUES)}.")
    lookup = np.full(256, 255, dtype=np.uint8)
    for source, value in SOURCE_VALUES.items():
        lookup[source] = value
    return lookup[segmentation]


def split_of(position: int) -> str:
    return {8: "val", 9: "test"}.get(position % 10, "train")


def check_out(out: Path) -> None:
    """Outside the project and the shared sets, and nothing there to overwrite."""
    resolved = out.resolve()
    for forbidden in (ROOT, ROOT.parent / "shared"):
        if resolved == forbidden.resolve() or forbidden.resolve() in resolved.parents:
            sys.exit(f"--out {out} is inside {forbidden}: write the converted set elsewhere (default {DEFAULT_OUT}).")
    if out.exists() and any(out.iterdir()):
        sys.exit(f"--out {out} exists and is not empty: pass a new folder (nothing is overwritten).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="a clone of CrackForest-dataset, or a bare snapshot")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    cli = parser.parse_args()
    snapshot = Snapshot(cli.source)
    check_out(cli.out)
    ids = [name[: -len(".mat")] for name in snapshot.names("groundTruth") if name.endswith(".mat")]
    pairs = []  # every pair read and checked before anything is written
    for image_id in ids:
        mask = crack_mask(snapshot.read(f"groundTruth/{image_id}.mat"), f"groundTruth/{image_id}.mat")
        jpeg = snapshot.read(f"image/{image_id}.jpg")
        if Image.open(io.BytesIO(jpeg)).size != (mask.shape[1], mask.shape[0]):
            sys.exit(f"image/{image_id}.jpg and groundTruth/{image_id}.mat differ in size.")
        pairs.append((image_id, jpeg, mask))
    counts: dict[str, int] = {}
    crack_pixels = total_pixels = 0
    for position, (image_id, jpeg, mask) in enumerate(pairs):
        split = split_of(position)
        for kind in ("images", "masks"):
            (cli.out / kind / split).mkdir(parents=True, exist_ok=True)
        (cli.out / "images" / split / f"{image_id}.jpg").write_bytes(jpeg)
        Image.fromarray(mask, "L").save(cli.out / "masks" / split / f"{image_id}.png")
        counts[split] = counts.get(split, 0) + 1
        crack_pixels, total_pixels = crack_pixels + int((mask == 1).sum()), total_pixels + mask.size
    (cli.out / "id2label.json").write_text(json.dumps(ID2LABEL, indent=2) + "\n")
    (cli.out / "INFO.txt").write_text(
        "CrackForest (pavement cracks), 2 classes: 0 background, 1 crack; 255 ignore (the source's segments 3, 4)\n"
        "Source  : github.com/cuilimeng/CrackForest-dataset (image/NNN.jpg, groundTruth/NNN.mat Segmentation: "
        "1 background, 2 crack, 3 and 4 undescribed)\n"
        "Licence : non-commercial research only (the source's README); cite Shi et al. 2016, Cui et al. 2015\n"
        "Split   : sorted ids with ground truth, position i: i % 10 == 8 val, i % 10 == 9 test, else train\n"
        f"Counts  : {', '.join(f'{split} {counts.get(split, 0)}' for split in ('train', 'val', 'test'))}\n"
        f"Crack   : {100 * crack_pixels / max(total_pixels, 1):.2f} % of the pixels\n"
        "Made by : benchmarks/prepare_crackforest.py (images: the JPEG bytes as stored)\n")
    print(f"{len(ids)} pairs → {cli.out} ({counts}); crack {100 * crack_pixels / max(total_pixels, 1):.2f} % of pixels")


if __name__ == "__main__":
    main()
