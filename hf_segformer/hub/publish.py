"""Publishing on the Hub: a dataset as Parquet shards with its card and `id2label.json`, a trained model as its
output folder (safetensors, image processor, TensorBoard logs, results) with its model card.

The dataset card is committed first and `push_to_hub` then adds the `configs`/`dataset_info` metadata to it,
so the published card keeps both our text and the YAML that `load_dataset(repo_id)` reads.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from datasets import DatasetDict, Image
from huggingface_hub import CommitOperationAdd, HfApi
from PIL import Image as PILImage

from hf_segformer.config.data import DataArguments
from hf_segformer.config.model import ModelArguments
from hf_segformer.data.coco import CATEGORY_MAP_FILE
from hf_segformer.data.images import open_image
from hf_segformer.data.labels import ID2LABEL_FILE, LabelDecoder
from hf_segformer.data.loading import undecoded
from hf_segformer.data.preflight import DataReport, check_data
from hf_segformer.data.prepare import build_label_decoder, prepare_data
from hf_segformer.errors import DataError, RecipeError
from hf_segformer.hub.dataset_card import DatasetFacts, build_dataset_card
from hf_segformer.hub.folder_upload import upload_run_folder
from hf_segformer.hub.model_card import DEPLOY_REPORT_FILES, run_facts, write_model_card

logger = logging.getLogger(__name__)

# Never upload pickles (training_args.bin, optimizer states) or checkpoint folders with the final model; the
# Trainer's own intermediate pushes upload training_args.bin, so the final push deletes it from the repository.
MODEL_IGNORE_PATTERNS = ["_*", "checkpoint-*", "*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt"]
MODEL_DELETE_PATTERNS = ["training_args.bin"]
# deploy-report writes several ONNX and OpenVINO files into the run folder; only the one chosen goes up (push_model's
# onnx_file, else the report's recommendation), beside the safetensors.
MODEL_IGNORE_PATTERNS += ["deploy_report/*.onnx", "deploy_report/*.xml"]
EXPORT_SUFFIXES = (".onnx", ".xml")  # an ONNX file, an OpenVINO IR (its .bin beside it)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(array.astype(np.uint8 if array.max(initial=0) < 256 else np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def _class_id_masks(data: DatasetDict, decoder: LabelDecoder) -> DatasetDict:
    """Re-encode masks as PNGs of class ids (colour masks decoded, label_map, binary_masks and `reduce_labels`
    applied), so that the published dataset needs none of them to be read."""
    def encode(batch: dict) -> dict:
        labels = []
        for entry in batch["label"]:
            name = entry.get("path") or "mask"
            labels.append({"bytes": _png(np.asarray(decoder(open_image(entry), name))), "path": Path(name).with_suffix(".png").name})
        return {"label": labels}

    raw = DatasetDict({split: undecoded(ds, ("label",)) for split, ds in data.items()})
    encoded = raw.map(encode, batched=True, batch_size=16, desc="Encoding class-id masks")
    return DatasetDict({split: ds.cast_column("label", Image()) for split, ds in encoded.items()})


def publishable_data(data_args: DataArguments, seed: int = 42) -> tuple[DatasetDict, dict[int, str], DataReport]:
    """Load the recipe's data as training would, check every pair, and make the masks plain class ids."""
    if data_args.streaming:  # checking every pair and re-encoding masks needs the whole set, which a stream is not
        raise RecipeError("push-dataset does not read streams: set streaming: false (shards written by "
                          "hf_segformer.data.shards.write_shards can be uploaded as they are).")
    data, id2label = prepare_data(data_args, seed)
    decoder = build_label_decoder(data_args)
    report = check_data(data, decoder, len(id2label), id2label, data_args.check_num_proc)
    if data_args.colour_map_rgb or data_args.reduce_labels or data_args.label_map_ids or data_args.binary_masks:
        data = _class_id_masks(data, decoder)
    return data, id2label, report


def _source_colours(data_args: DataArguments) -> dict[int, tuple[int, int, int]] | None:
    if not data_args.colour_map_rgb:
        return None
    colours: dict[int, tuple[int, int, int]] = {}
    for rgb, class_id in data_args.colour_map_rgb.items():
        colours.setdefault(class_id, rgb)
    return colours


def _coco_notes(data_args: DataArguments) -> tuple[dict | None, str | None]:
    """The COCO category map written by `coco-to-masks`, if the data folder has one, and the card text for it."""
    if not data_args.data_dir or not (Path(data_args.data_dir) / CATEGORY_MAP_FILE).is_file():
        return None, None
    mapping = json.loads((Path(data_args.data_dir) / CATEGORY_MAP_FILE).read_text())
    rows = "\n".join(f"| {c['category_id']} | {c['class_id']} | {c['name']} |" for c in mapping["categories"])
    background = ("class 0 is background (pixels no annotation covers)" if mapping["background_class"] is not None
                  else f"pixels no annotation covers are {mapping['ignore_index']} (ignored)")
    rules = "\n".join(f"- {key}: {text}" for key, text in mapping["rules"].items())
    notes = (f"Converted from COCO instance annotations (polygons and RLE) with `hf-segformer coco-to-masks`; "
             f"{background}. The mapping is in `{CATEGORY_MAP_FILE}`.\n\n| COCO category id | class id | name |\n"
             f"|---:|---:|---|\n{rows}\n\n{rules}")
    return mapping, notes


def push_dataset(data_args: DataArguments, repo_id: str, *, card: str | os.PathLike | None = None,
                 license: str | None = None, pretty_name: str | None = None, private: bool | None = None,
                 token: str | None = None, seed: int = 42, max_shard_size: str | None = None,
                 commit_message: str = "Upload dataset", dry_run_dir: str | os.PathLike | None = None) -> str:
    """Publish the recipe's data as `repo_id`: card + id2label.json, then Parquet shards via `push_to_hub`.

    `card` is a hand-written card of `data_cards/` whose metadata and prose (Source, Masks, License and
    citation, Caveats) are reused; the class, split and image-size tables are measured here. With
    `dry_run_dir` the card and id2label.json are written there and nothing is pushed; files already there are
    never replaced (refused before any work).
    """
    if dry_run_dir is not None:
        taken = [name for name in ("README.md", ID2LABEL_FILE, CATEGORY_MAP_FILE) if (Path(dry_run_dir) / name).exists()]
        if taken:
            raise RecipeError(f"--dry_run {dry_run_dir} already holds {', '.join(taken)}; they are never replaced: "
                              "give a new folder (or move them away).")
    data, id2label, report = publishable_data(data_args, seed)
    coco_map, coco_notes = _coco_notes(data_args)
    facts = DatasetFacts.load(card) if card else None
    dataset_card = build_dataset_card(report, repo_id, facts, license=license, pretty_name=pretty_name,
                                      source_colours=_source_colours(data_args), mask_notes=coco_notes)
    files = {"README.md": str(dataset_card).encode(),
             ID2LABEL_FILE: json.dumps({str(k): v for k, v in id2label.items()}, indent=1).encode()}
    if coco_map is not None:
        files[CATEGORY_MAP_FILE] = json.dumps(coco_map, indent=1).encode()
    if dry_run_dir is not None:
        out = Path(dry_run_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (out / name).write_bytes(content)
        return str(out)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
    api.create_commit(repo_id, repo_type="dataset", commit_message="Dataset card and class names",
                      operations=[CommitOperationAdd(name, content) for name, content in files.items()])
    data.push_to_hub(repo_id, private=private, token=token, max_shard_size=max_shard_size,
                     commit_message=commit_message)
    return f"{api.endpoint}/datasets/{repo_id}"


def push_model(source: Any, data_args: DataArguments | None = None, model_args: ModelArguments | None = None, *,
               training_args: Any | None = None, repo_id: str | None = None, private: bool | None = None,
               token: str | None = None, revision: str | None = None,
               commit_message: str = "End of training", onnx_file: str | os.PathLike | None = None) -> str | None:
    """Upload a run's output folder with its model card, from a `Trainer` (end of training) or a folder.

    From a Trainer the repository, token, privacy and revision come from its arguments (`hub_model_id`,
    `hub_token`, `hub_private_repo`, `hub_revision`); only the main process pushes, after any push the
    Trainer still has in flight. With `data_args` and `model_args` the card is (re)written from the run;
    otherwise the folder's README.md is pushed as it is. Checkpoint folders and pickles are never uploaded, nor
    the local path of a LoRA adapter's base model (`hub.folder_upload`).
    `onnx_file` (e.g. deploy_report/model.int8-static.onnx, or an OpenVINO .xml with its .bin) is pushed beside the
    safetensors, under its file name; without it, the file the run's deploy report recommends (when the report
    recommends an exported file, not the safetensors themselves).
    """
    if hasattr(source, "args") and hasattr(source, "is_world_process_zero"):
        trainer = source
        if not trainer.is_world_process_zero():
            return None
        in_flight = getattr(trainer, "push_in_progress", None)
        if in_flight is not None and not in_flight.is_done():
            in_flight.wait_until_done()
        training_args = trainer.args
        output_dir = Path(training_args.output_dir)
        repo_id = repo_id or getattr(trainer, "hub_model_id", None) or training_args.hub_model_id
        token = token or training_args.hub_token
        private = training_args.hub_private_repo if private is None else private
        revision = revision or training_args.hub_revision
    else:
        output_dir = Path(source)
    write_card = data_args is not None and model_args is not None
    if write_card and training_args is None:
        raise RecipeError("push_model: pass training_args (or the Trainer) to write the model card.")
    if not write_card and not (output_dir / "README.md").is_file():
        raise DataError(f"{output_dir} has no README.md model card; pass data_args and model_args to write one.")
    if not any(output_dir.glob("*.safetensors")):
        raise DataError(f"{output_dir} has no .safetensors weights; save the model before pushing it.")
    exported = _exported_files(output_dir, onnx_file) if onnx_file is not None else recommended_files(output_dir)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id or output_dir.resolve().name, private=private, exist_ok=True).repo_id
    if write_card:
        write_model_card(output_dir, run_facts(training_args, data_args, model_args, repo_id))
    commit = upload_run_folder(api, repo_id=repo_id, folder_path=output_dir, commit_message=commit_message,
                               ignore_patterns=MODEL_IGNORE_PATTERNS, delete_patterns=MODEL_DELETE_PATTERNS,
                               revision=revision)
    if exported:
        commit = api.create_commit(repo_id=repo_id, revision=revision, commit_message=f"{commit_message}: "
                                   f"{exported[0].name}", operations=[CommitOperationAdd(path.name, str(path))
                                                                      for path in exported])
    logger.info("Pushed %s to %s", output_dir.name, commit.commit_url)
    return commit.commit_url


def _with_weights(path: Path) -> list[Path]:
    """An exported model's files: the .onnx, or an OpenVINO .xml and its .bin."""
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def _exported_files(output_dir: Path, onnx_file: str | os.PathLike) -> list[Path]:
    """push_model's onnx_file, found in the run folder or the working directory, with its weights file."""
    path = Path(onnx_file) if Path(onnx_file).is_absolute() else output_dir / onnx_file
    if not path.is_file() and Path(onnx_file).is_file():
        path = Path(onnx_file)
    files = _with_weights(path)
    if path.suffix not in EXPORT_SUFFIXES or not all(p.is_file() for p in files):
        raise DataError(f"push_model: onnx_file {onnx_file} is not an .onnx file or an OpenVINO .xml beside its .bin "
                        f"(looked in {output_dir} and the working directory); write it with `hf-segformer "
                        "export-onnx` or `deploy-report`.")
    return files


def recommended_files(output_dir: Path) -> list[Path]:
    """The exported file the run's deploy report recommends (with its .bin for OpenVINO); none where there is no
    report, or where it recommends PyTorch (the safetensors are pushed anyway)."""
    for name in DEPLOY_REPORT_FILES:
        report = output_dir / name
        if not report.is_file():
            continue
        choice = json.loads(report.read_text()).get("recommendation") or {}
        if choice.get("runtime") in (None, "pytorch"):
            return []
        files = _with_weights(report.parent / choice["file"])
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise DataError(f"push_model: {report} recommends {choice['file']}, but {', '.join(missing)} is gone; "
                            "run deploy-report again (or pass onnx_file).")
        return files
    return []
