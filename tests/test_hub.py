"""Publishing datasets and models on the Hub, against a local Hub server (tests/support/hub_server.py).

One fresh process (tests/scripts/hub_scenario.py) publishes a folder dataset with `hf-segformer push-dataset`, reads it
back with `load_dataset`, fine-tunes from it and from a stand-in `nvidia/mit-b0` on the server, pushes the run
with `push_model` and loads the pushed model with `pipeline("image-segmentation")`. The tests assert on what the
server received and on what the client read back.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.hub_server import HubServer, card_metadata

from hf_segformer.data.synthetic import SYNTHETIC_ID2LABEL, write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_FakeTokenForTheLocalHub0123456789"
NVIDIA_LICENSE_LINK = "https://github.com/NVlabs/SegFormer/blob/master/LICENSE"


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("hub")
    data_dir = write_synthetic_dataset(work / "data", num_train=8, num_validation=4, size=32)
    _run_with_deploy_files(work / "run-onnx")  # pushed by the scenario with one chosen ONNX file
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE", "TRANSFORMERS_OFFLINE"))}
    with HubServer() as hub:
        env.update(HF_ENDPOINT=hub.url, HF_HUB_DISABLE_XET="1", HF_HOME=str(work / "hf_home"), HF_TOKEN=TOKEN,
                   HF_HUB_DISABLE_TELEMETRY="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        result = subprocess.run([sys.executable, str(Path(__file__).parent / "scripts" / "hub_scenario.py"), str(work), str(data_dir)],
                                cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{result.stderr[-6000:]}\nunknown routes: {hub.state.unknown_routes}"
        yield hub.state, json.loads((work / "scenario.json").read_text()), work, data_dir


def _readme(state, repo_type: str, repo_id: str) -> str:
    return state.files(repo_type, repo_id)["README.md"].decode()


def _source_pairs(data_dir: Path, split: str) -> list[tuple[np.ndarray, np.ndarray]]:
    names = sorted(p.name for p in (data_dir / "images" / split).iterdir())
    return [(np.asarray(Image.open(data_dir / "images" / split / n)), np.asarray(Image.open(data_dir / "masks" / split / n)))
            for n in names]


# --- dataset publishing ---------------------------------------------------------------------------------------

def test_push_dataset_commits_card_class_names_and_lfs_parquet_shards(hub_run):
    state, scenario, _, data_dir = hub_run
    assert scenario["push_dataset_rc"] == 0
    files = state.files("dataset", "tester/shapes")
    assert set(files) == {"README.md", "id2label.json", "data/train-00000-of-00001.parquet",
                          "data/validation-00000-of-00001.parquet"}
    assert json.loads(files["id2label.json"]) == {str(k): v for k, v in SYNTHETIC_ID2LABEL.items()}
    commits = [c for c in state.commits if c.repo_id == "tester/shapes"]
    assert [c.summary for c in commits] == ["Dataset card and class names", "Upload dataset"]
    shards = [p for p in files if p.endswith(".parquet")]
    assert sorted(commits[1].lfs_paths) == sorted(shards)  # uploaded through LFS batch + PUT, not inline
    for path in shards:
        assert hashlib.sha256(files[path]).hexdigest() in state.lfs_objects
        assert str(data_dir).encode() not in files[path]  # image bytes embedded, no local paths
    assert ("POST", "/datasets/tester/shapes.git/info/lfs/objects/batch") in state.requests
    assert f"Bearer {TOKEN}" in state.authorizations


def test_dataset_card_has_hub_metadata_and_the_measured_class_and_size_tables(hub_run):
    state, _, _, data_dir = hub_run
    readme = _readme(state, "dataset", "tester/shapes")
    meta = card_metadata(readme)
    assert meta["license"] == "apache-2.0" and meta["task_categories"] == ["image-segmentation"]
    assert meta["task_ids"] == ["semantic-segmentation"] and meta["size_categories"] == ["n<1K"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train-*"}, {"split": "validation", "path": "data/validation-*"}]}]
    assert [f["name"] for f in meta["dataset_info"]["features"]] == ["image", "label"]
    shares = {}
    for split in ("train", "validation"):
        counts = np.bincount(np.concatenate([m.ravel() for _, m in _source_pairs(data_dir, split)]), minlength=4)
        shares[split] = 100 * counts / counts.sum()
    for class_id, name in SYNTHETIC_ID2LABEL.items():
        row = (rf"\| {class_id} \| {name} \| #[0-9A-F]{{6}} \| {shares['train'][class_id]:.2f}% \| "
               rf"{shares['validation'][class_id]:.2f}% \|")
        assert re.search(row, readme), row
    assert "| train | 8 | 32 / 32 / 32 | 32 / 32 / 32 | 1 |" in readme
    assert "## How the masks were made" in readme and "no ignore label" in readme  # prose of the facts card
    assert 'load_dataset("tester/shapes")' in readme
    validations = [errors for kind, text, errors in state.validated if 'load_dataset("tester/shapes")' in text]
    assert len(validations) == 2 and not any(validations)  # our card, then push_to_hub's update of it


def test_load_dataset_reads_back_exactly_the_pushed_pairs(hub_run):
    _, scenario, work, data_dir = hub_run
    assert scenario["loaded_splits"] == {"train": 8, "validation": 4}
    loaded = np.load(work / "loaded.npz")
    for split in ("train", "validation"):
        for i, (image, mask) in enumerate(_source_pairs(data_dir, split)):
            np.testing.assert_array_equal(loaded[f"{split}/{i}/image"], image)
            np.testing.assert_array_equal(loaded[f"{split}/{i}/label"], mask)


def test_a_card_with_an_unknown_licence_is_refused_by_the_hub_and_nothing_is_committed(hub_run):
    state, scenario, _, _ = hub_run
    assert "made-up-licence" in scenario["bad_licence_error"]
    assert state.files("dataset", "tester/bad-licence") == {}


def test_finetune_entry_point_trains_from_the_published_dataset(hub_run):
    state, scenario, _, _ = hub_run
    assert scenario["train_rc"] == 0 and 0.0 <= scenario["eval_results"]["eval_mean_iou"] <= 1.0
    assert {"eval_iou_background", "eval_iou_triangle"} <= set(scenario["eval_results"])  # names from id2label.json
    assert ("GET", "/datasets/tester/shapes/resolve/main/id2label.json") in state.requests
    assert any(m == "GET" and p.startswith("/nvidia/mit-b0/resolve/") and p.endswith("model.safetensors")
               for m, p in state.requests)


# --- model pushing --------------------------------------------------------------------------------------------

def test_push_model_uploads_weights_processor_logs_and_card_but_no_pickles(hub_run):
    state, scenario, work, _ = hub_run
    assert scenario["hub_model_id"] == "tester/seg-shapes"
    files = state.files("model", "tester/seg-shapes")
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "eval_results.json",
                 "eval_confusion_matrix.png", "trainer_state.json"):
        assert name in files, name
    assert any(re.fullmatch(r"runs/[^/]+/events\.out\.tfevents\..+", path) for path in files)
    assert not [p for p in files if p.endswith((".bin", ".pt", ".pth", ".pkl")) or p.startswith("checkpoint-")]
    final = [c for c in state.commits if c.repo_id == "tester/seg-shapes"][-1]
    assert final.summary == "End of training" and final.deleted == ["training_args.bin"]  # left by an earlier push
    assert files["model.safetensors"] == (work / "run" / "model.safetensors").read_bytes()
    assert {"name": "seg-shapes", "organization": None, "visibility": "private"} in state.created


def test_push_to_hub_in_the_recipe_pushes_the_run_with_our_card(hub_run):
    _, scenario, _, _ = hub_run
    assert scenario["recipe_push_rc"] == 0
    assert {"README.md", "model.safetensors", "config.json", "preprocessor_config.json"} <= set(scenario["recipe_push_files"])
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in scenario["recipe_push_files"])
    card = scenario["recipe_push_card"]
    assert card["pipeline_tag"] == "image-segmentation" and card["base_model"] == "nvidia/mit-b0"
    assert card["model-index"][0]["results"], card


def test_push_model_from_a_folder_pushes_its_files_and_existing_card(hub_run):
    state, scenario, _, _ = hub_run
    assert "/tester/seg-folder/commit/" in scenario["folder_commit_url"]
    assert state.files("model", "tester/seg-folder").keys() == state.files("model", "tester/seg-shapes").keys()
    assert card_metadata(_readme(state, "model", "tester/seg-folder"))["base_model"] == "nvidia/mit-b0"


def test_a_lora_run_pushes_its_adapter_and_a_peft_card_that_loads_it(hub_run):
    state, scenario, work, _ = hub_run
    assert scenario["lora_push_rc"] == 0
    files = state.files("model", "tester/seg-shapes-lora")
    assert {"adapter_model.safetensors", "adapter_config.json", "config.json", "preprocessor_config.json",
            "README.md"} <= set(files)
    assert "model.safetensors" not in files  # the adapter and the head, not a whole model
    # hub_strategy checkpoint: the Trainer pushes the last checkpoint (optimizer state too, to resume elsewhere)
    assert {"last-checkpoint/adapter_model.safetensors", "last-checkpoint/adapter_config.json"} <= set(files)
    assert not [p for p in files if p.endswith((".bin", ".pt", ".pth", ".pkl")) and not p.startswith(
        "last-checkpoint/") or p.startswith("checkpoint-")]
    assert files["adapter_model.safetensors"] == (work / "run-lora" / "adapter_model.safetensors").read_bytes()
    # Trained from the base's folder in the Hub cache: every adapter config uploaded, during training and at its
    # end, names the base by its Hub id and commit; the run folder's own keeps the path local loading reads.
    commits = [c for c in state.commits if c.repo_id == "tester/seg-shapes-lora"]
    uploaded = {(c.summary.split(",")[0].split(":")[0], path): json.loads(content) for c in commits
                for path, content in c.added.items() if path.endswith("adapter_config.json")}
    assert {("Training in progress", "adapter_config.json"), ("Training in progress",
                                                              "last-checkpoint/adapter_config.json")} <= set(uploaded)
    commit = Path(scenario["lora_base_snapshot"]).name
    named = {where: (c["base_model_name_or_path"], c.get("revision")) for where, c in uploaded.items()}
    assert set(named.values()) == {("nvidia/mit-b0", commit)}, named
    assert not [path for c in commits for path, content in c.added.items()
                if path.endswith((".json", ".md")) and str(work).encode() in content]
    local = json.loads((work / "run-lora" / "adapter_config.json").read_text())
    assert local["base_model_name_or_path"] == scenario["lora_base_snapshot"]
    meta = card_metadata(files["README.md"].decode())
    assert meta["base_model"] == "nvidia/mit-b0" and meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert scenario["lora_card_loads_the_trained_model"] and scenario["lora_processor"].startswith("SegformerImageProcessor")
    assert scenario["lora_segmenter_from_the_hub_matches_the_run"]  # predict/evaluate/demo --model tester/seg-shapes-lora


def test_push_model_refuses_a_folder_without_card_or_safetensors_before_contacting_the_hub(tmp_path):
    from hf_segformer.errors import DataError
    from hf_segformer.hub.publish import push_model

    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(DataError, match="README.md"):
        push_model(tmp_path, repo_id="tester/x")
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n")
    with pytest.raises(DataError, match="safetensors"):
        push_model(tmp_path, repo_id="tester/x")


def test_model_card_metadata_results_and_licence(hub_run):
    state, scenario, _, _ = hub_run
    readme = _readme(state, "model", "tester/seg-shapes")
    meta = card_metadata(readme)
    assert meta["base_model"] == "nvidia/mit-b0" and meta["datasets"] == ["tester/shapes"]
    assert meta["pipeline_tag"] == "image-segmentation" and meta["library_name"] == "transformers"
    assert (meta["license"], meta["license_link"]) == ("other", NVIDIA_LICENSE_LINK)
    [entry] = meta["model-index"]
    [result] = entry["results"]
    assert result["task"]["type"] == "image-segmentation"
    assert result["dataset"] == {"name": "tester/shapes", "type": "tester/shapes", "split": "validation"}
    expected = {key: round(scenario["eval_results"][f"eval_{key}"], 4)
                for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
    assert {m["type"]: m["value"] for m in result["metrics"]} == expected
    assert "non-commercial use only" in readme
    for class_id, name in SYNTHETIC_ID2LABEL.items():
        assert f"| {class_id} | {name} | {scenario['eval_results'][f'eval_iou_{name}']:.4f} |" in readme
    assert "(eval_confusion_matrix.png)" in readme
    assert 'pipeline("image-segmentation", model="tester/seg-shapes")' in readme
    assert "- max_steps: 2" in readme and "- Hardware: " in readme
    model_validations = [errors for kind, text, errors in state.validated if kind == "model" and "seg-shapes" in text]
    assert model_validations and not any(model_validations)


def test_model_card_holds_no_local_path_or_token(hub_run):
    state, _, work, data_dir = hub_run
    readme = _readme(state, "model", "tester/seg-shapes")
    for secret in (TOKEN, str(work), str(data_dir), str(ROOT), str(Path.home())):
        assert secret not in readme
    assert not re.search(r"(?<![\w.:/])/(home|tmp|root|work)/", readme)


def test_model_card_round_trips_through_model_card_load(hub_run):
    from huggingface_hub import ModelCard, ModelCardData

    state, scenario, _, _ = hub_run
    assert scenario["card_base_model"] == "nvidia/mit-b0"
    loaded = {(r["metric_type"], r["dataset_split"]): r["metric_value"] for r in scenario["card_eval_results"]}
    assert loaded == {(key, "validation"): round(scenario["eval_results"][f"eval_{key}"], 4)
                      for key in ("mean_iou", "mean_accuracy", "overall_accuracy")}
    card = ModelCard(_readme(state, "model", "tester/seg-shapes"))
    assert ModelCardData(**card.data.to_dict()).to_yaml() == card.data.to_yaml()


def test_pushed_model_loads_into_the_image_segmentation_pipeline(hub_run):
    _, scenario, _, _ = hub_run
    labels = scenario["pipeline_labels"]
    assert labels and set(labels) <= set(SYNTHETIC_ID2LABEL.values())


# --- in-process pieces ----------------------------------------------------------------------------------------

def test_card_redacts_local_paths_and_tokens_that_come_in_through_names(hub_run, tmp_path):
    from hf_segformer.hub.model_card import RunFacts, build_model_card

    _, _, work, _ = hub_run
    run = tmp_path / "run"
    run.mkdir()
    config = json.loads((work / "run" / "config.json").read_text())
    config["id2label"] = {"0": "background", "1": "/home/alice/data/disc", "2": TOKEN, "3": "triangle"}
    (run / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="redacted"):
        card = str(build_model_card(run, RunFacts(repo_id="tester/x", base_model=None)))
    assert "/home/alice" not in card and TOKEN not in card and "<local path>" in card
    assert "license" not in card_metadata(card) and "No licence was declared" in card


def test_card_links_the_demo_space_when_the_recipe_names_one(hub_run):
    from hf_segformer.hub.model_card import RunFacts, build_model_card

    _, _, work, _ = hub_run
    with_space = str(build_model_card(work / "run", RunFacts(repo_id="tester/x", space_id="tester/x-demo")))
    without = str(build_model_card(work / "run", RunFacts(repo_id="tester/x")))
    assert "https://huggingface.co/spaces/tester/x-demo" in with_space
    assert "spaces/" not in without


def test_local_checkpoint_and_data_folders_are_not_named_as_hub_repositories(tmp_path):
    from hf_segformer.hub.model_card import run_facts
    from hf_segformer.training.arguments import parse_recipe

    (tmp_path / "ckpt").mkdir()
    data_args, model_args, training_args = parse_recipe([
        "--dataset_name", str(tmp_path), "--model_name_or_path", str(tmp_path / "ckpt"),
        "--output_dir", str(tmp_path / "out"), "--report_to", "none"])
    facts = run_facts(training_args, data_args, model_args, "tester/x")
    assert facts.base_model is None and facts.dataset_id is None
    assert str(tmp_path) not in json.dumps(facts.__dict__, default=str)


def test_colour_masks_are_published_as_class_ids(data_root, make_pairs):
    from hf_segformer.config.data import DataArguments
    from hf_segformer.hub.publish import publishable_data

    colours = np.zeros((32, 48, 3), dtype=np.uint8)
    colours[:, :16] = (132, 41, 246)
    colours[:, 16:] = (60, 16, 152)
    colours[:, 32:] = (0, 0, 0)
    make_pairs(data_root, ["a", "b"], mask_mode="RGB", mask=colours)
    args = DataArguments(data_dir=str(data_root), id2label='{"0": "land", "1": "building"}',
                         colour_map='{"#8429F6": 0, "#3C1098": 1, "#000000": 255}')
    data, id2label, report = publishable_data(args)
    label = np.asarray(data["train"][0]["label"])
    assert label.ndim == 2 and (label[:, :16] == 0).all() and (label[:, 16:32] == 1).all() and (label[:, 32:] == 255).all()
    assert report.splits["train"].pixel_counts == [2 * 32 * 16] * 3


def test_coco_conversion_feeds_push_dataset(tmp_path):
    from hf_segformer.cli import main

    images = tmp_path / "coco_images"
    images.mkdir()
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(images / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 4, "width": 6}],
            "categories": [{"id": 5, "name": "cup"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "iscrowd": 0, "segmentation": [[0, 0, 3, 0, 3, 4, 0, 4]]}]}
    (tmp_path / "train.json").write_text(json.dumps(coco))
    out = tmp_path / "converted"
    assert main(["coco-to-masks", str(out), "--split", "train", str(tmp_path / "train.json"), str(images)]) == 0
    assert main(["push-dataset", "--repo_id", "tester/cups", "--license", "cc-by-4.0", "--data_dir", str(out),
                 "--output_dir", str(tmp_path / "unused"), "--dry_run", str(tmp_path / "card")]) == 0
    readme = (tmp_path / "card" / "README.md").read_text()
    assert card_metadata(readme)["license"] == "cc-by-4.0"
    assert "| 5 | 1 | cup |" in readme and "coco-to-masks" in readme  # the category map in "How the masks were made"
    assert re.search(r"\| 1 \| cup \| #[0-9A-F]{6} \| 50\.00% \|", readme)
    assert json.loads((tmp_path / "card" / "id2label.json").read_text()) == {"0": "background", "1": "cup"}
    assert (tmp_path / "card" / "coco_category_map.json").is_file()


# --- deployment files -----------------------------------------------------------------------------------------

def _run_with_deploy_files(run: Path) -> Path:
    (run / "deploy_report").mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"weights")
    (run / "config.json").write_text("{}")
    (run / "README.md").write_text("---\nlicense: mit\n---\n")
    (run / "deploy_report" / "model.onnx").write_bytes(b"fp32 graph")
    (run / "deploy_report" / "model.int8-static.onnx").write_bytes(b"int8 graph")
    (run / "deploy_report" / "deploy_report.md").write_text("| deployment |")
    return run


def test_push_model_puts_only_the_chosen_onnx_file_beside_the_safetensors(hub_run):
    state, scenario, _, _ = hub_run
    assert "/tester/int8/commit/" in scenario["onnx_commit_url"]
    files = state.files("model", "tester/int8")
    assert files["model.int8-static.onnx"] == b"int8 graph" and files["model.safetensors"] == b"weights"
    assert [p for p in files if p.endswith(".onnx")] == ["model.int8-static.onnx"]  # not the other exports
    assert "deploy_report/deploy_report.md" in files


def test_push_model_refuses_a_missing_onnx_file_before_contacting_the_hub(tmp_path):
    from hf_segformer.errors import DataError
    from hf_segformer.hub.publish import push_model

    run = _run_with_deploy_files(tmp_path / "run")
    with pytest.raises(DataError, match="model.int8-dynamic.onnx"):
        push_model(run, repo_id="tester/x", onnx_file="deploy_report/model.int8-dynamic.onnx")
    with pytest.raises(DataError, match="deploy_report.md"):
        push_model(run, repo_id="tester/x", onnx_file="deploy_report/deploy_report.md")


def test_the_model_card_says_which_precision_evaluated(tmp_path):
    from support.models import save_tiny_model

    from hf_segformer.hub.model_card import RunFacts, build_model_card

    run = save_tiny_model(tmp_path / "run")
    (run / "eval_results.json").write_text(json.dumps({"eval_mean_iou": 0.5, "eval_precision": "bf16"}))
    card = str(build_model_card(run, RunFacts(repo_id="tester/x")))
    assert "Evaluated in bf16." in card and "`hf-segformer evaluate` scores the model in fp32" in card
    (run / "eval_results.json").write_text(json.dumps({"eval_mean_iou": 0.5, "eval_precision": "fp32"}))
    card = str(build_model_card(run, RunFacts(repo_id="tester/x")))
    assert "Evaluated in fp32." in card and "scores the model in fp32" not in card
