"""Imagery with more than three bands: reading (.tif, .npy, 16-bit PNG) in the data's units, the band count checked,
the widened patch embedding, and a 4-band dataset whose fourth band alone carries the class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.models import save_tiny_model

from hf_segformer.data.bands import read_bands
from hf_segformer.errors import DataError
from hf_segformer.modeling.input_bands import widened_kernel

tifffile = pytest.importorskip("tifffile")

SIZE = 32


def test_tif_npy_and_16_bit_png_keep_their_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 65536, (SIZE, SIZE, 4), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", stack)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(stack, -1, 0), planarconfig="separate",
                     photometric="minisblack")
    np.save(tmp_path / "b.npy", stack.astype(np.float32) / 7)
    grey = rng.integers(0, 65536, (SIZE, SIZE), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "c.png")

    assert np.array_equal(read_bands(tmp_path / "a.tif", 4).array, stack.astype(np.float32))
    assert np.array_equal(read_bands(tmp_path / "planar.tif", 4).array, stack.astype(np.float32))
    assert np.array_equal(read_bands(tmp_path / "b.npy", 4).array, stack.astype(np.float32) / 7)
    assert np.array_equal(read_bands(tmp_path / "c.png", 1).array[..., 0], grey.astype(np.float32))


def test_a_file_with_another_band_count_is_one_error_naming_it(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "three.tif", np.zeros((SIZE, SIZE, 3), np.uint16))
    with pytest.raises(DataError, match=r"three\.tif has 3 bands, but num_channels is 4"):
        read_bands(tmp_path / "three.tif", 4)


def _rgb_png_16_bit(path: Path, array: np.ndarray) -> Path:
    """A 16-bit RGB PNG (colour type 2, bit depth 16), which PIL cannot write."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width, _ = array.shape
    rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_a_16_bit_rgb_png_is_refused_rather_than_squashed_to_8_bits(tmp_path: Path) -> None:
    path = _rgb_png_16_bit(tmp_path / "rgb16.png", np.full((4, 4, 3), 40000, np.uint16))
    assert Image.open(path).mode == "RGB"  # what Pillow makes of it: 8 bits per band
    with pytest.raises(DataError, match=r"rgb16\.png is a 16-bit RGB PNG.*TIFF.*\.npy"):
        read_bands(path, 3)


def test_the_widened_kernel_keeps_rgb_filters_and_scale() -> None:
    rgb = torch.randn(8, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    kernel = widened_kernel(rgb, 5)
    assert kernel.shape == (8, 5, 7, 7)
    assert torch.allclose(kernel[:, :3], rgb * 3 / 5)
    assert torch.allclose(kernel[:, 3], rgb.mean(1) * 3 / 5) and torch.allclose(kernel[:, 4], kernel[:, 3])
    # a constant normalised input gives the pretrained response
    torch.testing.assert_close(kernel.sum(1), rgb.sum(1))  # float32 rounding of 5 terms against 3


def _four_band_data(root: Path, counts: dict[str, int]) -> Path:
    """32×32 tiles of uint16 bands: three of noise, the fourth 1000 where the class is 1 (8×8 blocks at random)."""
    rng = np.random.default_rng(1)
    for split, count in counts.items():
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            mask = np.kron(rng.integers(0, 2, (4, 4)), np.ones((8, 8), np.int64)).astype(np.uint8)
            bands = rng.integers(0, 4000, (SIZE, SIZE, 4)).astype(np.uint16)
            bands[..., 3] = mask.astype(np.uint16) * 1000 + rng.integers(0, 100, (SIZE, SIZE))
            tifffile.imwrite(root / "images" / split / f"{i}.tif", bands)
            Image.fromarray(mask).save(root / "masks" / split / f"{i}.png")
    (root / "id2label.json").write_text(json.dumps({"0": "ground", "1": "water"}))
    return root


def test_a_model_trained_on_four_bands_uses_the_fourth(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The class is in band 4 alone: the RGB bands (noise) allow at most about 0.5 mIoU. The trained model is then
    exported to ONNX (4-band input), compared with PyTorch and segmenting the same masks."""
    pytest.importorskip("onnxruntime")
    from hf_segformer.cli import main as cli_main
    from hf_segformer.inference.segmenter import Segmenter
    from hf_segformer.training.arguments import parse_recipe
    from hf_segformer.training.run import main

    data = _four_band_data(tmp_path / "data", {"train": 8, "validation": 4})
    rgb_model = save_tiny_model(tmp_path / "rgb", {0: "ground", 1: "water"})  # widened from 3 bands to 4
    run = tmp_path / "run"
    results = main(*parse_recipe([
        "--data_dir", str(data), "--output_dir", str(run), "--model_name_or_path", str(rgb_model), "--crop_size", "32",
        "--eval_size", "32", "--train_scale", "32", "32", "--ratio_range", "1", "1", "--cat_max_ratio", "1.0",
        "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "4", "--learning_rate", "0.02",
        "--max_steps", "12", "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
        "--dataloader_num_workers", "0", "--precision", "fp32", "--check_num_proc", "1"]))

    histogram = json.loads((run / "class_histogram.json").read_text())
    assert histogram["bands"]["num_channels"] == 4 and "inferred" in histogram["bands"]["from"]
    config = json.loads((run / "config.json").read_text())
    processor = json.loads((run / "preprocessor_config.json").read_text())
    assert config["num_channels"] == 4
    assert len(processor["image_mean"]) == 4 and processor["image_mean"] == pytest.approx(
        histogram["bands"]["mean"]["train"]) and processor["image_std"] == pytest.approx(
        histogram["bands"]["std"]["train"])
    assert results["eval_mean_iou"] > 0.8, results

    segmenter = Segmenter.from_pretrained(run, device="cpu")
    image = data / "images" / "validation" / "0.tif"
    expected = np.asarray(Image.open(data / "masks" / "validation" / "0.png"))
    mask = segmenter(str(image))
    assert (mask == expected).mean() > 0.9

    exported = tmp_path / "four-band.onnx"
    assert cli_main(["export-onnx", "--model", str(run), "--output_path", str(exported), "--check_size", "32",
                     "32"]) == 0  # 0: ONNX Runtime matches PyTorch
    assert "2×4×32×32: max |logit difference|" in capsys.readouterr().out  # four input bands
    onnx_segmenter = Segmenter.from_pretrained(run, device="cpu", onnx=exported)
    assert onnx_segmenter.num_channels == 4
    np.testing.assert_array_equal(onnx_segmenter(str(image)), mask)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((SIZE, SIZE, 3), np.uint16))
    with pytest.raises(DataError, match=r"rgb\.tif has 3 bands, but the model's num_channels is 4"):
        segmenter(str(tmp_path / "rgb.tif"))


@pytest.mark.slow  # an ONNX export, an INT8 quantization and three rows evaluated
def test_the_deploy_report_measures_a_four_band_model(tmp_path: Path, row_workers_in_process) -> None:
    """Every row reads the band stacks as the model does: timing, each row's mIoU, the agreement, INT8 calibration."""
    pytest.importorskip("onnxruntime")
    from support.models import save_tiny_band_model

    from hf_segformer.data.labels import LabelDecoder
    from hf_segformer.evaluation.deploy.report import deploy_report
    from hf_segformer.inference.segmenter import Segmenter

    model_dir = save_tiny_band_model(tmp_path / "model", 4)
    segmenter = Segmenter.from_pretrained(model_dir, device="cpu")
    rng = np.random.default_rng(3)
    pairs = []
    for i in range(3):  # masks: PyTorch fp32's own predictions, so that it must score mIoU 1
        image = tmp_path / f"{i}.npy"
        np.save(image, rng.integers(0, 2000, (SIZE, 40, 4)).astype(np.uint16))
        Image.fromarray(segmenter(str(image))).save(tmp_path / f"{i}.png")
        pairs.append((image, tmp_path / f"{i}.png"))
    calibration = tmp_path / "calibration.tif"
    tifffile.imwrite(calibration, rng.integers(0, 2000, (SIZE, SIZE, 4)).astype(np.uint16))

    report = deploy_report(model_dir, pairs, LabelDecoder(None, False, 255), tmp_path / "report",
                           calibration_images=[calibration], rows=["pytorch-fp32", "onnx-fp32", "onnx-int8-static"],
                           threads=1, repeats=1, agreement_images=3)
    assert not any(row.error for row in report.rows), [row.error for row in report.rows]
    assert report.row("pytorch-fp32").miou == 1.0 and report.row("pytorch-fp32").pixel_agreement == 1.0
    assert report.row("onnx-fp32").pixel_agreement > 0.999
    assert report.row("onnx-int8-static").miou is not None and report.facts["calibration_images"] == 1


@pytest.mark.slow  # imports gradio, loads the demo model in its thread
def test_the_demo_and_rank_unlabelled_read_band_stacks_and_draw_the_display_bands(tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from support.models import save_tiny_band_model

    from hf_segformer.app.demo import DemoModel
    from hf_segformer.inference.ranking import rank_unlabelled
    from hf_segformer.inference.segmenter import Segmenter
    from hf_segformer.visuals import overlay

    model_dir = save_tiny_band_model(tmp_path / "model", 4, display_bands=[3, 2, 1])
    rng = np.random.default_rng(4)
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    stack = rng.integers(0, 2000, (SIZE, 40, 4)).astype(np.uint16)
    tifffile.imwrite(folder / "a.tif", stack)
    np.save(folder / "b.npy", rng.normal(1000, 500, (SIZE, SIZE, 4)).astype(np.float32))
    expected = Segmenter.from_pretrained(model_dir, device="cpu")(str(folder / "a.tif"))

    demo = DemoModel(str(model_dir))
    assert demo.loaded(60) and "is ready" in demo.status(), demo.status()  # warmed up on a 4-band stack
    prediction = demo.predict_upload(folder / "a.tif", "a.tif", "whole", "none")
    np.testing.assert_array_equal(prediction.mask, expected)
    picture = np.asarray(overlay(prediction.image, prediction.mask, demo.palette, demo.segmenter.id2label, 0.0))
    assert np.array_equal(picture[:SIZE, :40], np.asarray(read_bands(folder / "a.tif", 4).display([3, 2, 1])))
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((SIZE, SIZE, 3), np.uint16))
    with pytest.raises(DataError, match=r"rgb\.tif has 3 bands, but the model's num_channels is 4"):
        demo.predict_upload(tmp_path / "rgb.tif", "rgb.tif", "whole", "none")

    ranked = rank_unlabelled(model_dir, folder, top_k=2, out_dir=tmp_path / "ranking", device="cpu")
    assert sorted(item.image for item in ranked) == ["a.tif", "b.npy"]
    assert json.loads((tmp_path / "ranking" / "ranking.json").read_text())["unreadable"] == []
    assert Image.open(tmp_path / "ranking" / "top.png").size[1] > 0
