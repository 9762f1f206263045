"""`hf-segformer coco-to-masks OUTPUT_DIR --split NAME ANNOTATIONS IMAGE_DIR ...`: COCO instance annotations
(polygons, RLE) → a data_dir of class-id masks (`data.coco`). Imports no torch or transformers: it starts fast."""

from __future__ import annotations

import argparse

from hf_segformer.data.coco import CATEGORY_MAP_FILE, RULES, convert_coco


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-segformer coco-to-masks",
        description="Convert COCO instance annotations (polygons, RLE) into a data_dir of class-id masks. Rules: "
                    + "; ".join(f"{key}: {text}" for key, text in RULES.items()) + ".")
    parser.add_argument("output_dir", help="gets images/<split>/ (links), masks/<split>/, id2label.json and "
                                           f"{CATEGORY_MAP_FILE}")
    parser.add_argument("--split", nargs=3, action="append", required=True,
                        metavar=("NAME", "ANNOTATIONS", "IMAGE_DIR"),
                        help="a split name (train, validation, test), its COCO json and its image folder; repeatable")
    parser.add_argument("--background_name", default="background", help="name of class 0 (pixels no annotation covers)")
    parser.add_argument("--no_background", action="store_true",
                        help="no background class: uncovered pixels become ignore_index, categories start at 0")
    parser.add_argument("--ignore_index", type=int, default=255)
    parser.add_argument("--copy_images", action="store_true", help="copy the images instead of linking them")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output_dir")
    args = parser.parse_args(argv)
    splits = {name: (annotations, image_dir) for name, annotations, image_dir in args.split}
    summaries = convert_coco(splits, args.output_dir, None if args.no_background else args.background_name,
                             args.ignore_index, args.copy_images, overwrite=args.overwrite)
    for s in summaries:
        print(f"{s.split}: {s.images} images, {s.annotations} annotations ({s.crowd_annotations} crowd)")
    print(f"Masks, id2label.json and {CATEGORY_MAP_FILE} in {args.output_dir}")
    return 0
