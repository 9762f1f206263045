"""`hf-segformer predict`: masks a user can open (palette PNGs in the dataset's colours, same stems, the same
class ids as the Python API), overlays, resumable runs, broken images skipped with exit status 1, and every
input or output problem reported before any work."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from support.images import PALETTE_COLOURS

from hf_segformer.cli import main
from hf_segformer.config.data import DataArguments
from hf_segformer.data.palettes import dataset_palette, default_palette, mask_image
from hf_segformer.inference.segmenter import Segmenter

ID2LABEL = {0: "background", 1: "road", 2: "car"}
COLOURS = {"#FF0000": 0, "#00FF00": 1, "#0000FF": 2, "#FFFFFF": 255}


def write_photos(folder, write_image) -> dict[str, Image.Image]:
    """Images of several sizes and modes (one in a sub-folder); returns relative stem → the image as written."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    write_image(folder / "a.png", rgb)
    grey = Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), "L")
    (folder / "sub").mkdir(parents=True)
    grey.save(folder / "sub/b.jpg")
    Image.fromarray(np.dstack([rgb, np.full((32, 48), 200, np.uint8)]), "RGBA").save(folder / "c.v2.png")
    Image.fromarray(rng.integers(0, 65535, (36, 30), dtype=np.uint16)).save(folder / "d.tif")
    return {stem: Image.open(folder / name) for stem, name in
            (("a", "a.png"), ("sub/b", "sub/b.jpg"), ("c.v2", "c.v2.png"), ("d", "d.tif"))}


def test_predict_writes_palette_masks_in_the_dataset_colours_and_overlays(tmp_path, saved_model, write_image):
    model = saved_model(ID2LABEL)
    photos = write_photos(tmp_path / "photos", write_image)
    recipe = tmp_path / "recipe.yaml"  # a training recipe: the model is in its output_dir, colours in colour_map
    recipe.write_text(json.dumps({"output_dir": str(model), "colour_map": COLOURS, "learning_rate": 0.001}))
    out = tmp_path / "masks"
    assert main(["predict", "--config", str(recipe), "--inputs", str(tmp_path / "photos"),
                 "--predictions_dir", str(out), "--overlays", "true", "--batch_size", "3",
                 "--precision", "fp32"]) == 0  # compared exactly with fp32 (auto is bf16 on some CPUs)

    order = sorted(photos, key=lambda stem: photos[stem].filename)  # the order predict reads them in
    expected = dict(zip(order, Segmenter.from_pretrained(model)([photos[s] for s in order], batch_size=3)))
    for stem, image in photos.items():
        mask = Image.open(out / f"{stem}.png")
        assert mask.mode == "P" and mask.size == image.size
        assert mask.getpalette()[:9] == [255, 0, 0, 0, 255, 0, 0, 0, 255]
        np.testing.assert_array_equal(np.asarray(mask), expected[stem])
        shown = Image.open(out / "overlays" / f"{stem}.jpg")
        assert shown.width > image.width and shown.height >= image.height  # the legend is to the right
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == sorted(f"{s}.png" for s in photos)


def test_broken_images_are_reported_and_skipped_and_a_rerun_resumes(tmp_path, saved_model, write_image, capsys):
    model = saved_model(ID2LABEL)
    for i in range(3):
        write_image(tmp_path / f"photos/{i}.png", seed=i)
    (tmp_path / "photos/broken.png").write_text("not a PNG")
    argv = ["predict", "--model", str(model), "--inputs", str(tmp_path / "photos"), "--predictions_dir",
            str(tmp_path / "out"), "--batch_size", "2"]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert "broken.png" in error and "1 of 4 images could not be read" in error
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.png")}
    assert sorted(written) == ["0.png", "1.png", "2.png"]

    (tmp_path / "out/1.png").unlink()  # as if the first run had been interrupted before it
    assert main(argv) == 1
    assert "2 already there, skipped" in capsys.readouterr().out
    for name in ("0.png", "2.png"):
        assert (tmp_path / "out" / name).stat().st_mtime_ns == written[name]
    assert (tmp_path / "out/1.png").is_file() and not list((tmp_path / "out").glob("*.part"))


def test_glob_patterns_and_files_are_inputs_too(tmp_path, saved_model, write_image):
    model = saved_model(ID2LABEL)
    for name in ("x/one.png", "y/two.jpg", "z/three.png"):
        write_image(tmp_path / name)
    assert main(["predict", "--model", str(model), "--inputs", str(tmp_path / "*/*.png"), str(tmp_path / "y/two.jpg"),
                 "--predictions_dir", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["one.png", "three.png", "two.png"]


def test_inputs_that_would_overwrite_each_other_are_refused_before_any_work(tmp_path, write_image, capsys):
    write_image(tmp_path / "photos/a.png")
    write_image(tmp_path / "photos/a.jpg")
    assert main(["predict", "--model", str(tmp_path / "no-model-here"), "--inputs", str(tmp_path / "photos"),
                 "--predictions_dir", str(tmp_path / "out")]) == 2
    assert "would both be written as a.png" in capsys.readouterr().err
    assert not list((tmp_path / "out").iterdir())


def test_an_unwritable_predictions_folder_is_an_error_before_any_work(tmp_path, write_image, capsys):
    write_image(tmp_path / "photos/a.png")
    (tmp_path / "file").write_text("not a folder")
    assert main(["predict", "--model", str(tmp_path / "no-model-here"), "--inputs", str(tmp_path / "photos"),
                 "--predictions_dir", str(tmp_path / "file/out")]) == 2
    assert "file/out" in capsys.readouterr().err  # named; the model was never loaded


def test_palette_from_palette_masks_and_many_classes_as_16_bit(tmp_path, make_pairs):
    make_pairs(tmp_path / "data", ["p0"], mask_mode="P")
    palette = dataset_palette(4, DataArguments(data_dir=str(tmp_path / "data")))
    assert [tuple(c) for c in palette] == PALETTE_COLOURS[:4]
    assert len({tuple(c) for c in default_palette(256)}) == 256

    mask = np.arange(300 * 4).reshape(40, 30) % 300
    mask_image(mask, default_palette(300)).save(tmp_path / "many.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "many.png")), mask)



def test_an_image_past_pils_pixel_limit_is_named_with_the_option_that_allows_it(tmp_path, saved_model, write_image,
                                                                                  capsys, monkeypatch):
    model = saved_model(ID2LABEL)
    write_image(tmp_path / "photos/big.png", seed=0)  # 48×32 = 1536 pixels, past twice a limit of 100
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 13 500² photo against PIL's default, in miniature
    argv = ["predict", "--model", str(model), "--inputs", str(tmp_path / "photos"), "--predictions_dir",
            str(tmp_path / "out"), "--precision", "fp32"]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{tmp_path / 'photos/big.png'}: Image size (1536 pixels) exceeds limit" in error
    assert "--max_image_pixels" in error and not (tmp_path / "out/big.png").exists()
    assert main([*argv, "--max_image_pixels", "2000"]) == 0 and (tmp_path / "out/big.png").is_file()
    assert main([*argv, "--max_image_pixels", "0", "--overwrite", "true"]) == 0
    assert Image.MAX_IMAGE_PIXELS == 100  # the limit is lifted for the run only
    assert main([*argv, "--max_image_pixels", "-1"]) == 2
