"""`hf-segformer` command line: one sub-command per task (train, check-data, evaluate, predict, demo, ...)."""

from __future__ import annotations

import argparse
import logging
import sys

from hf_segformer.errors import DataError, RecipeError, TrainingError


def _check_data(argv: list[str]) -> int:
    from hf_segformer.data.prepare import prepare_data, run_data_check
    from hf_segformer.training.arguments import parse_recipe

    data_args, _, training_args = parse_recipe(argv)
    data, id2label = prepare_data(data_args, training_args.seed)
    report = run_data_check(data, data_args, id2label)
    if training_args.output_dir:
        report.save(training_args.output_dir)
        print(f"Saved class_histogram.json/.md to {training_args.output_dir}")
    print("Data check passed: " + ", ".join(f"{name} {s.num_samples} pairs" for name, s in report.splits.items()))
    return 0


def _train(argv: list[str], default_config: str | None = None) -> int:
    from hf_segformer.training.arguments import parse_recipe
    from hf_segformer.training.run import main

    main(*parse_recipe(argv, default_config=default_config))
    return 0


def run_train(argv: list[str], default_config: str | None = None) -> int:
    """Entry point of `recipes/finetune.py`: user errors print one clear message instead of a traceback."""
    return _report_user_errors(_train, argv, default_config)


USER_ERROR_EXIT = 2  # bad input (data, recipe, paths): fix it and launch again
CRASH_EXIT = 1  # a run that could not go on, or a bug


def _report_user_errors(command, *args) -> int:
    """Run a command; a user error ends with its one `error:` line last and exit code 2 (a run that could not go
    on, TrainingError, exits 1)."""
    try:
        return command(*args)
    except (DataError, RecipeError) as err:
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT
    except TrainingError as err:
        sys.stdout.flush()
        print(f"error: {err}", file=sys.stderr)
        return CRASH_EXIT


def _make_synthetic(argv: list[str]) -> int:
    from hf_segformer.data.synthetic import write_synthetic_dataset

    parser = argparse.ArgumentParser(prog="hf-segformer make-synthetic")
    parser.add_argument("output_dir")
    parser.add_argument("--num_train", type=int, default=320)
    parser.add_argument("--num_validation", type=int, default=64)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = write_synthetic_dataset(args.output_dir, args.num_train, args.num_validation, args.image_size, args.seed)
    print(f"Synthetic dataset in {root}")
    return 0


def _evaluate(argv: list[str]) -> int:
    from hf_segformer.evaluation.run import main

    main(argv)
    return 0


def _predict(argv: list[str]) -> int:
    from hf_segformer.inference.predict import main

    return main(argv)


def _coco_to_masks(argv: list[str]) -> int:
    from hf_segformer.data.coco import CATEGORY_MAP_FILE, RULES, convert_coco

    parser = argparse.ArgumentParser(
        prog="hf-segformer coco-to-masks",
        description="Convert COCO instance annotations (polygons, RLE) into a data_dir of class-id masks. Rules: "
                    + "; ".join(f"{key}: {text}" for key, text in RULES.items()) + ".")
    parser.add_argument("output_dir", help="gets images/<split>/ (links), masks/<split>/, id2label.json and "
                                           f"{CATEGORY_MAP_FILE}")
    parser.add_argument("--split", nargs=3, action="append", required=True, metavar=("NAME", "ANNOTATIONS", "IMAGE_DIR"),
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


def _push_dataset(argv: list[str]) -> int:
    from hf_segformer.hub.publish import push_dataset
    from hf_segformer.training.arguments import parse_recipe

    parser = argparse.ArgumentParser(
        prog="hf-segformer push-dataset", allow_abbrev=False,
        description="Check a recipe's data and publish it on the Hub (Parquet shards, dataset card, id2label.json). "
                    "Other options are recipe fields: --config recipe.yaml, --data_dir, --id2label, ...")
    parser.add_argument("--repo_id", required=True, help="namespace/name of the dataset repository")
    parser.add_argument("--card", help="hand-written card to build on, e.g. data_cards/dubai-aerial.md")
    parser.add_argument("--license", help="Hub licence id (overrides the card's)")
    parser.add_argument("--pretty_name")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--max_shard_size", help="e.g. 500MB")
    parser.add_argument("--dry_run", metavar="DIR", help="write README.md and id2label.json to DIR, push nothing")
    args, recipe_argv = parser.parse_known_args(argv)
    data_args, _, training_args = parse_recipe(recipe_argv)
    where = push_dataset(data_args, args.repo_id, card=args.card, license=args.license, pretty_name=args.pretty_name,
                         private=True if args.private else None, seed=training_args.seed,
                         max_shard_size=args.max_shard_size, dry_run_dir=args.dry_run)
    print(f"Dataset card written to {where}" if args.dry_run else f"Dataset published: {where}")
    return 0


def _export_onnx(argv: list[str]) -> int:
    from hf_segformer.evaluation.deploy_commands import add_quantize_arguments, quantized_export
    from hf_segformer.inference.onnx_export import DEFAULT_OPSET, export_onnx

    parser = argparse.ArgumentParser(
        prog="hf-segformer export-onnx",
        description="Export a saved model folder to ONNX (dynamic batch, height, width) and compare ONNX Runtime "
                    "with PyTorch (max |logit difference|, argmax agreement). Needs pip install 'hf-segformer[onnx]'.")
    parser.add_argument("model_dir", help="a saved model folder (config.json, model.safetensors)")
    parser.add_argument("output_path", help="the .onnx file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--sample_size", type=int, nargs=2, metavar=("H", "W"),
                        help="tracing input size (default: the saved image processor's size)")
    parser.add_argument("--check_size", type=int, nargs=2, action="append", metavar=("H", "W"),
                        help="input size compared with PyTorch; repeatable (default: two sizes)")
    parser.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter (needs onnxscript)")
    parser.epilog = ("--quantize writes an INT8 model instead (after the float32 export and its check) and also "
                     "compares its masks with PyTorch fp32 on validation images; its data options are recipe fields "
                     "(--config recipe.yaml, --data_dir, --eval_split ...).")
    add_quantize_arguments(parser)
    args, recipe_argv = parser.parse_known_args(argv)
    if args.quantize:
        return quantized_export(args, recipe_argv)
    if recipe_argv:
        parser.error(f"unrecognized arguments: {' '.join(recipe_argv)} (recipe options go with --quantize)")
    checks = export_onnx(args.model_dir, args.output_path, args.opset, args.sample_size, args.check_size, args.dynamo,
                         overwrite=args.overwrite)
    return 0 if all(check.passed for check in checks) else 1


def _deploy_report(argv: list[str]) -> int:
    from hf_segformer.evaluation.deploy_commands import deploy_report_command

    return deploy_report_command(argv)


def _import_annotations(argv: list[str]) -> int:
    from hf_segformer.data.annotations.importer import main

    return main(argv)


def _rank_unlabelled(argv: list[str]) -> int:
    from hf_segformer.inference.ranking import main

    return main(argv)


def _demo(argv: list[str]) -> int:
    from hf_segformer.app.demo import main

    return main(argv)


COMMANDS = {
    "train": (_train, "fine-tune from a recipe: --config recipe.yaml [--field value ...]"),
    "check-data": (_check_data, "run the pre-flight data check of a recipe and print the class histogram"),
    "make-synthetic": (_make_synthetic, "write the synthetic shapes dataset to a folder"),
    "coco-to-masks": (_coco_to_masks, "convert COCO polygons/RLE annotations into a folder of class-id masks"),
    "import-annotations": (_import_annotations, "a CVAT, Label Studio or COCO export → a data_dir of class-id masks"),
    "push-dataset": (_push_dataset, "check a recipe's data and publish it on the Hub with a dataset card"),
    "evaluate": (_evaluate, "evaluate a saved model on a split at native resolution (whole, slide, TTA)"),
    "predict": (_predict, "images (folder, glob, files) → class-id PNG masks and overlays"),
    "rank-unlabelled": (_rank_unlabelled, "unlabelled images most worth labelling first; the top as pre-annotations"),
    "export-onnx": (_export_onnx, "export a saved model to ONNX (dynamic sizes) and check it against PyTorch"),
    "deploy-report": (_deploy_report, "PyTorch / ONNX / INT8 / token merging side by side: speed, size, memory, "
                                      "mIoU lost"),
    "demo": (_demo, "serve a model as a Gradio app in the browser, or --export-space for a Hugging Face Space"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: hf-segformer COMMAND [options]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:20s}{help_text}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    command, _ = COMMANDS[argv[0]]
    if argv[0] != "train":  # training sets up its own logging (transformers' format, per-process levels)
        logging.basicConfig(format="%(message)s", stream=sys.stdout)
        logging.getLogger("hf_segformer").setLevel(logging.INFO)
    return _report_user_errors(command, argv[1:])


if __name__ == "__main__":
    sys.exit(main())
