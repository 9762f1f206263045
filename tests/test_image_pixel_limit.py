"""An image past PIL's decompression-bomb limit: every command that reads images names the file, its size and
max_image_pixels (one error, exit 2, before training starts), and raising the limit lets it through. With the data
check off, such an image, or a file that cannot be decoded, is met by the loaders: still one line naming it."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from support.images import write_pairs

from hf_segformer import cli
from hf_segformer.data.images import ImageTooLarge, decoding
from hf_segformer.errors import DataError, as_raised

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


def truncate(path):
    """Cut a file in half, as an interrupted copy or download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line]


@pytest.mark.parametrize("workers, broken", [("1", "oversized image"), ("0", "truncated mask")])
def test_with_the_check_off_a_bad_training_file_stops_the_run_with_one_line_naming_it(tmp_path, capsys, workers,
                                                                                     broken):
    """check_data: false: the file is met by the loader (in a worker process, or in this one), not by the check;
    the user still gets one line naming it and the fix, exit 2, and no worker traceback."""
    data = tmp_path / "data"
    write_pairs(data, ["a", "b", "c"], split="train", size=(32, 32))
    write_pairs(data, ["a"], split="validation", size=(32, 32))
    if broken == "oversized image":
        write_pairs(data, ["b"], split="train", size=(64, 64))  # 4096 pixels, over twice the limit of 1024
        bad, said = data / "images" / "train" / "b.png", "--max_image_pixels 4096"
    else:
        bad, said = data / "masks" / "train" / "b.png", "cannot be decoded as an image"
        truncate(bad)
    argv = ["--data_dir", str(data), "--id2label", '["a", "b", "c"]', "--output_dir", str(tmp_path / "run"),
            "--model_variant", "b0", "--crop_size", "32", "--eval_size", "32", "--train_scale", "64", "32",
            "--per_device_train_batch_size", "3", "--max_steps", "1", "--report_to", "none", "--precision", "fp32",
            "--check_data", "false", "--dataloader_num_workers", workers, "--max_image_pixels", "1024"]
    assert cli.run_command("train", argv) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and f"{bad}: " in error_lines(err)[0] and said in err
    assert "Traceback" not in err and "DataLoader worker" not in err
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_evaluate_names_a_mask_that_cannot_be_decoded(tmp_path, saved_model, capsys):
    """The same message in evaluation (the command, and the evaluation at the end of training): the broken file
    alone is named, not its readable image."""
    data = tmp_path / "data"
    write_pairs(data, ["a", "b"], split="validation", size=(32, 32))
    bad = data / "masks" / "validation" / "b.png"
    bad.write_bytes(b"not a PNG")
    evaluate = ["evaluate", "--model", str(saved_model({0: "a", 1: "b", 2: "c"})), "--data_dir", str(data),
                "--eval_output_dir", str(tmp_path / "eval"), "--precision", "fp32"]
    assert cli.main(evaluate) == 2
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: cannot be decoded as an image")
    assert "b.png and" not in lines[0] and "hf-segformer check-data" in lines[0]
    assert not (tmp_path / "eval").exists()


class _Failing(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int):
        raise ImageTooLarge("x.png: too large.\nSecond line.")


def test_an_error_from_a_loader_worker_is_reported_with_its_own_message():
    """torch re-raises a worker's error with the worker's traceback as its message; the user is shown the
    message the worker raised, and other errors are shown as they are."""
    with pytest.raises(ImageTooLarge) as caught:
        next(iter(torch.utils.data.DataLoader(_Failing(), num_workers=1)))
    assert "Traceback" in str(caught.value)
    assert as_raised(caught.value) == "x.png: too large.\nSecond line."
    plain = DataError("Caught nothing: a user's own message")
    assert as_raised(plain) == str(plain)


def test_a_pair_read_where_neither_file_is_broken_raises_the_error_as_it_was(tmp_path):
    write_pairs(tmp_path, ["a"], size=(8, 8))
    with pytest.raises(OSError, match="No space left"), decoding(tmp_path / "images" / "a.png",
                                                               tmp_path / "masks" / "a.png"):
        raise OSError("No space left on device")
