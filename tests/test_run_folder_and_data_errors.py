"""A user's journey through check-data, training and evaluation, with the mistakes users make on the way: the
output folder's files known to the run, inputs never moved aside, data hints that do not mislead, unreadable or
missing files named, recipe values read as written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.images import HEIGHT, WIDTH, save_image, stripes_mask, write_pairs

from hf_segformer import cli
from hf_segformer.errors import DataError, RecipeError


def parse(*argv: str):
    from hf_segformer.training.arguments import parse_recipe

    return parse_recipe(list(argv))


def check(data_dir: Path, *extra: str):
    from hf_segformer.data.prepare import prepare_data, run_data_check

    data_args, _, _ = parse("--data_dir", str(data_dir), "--check_num_proc", "1", *extra)
    data, id2label = prepare_data(data_args, seed=0)
    return run_data_check(data, data_args, id2label)


def last_error(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


# --- the output folder --------------------------------------------------------------------------------------------

def test_check_data_then_train_into_the_same_output_dir_as_the_readme_does(data_root, tmp_path):
    from hf_segformer.training.run_folder import claim_output_dir, run_files

    write_pairs(data_root, ["a", "b"], split="train", mask=stripes_mask(values=(0, 1)))
    out = tmp_path / "run"
    assert cli.main(["check-data", "--data_dir", str(data_root), "--num_labels", "2", "--output_dir", str(out),
                     "--check_num_proc", "1"]) == 0
    written = {p.name for p in out.iterdir()}
    assert {"class_histogram.json", "class_histogram.md", "class_presence.json"} <= written
    assert written <= run_files()  # every file check-data writes is one a run knows as its own
    assert claim_output_dir(out, overwrite=False, resume=None) is None  # the next step, train, is not refused


@pytest.mark.slow
def test_check_data_then_a_real_run_writes_only_files_the_run_knows(tmp_path, train_tiny):
    from hf_segformer.data.synthetic import write_synthetic_dataset
    from hf_segformer.training.run_folder import RUN_PREFIXES, claim_output_dir, run_files

    data_dir = write_synthetic_dataset(tmp_path / "data", num_train=8, num_validation=4, size=32)
    run = tmp_path / "run"
    assert cli.main(["check-data", "--data_dir", str(data_dir), "--output_dir", str(run), "--check_num_proc", "1"]) == 0
    train_tiny(tmp_path, "--check_data", "true", "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2",
               "--save_strategy", "steps", "--save_steps", "2", "--class_weights", "inverse_frequency")
    unknown = [p.name for p in run.iterdir() if p.name not in run_files() and not p.name.startswith(RUN_PREFIXES)]
    assert unknown == []
    with pytest.raises(RecipeError, match="already holds checkpoints of an earlier run .*--resume_from_checkpoint "
                                          "last"):
        train_tiny(tmp_path)
    assert claim_output_dir(run, overwrite=False, resume=None) is None  # left to resolve_checkpoint, as above


def test_a_finished_run_is_named_as_such_and_one_with_checkpoints_is_offered_resume(tmp_path):
    from hf_segformer.training.checkpoints import resolve_checkpoint
    from hf_segformer.training.run_folder import OWN_MOVED_MARKER, claim_output_dir

    out = tmp_path / "run"
    out.mkdir()
    for name in ("class_histogram.json", "class_histogram.md", "class_presence.json", "model.safetensors",
                 "all_results.json", "eval_per_class.md", "training_args.bin"):
        (out / name).write_text("x")
    with pytest.raises(RecipeError, match=r"holds a finished run \(model.safetensors"):
        claim_output_dir(out, overwrite=False, resume=None)
    moved = claim_output_dir(out, overwrite=True, resume=None)
    assert (moved / OWN_MOVED_MARKER).is_file()  # our own: pruned with the others, newest 3 kept

    (out / "class_presence.json").write_text("{}")
    (out / "checkpoint-4").mkdir()
    (out / "checkpoint-4" / "trainer_state.json").write_text("{}")
    assert claim_output_dir(out, overwrite=False, resume=None) is None
    from types import SimpleNamespace

    args = SimpleNamespace(output_dir=str(out), resume_from_checkpoint=None, overwrite_output_dir=False)
    with pytest.raises(RecipeError, match="--resume_from_checkpoint last"):
        resolve_checkpoint(args)


def test_an_earlier_run_with_a_users_notes_is_named_with_the_notes(tmp_path):
    from hf_segformer.training.run_folder import OWN_MOVED_MARKER, claim_output_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_text("x")
    (out / ".hf_segformer_run").write_text("")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RecipeError, match=r"finished run \(model.safetensors\) and files it did not write "
                                          r"\(notes.txt\)"):
        claim_output_dir(out, overwrite=False, resume=None)
    moved = claim_output_dir(out, overwrite=True, resume=None)
    assert not (moved / OWN_MOVED_MARKER).exists()  # it holds a user's file: never pruned


@pytest.mark.parametrize("output_dir_of", [
    lambda tmp: tmp,  # output_dir: . in the project folder
    lambda tmp: tmp / "data",  # output_dir = data_dir
])
def test_overwrite_never_moves_the_run_s_own_data_or_recipe(tmp_path, train_tiny, output_dir_of):
    (tmp_path / "notes.md").write_text("my notes")
    output_dir = output_dir_of(tmp_path)
    with pytest.raises(RecipeError, match=r"holds this run's own input\(s\): data_dir .*data.*set output_dir to a "
                                          "new folder"):
        train_tiny(tmp_path, "--output_dir", str(output_dir), "--overwrite_output_dir", "true")
    assert (tmp_path / "notes.md").read_text() == "my notes"
    assert not (output_dir / "previous_runs").exists() and (tmp_path / "data" / "images").is_dir()


def test_the_recipe_file_counts_as_an_input(tmp_path):
    from hf_segformer.training.checkpoints import run_inputs
    from hf_segformer.training.run_folder import claim_output_dir

    recipe = tmp_path / "project" / "recipe.yaml"
    recipe.parent.mkdir()
    recipe.write_text(f"data_dir: {tmp_path / 'elsewhere'}\noutput_dir: {recipe.parent}\n")
    data_args, model_args, training_args = parse("--config", str(recipe))
    inputs = run_inputs(data_args, model_args, training_args)
    assert inputs["recipe"] == str(recipe)
    with pytest.raises(RecipeError, match=f"recipe {recipe}"):
        claim_output_dir(recipe.parent, overwrite=True, resume=None, inputs=inputs)
    assert [p.name for p in recipe.parent.iterdir()] == ["recipe.yaml"]


# --- the data doctor's hints --------------------------------------------------------------------------------------

def test_jpeg_masks_with_two_classes_get_the_jpeg_diagnosis_not_reduce_labels(data_root):
    classes = np.random.default_rng(0).integers(0, 2, (HEIGHT, WIDTH)).astype(np.uint8)
    write_pairs(data_root, ["a"], split="train", mask=classes)
    mask = data_root / "masks" / "train" / "a.png"
    Image.fromarray(classes).save(mask, format="JPEG", quality=20)  # a JPEG under the .png name
    noisy = np.asarray(Image.open(mask))
    assert set(np.unique(noisy)) != {0, 1}  # JPEG changed the values (else the test proves nothing)
    with pytest.raises(DataError) as err:
        check(data_root, "--num_labels", "2")
    assert "is a JPEG file" in str(err.value) and "reduce_labels" not in str(err.value)


def test_jpeg_like_noise_of_two_values_is_not_called_ade20k(data_root):
    noisy = stripes_mask(values=(0, 1)).astype(np.uint8)
    noisy[0, 0], noisy[1, 1] = 2, 3  # values next to the class ids, as JPEG leaves at edges
    write_pairs(data_root, ["a"], split="train", mask=noisy)
    with pytest.raises(DataError) as err:
        check(data_root, "--num_labels", "2")
    assert "JPEG-compressed" in str(err.value) and "reduce_labels" not in str(err.value)


def test_values_0_to_n_name_a_missing_class_before_reduce_labels(data_root):
    write_pairs(data_root, ["a"], split="train", mask=stripes_mask(values=(0, 1, 2)))
    with pytest.raises(DataError) as err:
        check(data_root, "--id2label", '["background", "road"]')
    message = str(err.value)
    assert "id2label is one class short, name class 2 too" in message
    assert message.index("one class short") < message.index("reduce_labels: true")
    assert "Only if 0 means 'not annotated'" in message


def test_a_class_at_the_ignore_index_is_named_as_a_collision(data_root):
    write_pairs(data_root, ["a"], split="train", mask=stripes_mask(values=(0, 1)))
    with pytest.raises(DataError, match=r"class 255 'c255' is ignore_index=255: its pixels would be ignored"):
        check(data_root, "--id2label", json.dumps([f"c{i}" for i in range(256)]))


def test_duplicate_class_names_are_refused(data_root, capsys):
    write_pairs(data_root, ["a"], split="train", mask=stripes_mask(values=(0, 1, 2)))
    (data_root / "id2label.json").write_text(json.dumps({"0": "background", "1": "car", "2": "car"}))
    assert cli.main(["check-data", "--data_dir", str(data_root)]) == 2
    assert "'car' is class 1, 2" in last_error(capsys)


def test_a_recipe_id2label_that_contradicts_the_data_s_is_warned_about(data_root, caplog):
    write_pairs(data_root, ["a"], split="train", mask=stripes_mask(values=(0, 1)))
    (data_root / "id2label.json").write_text(json.dumps({"0": "background", "1": "road"}))
    with caplog.at_level("WARNING", logger="hf_segformer"):
        report = check(data_root, "--id2label", '["sky", "road"]')
    assert "differs from the id2label.json next to the data" in caplog.text
    assert report.id2label == {0: "sky", 1: "road"}  # the recipe's names are used, as it says


# --- reading and pairing ----------------------------------------------------------------------------------------

def test_a_cmyk_jpeg_mask_under_a_png_name_is_named(data_root):
    write_pairs(data_root, ["a"], split="train", mask=stripes_mask(values=(0, 1)))
    mask = data_root / "masks" / "train" / "a.png"
    Image.open(mask).convert("CMYK").save(mask, format="JPEG")
    with pytest.raises(DataError, match=r"a.png: this mask is a CMYK JPEG image"):
        check(data_root, "--num_labels", "2")


def test_broken_links_are_named_and_not_called_unpaired(data_root):
    from hf_segformer.data.loading import pair_files

    write_pairs(data_root, ["a", "b"], mask=stripes_mask(values=(0, 1)))
    images, masks = data_root / "images", data_root / "masks"
    (images / "c.png").symlink_to(data_root / "gone-c.png")  # a dangling image+mask pair
    (masks / "c.png").symlink_to(data_root / "gone-c-mask.png")
    (images / "d.png").symlink_to(data_root / "gone-d.png")  # a dangling image next to a real mask
    save_image(masks / "d.png", np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8))
    with pytest.raises(DataError) as err:
        pair_files(images, masks)
    message = str(err.value)
    for path in (images / "c.png", masks / "c.png", images / "d.png"):
        assert f"{path}: broken link" in message
    assert "without an image" not in message and "(3 problems)" in message


def test_masks_saved_as_jpg_are_named_as_jpeg(data_root):
    write_pairs(data_root, ["a"], mask=stripes_mask(values=(0, 1)), mask_ext=".jpg")
    with pytest.raises(DataError, match=r"its mask .*a.jpg is a JPEG file.*save the masks losslessly as PNG"):
        check(data_root, "--num_labels", "2")


def test_pairing_problems_of_every_split_come_in_one_message(data_root):
    for split in ("train", "validation"):
        write_pairs(data_root, ["a"], split=split, mask=stripes_mask(values=(0, 1)))
        save_image(data_root / "images" / split / "stray.png")
    with pytest.raises(DataError) as err:
        check(data_root, "--num_labels", "2")
    assert "images/train/stray.png: no mask" in str(err.value)
    assert "images/validation/stray.png: no mask" in str(err.value)


# --- recipe values ------------------------------------------------------------------------------------------------

def test_unquoted_no_in_yaml_is_read_as_no(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: out\neval_strategy: no\nsave_strategy: no\n")
    _, _, training_args = parse("--config", str(recipe))
    assert training_args.eval_strategy == "no" and training_args.save_strategy == "no"
    recipe.write_text("output_dir: out\nhub_strategy: yes\n")
    with pytest.raises(RecipeError, match=r"hub_strategy is True: YAML reads an unquoted yes/no"):
        parse("--config", str(recipe))


@pytest.mark.parametrize("colour_map", ['{"#GG0000": 0}', '{"#FF00": 0}', '{"1,2": 0}', '{"#FF0000": "road"}'])
def test_a_bad_colour_is_one_error_naming_colour_map(colour_map, capsys):
    assert cli.main(["check-data", "--data_dir", "x", "--colour_map", colour_map]) == 2
    assert last_error(capsys).startswith("error: colour_map: ")


def test_an_out_of_range_value_without_the_check_names_the_file():
    from hf_segformer.data.labels import LabelDecoder

    decoder = LabelDecoder(num_labels=2)
    assert decoder(np.array([[0, 1], [255, 1]], dtype=np.uint8), "ok.png").max() == 255  # the ignore index
    with pytest.raises(DataError, match=r"bad.png: values 7 are outside the 2 classes"):
        decoder(np.array([[0, 7], [1, 1]], dtype=np.uint8), "bad.png")


@pytest.mark.slow
def test_check_data_false_with_an_out_of_range_value_names_the_file(tmp_path, train_tiny):
    from hf_segformer.data.synthetic import write_synthetic_dataset

    data_dir = write_synthetic_dataset(tmp_path / "data", num_train=8, num_validation=4, size=32)
    bad = sorted((data_dir / "masks" / "validation").iterdir())[0]
    values = np.asarray(Image.open(bad)).copy()
    values[0, 0] = 9
    Image.fromarray(values).save(bad)
    with pytest.raises(DataError, match=f"{bad.name}: values 9 are outside"):
        train_tiny(tmp_path, "--max_steps", "1", "--eval_strategy", "no", "--save_strategy", "no")


def test_check_data_without_output_dir_writes_nothing(data_root, tmp_path, monkeypatch, capsys):
    write_pairs(data_root, ["a"], split="train", mask=stripes_mask(values=(0, 1)))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli.main(["check-data", "--data_dir", str(data_root), "--num_labels", "2", "--check_num_proc", "1"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert "printed only" in capsys.readouterr().out


def test_evaluate_on_a_missing_split_leaves_no_folder(tmp_path, saved_model, capsys):
    model = saved_model({0: "a", 1: "b"})
    data = tmp_path / "data"
    write_pairs(data, ["a"], split="train", mask=stripes_mask(values=(0, 1)))
    before = sorted(p.name for p in model.iterdir())
    assert cli.main(["evaluate", "--model", str(model), "--data_dir", str(data), "--eval_split", "test"]) == 2
    assert "No 'test' split" in last_error(capsys)
    assert sorted(p.name for p in model.iterdir()) == before
