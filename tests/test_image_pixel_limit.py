"""An image past PIL's decompression-bomb limit: every command that reads images names the file, its size and
max_image_pixels (one error, exit 2, before training starts), and raising the limit lets it through."""

from __future__ import annotations

import pytest
from PIL import Image
from support.images import write_pairs

from hf_segformer import cli
from hf_segformer.errors import DataError

LIMIT = 150  # PIL refuses over twice its limit: 300 pixels here, in miniature of 179 million
BIG = (48, 32)  # 1536 pixels: refused
SMALL = (8, 8)  # 64 pixels: under the limit, no warning either


@pytest.fixture
def low_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", LIMIT)


def one_big_pair(root, split: str):
    write_pairs(root, ["small"], split=split, size=SMALL)
    write_pairs(root, ["big"], split=split, size=BIG)
    return root / "images" / split / "big.png"


@pytest.mark.slow  # ~5 s: two check-data and two evaluate runs
def test_check_data_and_evaluate_name_the_image_and_the_option_that_allows_it(tmp_path, low_limit, saved_model,
                                                                              capsys):
    data = tmp_path / "data"
    big = one_big_pair(data, "validation")
    one_big_pair(data, "train")
    check = ["check-data", "--data_dir", str(data), "--id2label", '["a", "b", "c"]', "--check_num_proc", "1"]
    assert cli.main(check) == 2
    err = capsys.readouterr().err
    assert f"{big}: Image size (1536 pixels) exceeds limit of 300 pixels" in err
    assert "--max_image_pixels 1536" in err and "small.png" not in err
    assert cli.main([*check, "--max_image_pixels", "1536"]) == 0

    model = saved_model({0: "a", 1: "b", 2: "c"})
    evaluate = ["evaluate", "--model", str(model), "--data_dir", str(data), "--id2label", '["a", "b", "c"]',
                "--eval_output_dir", str(tmp_path / "eval"), "--precision", "fp32"]
    assert cli.main(evaluate) == 2
    err = capsys.readouterr().err
    assert f"{big}: Image size (1536 pixels)" in err and "--max_image_pixels 1536" in err
    assert not (tmp_path / "eval").exists()
    assert cli.main([*evaluate, "--max_image_pixels", "1536"]) == 0
    assert (tmp_path / "eval" / "eval_results.json").is_file()
    assert Image.MAX_IMAGE_PIXELS == LIMIT  # raised for the command only
    assert cli.main([*check, "--max_image_pixels", "-1"]) == 2


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the sample grid's text, at this limit
def test_training_s_preflight_check_names_the_image_and_the_recipe_field_lets_it_through(tmp_path, low_limit,
                                                                                         train_tiny):
    with pytest.raises(DataError) as err:  # 32×32 synthetic images: 1024 pixels
        train_tiny(tmp_path, "--check_data", "true", "--check_num_proc", "1", "--max_steps", "1")
    assert "failed the pre-flight check" in str(err.value) and "Image size (1024 pixels)" in str(err.value)
    assert "--max_image_pixels 1024" in str(err.value) and "max_image_pixels: 1024 in a recipe" in str(err.value)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    results = train_tiny(tmp_path, "--check_data", "true", "--check_num_proc", "1", "--max_steps", "1",
                         "--max_image_pixels", "1024")
    assert (tmp_path / "run" / "model.safetensors").is_file() and "eval_mean_iou" in results
    assert Image.MAX_IMAGE_PIXELS == LIMIT
