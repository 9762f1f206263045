"""The command-line shapes: export-onnx --quantize on a recipe's data, deploy-report MODEL --config recipe.yaml."""

from __future__ import annotations

import importlib.util
import json

import onnxruntime
import pytest
import yaml
from PIL import Image
from support.images import write_smooth_images as write_images
from support.models import TINY_ID2LABEL as ID2LABEL
from support.models import save_tiny_model
from support.processes import ran_in_own_process

from hf_segformer.cli import main as cli_main
from hf_segformer.commands.deploy_report import main as deploy_report_command
from hf_segformer.commands.export_onnx import main as export_onnx_command
from hf_segformer.errors import RecipeError
from hf_segformer.inference.segmenter import Segmenter


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny model, a data folder (train 3, val 4 images; masks are the model's own fp32 predictions) and a
    recipe pointing at it."""
    root = tmp_path_factory.mktemp("commands")
    model_dir = save_tiny_model(root / "model")
    segmenter = Segmenter.from_pretrained(model_dir, device="cpu")
    for split, seeds in (("train", [70, 71, 72]), ("val", [80, 81, 82, 83])):
        for path in write_images(root / "data" / "images" / split, seeds):
            (root / "data" / "masks" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(segmenter(str(path))).save(root / "data" / "masks" / split / path.name)
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"data_dir": str(root / "data"), "id2label": ID2LABEL, "ignore_index": 255,
                                      "eval_split": "val"}))
    return model_dir, recipe, root


def test_export_quantize_static_on_the_recipes_data(project, tmp_path, capsys):
    model_dir, recipe, _ = project
    out = tmp_path / "model.int8.onnx"
    code = export_onnx_command([str(model_dir), str(out), "--quantize", "static", "--config", str(recipe),
                                "--num_calibration_images", "2", "--num_check_images", "3"])
    printed = capsys.readouterr().out
    assert out.is_file() and code in (0, 1)
    assert "ONNX Runtime vs PyTorch (float32, the model as saved)" in printed  # the float export's parity report
    assert "decode head folded" in printed
    assert "calibrated on 2 images" in printed and "masks of 3 validation images" in printed
    assert (code == 0) == ("FAILED" not in printed)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    info = json.loads(session.get_modelmeta().custom_metadata_map["quantization"])
    assert info["mode"] == "static" and info["calibration_images"] == 2
    assert session.get_modelmeta().custom_metadata_map["decode_head"] == "folded"  # INT8 of the default export

    with pytest.raises(RecipeError, match="exists"):  # nothing a user made is overwritten
        export_onnx_command([str(model_dir), str(out), "--quantize", "dynamic"])


def test_export_without_quantize_is_todays_command(project, tmp_path, capsys):
    model_dir, _, _ = project
    assert export_onnx_command([str(model_dir), str(tmp_path / "m.onnx"), "--check_size", "48", "80"]) == 0
    assert "2×3×48×80: max |logit difference|" in capsys.readouterr().out


@pytest.mark.slow  # an export, its conversion and two parity checks
@pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                    reason="the openvino extra is not installed (pip install 'hf-segformer[openvino]')")
def test_export_openvino_writes_an_ir_that_predicts_pytorchs_masks(project, tmp_path, capsys, request):
    if ran_in_own_process(request.node.nodeid):  # OpenVINO stays out of the suite's process
        return
    model_dir, _, root = project
    out = tmp_path / "m.onnx"
    assert export_onnx_command(["--model", str(model_dir), "--output_path", str(out), "--openvino",
                                "--check_size", "48", "80"]) == 0
    printed = capsys.readouterr().out
    assert "Converted to OpenVINO" in printed and printed.count("2×3×48×80: max |logit difference|") == 2
    assert "FAILED" not in printed and (tmp_path / "m.xml").is_file() and (tmp_path / "m.bin").is_file()
    images = sorted(str(p) for p in (root / "data" / "images" / "val").iterdir())[:2]
    ir = Segmenter.from_pretrained(model_dir, device="cpu", onnx=tmp_path / "m.xml")
    for got, want in zip(ir(images), Segmenter.from_pretrained(model_dir, device="cpu")(images)):
        assert got.shape == want.shape and (got == want).mean() > 0.999
    assert ir._onnx.metadata["decode_head"] == "folded"  # the ONNX metadata travels in the IR

    (tmp_path / "m.onnx").unlink()  # the IR is the user's: refused before the ONNX file is written again
    with pytest.raises(RecipeError, match="m.xml.*--overwrite"):
        export_onnx_command(["--model", str(model_dir), "--output_path", str(out), "--openvino"])
    assert not out.exists()


def test_quantize_with_fold_head_false_quantizes_the_graph_as_saved(project, tmp_path, capsys):
    model_dir, _, _ = project
    out = tmp_path / "saved.int8.onnx"
    assert export_onnx_command(["--model", str(model_dir), "--output_path", str(out), "--quantize", "dynamic",
                                "--fold_head", "false", "--check_size", "48", "80"]) == 0
    assert "decode head as saved" in capsys.readouterr().out
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["decode_head"] == "unfolded"


def test_static_without_data_is_refused_before_work(project, tmp_path):
    model_dir, _, _ = project
    with pytest.raises(RecipeError, match="--config recipe.yaml"):
        export_onnx_command([str(model_dir), str(tmp_path / "q.onnx"), "--quantize", "static"])
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.slow  # the deploy report's row workers / a quantized export, through the command
def test_calibrating_on_the_evaluation_split_holds_those_images_out(project, tmp_path, row_workers_in_process):
    model_dir, recipe, _ = project
    out = tmp_path / "report"
    deploy_report_command([str(model_dir), "--config", str(recipe), "--output_dir", str(out), "--rows",
                           "pytorch-fp32", "onnx-int8-static", "--threads", "1", "--repeats", "1",
                           "--calibration_split", "val", "--num_calibration_images", "1", "--agreement_images", "0"])
    facts = json.loads((out / "deploy_report.json").read_text())["facts"]
    assert facts["images"] == 3 and facts["calibration_images"] == 1 and facts["split"] == "val"


@pytest.mark.slow  # the deploy report's row workers / a quantized export, through the command
def test_deploy_report_command_writes_beside_the_model(project, capsys, row_workers_in_process):
    model_dir, recipe, _ = project
    code = deploy_report_command([str(model_dir), "--config", str(recipe), "--rows", "pytorch-fp32", "onnx-fp32",
                                  "onnx-int8-dynamic", "--threads", "1", "--repeats", "2"])
    printed = capsys.readouterr().out
    folder = model_dir / "deploy_report"
    data = json.loads((folder / "deploy_report.json").read_text())
    assert code == 0 and "| ONNX Runtime INT8 dynamic |" in printed
    assert [row["key"] for row in data["rows"]] == ["pytorch-fp32", "onnx-fp32", "onnx-int8-dynamic"]
    assert data["facts"]["images"] == 4 and data["facts"]["calibration_images"] == 0
    assert data["rows"][0]["miou"] == 1.0  # masks are its own predictions
    with pytest.raises(RecipeError, match="already holds"):
        deploy_report_command([str(model_dir), "--config", str(recipe), "--rows", "pytorch-fp32"])


def test_deploy_report_needs_data(project):
    model_dir, _, _ = project
    with pytest.raises(RecipeError, match="--config recipe.yaml"):
        deploy_report_command([str(model_dir)])


def test_a_bad_accuracy_budget_exits_2_naming_the_option_before_work(project, tmp_path, capsys):
    model_dir, recipe, _ = project
    for value in ("-1", "nan"):
        assert cli_main(["deploy-report", "--model", str(model_dir), "--config", str(recipe), "--output_dir",
                         str(tmp_path / "r"), "--accuracy_budget", value]) == 2
        assert "--accuracy_budget" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "r").exists()
