"""`hf-segformer rank-unlabelled --model MODEL --inputs IMAGES...`: the unlabelled images most worth labelling first
(`inference.ranking.rank_unlabelled`), and the top ones as pre-annotations."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_segformer.commands.option_style import add_flag, leading_positionals
from hf_segformer.config.data import MAX_IMAGE_PIXELS_HELP
from hf_segformer.config.values import check_max_image_pixels
from hf_segformer.data.annotations.preannotations import FORMATS, LOCAL_FILES_PREFIX, LabelStudioOptions
from hf_segformer.data.images import image_pixel_limit
from hf_segformer.inference.ranking import METHODS, rank_unlabelled


def main(argv: list[str]) -> int:
    """0 once the ranking (and the export) is written."""
    parser = argparse.ArgumentParser(
        prog="hf-segformer rank-unlabelled", allow_abbrev=False,
        description="Order unlabelled images by how unsure the model is (mean per-pixel entropy or margin), weighted "
                    "towards images likely to hold rare classes; write ranking.csv/.json, top.png and, with "
                    "--export, the top images as pre-annotations.")
    parser.add_argument("--model", required=True, help="a saved model folder (or Hub id)")
    parser.add_argument("--inputs", dest="images", nargs="+", required=True,
                        help="image folders (searched recursively), glob patterns (quoted) or files")
    parser.add_argument("--top", type=int, default=20, help="how many images to draw and export (default 20)")
    parser.add_argument("--out", default="rank-unlabelled", help="output folder (default ./rank-unlabelled)")
    parser.add_argument("--method", choices=METHODS, default="entropy")
    parser.add_argument("--rarity_weight", type=float, default=1.0, help="0: uncertainty alone")
    parser.add_argument("--class_frequencies", help="class_histogram.json of the training data (default: the "
                                                    "model folder's, else the ranked images' predictions)")
    parser.add_argument("--export", choices=FORMATS, help="write the top images as pre-annotations")
    parser.add_argument("--export_path", help="default: OUT/top_<format>.json|.zip")
    parser.add_argument("--model_version", help="Label Studio model_version (default: the model's folder name)")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--ls_from_name", default="tag")
    parser.add_argument("--ls_to_name", default="image")
    parser.add_argument("--ls_image_key", default="image")
    parser.add_argument("--image_url_prefix", default=LOCAL_FILES_PREFIX)
    parser.add_argument("--max_image_pixels", type=int, help=MAX_IMAGE_PIXELS_HELP)
    add_flag(parser, "--overwrite", help="write into an --out folder that holds a previous ranking")
    args = parser.parse_args(leading_positionals(argv, "rank-unlabelled", ("--model",), rest="--inputs"))
    check_max_image_pixels(args.max_image_pixels)
    with image_pixel_limit(args.max_image_pixels):
        ranked = rank_unlabelled(
            args.model, args.images, args.top, out_dir=args.out, method=args.method, rarity_weight=args.rarity_weight,
            class_frequencies=args.class_frequencies, batch_size=args.batch_size, export=args.export,
            export_path=args.export_path, model_version=args.model_version or Path(args.model).name,
            label_studio=LabelStudioOptions(args.ls_from_name, args.ls_to_name, args.ls_image_key,
                                            args.image_url_prefix),
            device=args.device, overwrite=args.overwrite)
    for rank, item in enumerate(ranked[: args.top], 1):
        print(f"{rank:4d}. {item.score:.4f}  {item.image}  ({item.predicted})")
    print(f"Ranked {len(ranked)} images; ranking.csv, ranking.json and top.png in {args.out}")
    return 0
