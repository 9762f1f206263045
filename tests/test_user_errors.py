"""Bad input as a new user gives it: one clear error naming the file or field and what to do, before any work,
and every file the user had is byte-identical afterwards (issue #15)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from support.images import HEIGHT, WIDTH, save_image, stripes_mask, write_pairs

from hf_segformer import cli
from hf_segformer.errors import DataError, RecipeError


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (links as their target), by relative path → bytes."""
    return {str(p.relative_to(folder)): (b"->" + os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file() or p.is_symlink()}


def data_args(data_dir: Path, *extra: str):
    from hf_segformer.training.arguments import parse_recipe

    data, _, _ = parse_recipe(["--data_dir", str(data_dir), "--output_dir", str(data_dir.parent / "out"),
                               "--check_num_proc", "1", *extra])
    return data


def check(data_dir: Path, *extra: str):
    from hf_segformer.data.prepare import prepare_data, run_data_check

    args = data_args(data_dir, *extra)
    data, id2label = prepare_data(args, seed=0)
    return run_data_check(data, args, id2label)


def binary_mask() -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[:, WIDTH // 2:] = 255
    return mask


# --- the data doctor -------------------------------------------------------------------------------------------

def test_binary_0_255_masks_are_diagnosed_and_binary_masks_true_fixes_them(data_root):
    write_pairs(data_root, ["a", "b"], split="train", mask=binary_mask())
    write_pairs(data_root, ["c"], split="validation", mask=binary_mask())
    before = snapshot(data_root)
    with pytest.raises(DataError) as err:
        check(data_root, "--id2label", '{"0": "background", "1": "foreground"}')
    assert "class 1 'foreground' has no pixels" in str(err.value) and "binary_masks: true" in str(err.value)
    report = check(data_root, "--id2label", '{"0": "background", "1": "foreground"}', "--binary_masks", "true")
    half = HEIGHT * (WIDTH // 2)
    assert report.splits["train"].pixel_counts == [2 * half, 2 * half, 0]  # 255 is class 1, nothing ignored
    assert snapshot(data_root) == before


def test_binary_masks_reach_training_through_the_one_decoder():
    from hf_segformer.data.labels import LabelDecoder

    label = LabelDecoder(binary_masks=True)(binary_mask())
    assert set(np.unique(label)) == {0, 1} and (label == 1).sum() == HEIGHT * (WIDTH // 2)


def test_a_class_with_no_training_pixels_is_an_error_naming_it_unless_allowed(data_root):
    write_pairs(data_root, ["a"], split="train", mask=stripes_mask(values=(0, 1)))
    with pytest.raises(DataError) as err:
        check(data_root, "--id2label", '["sky", "road", "car"]')
    assert "class 2 'car' has no pixels in the 'train' split" in str(err.value)
    assert "allow_empty_classes: true" in str(err.value)
    report = check(data_root, "--id2label", '["sky", "road", "car"]', "--allow_empty_classes", "true")
    assert report.splits["train"].pixel_counts[2] == 0


def test_jpeg_like_masks_get_the_jpeg_diagnosis(data_root):
    noisy = stripes_mask(values=(0, 1)).astype(np.uint8)
    noisy[::3, ::2] += np.arange(2, 9, dtype=np.uint8).repeat(4)[: noisy[::3, ::2].shape[1]][None, :]
    write_pairs(data_root, ["a"], split="train", mask=noisy)
    with pytest.raises(DataError, match="JPEG-compressed masks"):
        check(data_root, "--num_labels", "2")


def test_values_0_to_n_suggest_reduce_labels(data_root):
    write_pairs(data_root, ["a"], split="train", mask=stripes_mask(values=(0, 1, 2, 3)))
    with pytest.raises(DataError, match="reduce_labels: true"):
        check(data_root, "--num_labels", "3")


def test_every_split_s_problems_are_reported_together(data_root):
    write_pairs(data_root, ["a"], split="train", mask=stripes_mask(values=(0, 1, 7)))
    write_pairs(data_root, ["b"], split="validation", mask=stripes_mask(values=(0, 1, 9)))
    with pytest.raises(DataError) as err:
        check(data_root, "--num_labels", "3")
    message = str(err.value)
    assert "'train' data failed" in message and "'validation' data failed" in message
    assert "values 7" in message and "values 9" in message


def test_class_zero_named_unlabelled_without_reduce_labels_gets_a_hint(data_root, caplog):
    write_pairs(data_root, ["a"], split="train", mask=stripes_mask(values=(0, 1)))
    with caplog.at_level("WARNING", logger="hf_segformer"):
        check(data_root, "--id2label", '["unlabeled", "road"]')
    assert "reduce_labels: true" in caplog.text


# --- safe output folders ----------------------------------------------------------------------------------------

def test_a_folder_with_a_users_files_is_refused_and_overwrite_moves_them_aside_intact(tmp_path):
    from hf_segformer.training.run_folder import claim_output_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "all_results.json").write_text('{"my_score": 0.9}')
    (out / "config.json").write_text("mine")
    (out / "notes.txt").write_text("do not lose me")
    before = snapshot(out)
    with pytest.raises(RecipeError) as err:
        claim_output_dir(out, overwrite=False, resume=None)
    assert "notes.txt" in str(err.value) and "--overwrite_output_dir" in str(err.value)
    assert snapshot(out) == before
    moved = claim_output_dir(out, overwrite=True, resume=None)
    assert moved.parent == out / "previous_runs" and snapshot(moved) == before
    assert [p.name for p in out.iterdir()] == ["previous_runs"]


def test_another_process_s_write_probe_does_not_make_a_fresh_folder_a_users(tmp_path):
    """Under DDP every process probes output_dir (check_run) while the main one claims it; a multi-node run into a
    fresh folder on a shared file system was refused when the main process listed another process's probe."""
    from hf_segformer.outputs import PROBE_PREFIX
    from hf_segformer.training.run_folder import claim_output_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / f"{PROBE_PREFIX}4242_0123abcd").write_bytes(b"probe")
    assert claim_output_dir(out, overwrite=False, resume=None) is None
    (out / "notes.txt").write_text("mine")  # a user's file next to it is still refused, and named
    with pytest.raises(RecipeError, match=r"did not write \(notes.txt\)"):
        claim_output_dir(out, overwrite=False, resume=None)


def test_a_finished_run_is_refused_and_only_our_own_moved_aside_runs_are_pruned(tmp_path):
    from hf_segformer.training.run_folder import claim_output_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("a user's")
    users = claim_output_dir(out, overwrite=True, resume=None)
    for i in range(5):
        (out / "model.safetensors").write_bytes(bytes([i]))
        (out / "training_args.bin").write_bytes(b"args")
        with pytest.raises(RecipeError, match="finished run \\(model.safetensors\\)"):
            claim_output_dir(out, overwrite=False, resume=None)
        claim_output_dir(out, overwrite=True, resume=None)
    kept = sorted(p for p in (out / "previous_runs").iterdir() if p != users)
    assert len(kept) == 3 and [(p / "model.safetensors").read_bytes() for p in kept] == [b"\x02", b"\x03", b"\x04"]
    assert (users / "notes.txt").read_text() == "a user's"  # never pruned


def test_a_run_with_checkpoints_or_resuming_is_left_to_resolve_checkpoint(tmp_path):
    from hf_segformer.training.run_folder import claim_output_dir

    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    assert claim_output_dir(out, overwrite=False, resume=None) is None
    assert claim_output_dir(out, overwrite=False, resume="last") is None
    assert (out / "checkpoint-2").is_dir()


@pytest.mark.slow
def test_max_steps_1_with_polynomial_warmup_trains_and_a_rerun_never_replaces_the_first_model(tmp_path, train_tiny):
    schedule = ("--max_steps", "1", "--lr_scheduler_type", "polynomial", "--warmup_steps", "0.05",
                "--eval_strategy", "no", "--save_strategy", "no")
    train_tiny(tmp_path, *schedule)  # ZeroDivisionError in transformers' schedule before the clamp
    run = tmp_path / "run"
    first = snapshot(run)
    assert "model.safetensors" in first
    with pytest.raises(RecipeError, match="finished run"):
        train_tiny(tmp_path, *schedule)
    assert snapshot(run) == first
    train_tiny(tmp_path, *schedule, "--overwrite_output_dir", "true")
    (moved,) = (run / "previous_runs").iterdir()
    assert {k: v for k, v in snapshot(moved).items() if k != ".moved_by_hf_segformer"} == first
    results = json.loads((run / "all_results.json").read_text())
    assert "train_loss" in results and "my_score" not in results


def test_training_into_a_users_folder_is_refused_before_any_work(tmp_path, train_tiny):
    run = tmp_path / "run"
    run.mkdir()
    (run / "all_results.json").write_text("not json at all")
    (run / "eval_results.json").write_text('{"my_score": 1}')
    before = snapshot(run)
    with pytest.raises(RecipeError, match="did not write"):
        train_tiny(tmp_path)
    assert snapshot(run) == before


def test_resume_from_a_missing_folder_is_refused_before_any_work(tmp_path, train_tiny):
    with pytest.raises(RecipeError, match="resume_from_checkpoint: .*nowhere is not a folder"):
        train_tiny(tmp_path, "--resume_from_checkpoint", str(tmp_path / "nowhere"))


def test_the_nan_message_suggests_resuming_only_when_a_checkpoint_exists(tmp_path):
    from hf_segformer.training.trainer import nonfinite_loss_message

    args = SimpleNamespace(fp16=False, output_dir=str(tmp_path))
    assert "resume_from_checkpoint" not in nonfinite_loss_message(float("nan"), 3, 0.1, args, 0.1)
    (tmp_path / "checkpoint-2").mkdir()
    assert "--resume_from_checkpoint last" in nonfinite_loss_message(float("nan"), 3, 0.1, args, 0.1)


# --- writers ----------------------------------------------------------------------------------------------------

def coco_file(path: Path, image_name: str) -> Path:
    path.write_text(json.dumps({
        "images": [{"id": 1, "file_name": image_name, "height": HEIGHT, "width": WIDTH}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 0,
                         "segmentation": [[1, 1, 10, 1, 10, 10, 1, 10]]}],
        "categories": [{"id": 7, "name": "cup"}]}))
    return path


def test_coco_to_masks_never_writes_into_an_existing_dataset_nor_links_over_a_users_image(tmp_path):
    images = tmp_path / "coco_images"
    save_image(images / "x.png", seed=1)
    annotations = coco_file(tmp_path / "good.json", "x.png")
    existing = write_pairs(tmp_path / "existing", ["x"], split="train")
    (existing / "id2label.json").write_text('{"0": "sky", "1": "road", "2": "car"}')
    before = snapshot(existing)
    argv = ["coco-to-masks", "--split", "train", str(annotations), str(images), str(existing)]
    assert cli.main(argv) == 2 and snapshot(existing) == before
    assert cli.main([*argv, "--overwrite"]) == 2  # images/train/x.png is the user's own, other file
    assert snapshot(existing) == before
    assert cli.main(["coco-to-masks", "--split", "train", str(annotations), str(images), str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / "images" / "train" / "x.png").is_symlink()


def test_an_unknown_coco_category_id_in_any_split_is_named_before_anything_is_written(tmp_path, capsys):
    from hf_segformer.data.annotations.importer import import_annotations

    images = tmp_path / "coco_images"
    save_image(images / "x.png", seed=1)
    good = coco_file(tmp_path / "train.json", "x.png")
    bad = coco_file(tmp_path / "val.json", "x.png")
    coco = json.loads(bad.read_text())
    coco["annotations"].append({"id": 12, "image_id": 1, "category_id": 99, "iscrowd": 0,
                                "segmentation": [[1, 1, 5, 1, 5, 5]]})
    bad.write_text(json.dumps(coco))
    out = tmp_path / "out"
    argv = ["coco-to-masks", "--split", "train", str(good), str(images), "--split", "validation", str(bad),
            str(images), "--out", str(out)]
    assert cli.main(argv) == 2
    assert "annotation 12 (image 1): category_id 99 is not in 'categories'" in capsys.readouterr().err
    assert not out.exists()  # the train split was not written either: the fixed file's re-run is not refused
    coco["annotations"].pop()
    bad.write_text(json.dumps(coco))
    assert cli.main(argv) == 0 and (out / "masks" / "validation" / "x.png").is_file()
    coco["annotations"].append({"id": 5, "image_id": 1, "category_id": 99, "segmentation": [[1, 1, 5, 1, 5, 5]]})
    bad.write_text(json.dumps(coco))
    with pytest.raises(DataError, match=r"annotation 5 \(image 1\): category_id 99 is not in 'categories'"):
        import_annotations("coco", [f"train={good}", f"validation={bad}"], tmp_path / "imported", images=images)
    assert not (tmp_path / "imported").exists()


def test_a_coco_file_whose_top_level_is_a_list_is_named(tmp_path, capsys):
    bad = tmp_path / "list.json"
    bad.write_text("[]")
    assert cli.main(["coco-to-masks", "--split", "train", str(bad), str(tmp_path), str(tmp_path / "out")]) == 2
    assert f"{bad}: a COCO instances file is a JSON object" in capsys.readouterr().err


def test_export_onnx_refuses_a_path_under_a_file_and_an_existing_output(tmp_path):
    from hf_segformer.inference.onnx_export import check_output_file

    (tmp_path / "file").write_text("mine")
    with pytest.raises(RecipeError, match="file is a file, not a folder"):
        check_output_file(tmp_path / "file" / "model.onnx", overwrite=False)
    with pytest.raises(RecipeError, match="exists; pass --overwrite"):
        check_output_file(tmp_path / "file", overwrite=False)
    check_output_file(tmp_path / "file", overwrite=True)
    assert (tmp_path / "file").read_text() == "mine"


def test_predictions_dir_equal_to_the_input_folder_is_named(tmp_path):
    from hf_segformer.inference.predict import find_jobs

    photos = tmp_path / "photos"
    save_image(photos / "a.png")
    before = snapshot(photos)
    with pytest.raises(DataError, match="this is --predictions_dir itself"):
        find_jobs([str(photos)], photos, overlays=False)
    assert snapshot(photos) == before


def test_push_dataset_dry_run_never_replaces_a_file(tmp_path):
    from hf_segformer.hub.publish import push_dataset

    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "README.md").write_text("my notes")
    with pytest.raises(RecipeError, match="already holds README.md"):
        push_dataset(data_args(tmp_path / "nodata"), "me/data", dry_run_dir=tmp_path / "card")
    assert (tmp_path / "card" / "README.md").read_text() == "my notes"


# --- models -----------------------------------------------------------------------------------------------------

def test_evaluate_refuses_a_model_whose_classes_are_not_the_data_s(tmp_path, saved_model, capsys):
    model = saved_model({0: "sky", 1: "road", 2: "car", 3: "tree"})
    data = write_pairs(tmp_path / "data", ["a"], split="validation")
    code = cli.main(["evaluate", "--model", str(model), "--data_dir", str(data), "--id2label",
                     '["sky", "road", "car"]', "--eval_output_dir", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 2 and "has 4 classes (sky, road, car, tree)" in err and "the recipe's id2label has 3" in err
    code = cli.main(["evaluate", "--model", str(model), "--data_dir", str(data), "--id2label",
                     '["sky", "road", "bus", "tree"]', "--eval_output_dir", str(tmp_path / "eval")])
    assert code == 2 and "2: model 'car' vs data 'bus'" in capsys.readouterr().err


def test_a_folder_that_is_not_a_model_or_is_cut_short_is_named(tmp_path, saved_model):
    from hf_segformer.commands.inference_options import InferenceArguments

    (tmp_path / "photos").mkdir()
    with pytest.raises(RecipeError, match="photos is not a saved model folder \\(no config.json\\)"):
        InferenceArguments(model=str(tmp_path / "photos")).load({}, device="cpu")
    model = saved_model({0: "a", 1: "b"})
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(RecipeError, match=f"Cannot load a model from {model}: .*save or copy it again"):
        InferenceArguments(model=str(model)).load({}, device="cpu")


# --- recipes and the command line -------------------------------------------------------------------------------

def test_cli_typo_gets_did_you_mean(capsys):
    assert cli.main(["check-data", "--data_dir", "x", "--learnin_rate", "1e-4"]) == 2
    assert "'--learnin_rate' (did you mean '--learning_rate'?)" in capsys.readouterr().err.splitlines()[-1]


def test_yaml_syntax_error_names_the_file_and_line(tmp_path):
    from hf_segformer.training.arguments import parse_recipe

    recipe = tmp_path / "my.yaml"
    recipe.write_text("output_dir: out\nlearning_rate: [1e-4\n")
    with pytest.raises(RecipeError, match=f"Recipe {recipe} is not valid YAML at line 3"):
        parse_recipe(["--config", str(recipe)])


def test_null_on_the_command_line_unsets_a_recipe_value(tmp_path):
    from hf_segformer.training.arguments import parse_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: out\nclass_weights: inverse_frequency\nmax_train_samples: 5\n")
    _, _, training = parse_recipe(["--config", str(recipe)])
    assert training.class_weights == "inverse_frequency"
    data, _, training = parse_recipe(["--config", str(recipe), "--class_weights", "null", "--max_train_samples=none"])
    assert training.class_weights is None and data.max_train_samples is None


@pytest.mark.parametrize("argv, expected", [
    (["--train_scale", "64"], "train_scale and ratio_range take two numbers each"),
    (["--id2label", '{"background": 0, "road": 1}'], "It looks reversed"),
    (["--id2label", "nowhere/id2label.json"], "id2label: nowhere/id2label.json is not a file"),
    (["--ignore_index", "-100"], "ignore_index=-100 is reserved for padding labels in a batch; use 255 or -1."),
    (["--streaming_split", "rows"], "streaming_split must be one of auto, shards, examples; got 'rows'."),
])
def test_bad_recipe_values_are_one_line_errors(argv, expected, capsys):
    assert cli.main(["check-data", "--data_dir", "x", *argv]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last


def test_train_scale_64_in_a_recipe_is_named(tmp_path):
    from hf_segformer.training.arguments import parse_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: out\ntrain_scale: 64\n")
    with pytest.raises(RecipeError, match=r"got train_scale: \[64\]"):
        parse_recipe(["--config", str(recipe)])


def test_a_truncated_checkpoint_is_named_before_any_work(tmp_path):
    from hf_segformer.training.checkpoints import resolve_checkpoint

    checkpoint = tmp_path / "run" / "checkpoint-4"
    build_tiny = __import__("conftest").build_tiny_segformer
    build_tiny({0: "a", 1: "b"}).save_pretrained(checkpoint)
    (checkpoint / "trainer_state.json").write_text("{}")  # complete, but its weights truncated by a copy
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    args = SimpleNamespace(output_dir=str(tmp_path / "run"), resume_from_checkpoint="last", overwrite_output_dir=False)
    with pytest.raises(RecipeError, match=f"{weights} is damaged"):
        resolve_checkpoint(args)


def test_training_from_a_folder_that_is_not_a_model_is_refused_before_any_work(tmp_path, train_tiny):
    (tmp_path / "photos").mkdir()
    with pytest.raises(RecipeError, match="model_name_or_path: .*photos is not a saved model folder"):
        train_tiny(tmp_path, "--model_name_or_path", str(tmp_path / "photos"))


def test_a_damaged_or_missing_model_folder_is_named_before_the_data(tmp_path, train_tiny, saved_model, capsys):
    model = saved_model({0: "a", 1: "b"})
    no_data = ("--data_dir", str(tmp_path / "no-data"))  # the model is refused before the data is looked at
    with pytest.raises(RecipeError, match=r"model_name_or_path: .*missing does not exist"):
        train_tiny(tmp_path, "--model_name_or_path", str(tmp_path / "missing"), *no_data)
    weights = model / "model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(os.urandom(len(intact)))
    with pytest.raises(RecipeError, match=r"model_name_or_path: .*model.safetensors is damaged"):
        train_tiny(tmp_path, "--model_name_or_path", str(model), *no_data)
    weights.unlink()
    with pytest.raises(RecipeError, match=r"has a config.json but no weights \(model.safetensors\)"):
        train_tiny(tmp_path, "--model_name_or_path", str(model), *no_data)
    assert cli.main(["export-onnx", "--model", str(model), "--output_path", str(tmp_path / "m.onnx")]) == 2
    assert "--model: " in capsys.readouterr().err
    weights.write_bytes(intact)
    (model / "config.json").write_text("{not json")
    with pytest.raises(RecipeError, match=r"config.json is not valid JSON"):
        train_tiny(tmp_path, "--model_name_or_path", str(model), *no_data)


def test_a_model_with_other_classes_gets_the_ignore_mismatched_sizes_hint(tmp_path, train_tiny, saved_model):
    model = saved_model({0: "a", 1: "b", 2: "c"})  # the tiny set has 4 classes
    with pytest.raises(RecipeError, match=r"3 classes, the data 4: set ignore_mismatched_sizes: true"):
        train_tiny(tmp_path, "--model_name_or_path", str(model), "--max_steps", "1")


def test_a_hub_id_offline_or_without_network_is_one_line_before_the_data(tmp_path, train_tiny, monkeypatch):
    from huggingface_hub import is_offline_mode

    from hf_segformer.modeling import build

    assert is_offline_mode()  # tests run with HF_HUB_OFFLINE=1 (conftest)
    no_data = ("--data_dir", str(tmp_path / "no-data"))  # the model is refused before the data is looked at
    with pytest.raises(RecipeError) as err:
        train_tiny(tmp_path, "--model_name_or_path", "nvidia/mit-b0", *no_data)
    assert str(err.value) == ("model_name_or_path: nvidia/mit-b0 is not a local folder and the Hugging Face Hub "
                              "cannot be reached (HF_HUB_OFFLINE is set): download it first (hf download "
                              "nvidia/mit-b0) or give a local folder.")

    def no_network(*args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(build, "is_offline_mode", lambda: False)
    monkeypatch.setattr(build, "get_hf_file_metadata", no_network)
    with pytest.raises(RecipeError, match=r"nvidia/mit-b0 is not a local folder and the Hugging Face Hub cannot be "
                                          r"reached \(no network: ConnectionError\)"):
        train_tiny(tmp_path, "--model_name_or_path", "nvidia/mit-b0", *no_data)


def test_a_hub_id_is_checked_once_per_run(tmp_path, train_tiny, monkeypatch):
    from hf_segformer.modeling import build

    checked = []
    monkeypatch.setattr(build, "check_hub_model", lambda model_id, *args: checked.append(model_id))  # "reachable"
    with pytest.raises(RecipeError, match=r"nvidia/mit-b0 is not a local folder and could not be fetched"):
        train_tiny(tmp_path, "--model_name_or_path", "nvidia/mit-b0")  # offline: the load itself fails
    assert checked == ["nvidia/mit-b0"]
