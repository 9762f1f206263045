"""Recipe parsing: YAML sets values, the command line wins, typos in the YAML are errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hf_segformer.config.data import DataArguments
from hf_segformer.config.model import ModelArguments
from hf_segformer.errors import RecipeError
from hf_segformer.training.arguments import SegformerTrainingArguments, parse_recipe


@pytest.fixture
def recipe(tmp_path):
    def write(text: str, name: str = "recipe.yaml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path

    return write


RECIPE = """
    data_dir: data/aerial
    crop_size: 256
    train_scale: [1024, 256]
    reduce_labels: true
    photometric_distortion: false
    model_variant: b2
    output_dir: {out}
    learning_rate: 6e-5
    num_train_epochs: 3
    report_to: none
"""


def test_yaml_sets_values_of_every_dataclass(recipe, tmp_path):
    path = recipe(RECIPE.format(out=tmp_path / "run"))
    data_args, model_args, training_args = parse_recipe(["--config", str(path)])
    assert isinstance(data_args, DataArguments) and isinstance(model_args, ModelArguments)
    assert isinstance(training_args, SegformerTrainingArguments)
    assert data_args.data_dir == "data/aerial" and data_args.crop_size == 256
    assert data_args.train_scale == [1024, 256]
    assert data_args.reduce_labels is True and data_args.photometric_distortion is False
    assert model_args.model_variant == "b2"
    assert training_args.output_dir == str(tmp_path / "run")
    assert training_args.learning_rate == pytest.approx(6e-5)  # YAML reads 6e-5 as a string; still a float
    assert training_args.num_train_epochs == 3
    # untouched fields keep the dataclass defaults
    assert data_args.ignore_index == 255 and training_args.remove_unused_columns is False


def test_command_line_overrides_win(recipe, tmp_path):
    path = recipe(RECIPE.format(out=tmp_path / "run"))
    data_args, model_args, training_args = parse_recipe([
        "--config", str(path), "--crop_size", "128", "--model_variant", "b0", "--learning_rate", "1e-3",
        "--photometric_distortion", "true", "--train_scale", "512", "128", "--output_dir", str(tmp_path / "other"),
    ])
    assert data_args.crop_size == 128 and model_args.model_variant == "b0"
    assert training_args.learning_rate == pytest.approx(1e-3)
    assert data_args.photometric_distortion is True
    assert data_args.train_scale == [512, 128]
    assert training_args.output_dir == str(tmp_path / "other")
    assert data_args.data_dir == "data/aerial"  # not overridden: still from the recipe


def test_override_order_does_not_matter(recipe, tmp_path):
    path = recipe(RECIPE.format(out=tmp_path / "run"))
    data_args, _, _ = parse_recipe(["--crop_size", "64", "--config", str(path)])
    assert data_args.crop_size == 64 and data_args.data_dir == "data/aerial"


def test_config_equals_form(recipe, tmp_path):
    path = recipe(RECIPE.format(out=tmp_path / "run"))
    data_args, model_args, _ = parse_recipe([f"--config={path}", "--crop_size", "96"])
    assert data_args.crop_size == 96 and model_args.model_variant == "b2"


def test_default_config_is_used_without_config_flag(recipe, tmp_path):
    path = recipe(RECIPE.format(out=tmp_path / "run"))
    data_args, _, _ = parse_recipe([], default_config=path)
    assert data_args.crop_size == 256


def test_unknown_key_is_an_error_with_suggestion(recipe, tmp_path):
    path = recipe(f"crop_szie: 256\noutput_dir: {tmp_path}\nzzz_qqq: 1\n")
    with pytest.raises(RecipeError) as err:
        parse_recipe(["--config", str(path)])
    message = str(err.value)
    assert "'crop_szie' (did you mean 'crop_size'?)" in message
    assert "'zzz_qqq'" in message and "'zzz_qqq' (did you mean" not in message
    assert str(path) in message


def test_missing_recipe_and_missing_path_are_errors(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        parse_recipe(["--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(RecipeError, match="needs a path"):
        parse_recipe(["--config"])


def test_recipe_must_be_a_mapping(recipe):
    path = recipe("- crop_size\n- 256\n")
    with pytest.raises(RecipeError, match="mapping"):
        parse_recipe(["--config", str(path)])


def test_unknown_command_line_flag_is_an_error(recipe, tmp_path):
    path = recipe(RECIPE.format(out=tmp_path / "run"))
    with pytest.raises(ValueError, match="crop_szie"):
        parse_recipe(["--config", str(path), "--crop_szie", "3"])


def test_id2label_mapping_becomes_int_to_str(recipe, tmp_path):
    path = recipe(f"""
        output_dir: {tmp_path}
        id2label:
          0: background
          1: building
          "2": road
          3: 42
        colour_map:
          "#3C1098": 0
          "110,193,228": 1
    """)
    data_args, _, _ = parse_recipe(["--config", str(path)])
    assert data_args.id2label_map == {0: "background", 1: "building", 2: "road", 3: "42"}
    assert all(type(k) is int and type(v) is str for k, v in data_args.id2label_map.items())
    assert data_args.colour_map_rgb == {(0x3C, 0x10, 0x98): 0, (110, 193, 228): 1}


def test_id2label_with_a_gap_is_rejected(recipe, tmp_path):
    path = recipe(f"output_dir: {tmp_path}\nid2label: {{0: a, 2: c}}\n")
    with pytest.raises(ValueError, match="without gaps"):
        parse_recipe(["--config", str(path)])


def test_num_labels_must_match_id2label(recipe, tmp_path):
    path = recipe(f"output_dir: {tmp_path}\nid2label: {{0: a, 1: b}}\nnum_labels: 3\n")
    with pytest.raises(ValueError, match="num_labels=3"):
        parse_recipe(["--config", str(path)])


RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = sorted(RECIPE_DIR.rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(RECIPE_DIR)))
def test_every_shipped_recipe_parses(recipe):
    data_args, model_args, training_args = parse_recipe(["--config", str(recipe)])
    assert training_args.output_dir and (data_args.data_dir or data_args.dataset_name or data_args.image_dir)


@pytest.mark.parametrize("name", ["ade20k/segformer-b0.yaml", "cityscapes/segformer-b0.yaml"])
def test_published_recipes_use_the_published_optimiser_and_state_what_to_expect(name):
    recipe = RECIPE_DIR / name
    text = recipe.read_text()
    assert "Expected:" in text and "mIoU" in text and "Hardware assumed:" in text
    _, model_args, args = parse_recipe(["--config", str(recipe)])
    assert model_args.model_name_or_path == "nvidia/mit-b0"
    assert (args.learning_rate, args.head_lr_multiplier, args.warmup_steps, args.max_steps) == (6e-5, 10.0, 1500, 160_000)
    assert args.lr_scheduler_type == "polynomial" and args.lr_scheduler_kwargs == {"power": 1.0, "lr_end": 0.0}
    assert args.sync_batchnorm and args.weight_decay == 0.01


def test_the_command_line_takes_mappings_as_a_recipe_writes_them(recipe, tmp_path):
    path = recipe(f"output_dir: {tmp_path}\n")
    data_args, _, training_args = parse_recipe(["--config", str(path), "--id2label", "{0: membrane, 1: cell}",
                                                "--loss", "{ce: 1.0, dice: 0.5}"])
    assert data_args.id2label_map == {0: "membrane", 1: "cell"}
    assert training_args.loss_terms == {"ce": 1.0, "dice": 0.5}
    data_args, _, _ = parse_recipe(["--config", str(path), "--id2label", '{"0": "membrane", "1": "cell"}'])
    assert data_args.id2label_map == {0: "membrane", 1: "cell"}
    with pytest.raises(ValueError, match="id2label: the id2label value cannot be read"):
        parse_recipe(["--config", str(path), "--id2label", "{0: a, 1:"])

