"""`hf-segformer push-dataset --repo_id NAMESPACE/NAME --config recipe.yaml`: check a recipe's data and publish
it on the Hub with a dataset card (`hub.publish.push_dataset`)."""

from __future__ import annotations

import argparse

from hf_segformer.commands.option_style import add_flag
from hf_segformer.hub.publish import push_dataset
from hf_segformer.training.arguments import parse_recipe


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-segformer push-dataset", allow_abbrev=False,
        description="Check a recipe's data and publish it on the Hub (Parquet shards, dataset card, id2label.json). "
                    "Other options are recipe fields: --config recipe.yaml, --data_dir, --id2label, ...")
    parser.add_argument("--repo_id", required=True, help="namespace/name of the dataset repository")
    parser.add_argument("--card", help="hand-written card to build on, e.g. data_cards/dubai-aerial.md")
    parser.add_argument("--license", help="Hub licence id (overrides the card's)")
    parser.add_argument("--pretty_name")
    add_flag(parser, "--private", help="create the repository private")
    parser.add_argument("--max_shard_size", help="e.g. 500MB")
    parser.add_argument("--dry_run", metavar="DIR", help="write README.md and id2label.json to DIR, push nothing")
    args, recipe_argv = parser.parse_known_args(argv)
    data_args, _, training_args = parse_recipe(recipe_argv)
    where = push_dataset(data_args, args.repo_id, card=args.card, license=args.license, pretty_name=args.pretty_name,
                         private=True if args.private else None, seed=training_args.seed,
                         max_shard_size=args.max_shard_size, dry_run_dir=args.dry_run)
    print(f"Dataset card written to {where}" if args.dry_run else f"Dataset published: {where}")
    return 0
