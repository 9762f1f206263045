"""LoRA adapters (peft): a run with `lora` saves only its adapter and head, changes only those weights, and every
loader (evaluate, predict, the Segmenter, merge-lora → transformers' pipeline) gives the merged model's masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file
from support.models import save_tiny_model
from support.processes import ACCELERATE, REPO, eval_metrics, finetune, run, step_losses

from hf_segformer.cli import main
from hf_segformer.data.synthetic import write_synthetic_dataset
from hf_segformer.errors import RecipeError

pytest.importorskip("peft")

RANK = 4
SYNTHETIC_CLASSES = {0: "background", 1: "disc", 2: "square", 3: "triangle"}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> dict[str, Path]:
    """A tiny base model, then a 3-step LoRA run from it on the synthetic shapes (fp32: figures compared exactly)."""
    from hf_segformer.training.arguments import parse_recipe
    from hf_segformer.training.run import main as train

    root = tmp_path_factory.mktemp("lora")
    data_dir = write_synthetic_dataset(root / "data", num_train=8, num_validation=4, size=32)
    base = save_tiny_model(root / "base", SYNTHETIC_CLASSES, eval_size=32)
    argv = ["--data_dir", str(data_dir), "--output_dir", str(root / "run"), "--model_name_or_path", str(base),
            "--lora", f"{{r: {RANK}, alpha: 8, dropout: 0.0}}", "--crop_size", "32", "--eval_size", "32",
            "--train_scale", "64", "32", "--cat_max_ratio", "1.0", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "4", "--learning_rate", "0.05", "--max_steps", "3",
            "--report_to", "none", "--dataloader_num_workers", "0", "--check_data", "false", "--precision", "fp32"]
    train(*parse_recipe(argv))
    assert main(["merge-lora", "--model", str(root / "run"), "--output", str(root / "merged")]) == 0
    return {"root": root, "data": data_dir, "base": base, "run": root / "run", "merged": root / "merged"}


def test_the_run_saves_only_an_adapter_naming_its_base_model(lora_run):
    from transformers import SegformerForSemanticSegmentation

    run = lora_run["run"]
    assert {"adapter_model.safetensors", "adapter_config.json", "config.json", "preprocessor_config.json"} <= {
        path.name for path in run.iterdir()}
    assert not (run / "model.safetensors").exists() and not (run / "README.md").exists()
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == str(lora_run["base"])
    base = SegformerForSemanticSegmentation.from_pretrained(lora_run["base"])
    # r × (in + out) per adapted projection (query and value of every attention), and the whole decode head.
    expected = sum(RANK * (module.in_features + module.out_features) for name, module in base.named_modules()
                   if name.endswith(("q_proj", "v_proj")))
    expected += sum(tensor.numel() for tensor in base.decode_head.state_dict().values())
    assert sum(tensor.numel() for tensor in load_file(run / "adapter_model.safetensors").values()) == expected


def test_only_the_adapted_projections_and_the_head_change(lora_run):
    from transformers import SegformerForSemanticSegmentation

    base = SegformerForSemanticSegmentation.from_pretrained(lora_run["base"]).state_dict()
    merged = SegformerForSemanticSegmentation.from_pretrained(lora_run["merged"]).state_dict()
    assert base.keys() == merged.keys()
    changed = {name for name in base if not torch.equal(base[name], merged[name])}
    adapted = {name for name in base if name.endswith(("q_proj.weight", "v_proj.weight"))}
    assert changed - adapted <= {name for name in base if name.startswith("decode_head.")}
    assert changed & adapted and changed & {name for name in base if name.startswith("decode_head.")}


def test_the_merged_model_computes_what_peft_computes_with_the_adapter_unmerged(lora_run):
    from peft import PeftModel
    from transformers import AutoConfig, SegformerForSemanticSegmentation

    config = AutoConfig.from_pretrained(lora_run["run"])
    base = SegformerForSemanticSegmentation.from_pretrained(lora_run["base"], config=config)
    unmerged = PeftModel.from_pretrained(base, str(lora_run["run"])).eval()
    merged = SegformerForSemanticSegmentation.from_pretrained(lora_run["merged"]).eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(merged(pixel_values=pixels).logits, unmerged(pixel_values=pixels).logits)


def test_evaluate_and_predict_load_the_adapter_and_match_the_merged_model(lora_run, tmp_path):
    from hf_segformer.inference.segmenter import Segmenter

    images = sorted((lora_run["data"] / "images" / "validation").glob("*.png"))
    adapter, merged = Segmenter.from_pretrained(lora_run["run"]), Segmenter.from_pretrained(lora_run["merged"])
    for image in images:
        np.testing.assert_array_equal(adapter(str(image)), merged(str(image)))
    for name in ("run", "merged"):
        assert main(["predict", "--model", str(lora_run[name]), "--inputs", str(images[0].parent),
                     "--predictions_dir", str(tmp_path / f"masks-{name}")]) == 0
        assert main(["evaluate", "--model", str(lora_run[name]), "--data_dir", str(lora_run["data"]),
                     "--eval_output_dir", str(tmp_path / f"eval-{name}")]) == 0
    for image in images:
        mask_name = image.with_suffix(".png").name
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "masks-run" / mask_name)),
                                      np.asarray(Image.open(tmp_path / "masks-merged" / mask_name)))
    run_metrics = json.loads((tmp_path / "eval-run" / "eval_results.json").read_text())
    merged_metrics = json.loads((tmp_path / "eval-merged" / "eval_results.json").read_text())
    assert run_metrics["eval_mean_iou"] == merged_metrics["eval_mean_iou"]


def test_export_onnx_and_the_demo_load_the_adapter_folder_as_the_merged_model(lora_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from transformers import SegformerForSemanticSegmentation

    from hf_segformer.app.demo import DemoModel
    from hf_segformer.inference.onnx_export import load_onnx_session, onnx_logits, onnx_metadata
    from hf_segformer.inference.segmenter import Segmenter

    path = tmp_path / "lora.onnx"
    assert main(["export-onnx", "--model", str(lora_run["run"]), "--output_path", str(path), "--check_size", "32",
                 "32"]) == 0
    session = load_onnx_session(path)
    assert onnx_metadata(session)["id2label"] == SYNTHETIC_CLASSES  # the run's classes, not the base model's
    merged = SegformerForSemanticSegmentation.from_pretrained(lora_run["merged"]).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(onnx_logits(session, pixels), merged(pixel_values=pixels).logits, rtol=1e-4,
                                   atol=1e-5)
    demo = DemoModel(str(lora_run["run"]))
    assert demo.loaded(60) and "is ready" in demo.status() and demo.name == "run"
    image = Image.open(min((lora_run["data"] / "images" / "validation").glob("*.png"))).convert("RGB")
    np.testing.assert_array_equal(demo.segment(image), Segmenter.from_pretrained(lora_run["merged"])(image))


def test_the_merged_folder_loads_with_transformers_pipeline(lora_run):
    from transformers import pipeline

    image = min((lora_run["data"] / "images" / "validation").glob("*.png"))
    segments = pipeline("image-segmentation", model=str(lora_run["merged"]))(str(image))
    assert segments and {segment["label"] for segment in segments} <= set(SYNTHETIC_CLASSES.values())


def test_the_reordered_head_is_trained_under_lora(tiny_segformer):
    from hf_segformer.config.model import check_lora
    from hf_segformer.modeling.head_folding import fuse_decode_head_for_training, fused_head_forward
    from hf_segformer.modeling.lora import apply_lora

    reference, model = tiny_segformer(SYNTHETIC_CLASSES), tiny_segformer(SYNTHETIC_CLASSES)
    assert fuse_decode_head_for_training(model)
    wrapped = apply_lora(model, check_lora({"r": RANK}), "base").eval()
    trained_head = wrapped.base_model.model.decode_head.modules_to_save["default"]
    assert trained_head.forward.__func__ is fused_head_forward and trained_head.forward.__self__ is trained_head
    pixels = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(wrapped(pixel_values=pixels).logits, reference(pixel_values=pixels).logits)


@pytest.mark.slow
def test_two_processes_train_the_adapter_like_one_process_with_the_whole_batch(tmp_path):
    """A LoRA run under DDP (2 CPU processes, gloo, batch 2 each) = 1 process × batch 4: same losses, same saved
    adapter and head, same metrics; only the main process writes the adapter folder."""
    data_dir = write_synthetic_dataset(tmp_path / "data", num_train=8, num_validation=4, size=32)
    base = save_tiny_model(tmp_path / "base", SYNTHETIC_CLASSES, eval_size=32)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "data_dir": str(data_dir), "model_name_or_path": str(base), "lora": {"r": RANK, "alpha": 8, "dropout": 0.0},
        "crop_size": 32, "eval_size": 32, "train_scale": [64, 32], "ratio_range": [1.0, 1.0], "cat_max_ratio": 1.0,
        "hflip_prob": 0.0, "photometric_distortion": False, "check_data": False, "sync_batchnorm": True,
        "drop_path_rate": 0.0, "classifier_dropout_prob": 0.0, "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 4, "learning_rate": 0.05, "max_steps": 3, "logging_steps": 1,
        "eval_strategy": "no", "save_strategy": "no", "report_to": "none", "dataloader_num_workers": 0, "seed": 7,
        "precision": "fp32"}))  # deterministic crops, no dropout: the two runs see the same pixels
    finetune(recipe, tmp_path / "one", "--per_device_train_batch_size", "4")
    run([str(ACCELERATE), "launch", "--config_file", str(REPO / "accelerate_configs/cpu_2proc.yaml"),
         "--main_process_port", "0", str(REPO / "recipes/finetune.py"), "--config", str(recipe),
         "--output_dir", str(tmp_path / "two")], tmp_path)
    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert sorted(two) == sorted(one) == [1, 2, 3]
    assert [two[step] for step in sorted(two)] == pytest.approx([one[step] for step in sorted(one)], rel=1e-3)
    for run_dir in (tmp_path / "one", tmp_path / "two"):
        assert (run_dir / "adapter_config.json").is_file() and not (run_dir / "model.safetensors").exists()
    adapter_one = load_file(tmp_path / "one" / "adapter_model.safetensors")
    adapter_two = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert adapter_two.keys() == adapter_one.keys()
    # The head's projection biases come before its BatchNorm, which subtracts them again: their gradient is zero up
    # to rounding, which Adam scales to full steps in either run; they (and the running mean) are left out.
    noise = ("proj.bias", "batch_norm.running_mean")
    assert [name for name in adapter_one if name.endswith(noise)]
    for name, tensor in adapter_one.items():
        if not name.endswith(noise):
            torch.testing.assert_close(adapter_two[name], tensor, rtol=1e-3, atol=1e-4, msg=name)
    assert not torch.equal(adapter_one["base_model.model.decode_head.classifier.weight"],
                           load_file(base / "model.safetensors")["decode_head.classifier.weight"])
    assert eval_metrics(tmp_path / "two") == pytest.approx(eval_metrics(tmp_path / "one"), rel=1e-3, abs=1e-3,
                                                           nan_ok=True)


@pytest.mark.parametrize(("value", "named"), [
    ("{r: 0}", "lora.r"), ("{alpha: -1}", "lora.alpha"), ("{dropout: 1.5}", "lora.dropout"),
    ("{target_modules: []}", "lora.target_modules"), ("{modules_to_save: 3}", "lora.modules_to_save"),
    ("{rank: 8}", "unknown key(s) rank"), ("[1, 2]", "lora must be a mapping"),
])
def test_bad_lora_fields_are_refused_naming_the_field(value, named):
    from hf_segformer.training.arguments import parse_recipe

    with pytest.raises(RecipeError, match=named.replace("(", r"\(").replace(")", r"\)")):
        parse_recipe(["--output_dir", "unused", "--model_name_or_path", "nvidia/mit-b0", "--lora", value])


def test_lora_without_a_pretrained_model_and_unknown_targets_are_refused(tiny_segformer):
    from hf_segformer.config.model import ModelArguments, check_lora
    from hf_segformer.modeling.lora import apply_lora

    with pytest.raises(RecipeError, match="lora: needs model_name_or_path"):
        ModelArguments(lora="true")
    assert ModelArguments(model_name_or_path="nvidia/mit-b0", lora="{target_modules: [query, value]}").lora[
        "target_modules"] == ["q_proj", "v_proj"]  # PEFT's guide's (transformers 4) names
    with pytest.raises(RecipeError, match="q_proj"):  # the error lists the layers there are
        apply_lora(tiny_segformer(SYNTHETIC_CLASSES), check_lora({"target_modules": ["attn"]}), "base")


def test_merge_lora_refuses_a_folder_without_adapter_and_an_existing_output(lora_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["merge-lora", "--model", str(lora_run["run"]), "--output", str(tmp_path / "taken")]) == 2
    assert "--output" in capsys.readouterr().err and (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert main(["merge-lora", "--model", str(lora_run["base"]), "--output", str(tmp_path / "new")]) == 2
    assert "holds no LoRA adapter" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_the_model_card_of_a_lora_run_names_its_base_model_and_peft(lora_run):
    from hf_segformer.hub.model_card import RunFacts, build_model_card

    card = build_model_card(lora_run["run"], RunFacts(repo_id="me/shapes-lora", base_model="nvidia/mit-b0"))
    assert card.data.base_model == "nvidia/mit-b0" and card.data.library_name == "peft"
    assert 'PeftModel.from_pretrained(base, "me/shapes-lora")' in card.content


def test_a_base_from_a_local_folder_is_published_by_its_name_and_the_card_says_how_to_publish_it(lora_run):
    from hf_segformer.hub.folder_upload import public_adapter_config
    from hf_segformer.hub.model_card import RunFacts, build_model_card

    run = lora_run["run"]
    local = (run / "adapter_config.json").read_text()
    published = json.loads(public_adapter_config(run))
    assert published["base_model_name_or_path"] == "base" and not published.get("revision")
    assert {k: v for k, v in published.items() if k != "base_model_name_or_path"} == {
        k: v for k, v in json.loads(local).items() if k != "base_model_name_or_path"}
    assert (run / "adapter_config.json").read_text() == local  # local loading still reads the real path
    card = str(build_model_card(run, RunFacts(repo_id="me/shapes-lora")))
    assert "of a local base model (`base`)" in card and "publish it" in card and "BASE_MODEL" in card
    assert str(lora_run["root"]) not in card


def test_a_base_in_the_hub_cache_is_named_by_its_hub_id_and_commit():
    from hf_segformer.hub.redaction import hub_model_id, hub_snapshot, public_model_name

    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = f"/home/alice/.cache/huggingface/hub/models--nvidia--mit-b0/snapshots/{commit}"
    assert hub_snapshot(folder + "/") == ("nvidia/mit-b0", commit)
    assert hub_model_id(folder) == public_model_name(folder) == "nvidia/mit-b0"
    elsewhere = "/home/alice/models/mit-b0"
    assert hub_snapshot(elsewhere) is None and hub_model_id(elsewhere) is None
    assert public_model_name(elsewhere) == "mit-b0"
    assert public_model_name("nvidia/mit-b0") == "nvidia/mit-b0"


def test_the_space_of_a_lora_model_installs_the_peft_it_was_exported_with(lora_run, tmp_path):
    pytest.importorskip("gradio")
    from importlib.metadata import version

    space = tmp_path / "space"
    assert main(["demo", "--model", str(lora_run["run"]), "--hub_model_id", "me/shapes-lora", "--export_space",
                 str(space)]) == 0
    assert f"peft=={version('peft')}" in (space / "requirements.txt").read_text().splitlines()
    plain = tmp_path / "plain"
    assert main(["demo", "--model", str(lora_run["merged"]), "--hub_model_id", "me/shapes", "--export_space",
                 str(plain)]) == 0
    assert not [r for r in (plain / "requirements.txt").read_text().splitlines() if r.startswith("peft")]
