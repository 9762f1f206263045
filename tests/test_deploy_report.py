"""The deploy report: every column is a measurement of its row (not a constant), PyTorch fp32 scores the worked
answer on masks it predicted itself, and a row whose INT8 model collapses is flagged."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from PIL import Image
from support.deploy_workers import run_row_here
from support.images import smooth_image
from support.images import write_smooth_images as write_images
from support.models import save_tiny_model
from support.processes import ran_in_own_process

from hf_segformer.data.labels import LabelDecoder
from hf_segformer.errors import DataError, RecipeError
from hf_segformer.evaluation.deploy import report as report_module
from hf_segformer.evaluation.deploy.render import model_card_section
from hf_segformer.evaluation.deploy.report import deploy_report
from hf_segformer.evaluation.deploy.rows import DEFAULT_ROWS, OPENVINO_ROWS, ROWS
from hf_segformer.inference.segmenter import Segmenter

DECODER = LabelDecoder(None, False, 255)
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
# the module fixture measures the rows every install has; the OpenVINO rows get their own, smaller report
CORE_ROWS = tuple(key for key in DEFAULT_ROWS if ROWS[key].runtime != "openvino")


def self_labelled_pairs(model_dir, folder, seeds, size=(56, 48)):
    """Images and, as their masks, PyTorch fp32's own predictions: PyTorch fp32 must score mIoU 1 exactly."""
    segmenter = Segmenter.from_pretrained(model_dir, device="cpu")
    pairs = []
    for path in write_images(folder, seeds, size):
        mask_path = path.with_name(path.stem + "_mask.png")
        Image.fromarray(segmenter(str(path))).save(mask_path)
        pairs.append((path, mask_path))
    return pairs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny model, 4 image/mask pairs labelled by its own fp32 predictions and 2 calibration images."""
    folder = tmp_path_factory.mktemp("deploy")
    model_dir = save_tiny_model(folder / "model")
    return SimpleNamespace(folder=folder, model_dir=model_dir, pairs=self_labelled_pairs(model_dir, folder / "val",
                                                                                         [0, 1, 2, 3]),
                           calibration=write_images(folder / "calib", [50, 51]))


@pytest.fixture(scope="module")
def full_report(inputs):
    """Every row this install has without OpenVINO, its row workers in this process (what the report makes of
    them); test_each_row_is_measured_in_a_fresh_process runs real workers."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report_module, "run_row_worker", run_row_here)
        report = deploy_report(inputs.model_dir, inputs.pairs, DECODER, inputs.folder / "report",
                               calibration_images=inputs.calibration, rows=CORE_ROWS, threads=1, repeats=3,
                               timing_images=2, agreement_images=4)
    return report, inputs.folder / "report", inputs.model_dir


def test_the_default_rows_are_every_row_this_install_can_run():
    """A user's report measures every row by default: the OpenVINO ones too where the openvino extra is installed."""
    assert set(DEFAULT_ROWS) == set(ROWS) - (set() if HAS_OPENVINO else set(OPENVINO_ROWS))


def test_every_row_is_measured(full_report):
    report, folder, model_dir = full_report
    assert [r.key for r in report.rows] == list(CORE_ROWS) and not any(r.error for r in report.rows)
    for row in report.rows:
        assert row.ms_per_image > 0 and len(row.ms_rounds) == 3 and row.ms_per_image == pytest.approx(
            float(np.median(row.ms_rounds)), abs=0.01)
        path = folder / row.file if row.runtime == "onnx" else model_dir / row.file
        assert row.file_bytes == os.path.getsize(path)
        assert row.peak_rss_mb >= row.loaded_rss_mb > 50  # a Python process with torch loaded
        assert 0 <= row.miou <= 1 and 0 < row.pixel_agreement <= 1
    # measurements, not constants: the rows differ in time and in file (in memory: with real workers, below)
    assert len({round(r.ms_per_image, 3) for r in report.rows}) == len(report.rows)
    # safetensors; fp32 ONNX folded and as saved; dynamic and static INT8
    assert len({r.file_bytes for r in report.rows}) == 5
    assert report.row("pytorch-fp32").speedup_vs_pytorch_fp32 == 1.0
    assert report.row("onnx-fp32").speedup_vs_onnx_fp32 == 1.0
    int8 = report.row("onnx-int8-static")
    fp32 = report.row("onnx-fp32")
    expected = float(np.median([f / i for f, i in zip(fp32.ms_rounds, int8.ms_rounds)]))
    assert int8.speedup_vs_onnx_fp32 == pytest.approx(expected, rel=1e-9)


def test_each_row_is_measured_in_a_fresh_process(inputs, full_report, tmp_path):
    """Real row workers (a Python process each), one per kind of row a worker loads (PyTorch, ONNX Runtime, token
    merging): each row's peak memory is its own, and a worker scores its row as the fixture's rows were scored."""
    _, folder, model_dir = full_report
    rows = ["pytorch-fp32", "onnx-fp32", "tome-hq"]
    (tmp_path / "r").mkdir()
    shutil.copy(folder / ROWS["onnx-fp32"].onnx_file, tmp_path / "r")
    report = deploy_report(model_dir, inputs.pairs, DECODER, tmp_path / "r", rows=rows, threads=1, repeats=1,
                           agreement_images=4, reuse_exports=True)
    assert [r.key for r in report.rows] == rows and not any(r.error for r in report.rows)
    for row in report.rows:
        assert row.peak_rss_mb >= row.loaded_rss_mb > 50  # a Python process with torch loaded
        in_process = full_report[0].row(row.key)
        if in_process.precision == row.precision:  # token merging ran at bf16 there where bf16 timed faster
            assert (row.miou, row.pixel_agreement) == (in_process.miou, in_process.pixel_agreement)
    assert len({r.peak_rss_mb for r in report.rows}) > 1  # no row inherits another's allocations


def test_accuracy_columns_are_the_worked_answer(full_report):
    report, _, _ = full_report
    fp32 = report.row("pytorch-fp32")
    assert fp32.miou == 1.0 and fp32.miou_change_points == 0.0 and fp32.pixel_agreement == 1.0
    assert report.row("onnx-fp32").pixel_agreement > 0.999  # same model, float rounding only
    assert report.row("onnx-fp32-unfolded").pixel_agreement > 0.999
    for row in report.rows:
        assert row.miou_change_points == pytest.approx(100 * (row.miou - 1.0))
        if row.pixel_agreement == 1.0:  # same masks as the labels → perfect score
            assert row.miou == 1.0
        # the flag is the threshold applied to the measurement (a random tiny model's INT8 rows can lose tens of
        # points: its rare classes cover a few boundary pixels, which 8-bit rounding moves)
        assert row.collapsed == (row.miou_change_points < -5.0)


def test_files_are_written_and_agree(full_report):
    report, folder, _ = full_report
    data = json.loads((folder / "deploy_report.json").read_text())
    markdown = (folder / "deploy_report.md").read_text()
    assert [r["key"] for r in data["rows"]] == [r.key for r in report.rows]
    for row in report.rows:
        assert row.label in markdown and f"{row.ms_per_image:.1f}" in markdown and f"{row.miou:.4f}" in markdown
    heads = {}
    for name in ("model.onnx", "model.unfolded.onnx", "model.int8-dynamic.onnx", "model.int8-static.onnx"):
        onnx.checker.check_model(str(folder / name))
        heads[name] = {p.key: p.value for p in onnx.load(str(folder / name)).metadata_props}["decode_head"]
        assert data["facts"]["exports"][name]["decode_head"] == heads[name]
    # the default rows hold the folded head, as export-onnx writes it; one row keeps the graph as saved
    assert heads == {"model.onnx": "folded", "model.unfolded.onnx": "unfolded", "model.int8-dynamic.onnx": "folded",
                     "model.int8-static.onnx": "folded"}
    assert "decode head folded" in markdown and ROWS["onnx-fp32-unfolded"].label in markdown
    assert data["facts"]["calibration_images"] == 2 and data["facts"]["images"] == 4
    card = model_card_section(data)
    assert card.startswith("## Deployment") and report.rows[0].label in card and "decode head folded" in card
    assert str(folder) not in card  # no local paths in a public card
    assert "goal" not in data and "Goal" not in markdown + card  # a user's report holds measurements, no dev goals


def test_the_report_recommends_the_fastest_row_within_the_budget(full_report):
    report, folder, _ = full_report
    data = json.loads((folder / "deploy_report.json").read_text())
    choice = data["recommendation"]
    within = [r for r in report.rows if not r.error and r.miou_change_points >= -0.5]
    assert choice["key"] == min(within, key=lambda r: r.ms_per_image).key
    assert choice["accuracy_budget_points"] == 0.5
    assert choice["pixel_agreement"] == report.row(choice["key"]).pixel_agreement
    # every other row is named with its reason: slower here (× the recommended one's time), or over the budget
    reasons = {entry["key"]: entry["why"] for entry in choice["not_chosen"]}
    assert set(reasons) == {r.key for r in report.rows} - {choice["key"]}
    for row in report.rows:
        if row.key in reasons and row.miou_change_points < -0.5:
            assert "over the 0.5-point budget" in reasons[row.key]
        elif row.key in reasons:
            slower = f"{row.ms_per_image / choice['ms_per_image']:.2f}× the time of {choice['label']}"
            assert slower in reasons[row.key]
    slower_int8 = [why for key, why in reasons.items() if "int8" in key and "budget" not in why]
    if not data["facts"]["machine"]["int8_features"]["vnni"]:  # the CPU flags say why INT8 did not win here
        assert all("this CPU has no VNNI/AMX" in why for why in slower_int8)
    markdown = (folder / "deploy_report.md").read_text()
    card = model_card_section(data)
    for text in (markdown, card):
        assert f"Recommended here: {choice['label']}" in text and reasons[next(iter(reasons))] in text


@pytest.mark.slow  # an OpenVINO conversion and an NNCF quantization
@pytest.mark.skipif(not HAS_OPENVINO,
                    reason="OpenVINO rows need the openvino extra (pip install 'hf-segformer[openvino]')")
def test_openvino_rows_are_measured_and_agree_with_pytorch(tmp_path, row_workers_in_process, request):
    if ran_in_own_process(request.node.nodeid):  # OpenVINO and NNCF stay out of the suite's process
        return
    from hf_segformer.inference.openvino_backend import OpenVINOSession

    model_dir = save_tiny_model(tmp_path / "model")
    pairs = self_labelled_pairs(model_dir, tmp_path / "val", [0, 1])
    report = deploy_report(model_dir, pairs, DECODER, tmp_path / "r", rows=["pytorch-fp32", "openvino-fp32",
                                                                            "openvino-int8"],
                           calibration_images=write_images(tmp_path / "calib", [50]), threads=1, repeats=1,
                           agreement_images=2)
    rows = {r.key: r for r in report.rows if r.runtime == "openvino"}
    assert set(rows) == {"openvino-fp32", "openvino-int8"} and not any(r.error for r in rows.values())
    assert rows["openvino-fp32"].pixel_agreement > 0.999  # the same folded graph, float rounding only
    assert rows["openvino-fp32"].miou_change_points == pytest.approx(0, abs=0.5)
    assert rows["openvino-int8"].ms_per_image > 0 and rows["openvino-int8"].miou is not None
    for row in rows.values():  # an IR is its .xml and its .bin
        assert row.file_bytes == sum(os.path.getsize(tmp_path / "r" / row.file.replace(".xml", ext))
                                     for ext in (".xml", ".bin"))
    exports = json.loads((tmp_path / "r" / "deploy_report.json").read_text())["facts"]["exports"]
    assert exports["model.openvino-int8.xml"]["quantization"] == "nncf"
    assert exports["model.openvino-int8.xml"]["calibration_images"] == 1
    assert exports["model.openvino.xml"]["decode_head"] == "folded"
    # the INT8 IR runs at the size it was quantized at (the image processor's), and says so at any other
    session = OpenVINOSession(tmp_path / "r" / "model.openvino-int8.xml")
    assert session.input_size == (64, 64)
    with pytest.raises(RecipeError, match="runs 64×64 inputs only"):
        session.run([], {"pixel_values": np.zeros((1, 3, 32, 48), np.float32)})


def test_push_model_finds_the_recommended_file(full_report, tmp_path):
    """push_model uploads the report's recommended exported file (an IR with its .bin), nothing for PyTorch."""
    from hf_segformer.hub.publish import recommended_files

    _, folder, _ = full_report
    run = tmp_path / "run"
    (run / "deploy_report").mkdir(parents=True)
    data = json.loads((folder / "deploy_report.json").read_text())
    for runtime, file, expected in (("openvino", "model.openvino-int8.xml", ["model.openvino-int8.xml",
                                                                              "model.openvino-int8.bin"]),
                                    ("onnx", "model.onnx", ["model.onnx"]), ("pytorch", "model.safetensors", [])):
        data["recommendation"] = {**(data["recommendation"] or {}), "runtime": runtime, "file": file}
        (run / "deploy_report" / "deploy_report.json").write_text(json.dumps(data))
        for name in expected:
            (run / "deploy_report" / name).write_bytes(b"x")
        assert [p.name for p in recommended_files(run)] == expected
    (run / "deploy_report" / "model.onnx").unlink()
    data["recommendation"].update(runtime="onnx", file="model.onnx")
    (run / "deploy_report" / "deploy_report.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match="recommends model.onnx"):
        recommended_files(run)


def test_existing_report_is_not_overwritten(full_report, tmp_path):
    report, folder, model_dir = full_report
    before = (folder / "deploy_report.md").read_text()
    with pytest.raises(RecipeError, match="already holds deploy_report.md"):
        deploy_report(model_dir, [(smooth_image(0), np.zeros((48, 56), np.uint8))], DECODER, folder,
                      rows=["pytorch-fp32"])
    assert (folder / "deploy_report.md").read_text() == before


def test_bad_requests_fail_before_work(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    pair = [(smooth_image(0), np.zeros((48, 56), np.uint8))]
    with pytest.raises(RecipeError, match="calibration images"):
        deploy_report(model_dir, pair, DECODER, tmp_path / "r", rows=["onnx-int8-static"])
    with pytest.raises(RecipeError, match="unknown row"):
        deploy_report(model_dir, pair, DECODER, tmp_path / "r", rows=["onnx-int4"])
    with pytest.raises(RecipeError, match="no config.json"):
        deploy_report(tmp_path / "nothing", pair, DECODER, tmp_path / "r")
    with pytest.raises(DataError, match="does not exist"):
        deploy_report(model_dir, [(tmp_path / "missing.png", tmp_path / "m.png")], DECODER, tmp_path / "r",
                      rows=["pytorch-fp32"])
    assert not list((tmp_path / "r").glob("*"))


def _zero_classifier_scales(path) -> None:
    """Break an INT8 QDQ model the way a bad scale would: the classifier's weight scales become 0, so its weights
    dequantize to 0 and every pixel gets the class with the largest bias."""
    model = onnx.load(str(path))
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    classifier = next(n for n in graph.node if n.op_type == "Conv" and "classifier" in n.name)
    dequantize = producers[classifier.input[1]]
    scale = next(init for init in graph.initializer if init.name == dequantize.input[1])
    scale.CopyFrom(onnx.numpy_helper.from_array(np.zeros_like(onnx.numpy_helper.to_array(scale)), scale.name))
    onnx.save(model, str(path))


def test_a_collapsed_int8_model_is_flagged(inputs, full_report, tmp_path, row_workers_in_process):
    """The fixture's static INT8 file, broken: its report (the file reused, as measured) flags the row."""
    honest, folder, model_dir = full_report
    pairs = inputs.pairs
    rows = ["pytorch-fp32", "onnx-int8-static"]
    (tmp_path / "r").mkdir()
    shutil.copy(folder / ROWS["onnx-int8-static"].onnx_file, tmp_path / "r")
    _zero_classifier_scales(tmp_path / "r" / ROWS["onnx-int8-static"].onnx_file)
    broken = deploy_report(model_dir, pairs, DECODER, tmp_path / "r", rows=rows, threads=1, repeats=1,
                           agreement_images=len(pairs), reuse_exports=True)
    row = broken.row("onnx-int8-static")
    labels = np.concatenate([np.asarray(Image.open(mask)).ravel() for _, mask in pairs])
    present = np.unique(labels)
    # one class c everywhere: pixels as fp32 = the share of c; IoU of c = that share, of every other class 0
    shares = {int(c): float(np.mean(labels == c)) for c in present}
    constant = next(c for c, share in shares.items() if share == pytest.approx(row.pixel_agreement, abs=1e-12))
    assert row.miou == pytest.approx(shares[constant] / len(present), abs=1e-9)
    assert row.collapsed and row.miou_change_points < -5 and row.miou < honest.row("onnx-int8-static").miou
    assert broken.facts["reused_exports"] and broken.facts["calibration_images"] == 2  # read from the file
    assert "**COLLAPSED**" in (tmp_path / "r" / "deploy_report.md").read_text()
    assert json.loads((tmp_path / "r" / "deploy_report.json").read_text())["rows"][1]["collapsed"] is True

    # the same broken file under a threshold it stays within is not flagged: the flag follows the threshold
    lenient = deploy_report(model_dir, pairs, DECODER, tmp_path / "r", rows=rows, threads=1, repeats=1,
                            agreement_images=0, reuse_exports=True, overwrite=True, collapse_points=100.0)
    assert lenient.row("onnx-int8-static").miou == pytest.approx(row.miou)
    assert not lenient.row("onnx-int8-static").collapsed


def test_reuse_needs_the_files(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    pair = [(smooth_image(0), np.zeros((48, 56), np.uint8))]
    with pytest.raises(RecipeError, match="model.onnx"):
        deploy_report(model_dir, pair, DECODER, tmp_path / "r", rows=["onnx-fp32"], reuse_exports=True)


def test_reuse_refuses_a_file_holding_the_other_head(full_report, tmp_path):
    """A model.onnx exported as saved (as earlier versions wrote it) is not measured as the folded row."""
    _, folder, model_dir = full_report
    (tmp_path / "r").mkdir()
    shutil.copy(folder / "model.unfolded.onnx", tmp_path / "r" / "model.onnx")
    pair = [(smooth_image(0), np.zeros((48, 56), np.uint8))]
    with pytest.raises(RecipeError, match=r"model.onnx \(unfolded head\).*without --reuse_exports"):
        deploy_report(model_dir, pair, DECODER, tmp_path / "r", rows=["onnx-fp32"], reuse_exports=True)
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["model.onnx"]



def test_the_model_card_carries_the_deploy_table_when_the_run_has_one(tmp_path, row_workers_in_process):
    from hf_segformer.hub.model_card import RunFacts, build_model_card

    run = save_tiny_model(tmp_path / "run")
    without = str(build_model_card(run, RunFacts(repo_id="tester/x")))
    pairs = self_labelled_pairs(run, tmp_path / "val", [5])
    deploy_report(run, pairs, DECODER, run / "deploy_report", rows=["pytorch-fp32"], threads=1, repeats=1,
                  timing_images=1, agreement_images=1)
    card = str(build_model_card(run, RunFacts(repo_id="tester/x")))
    assert "## Deployment" not in without and "## Deployment" in card
    row = json.loads((run / "deploy_report" / "deploy_report.json").read_text())["rows"][0]
    assert row["label"] in card and f"{row['miou']:.4f}" in card  # the measured row, not a template
    assert str(tmp_path) not in card
    shutil.rmtree(run / "deploy_report")
    assert "## Deployment" not in str(build_model_card(run, RunFacts(repo_id="tester/x")))
