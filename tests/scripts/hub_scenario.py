"""The Hub round trip that `test_hub.py` runs in a fresh process against `hub_server.HubServer`.

A fresh process, because `huggingface_hub` and `datasets` read HF_ENDPOINT (and the offline switches) when they
are imported. Steps: publish a folder dataset with `hf-segformer push-dataset`, read it back with
`load_dataset`, put a stand-in `nvidia/mit-b0` on the server, fine-tune from both through the entry point of
`recipes/finetune.py`, push the run with `push_model` from a Trainer, then load the pushed model with
`pipeline("image-segmentation")` and its card with `ModelCard.load`; push a run folder with ONNX exports
(`WORK_DIR/run-onnx`, made by the test) with the one chosen file. Results go to `<work>/scenario.json`.

    python tests/scripts/hub_scenario.py WORK_DIR DATA_DIR
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def main(work: Path, data_dir: Path) -> None:
    from datasets import load_dataset
    from huggingface_hub import HfApi, ModelCard
    from PIL import Image
    from transformers import SegformerForImageClassification, SegformerForSemanticSegmentation, pipeline

    from hf_segformer.cli import main as cli
    from hf_segformer.cli import run_command
    from hf_segformer.hub.publish import push_model
    from hf_segformer.modeling.build import build_image_processor, variant_config
    from hf_segformer.training.arguments import parse_recipe
    from hf_segformer.training.trainer import SegformerTrainer

    out: dict = {}
    out["push_dataset_rc"] = cli(["push-dataset", "--repo_id", "tester/shapes", "--card",
                                  str(ROOT / "data_cards/synthetic-shapes.md"), "--data_dir", str(data_dir),
                                  "--output_dir", str(work / "unused")])
    try:
        cli(["push-dataset", "--repo_id", "tester/bad-licence", "--license", "made-up-licence",
             "--data_dir", str(data_dir), "--output_dir", str(work / "unused")])
        out["bad_licence_error"] = None
    except ValueError as err:  # the server's validate-yaml refused the card
        out["bad_licence_error"] = str(err)

    loaded = load_dataset("tester/shapes")
    arrays = {}
    for split, dataset in loaded.items():
        for i, row in enumerate(dataset):
            arrays[f"{split}/{i}/image"] = np.asarray(row["image"])
            arrays[f"{split}/{i}/label"] = np.asarray(row["label"])
    np.savez(work / "loaded.npz", **arrays)
    out["loaded_splits"] = {split: len(ds) for split, ds in loaded.items()}

    # A stand-in for NVIDIA's ImageNet MiT-b0 (the real one cannot be downloaded here): same architecture.
    SegformerForImageClassification(variant_config("b0", num_labels=10)).push_to_hub("nvidia/mit-b0")

    run = work / "run"
    argv = ["--dataset_name", "tester/shapes", "--synthetic_data", "false", "--model_name_or_path", "nvidia/mit-b0",
            "--output_dir", str(run), "--crop_size", "32", "--eval_size", "32", "--train_scale", "64", "32",
            "--cat_max_ratio", "1.0", "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4",
            "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2", "--logging_steps", "1",
            "--save_strategy", "no", "--precision", "fp32", "--dataloader_num_workers", "0",
            "--dataloader_persistent_workers", "false", "--report_to", "tensorboard"]
    # The recipe's own push (push_to_hub: true → train.main → push_model) into a repository of its own.
    pushing = argv + ["--push_to_hub", "true", "--hub_model_id", "seg-shapes-recipe", "--output_dir", str(work / "run2")]
    quickstart = str(ROOT / "recipes/quickstart.yaml")
    out["train_rc"] = run_command("train", argv, default_config=quickstart)
    out["eval_results"] = json.loads((run / "eval_results.json").read_text())
    out["recipe_push_rc"] = run_command("train", pushing, default_config=quickstart)
    out["recipe_push_files"] = sorted(HfApi().list_repo_files("tester/seg-shapes-recipe"))
    out["recipe_push_card"] = ModelCard.load("tester/seg-shapes-recipe").data.to_dict()
    lora_push(work, argv, quickstart, out)

    # End of training as train.py does it: push_model(trainer, data_args, model_args).
    data_args, model_args, training_args = parse_recipe(argv, default_config=quickstart)
    args = dataclasses.replace(training_args, push_to_hub=True, hub_model_id="seg-shapes", hub_private_repo=True,
                               eval_strategy="no")
    trainer = SegformerTrainer(model=SegformerForSemanticSegmentation.from_pretrained(run), args=args,
                               processing_class=build_image_processor(data_args.eval_size))
    # What the Trainer's own intermediate pushes (hub_strategy every_save) leave in the repository: a pickle.
    HfApi().upload_file(path_or_fileobj=b"pickled TrainingArguments", path_in_repo="training_args.bin",
                        repo_id=trainer.hub_model_id)
    out["commit_url"] = push_model(trainer, data_args, model_args)
    out["hub_model_id"] = trainer.hub_model_id
    out["folder_commit_url"] = push_model(run, repo_id="tester/seg-folder")  # a folder with its card already
    # a run folder with a deploy report's exports (`work/run-onnx`, made by the test): only the chosen file goes up
    out["onnx_commit_url"] = push_model(work / "run-onnx", repo_id="tester/int8",
                                        onnx_file="deploy_report/model.int8-static.onnx")

    segmenter = pipeline("image-segmentation", model=trainer.hub_model_id)
    image = Image.fromarray(np.asarray(loaded["validation"][0]["image"]))
    out["pipeline_labels"] = sorted(segment["label"] for segment in segmenter(image))
    card = ModelCard.load(trainer.hub_model_id)
    out["card_eval_results"] = [dataclasses.asdict(result) for result in card.data.eval_results]
    out["card_base_model"] = card.data.base_model
    (work / "scenario.json").write_text(json.dumps(out, indent=1, default=str))


def lora_push(work: Path, argv: list[str], quickstart: str, out: dict) -> None:
    """A LoRA run from the base model's folder in the Hub cache, pushed by its recipe during training
    (hub_strategy checkpoint) and at its end, then loaded from the Hub with the code its card shows; the loaded
    model's logits are compared with the run folder's own (base + adapter merged locally)."""
    import torch
    from huggingface_hub import hf_hub_download, snapshot_download
    from PIL import Image

    from hf_segformer.cli import run_command
    from hf_segformer.inference.segmenter import Segmenter
    from hf_segformer.modeling.build import load_saved_model

    run = work / "run-lora"
    out["lora_base_snapshot"] = base = snapshot_download("nvidia/mit-b0")  # a local path, of a Hub model
    pushing = argv + ["--lora", "{r: 4, alpha: 8, dropout: 0.0}", "--push_to_hub", "true", "--hub_model_id",
                      "seg-shapes-lora", "--output_dir", str(run), "--model_name_or_path", base,
                      "--save_strategy", "steps", "--save_steps", "1", "--hub_strategy", "checkpoint"]
    out["lora_push_rc"] = run_command("train", pushing, default_config=quickstart)
    card = Path(hf_hub_download("tester/seg-shapes-lora", "README.md")).read_text()
    [snippet] = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - the card's own instructions, run against the local Hub
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        from_hub = scope["model"].eval()(pixel_values=pixels).logits
        local = load_saved_model(run).eval()(pixel_values=pixels).logits
    out["lora_card_loads_the_trained_model"] = bool(torch.allclose(from_hub, local, atol=1e-5))
    out["lora_processor"] = type(scope["processor"]).__name__
    # predict, evaluate and the demo (a Space) take the pushed adapter's Hub id as they take the run folder
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out["lora_segmenter_from_the_hub_matches_the_run"] = bool(np.array_equal(
        Segmenter.from_pretrained("tester/seg-shapes-lora")(image), Segmenter.from_pretrained(run)(image)))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
