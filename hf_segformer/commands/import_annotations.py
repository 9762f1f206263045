"""`hf-segformer import-annotations --format FORMAT --src EXPORT --out DATA_DIR`: a CVAT, Label Studio or COCO
export → a data_dir the recipes train on (`data.annotations.importer`). Imports no torch or transformers."""

from __future__ import annotations

import argparse

from hf_segformer.commands.option_style import add_flag
from hf_segformer.data.annotations.importer import FORMATS, TOOL_UNLABELLED, import_annotations
from hf_segformer.data.annotations.layout import UNLABELLED_CHOICES


def main(argv: list[str]) -> int:
    """0 once the data_dir is written."""
    parser = argparse.ArgumentParser(
        prog="hf-segformer import-annotations", allow_abbrev=False,
        description="Turn an annotation tool's export into a data_dir: images/<split>/ (copies), masks/<split>/ "
                    "(class-id palette PNGs in the tool's colours), id2label.json, colour_map.json, "
                    "import_report.json and unannotated.txt (images without annotations, kept out).")
    parser.add_argument("--format", required=True, choices=FORMATS,
                        help="cvat-mask: CVAT 'Segmentation mask 1.1' (.zip or folder); label-studio: Label Studio "
                             "'JSON' export; coco: COCO instances JSON")
    parser.add_argument("--src", required=True, action="append", metavar="[SPLIT=]EXPORT",
                        help="the export; repeatable, SPLIT= names the split (CVAT takes its subsets' names)")
    parser.add_argument("--out", required=True, help="the data_dir to write (refused if it exists, see --overwrite)")
    parser.add_argument("--images", action="append", metavar="[SPLIT=]FOLDER",
                        help="where the annotated images are (CVAT without 'Save images', Label Studio, COCO)")
    parser.add_argument("--split", help="put every image into this split (default: the export's subsets, else train)")
    parser.add_argument("--unlabelled", choices=UNLABELLED_CHOICES,
                        help="pixels no annotation covers: class 0 'background' or ignore_index (default: the tool's "
                             "own meaning: " + ", ".join(f"{k} {v}" for k, v in TOOL_UNLABELLED.items()) + ")")
    parser.add_argument("--overlaps", choices=("ignore", "smaller"), default="ignore",
                        help="label-studio: pixels two classes claim are ignored, or the smaller region wins")
    parser.add_argument("--label_config", help="label-studio: the labeling config XML (class order and colours)")
    parser.add_argument("--labels", help="label-studio: class names in order, comma-separated (default: sorted)")
    parser.add_argument("--image_key", help="label-studio: the data key holding the image (default: image)")
    add_flag(parser, "--keep_unannotated",
             help="import images without annotations too (all unlabelled)")
    parser.add_argument("--ignore_index", type=int, default=255)
    add_flag(parser, "--overwrite",
             help="write into an existing --out (replacing only the files this import writes)")
    args = parser.parse_args(argv)
    summary = import_annotations(
        args.format, args.src, args.out, images=args.images, split=args.split, unlabelled=args.unlabelled,
        overlaps=args.overlaps, label_config=args.label_config,
        labels=[n.strip() for n in args.labels.split(",") if n.strip()] if args.labels else None,
        image_key=args.image_key, keep_unannotated=args.keep_unannotated, ignore_index=args.ignore_index,
        overwrite=args.overwrite)
    print("\n".join(summary.lines()))
    print(f"Train on it: hf-segformer check-data --data_dir {args.out}  (id2label.json is found there)")
    return 0
