"""bf16, the precision `auto` picks on CPUs with AVX-512 BF16/AMX (and on recent GPUs): training and evaluation in
bf16 follow fp32 within tolerances measured here, and `evaluate` reports fp32 figures unless asked for bf16.

A user relies on: a bf16 run training the model an fp32 run trains, and the same model giving the same reported
metrics on every machine. On a CPU without native bf16 these run emulated (several times slower); CI runs them,
with a few of the exact comparisons, a second time as on a bf16 machine (HF_SEGFORMER_ASSUME_NATIVE_BF16=1).
"""

from __future__ import annotations

import json

import pytest
import torch
from scripts.train_step_script import one_step

from hf_segformer.cli import main
from hf_segformer.data.synthetic import SYNTHETIC_ID2LABEL, write_synthetic_dataset
from hf_segformer.runtime import ENV_ASSUME_NATIVE_BF16, choose_precision

pytestmark = pytest.mark.bf16


def test_the_bf16_machine_override_makes_auto_pick_bf16(monkeypatch):
    monkeypatch.setenv(ENV_ASSUME_NATIVE_BF16, "1")
    assert choose_precision("auto", False, False, on_cpu=True).value == "bf16"
    monkeypatch.delenv(ENV_ASSUME_NATIVE_BF16)
    monkeypatch.setattr("hf_segformer.runtime.cpu_flags", lambda cpuinfo="/proc/cpuinfo": {"avx2"})
    assert choose_precision("auto", False, False, on_cpu=True).value == "fp32"


def test_a_bf16_training_step_follows_fp32():
    fp32, bf16 = one_step(4, precision="fp32"), one_step(4, precision="bf16")
    # Measured on this model and batch: the loss 2.8e-6 relative (2.1e-4 for a SegFormer-B0's first step), all
    # gradients together 3.8e-2 relative (norm of the difference / norm of the fp32 gradients).
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=1e-3)
    difference = torch.cat([(bf16["gradients"][k] - g).flatten() for k, g in fp32["gradients"].items()]).norm()
    scale = torch.cat([g.flatten() for g in fp32["gradients"].values()]).norm()
    assert difference / scale < 0.1


def test_evaluate_reports_fp32_on_a_bf16_machine_and_bf16_on_request(tmp_path, saved_model, monkeypatch):
    """The same weights give the same reported mIoU on every CPU: `auto` evaluates in fp32 even where it would
    pick bf16; `--precision bf16` is the faster opt-in, and the results say which precision computed them."""
    monkeypatch.setenv(ENV_ASSUME_NATIVE_BF16, "1")
    data = write_synthetic_dataset(tmp_path / "data", num_train=2, num_validation=6, size=48)
    model = saved_model(SYNTHETIC_ID2LABEL, eval_size=48)
    results = {}
    for precision in ("auto", "bf16"):
        out = tmp_path / precision
        assert main(["evaluate", "--model", str(model), "--data_dir", str(data), "--eval_output_dir", str(out),
                     "--precision", precision]) == 0
        results[precision] = json.loads((out / "eval_results.json").read_text())
        assert json.loads((out / "eval_settings.json").read_text())["precision"] == results[precision][
            "eval_precision"]
    assert results["auto"]["eval_precision"] == "fp32" and results["bf16"]["eval_precision"] == "bf16"
    # Measured: 2.8e-05 apart (mIoU 0.154), a pixel or so of 13 824 changing class.
    assert results["bf16"]["eval_mean_iou"] == pytest.approx(results["auto"]["eval_mean_iou"], abs=2e-3)
