"""ONNX export: one exported file serves every batch size and image size with PyTorch's logits, records its
opset, class names and decode head (folded by default, as saved on request), and the CLI reports the parity check."""

from __future__ import annotations

import pytest
import torch
from support.models import build_tiny_segformer

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install 'hf-segformer[onnx]')")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'hf-segformer[onnx]')")

from hf_segformer.cli import main as cli_main
from hf_segformer.errors import RecipeError
from hf_segformer.inference.onnx_export import export_model, export_onnx, load_onnx_session, onnx_logits, onnx_metadata
from hf_segformer.modeling.build import build_image_processor
from hf_segformer.modeling.token_merging import apply_token_merging

ID2LABEL = {0: "sky", 1: "road", 2: "car"}


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    build_tiny_segformer(ID2LABEL).save_pretrained(folder)
    build_image_processor(64).save_pretrained(folder)
    return folder


def test_one_export_matches_pytorch_at_other_sizes_and_batches(model_dir, tmp_path, capsys):
    path = tmp_path / "model.onnx"
    checks = export_onnx(model_dir, path, opset=17, check_sizes=[(64, 64), (72, 40)])
    assert [c.size for c in checks] == [(64, 64), (72, 40)] and all(c.batch == 2 for c in checks)
    assert all(c.passed for c in checks), [str(c) for c in checks]
    printed = capsys.readouterr().out
    assert "opset 17" in printed and "max |logit difference|" in printed and "argmax agreement" in printed

    session = load_onnx_session(path)
    metadata = onnx_metadata(session)
    assert metadata["opset"] == "17" and metadata["id2label"] == ID2LABEL
    assert metadata["preprocessor_config"]["size"] == {"height": 64, "width": 64}

    model = build_tiny_segformer(ID2LABEL)
    for shape in [(1, 3, 70, 45), (3, 3, 33, 97)]:  # neither the tracing batch nor sizes a multiple of 32
        pixel_values = torch.randn(*shape, generator=torch.Generator().manual_seed(shape[0]))
        with torch.no_grad():
            expected = model(pixel_values=pixel_values).logits
        actual = onnx_logits(session, pixel_values)
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
        assert torch.equal(onnx_logits(session, pixel_values.numpy()), actual)


def test_cli_exports_and_reports_parity(model_dir, tmp_path, capsys):
    path = tmp_path / "cli.onnx"
    assert cli_main(["export-onnx", str(model_dir), str(path), "--check_size", "48", "80"]) == 0
    out = capsys.readouterr().out
    assert path.is_file() and "2×3×48×80: max |logit difference|" in out and "FAILED" not in out


def _decode_head_ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node if "/decode_head/" in node.name}


def _has_fusion(path) -> bool:
    """Whether the graph still holds the stock head's 1×1 fusion over the concatenated stages."""
    return any("linear_fuse" in node.name for node in onnx.load(str(path)).graph.node)


def test_export_folds_the_head_by_default_and_fold_head_false_keeps_it_as_saved(model_dir, tmp_path, capsys):
    folded, saved = tmp_path / "folded.onnx", tmp_path / "saved.onnx"
    for path, options in ((folded, []), (saved, ["--fold_head", "false"])):
        assert cli_main(["export-onnx", "--model", str(model_dir), "--output_path", str(path),
                         "--check_size", "64", "64", "--check_size", "45", "70", *options]) == 0
        printed = capsys.readouterr().out
        assert printed.count("max |logit difference|") == 2 and "FAILED" not in printed  # parity passes for both
        assert ("decode head folded" in printed) == (path == folded)
    assert onnx_metadata(load_onnx_session(folded))["decode_head"] == "folded"
    assert onnx_metadata(load_onnx_session(saved))["decode_head"] == "unfolded"
    # stages mapped straight to D channels by 1×1 Convs (ONNX Runtime's INT8 quantizer handles those)
    assert not _has_fusion(folded) and "MatMul" not in _decode_head_ops(folded) and "Conv" in _decode_head_ops(folded)
    assert _has_fusion(saved) and "MatMul" in _decode_head_ops(saved)

    # both graphs compute the saved model's logits, at a size neither was traced or checked at
    model = build_tiny_segformer(ID2LABEL)
    pixel_values = torch.randn(3, 3, 33, 97, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
    for path in (folded, saved):
        torch.testing.assert_close(onnx_logits(load_onnx_session(path), pixel_values), expected, rtol=1e-4, atol=1e-5)

    # evaluate/predict's other spelling works too
    assert cli_main(["export-onnx", "--model", str(model_dir), "--output_path", str(tmp_path / "no.onnx"),
                     "--no_fold_head", "--check_size", "64", "64"]) == 0
    assert onnx_metadata(load_onnx_session(tmp_path / "no.onnx"))["decode_head"] == "unfolded"


def test_a_folded_export_is_checked_against_the_model_as_saved(model_dir, tmp_path, monkeypatch, capsys):
    """Parity compares the folded graph with the saved model, not with the folded module it was traced from: a
    folding that changed the logits fails the export."""
    from hf_segformer.inference import onnx_export
    from hf_segformer.modeling.head_folding import FoldedSegformer

    def wrongly_folded(model, as_conv=False):
        module = FoldedSegformer(model, as_conv)
        module.decode_head.bias.data += 1.0  # a folding mistake: the logits move
        return module

    monkeypatch.setattr(onnx_export, "FoldedSegformer", wrongly_folded)
    checks = export_onnx(model_dir, tmp_path / "wrong.onnx", check_sizes=[(64, 64)])
    assert not checks[0].passed and "FAILED" in capsys.readouterr().out
    assert all(c.passed for c in export_onnx(model_dir, tmp_path / "saved.onnx", check_sizes=[(64, 64)],
                                             fold_head=False))


def test_missing_model_and_merged_model_are_refused(tmp_path):
    with pytest.raises(RecipeError, match="no config.json"):
        export_onnx(tmp_path / "nothing", tmp_path / "x.onnx")
    model = build_tiny_segformer(ID2LABEL)
    apply_token_merging(model, "hq")
    with pytest.raises(RecipeError, match="without token merging"):
        export_model(model, tmp_path / "merged.onnx", sample_size=(64, 64))


def test_predict_runs_the_exported_model_in_onnx_runtime(model_dir, tmp_path, write_image):
    from hf_segformer.inference.segmenter import InferenceSettings, Segmenter

    path = tmp_path / "model.onnx"
    export_onnx(model_dir, path, opset=17, check_sizes=[(64, 64)])
    images = [write_image(tmp_path / f"images/{i}.png", size=(50 + 13 * i, 40), seed=i) for i in range(3)]
    for settings in (InferenceSettings(), InferenceSettings(mode="slide", slide_crop=[32], slide_stride=[20])):
        expected = Segmenter.from_pretrained(model_dir, settings)(images)
        onnx = Segmenter.from_pretrained(model_dir, settings, onnx=path)
        assert onnx._onnx is not None
        for got, want in zip(onnx(images), expected):
            assert got.shape == want.shape and (got == want).mean() > 0.999

    code = cli_main(["predict", "--model", str(model_dir), "--onnx", str(path), "--inputs", str(tmp_path / "images"),
                     "--predictions_dir", str(tmp_path / "masks")])
    assert code == 0 and len(list((tmp_path / "masks").glob("*.png"))) == 3
    with pytest.raises(RecipeError, match="runs in fp32"):
        Segmenter.from_pretrained(model_dir, onnx=path, precision="bf16")
