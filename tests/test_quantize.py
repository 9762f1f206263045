"""INT8 quantization: both modes write a model ONNX Runtime runs with the float model's interface and metadata,
static calibration sees exactly the inputs inference makes, and bad requests fail before any work."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from support.images import read_mask, save_mask, smooth_image
from support.images import write_smooth_images as write_images
from support.models import TINY_ID2LABEL as ID2LABEL
from support.models import save_tiny_model

from hf_segformer.cli import main as cli_main
from hf_segformer.errors import RecipeError
from hf_segformer.inference.onnx_export import export_onnx, load_onnx_session, onnx_metadata
from hf_segformer.inference.quantize import (
    QUANTIZATION_KEY,
    QuantizationSettings,
    calibration_reader,
    iterate_pixels,
    nodes_to_exclude,
    quantization_info,
    quantize_onnx,
    weight_matmuls,
)
from hf_segformer.inference.quantize_check import export_quantized, mask_agreement, split_calibration
from hf_segformer.inference.segmenter import InferenceSettings, Segmenter

INPUT_SIZE = 64  # conftest.save_tiny_model's eval size


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantize")
    model_dir = save_tiny_model(folder / "model")
    export_onnx(model_dir, folder / "fp32.onnx", check_sizes=[(INPUT_SIZE, INPUT_SIZE)])
    return model_dir, folder / "fp32.onnx"


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _initializer_types(path) -> set[int]:
    return {init.data_type for init in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_both_modes_write_an_int8_model_onnx_runtime_runs_like_the_float_one(exported, tmp_path, mode):
    model_dir, fp32 = exported
    out = tmp_path / f"{mode}.onnx"
    images = [smooth_image(seed) for seed in (10, 11, 12)] if mode == "static" else None
    result = quantize_onnx(fp32, out, mode, images, model_dir=model_dir)

    assert result.mode == mode and result.file_bytes == out.stat().st_size
    assert onnx.TensorProto.INT8 in _initializer_types(out)  # weights stored as 8-bit integers
    ops = _ops(out)
    if mode == "static":
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
        assert result.calibration_images == 3 and result.calibration_inputs == 3  # whole mode: one input each
    else:
        assert "DynamicQuantizeLinear" in ops or "DynamicQuantizeMatMul" in ops or "MatMulInteger" in ops
        assert "ConvInteger" not in ops  # dynamic leaves Conv float by default (ConvInteger measured slow)

    session, reference = load_onnx_session(out), load_onnx_session(fp32)
    pixels = torch.randn(2, 3, 40, 72, generator=torch.Generator().manual_seed(0))  # another batch and size
    feed = {"pixel_values": pixels.numpy()}
    got, expected = (torch.from_numpy(s.run(["logits"], feed)[0]) for s in (session, reference))
    assert got.shape == expected.shape == (2, len(ID2LABEL), 10, 18)
    assert not torch.equal(got, expected)  # it is a different (quantized) model ...
    assert (got - expected).abs().max() < 0.5 * expected.abs().max()  # ... computing the same function roughly

    metadata = onnx_metadata(session)
    assert metadata["id2label"] == ID2LABEL and metadata["preprocessor_config"]["size"]["height"] == INPUT_SIZE
    assert metadata["decode_head"] == "folded"  # export-onnx's default head, still named after quantization
    info = quantization_info(session)
    assert info["mode"] == mode and info["per_channel"] is True
    assert quantization_info(reference) is None


def test_static_weights_are_per_channel(exported, tmp_path):
    model_dir, fp32 = exported
    out = quantize_onnx(fp32, tmp_path / "s.onnx", "static", [smooth_image(1)], model_dir=model_dir).path
    graph = onnx.load(out).graph
    inits = {init.name: init for init in graph.initializer}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    producers = {o: n for n in graph.node for o in n.output}
    classifier = next(n for n in convs if "classifier" in n.name)
    dequantize = producers[classifier.input[1]]
    assert dequantize.op_type == "DequantizeLinear"
    scale = onnx.numpy_helper.to_array(inits[dequantize.input[1]])
    assert scale.shape == (len(ID2LABEL),)  # one scale per output channel


def test_calibration_sees_the_image_processors_pixels(exported):
    """The reader's arrays are what transformers' own image processor makes of each image (resize, rescale,
    normalise), since calibration must see the inputs of inference."""
    from transformers import AutoImageProcessor

    model_dir, fp32 = exported
    images = [smooth_image(seed, (90, 50)) for seed in (3, 4)]
    arrays = list(iterate_pixels(calibration_reader(fp32, images, model_dir)))
    processor = AutoImageProcessor.from_pretrained(model_dir)
    assert len(arrays) == 2
    for array, image in zip(arrays, images):
        expected = processor(images=image, return_tensors="np")["pixel_values"]
        assert array.shape == expected.shape == (1, 3, INPUT_SIZE, INPUT_SIZE) and array.dtype == np.float32
        np.testing.assert_allclose(array, expected, atol=1e-6)


def test_slide_calibration_feeds_the_windows(exported):
    model_dir, fp32 = exported
    settings = InferenceSettings(mode="slide", slide_crop=[32, 32], slide_stride=[32, 32], window_batch=2)
    # a 64×96 image at native size: 2×3 windows of 32², two per forward pass → three arrays of two windows
    arrays = list(iterate_pixels(calibration_reader(fp32, [smooth_image(5, (96, 64))], model_dir, settings)))
    assert [a.shape for a in arrays] == [(2, 3, 32, 32)] * 3


def test_weight_matmuls_are_told_from_attention_products(exported):
    _, fp32 = exported
    weight, other = weight_matmuls(fp32)
    # per block: q, k, v, o projections and two MLP layers are weights; Q·Kᵀ and P·V are activation products
    assert len(other) == 2 * 4 and all("attention/MatMul" in name for name in other)
    assert any("q_proj" in name for name in weight) and not weight & other


def test_data_movement_feeding_no_int8_op_stays_float(exported):
    """The folded head's upsampling feeds a float Add: Q/DQ around it would only convert, so it stays float; the
    encoder's Transposes/Reshapes that feed INT8 Convs and MatMuls stay quantized."""
    _, fp32 = exported
    nodes = onnx.load(str(fp32)).graph.node
    resizes = {n.name for n in nodes if n.op_type == "Resize" and "/decode_head/" in n.name}
    movement = {n.name for n in nodes if n.op_type in ("Transpose", "Reshape")}
    excluded = set(nodes_to_exclude(fp32, QuantizationSettings()))
    assert resizes and resizes <= excluded and movement - excluded
    assert not resizes & set(nodes_to_exclude(fp32, QuantizationSettings(movement_feeding_int8_only=False)))


def test_bad_requests_fail_before_work(exported, tmp_path):
    model_dir, fp32 = exported
    existing = tmp_path / "mine.onnx"
    existing.write_bytes(b"user data")
    with pytest.raises(RecipeError, match="exists"):
        quantize_onnx(fp32, existing, "dynamic")
    assert existing.read_bytes() == b"user data"
    with pytest.raises(RecipeError, match="calibration images"):
        quantize_onnx(fp32, tmp_path / "s.onnx", "static")
    with pytest.raises(RecipeError, match="at least one"):
        quantize_onnx(fp32, tmp_path / "s.onnx", "static", [])
    with pytest.raises(RecipeError, match="does not exist"):
        quantize_onnx(tmp_path / "none.onnx", tmp_path / "x.onnx", "dynamic")
    with pytest.raises(RecipeError, match="mode must be one of"):
        quantize_onnx(fp32, tmp_path / "x.onnx", "int4")
    with pytest.raises(RecipeError, match="is the float32 input"):
        quantize_onnx(fp32, fp32, "dynamic", overwrite=True)
    with pytest.raises(RecipeError, match="activation_type"):
        QuantizationSettings(activation_type="float8")
    assert not (tmp_path / "s.onnx").exists() and not (tmp_path / "x.onnx").exists()


def test_overwrite_replaces_only_when_asked(exported, tmp_path):
    _, fp32 = exported
    target = tmp_path / "q.onnx"
    target.write_bytes(b"old")
    quantize_onnx(fp32, target, "dynamic", overwrite=True)
    assert onnx.load(str(target)).graph.node  # a model now


def test_exclusions_keep_nodes_float(exported, tmp_path):
    model_dir, fp32 = exported
    settings = QuantizationSettings(op_types=("Conv",), exclude=("Conv@decode_head",))
    result = quantize_onnx(fp32, tmp_path / "e.onnx", "static", [smooth_image(2)], model_dir=model_dir,
                           settings=settings)
    graph = onnx.load(result.path).graph
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == "Conv":
            weight_from_dequantize = producers.get(node.input[1]) is not None and \
                producers[node.input[1]].op_type == "DequantizeLinear"
            assert weight_from_dequantize == ("decode_head" not in node.name), node.name
    assert json.loads(dict((p.key, p.value) for p in onnx.load(result.path).metadata_props)[QUANTIZATION_KEY]
                      )["exclude"] == ["Conv@decode_head"]


def test_segmenter_predicts_with_the_int8_model(exported, tmp_path):
    """predict / evaluate / the demo load an INT8 file through `--onnx` like a float one; `evaluate --onnx` scores
    what the INT8 model predicts and `predict --onnx` writes its masks."""
    model_dir, fp32 = exported
    out = quantize_onnx(fp32, tmp_path / "s.onnx", "static", [smooth_image(s) for s in (20, 21)],
                        model_dir=model_dir).path
    reference = Segmenter.from_pretrained(model_dir, device="cpu")
    int8 = Segmenter.from_pretrained(model_dir, device="cpu", onnx=out)
    images = [smooth_image(seed, (70, 52)) for seed in range(4)]
    masks = int8(images, batch_size=2)
    assert [m.shape for m in masks] == [(52, 70)] * 4 and all(m.max() < len(ID2LABEL) for m in masks)
    share = mask_agreement(reference, int8, images)
    same = sum(int((a == b).sum()) for a, b in zip(masks, reference(images))) / sum(m.size for m in masks)
    assert share == pytest.approx(same) and 0.5 < share <= 1.0

    # the commands, on a validation split labelled with the float model's own masks: INT8's pixel accuracy is its
    # agreement with PyTorch
    data = tmp_path / "data"
    for split in ("images", "masks"):
        (data / split / "validation").mkdir(parents=True)
    for seed, (image, mask) in enumerate(zip(images, reference(images))):
        image.save(data / "images" / "validation" / f"{seed}.png")
        save_mask(data / "masks" / "validation" / f"{seed}.png", mask)
    (data / "id2label.json").write_text(json.dumps(ID2LABEL))
    assert cli_main(["evaluate", "--model", str(model_dir), "--onnx", str(out), "--data_dir", str(data),
                     "--eval_output_dir", str(tmp_path / "int8")]) == 0
    metrics = json.loads((tmp_path / "int8" / "eval_results.json").read_text())
    assert metrics["eval_overall_accuracy"] == pytest.approx(share, abs=1e-6) and 0 < metrics["eval_mean_iou"] <= 1
    assert cli_main(["predict", "--model", str(model_dir), "--onnx", str(out), "--inputs",
                     str(data / "images" / "validation"), "--predictions_dir", str(tmp_path / "predicted")]) == 0
    for seed, mask in enumerate(masks):
        np.testing.assert_array_equal(read_mask(tmp_path / "predicted" / f"{seed}.png"), mask)


def test_export_quantized_reports_parity_on_held_out_images(exported, tmp_path, capsys):
    model_dir, fp32 = exported
    calibration = write_images(tmp_path / "calib", [30, 31])
    checks = [smooth_image(seed) for seed in (40, 41, 42)]
    outcome = export_quantized(model_dir, fp32, tmp_path / "q.onnx", "static", calibration, checks)
    printed = capsys.readouterr().out
    assert outcome.check_images == 3 and outcome.result.calibration_images == 2
    reference = Segmenter.from_pretrained(model_dir, device="cpu")
    int8 = Segmenter.from_pretrained(model_dir, device="cpu", onnx=tmp_path / "q.onnx")
    assert outcome.pixel_agreement == pytest.approx(mask_agreement(reference, int8, checks))
    assert f"{100 * outcome.pixel_agreement:.3f} % of pixels as PyTorch fp32" in printed
    assert "max |logit difference|" in printed and outcome.random_checks[0].size == (INPUT_SIZE, INPUT_SIZE)
    assert outcome.passed == (outcome.pixel_agreement >= 0.98)


def test_split_calibration_spreads_and_holds_out():
    calibration, rest = split_calibration(list(range(10)), 3)
    assert calibration == [0, 3, 6] and rest == [1, 2, 4, 5, 7, 8, 9]
    assert split_calibration(list(range(2)), 5) == ([0, 1], [])
    assert split_calibration(list(range(4)), 0) == ([], [0, 1, 2, 3])
