"""`hf-segformer coco-to-masks --out DATA_DIR --split NAME ANNOTATIONS IMAGE_DIR ...`: COCO instance annotations
(polygons, RLE) → a data_dir of class-id masks (`data.coco`). Imports no torch or transformers: it starts fast.

`import-annotations --format coco` reads COCO through the same converter (the same classes, coverage, overlap and
crowd rules); the two differ in what they do with the images, said in --help."""

from __future__ import annotations

import argparse

from hf_segformer.commands.option_style import add_flag, deprecated
from hf_segformer.data.coco import CATEGORY_MAP_FILE, RULES, convert_coco

DIFFERENCE = ("Compared with `hf-segformer import-annotations --format coco` (the same COCO reading and rules): "
              "coco-to-masks links the images (or copies them, --copy_images), keeps images without any annotation "
              "(their masks all unlabelled) and writes the category map; import-annotations copies the images, keeps "
              "images without annotations out (listed in unannotated.txt), takes a category's colour and follows "
              "the labeling loop's folder rules. Use import-annotations for an annotation tool's export, "
              "coco-to-masks for a COCO-style dataset.")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-segformer coco-to-masks",
        description="Convert COCO instance annotations (polygons, RLE) into a data_dir of class-id masks. Rules: "
                    + "; ".join(f"{key}: {text}" for key, text in RULES.items()) + ".", epilog=DIFFERENCE)
    parser.add_argument("--out", help="the data_dir to write: gets images/<split>/ (links), masks/<split>/, "
                                      f"id2label.json and {CATEGORY_MAP_FILE}")
    parser.add_argument("output_dir", nargs="?", help=argparse.SUPPRESS)  # the previous spelling, deprecated
    parser.add_argument("--split", nargs=3, action="append", required=True,
                        metavar=("NAME", "ANNOTATIONS", "IMAGE_DIR"),
                        help="a split name (train, validation, test), its COCO json and its image folder; repeatable")
    parser.add_argument("--background_name", default="background", help="name of class 0 (pixels no annotation covers)")
    add_flag(parser, "--no_background",
             help="no background class: uncovered pixels become ignore_index, categories start at 0")
    parser.add_argument("--ignore_index", type=int, default=255)
    add_flag(parser, "--copy_images", help="copy the images instead of linking them")
    add_flag(parser, "--overwrite", help="write into a non-empty --out folder")
    args = parser.parse_args(argv)
    if args.output_dir is not None:
        if args.out is not None:
            parser.error(f"give the output folder once: --out {args.out} (and '{args.output_dir}' too)")
        deprecated("`hf-segformer coco-to-masks OUTPUT_DIR` (a positional output folder)", "`--out OUTPUT_DIR`")
        args.out = args.output_dir
    if args.out is None:
        parser.error("the following arguments are required: --out")
    splits = {name: (annotations, image_dir) for name, annotations, image_dir in args.split}
    summaries = convert_coco(splits, args.out, None if args.no_background else args.background_name,
                             args.ignore_index, args.copy_images, overwrite=args.overwrite)
    for s in summaries:
        print(f"{s.split}: {s.images} images, {s.annotations} annotations ({s.crowd_annotations} crowd)")
    print(f"Masks, id2label.json and {CATEGORY_MAP_FILE} in {args.out}")
    return 0
