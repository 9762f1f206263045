"""The model card of a fine-tuning run, built from its output folder with `huggingface_hub`'s ModelCard and
ModelCardData (so that its YAML follows the Hub's metadata rules): model-index results, licence, per-class table,
training history and hyper-parameters, and the deploy report's table when the run has one. Public text: it names
Hub repositories, never local paths, and carries no token (`hub.redaction`).
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_segformer.errors import DataError, RecipeError
from hf_segformer.evaluation.deploy.render import model_card_section
from hf_segformer.evaluation.reports import class_table
from hf_segformer.hub.redaction import REPO_ID, hub_model_id, hub_repo_id, public_model_name, public_text
from hf_segformer.modeling.build import KEEP_RATIO_SCALE, MIT_VARIANTS
from hf_segformer.modeling.lora import ADAPTER_CONFIG, adapter_base_model
from hf_segformer.runtime import cpu_info

NVIDIA_CHECKPOINT = re.compile(r"^nvidia/(mit|segformer)-", re.IGNORECASE)
NVIDIA_LICENSE = {"license": "other", "license_name": "nvidia-segformer",
                  "license_link": "https://github.com/NVlabs/SegFormer/blob/master/LICENSE"}
DEPLOY_REPORT_FILES = ("deploy_report.json", "deploy_report/deploy_report.json")  # hf-segformer deploy-report's
METRICS = (("mean_iou", "Mean IoU"), ("mean_accuracy", "Mean accuracy"), ("overall_accuracy", "Overall accuracy"))
SEGFORMER_CITATION = """@inproceedings{xie2021segformer,
  title     = {SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers},
  author    = {Xie, Enze and Wang, Wenhai and Yu, Zhiding and Anandkumar, Anima and Alvarez, Jose M. and Luo, Ping},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year      = {2021}
}"""


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class RunFacts:
    """What a model card says about a run that its output folder does not hold."""

    repo_id: str
    base_model: str | None = None  # Hub id of the checkpoint fine-tuned from; None: random init from config
    dataset_id: str | None = None  # Hub dataset id trained on, if any
    dataset_name: str = "local data"  # the Hub id, or the local folder's name
    eval_split: str = "validation"
    license: str | None = None  # overrides the default (the NVIDIA licence when fine-tuning NVIDIA weights)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    hardware: str = ""
    space_id: str | None = None  # a Space serving the model's demo (`hf-segformer demo --export_space`)


def describe_hardware(training_args: Any | None = None) -> str:
    """The accelerator (or CPU) this process trains on, and how many processes took part."""
    processes = getattr(training_args, "world_size", 1)
    if torch.cuda.is_available() and not getattr(training_args, "use_cpu", False):
        device = f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}"
    else:
        model = cpu_info("model name") or platform.processor() or platform.machine()
        device = f"CPU only: {model}, {os.cpu_count()} cores"
    return f"{device}; {processes} training process{'es' if processes != 1 else ''}"


def training_hyperparameters(training_args: Any, data_args: Any) -> dict[str, Any]:
    """The hyper-parameters a reader needs to reproduce the run (no paths, no tokens)."""
    args = training_args
    precision = args.precision  # settled by SegformerTrainingArguments (runtime.choose_precision)
    optimizer = getattr(args.optim, "value", args.optim)
    eval_scale = data_args.eval_scale
    values = {
        "learning_rate": args.learning_rate,
        "train_batch_size (per device)": args.per_device_train_batch_size,
        "eval_batch_size (per device)": args.per_device_eval_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "total_train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "optimizer": f"{optimizer} (betas {args.adam_beta1}, {args.adam_beta2}, epsilon {args.adam_epsilon})",
        "weight_decay": args.weight_decay,
        "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
        "warmup_steps": args.warmup_steps,
        "num_epochs": args.num_train_epochs if args.max_steps is None or args.max_steps <= 0 else None,
        "max_steps": args.max_steps if args.max_steps and args.max_steps > 0 else None,
        "max_time (time budget; it decided max_steps)": getattr(args, "max_time", None),
        "ema_decay (the model is the average of the weights)": getattr(args, "ema_decay", None),
        "early_stopping_patience (evaluations)": getattr(args, "early_stopping_patience", None),
        "mixed_precision": precision,
        "seed": args.seed,
        "loss": getattr(args, "loss_terms", None),
        "class_weights": args.class_weights if isinstance(getattr(args, "class_weights", None), str) else
        ("given per class" if getattr(args, "class_weights", None) else None),
        "crop_size": data_args.crop_size,
        "train_scale": list(data_args.train_scale),
        "ratio_range": list(data_args.ratio_range),
        "cat_max_ratio": data_args.cat_max_ratio,
        "hflip_prob": data_args.hflip_prob,
        "photometric_distortion": data_args.photometric_distortion,
        "eval_size": None if eval_scale else data_args.eval_size,
        "eval_scale": list(eval_scale) if eval_scale else None,
    }
    return {key: value for key, value in values.items() if value is not None}


def run_facts(training_args: Any, data_args: Any, model_args: Any, repo_id: str) -> RunFacts:
    """Collect a run's facts from its recipe; `model_license` and `hub_dataset_id` are optional recipe fields."""
    dataset_id = data_args.hub_dataset_id or hub_repo_id(data_args.dataset_name)
    folder = data_args.data_dir or data_args.image_dir
    name = dataset_id or (Path(folder).name if folder else "local data")  # a folder's name, never its path
    return RunFacts(repo_id=repo_id, base_model=hub_model_id(model_args.model_name_or_path), dataset_id=dataset_id,
                    dataset_name=name, eval_split=data_args.eval_split,
                    license=model_args.model_license, space_id=model_args.hub_space_id,
                    hyperparameters=training_hyperparameters(training_args, data_args),
                    hardware=describe_hardware(training_args))


def _architecture(config: dict) -> str:
    for name, variant in MIT_VARIANTS.items():
        if config.get("depths") == variant["depths"] and config.get("hidden_sizes") == variant["hidden_sizes"]:
            return f"SegFormer-{name.upper()} (MiT-{name} encoder)"
    return f"SegFormer (depths {config.get('depths')}, widths {config.get('hidden_sizes')})"


def _license_metadata(facts: RunFacts) -> dict[str, str]:
    if facts.license:
        return {"license": facts.license}
    if facts.base_model and NVIDIA_CHECKPOINT.match(facts.base_model):
        return dict(NVIDIA_LICENSE)
    return {}


def _license_section(facts: RunFacts, metadata: dict[str, str]) -> str:
    lines = []
    if facts.base_model and NVIDIA_CHECKPOINT.match(facts.base_model):
        lines.append(f"The weights this model was fine-tuned from, [{facts.base_model}](https://huggingface.co/"
                     f"{facts.base_model}), are released by NVIDIA under the [NVIDIA Source Code License for "
                     f"SegFormer]({NVIDIA_LICENSE['license_link']}), which permits **non-commercial use only** "
                     "(research or evaluation). This fine-tuned model is derived from them and carries the same "
                     "restriction.")
    if metadata.get("license") and metadata != NVIDIA_LICENSE:
        lines.append(f"Licence declared for this model: `{metadata['license']}`.")
    if not metadata:
        lines.append("No licence was declared for this model (set `model_license` in the recipe). Check the "
                     "licence of the training data before using it.")
    lines.append("The training data's own licence also applies; see the dataset card.")
    return "\n\n".join(lines)


def _eval_results(output_dir: Path, facts: RunFacts) -> tuple[list[EvalResult], dict[str, dict]]:
    """model-index entries for each saved evaluation (`eval_results.json`, and `test_results.json` if any)."""
    dataset_type = facts.dataset_id or re.sub(r"[^a-z0-9]+", "-", facts.dataset_name.lower()).strip("-")
    results, by_split = [], {}
    for prefix, split in (("eval", facts.eval_split), ("test", "test")):
        metrics = _read_json(output_dir / f"{prefix}_results.json")
        if not metrics:
            continue
        by_split[split] = {key: metrics[f"{prefix}_{key}"] for key, _ in METRICS if f"{prefix}_{key}" in metrics}
        if f"{prefix}_precision" in metrics:
            by_split[split]["precision"] = metrics[f"{prefix}_precision"]
        for key, name in METRICS:
            if f"{prefix}_{key}" in metrics:
                results.append(EvalResult(task_type="image-segmentation", task_name="Semantic segmentation",
                                          dataset_type=dataset_type, dataset_name=facts.dataset_name,
                                          dataset_split=split, metric_type=key, metric_name=name,
                                          metric_value=round(float(metrics[f"{prefix}_{key}"]), 4)))
    return results, by_split


def _history_table(output_dir: Path, limit: int = 25) -> str:
    state = _read_json(output_dir / "trainer_state.json") or {}
    history = state.get("log_history", [])
    rows, train_loss = [], None
    for entry in history:
        if "loss" in entry:
            train_loss = entry["loss"]
        if "eval_mean_iou" in entry:
            rows.append((entry.get("step"), entry.get("epoch"), train_loss, entry.get("eval_loss"),
                         entry.get("eval_mean_iou"), entry.get("eval_mean_accuracy")))
    if not rows:
        return ""
    if len(rows) > limit:
        step = -(-len(rows) // limit)
        rows = rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else [])
    lines = ["| step | epoch | training loss | validation loss | mIoU | mean accuracy |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join("–" if v is None else _fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _adapter_usage(repo_id: str, base_model: str | None, local_base: str | None) -> str:
    """How to load a LoRA adapter: its base model with this repo's classes, the adapter merged in. A base trained
    from a local folder (`local_base`, its name) must be published first."""
    base = base_model or "BASE_MODEL"  # a local base model: the user must supply it
    publish_base = "" if base_model else (
        f"The base model was the local folder `{local_base}`, which is not on the Hub: publish it (e.g. "
        f"`AutoModelForSemanticSegmentation.from_pretrained(\"path/to/{local_base}\").push_to_hub(\"you/{local_base}\")`"
        "), put its Hub id in place of `BASE_MODEL` below, and set `base_model_name_or_path` in this repository's "
        "`adapter_config.json` to it (hf-segformer's `predict`, `evaluate` and `demo` read the base from there).\n\n")
    usage = f'''This repository holds a LoRA adapter (PEFT) and the decode head for its classes, not a whole model: load
its base model with this repository's config, then the adapter (`pip install peft`). `hf-segformer merge-lora` turns
a local copy into a plain SegFormer folder that `pipeline("image-segmentation")` loads.

```python
from peft import PeftModel
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation

config = AutoConfig.from_pretrained("{repo_id}")  # this adapter's classes
base = AutoModelForSemanticSegmentation.from_pretrained("{base}", config=config, ignore_mismatched_sizes=True)
model = PeftModel.from_pretrained(base, "{repo_id}").merge_and_unload()  # a plain SegFormer
processor = AutoImageProcessor.from_pretrained("{repo_id}")
```'''
    return publish_base + usage


def _usage(repo_id: str) -> str:
    return f'''```python
from transformers import pipeline

segmenter = pipeline("image-segmentation", model="{repo_id}")
for segment in segmenter("image.jpg"):  # one entry per class found in the image
    print(segment["label"], segment["mask"].size)  # mask: PIL image, 255 where the class is
```

Per-pixel class ids at the image's own size:

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

processor = AutoImageProcessor.from_pretrained("{repo_id}")
model = AutoModelForSemanticSegmentation.from_pretrained("{repo_id}")
image = Image.open("image.jpg").convert("RGB")
with torch.no_grad():
    outputs = model(**processor(images=image, return_tensors="pt"))
class_ids = processor.post_process_semantic_segmentation(outputs, target_sizes=[image.size[::-1]])[0]  # H×W
```'''


def _evaluation_section(output_dir: Path, facts: RunFacts, by_split: dict[str, dict], id2label: dict[int, str]) -> str:
    parts = ["## Evaluation"]
    for split, values in by_split.items():
        shown = ", ".join(f"{name} **{values[key]:.4f}**" for key, name in METRICS if key in values)
        parts.append(f"On the `{split}` split, at each label's native resolution: {shown}."
                     + (f" Evaluated in {values['precision']}." if "precision" in values else ""))
        if values.get("precision", "fp32") != "fp32":
            parts.append(f"{values['precision']} figures vary slightly with the machine; `hf-segformer evaluate` "
                         "scores the model in fp32, the same on every machine.")
    if not by_split:
        parts.append("This run saved no evaluation results.")
    if (output_dir / "eval_confusion_matrix.npy").is_file():
        parts.append(f"Per class (`{facts.eval_split}` split; IoU and accuracy as `evaluate`'s mean_iou, n/a for a "
                     "class absent from labels and predictions):\n\n"
                     + class_table(np.load(output_dir / "eval_confusion_matrix.npy"), id2label))
    if (output_dir / "eval_confusion_matrix.png").is_file():
        parts.append(f"![Confusion matrix on the {facts.eval_split} split, row-normalised](eval_confusion_matrix.png)")
    return "\n\n".join(parts)


def _training_section(output_dir: Path, facts: RunFacts) -> str:
    parts = ["## Training procedure", "### Hyper-parameters",
             "\n".join(f"- {key}: {_fmt(value)}" for key, value in facts.hyperparameters.items()) or "- not recorded"]
    stopping = _early_stopping_note(_read_json(output_dir / "train_results.json") or {})
    if stopping:
        parts += ["### Early stopping", stopping]
    history = _history_table(output_dir)
    if history:
        parts += ["### Training results", history]
    parts += ["### Hardware and software", "\n".join([
        f"- Hardware: {facts.hardware or 'not recorded'}", f"- Framework versions: {_framework_versions()}",
        "- Weights are stored as safetensors; loading needs no `trust_remote_code`.",
        "- TensorBoard logs of the run are in `runs/`."])]
    return "\n\n".join(parts)


def _early_stopping_note(results: dict) -> str | None:
    """What early_stopping_patience did to the run (train_results.json), or None when it was off."""
    if "early_stopped" not in results:
        return None
    metric, patience = results.get("early_stopping_metric"), results.get("early_stopping_patience")
    best = (f" The model is the best evaluation's: step {results['best_step']}, {metric} {results['best_metric']:.4f}."
            if results.get("best_metric") is not None else "")
    if not results["early_stopped"]:
        return f"Early stopping (patience {patience} evaluations on {metric}) was on and did not stop the run.{best}"
    note = (f"Training stopped early at step {results.get('early_stopping_step')}: {metric} had not improved by more "
            f"than {results.get('early_stopping_threshold', 0):g} for {patience} evaluations.{best}")
    if results.get("early_stopping_planned_steps"):
        note += (f" The run was planned for {results['early_stopping_planned_steps']} steps"
                 + (" (its time budget)" if "budget_max_time_s" in results else "")
                 + ", so the learning-rate schedule had not finished decaying"
                 + (f" (learning rate {results['early_stopping_learning_rate']:g} at the stop)."
                    if results.get("early_stopping_learning_rate") is not None else "."))
    return note


def _deployment_section(output_dir: Path) -> str | None:
    """The deploy table of `hf-segformer deploy-report`, when the run folder has one (its default place first)."""
    for name in DEPLOY_REPORT_FILES:
        report = _read_json(output_dir / name)
        if report is not None:
            return model_card_section(report).strip()
    return None


def space_url(space_id: str) -> str:
    return f"https://huggingface.co/spaces/{space_id}"


def space_link(space_id: str) -> str:
    """The model card's pointer to the model's demo Space (a Markdown paragraph)."""
    if not REPO_ID.match(space_id) or "/" not in space_id:
        raise RecipeError(f"hub_space_id must be a Hub Space id (namespace/name); got '{space_id}'.")
    return f"**[Try it in the Space]({space_url(space_id)})**: upload an image and see its segmentation."


def build_model_card(output_dir: str | os.PathLike, facts: RunFacts) -> ModelCard:
    """The model card of a finished run, from its output folder (config, results, confusion matrix, history)."""
    output_dir = Path(output_dir)
    config = _read_json(output_dir / "config.json")
    if config is None:
        raise DataError(f"{output_dir} has no config.json: save the model before writing its card.")
    id2label = {int(k): v for k, v in config.get("id2label", {}).items()}
    processor = _read_json(output_dir / "preprocessor_config.json") or {}
    size = processor.get("size", {})
    keep_ratio = processor.get(KEEP_RATIO_SCALE)
    resize = (f"resized keeping their aspect ratio to fit {max(keep_ratio)}×{min(keep_ratio)} (long × short side; "
              "`Segmenter` and `hf-segformer predict` do this, `pipeline('image-segmentation')` resizes to "
              f"{size.get('height', '?')}×{size.get('width', '?')})" if keep_ratio else
              f"resized to {size.get('height', '?')}×{size.get('width', '?')} by the image processor")
    eval_results, by_split = _eval_results(output_dir, facts)
    adapter = (output_dir / ADAPTER_CONFIG).is_file()  # a LoRA run: the adapter is what is published
    license_metadata = _license_metadata(facts)
    model_name = facts.repo_id.split("/")[-1]
    card_data = ModelCardData(
        base_model=facts.base_model, datasets=[facts.dataset_id] if facts.dataset_id else None,
        library_name="peft" if adapter else "transformers", pipeline_tag="image-segmentation", metrics=[key for key, _ in METRICS],
        tags=["segformer", "semantic-segmentation", "vision", "hf-segformer", *(["lora"] if adapter else [])],
        model_name=model_name,
        eval_results=eval_results or None, **license_metadata,
    )
    origin = (f"fine-tuned from [{facts.base_model}](https://huggingface.co/{facts.base_model})" if facts.base_model
              else "trained from random initialisation (no pretrained weights)")
    local_base = public_model_name(adapter_base_model(output_dir)) if adapter and not facts.base_model else None
    if adapter:
        origin = ("as a LoRA adapter (with its decode head) " + origin if facts.base_model
                  else f"as a LoRA adapter (with its decode head) of a local base model (`{local_base}`)")
    dataset = (f"[{facts.dataset_id}](https://huggingface.co/datasets/{facts.dataset_id})" if facts.dataset_id
               else f"the local dataset `{facts.dataset_name}`")
    names = ", ".join(id2label[i] for i in sorted(id2label))
    sections = [
        f"# {model_name}",
        (f"{_architecture(config)} {origin} on {dataset} for semantic segmentation: it assigns every pixel of an "
         f"image one of {len(id2label)} classes ({names}). Trained with the hf-segformer recipes and the Hugging "
         "Face `Trainer`."),
        *([space_link(facts.space_id)] if facts.space_id else []),
        _evaluation_section(output_dir, facts, by_split, id2label),
        *filter(None, [_deployment_section(output_dir)]),
        "## How to use\n\n" + (_adapter_usage(facts.repo_id, facts.base_model, local_base) if adapter
                               else _usage(facts.repo_id)),
        ("## Intended uses and limitations\n\n"
         f"For semantic segmentation of images like those of {dataset}. The model knows only the classes above and "
         f"gives every pixel one of them. Images are {resize}, and the prediction is "
         "upsampled back to the image's size. Expect lower accuracy on imagery unlike the training data (other "
         "sensors, resolutions, regions or seasons); check the dataset card's caveats."),
        _training_section(output_dir, facts),
        "## License\n\n" + _license_section(facts, license_metadata),
        "## Citation\n\n```bibtex\n" + SEGFORMER_CITATION + "\n```",
    ]
    body = public_text("\n\n".join(sections))
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n")


def write_model_card(output_dir: str | os.PathLike, facts: RunFacts) -> ModelCard:
    """Build the run's model card and save it as `output_dir/README.md` (what `push_model` uploads)."""
    card = build_model_card(output_dir, facts)
    card.save(Path(output_dir) / "README.md")
    return card


def _framework_versions() -> str:
    def installed(package: str) -> str:
        try:
            return f"{package} {version(package)}"
        except PackageNotFoundError:
            return f"{package} (not installed)"

    return ", ".join(installed(p) for p in ("hf-segformer", "transformers", "torch", "datasets", "huggingface_hub"))
