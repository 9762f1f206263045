"""The folded decode head (inference): the model's logits up to float rounding, without touching the model."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_segformer

from hf_segformer.head_folding import FoldedSegformer, can_fold
from hf_segformer.inference import InferenceSettings, Segmenter

ID2LABEL = {0: "sky", 1: "road", 2: "car", 3: "tree"}


@pytest.fixture
def model():
    model = build_tiny_segformer(ID2LABEL)
    bn = model.decode_head.batch_norm  # statistics far from the identity, so that folding them is tested
    generator = torch.Generator().manual_seed(1)
    bn.running_mean.copy_(torch.randn(bn.num_features, generator=generator))
    bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
    bn.weight.data.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
    bn.bias.data.copy_(torch.randn(bn.num_features, generator=generator))
    return model.eval()


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 45, 70)])
def test_folded_head_gives_the_models_logits(model, shape):
    pixel_values = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values=pixel_values).logits
        folded = FoldedSegformer(model)(pixel_values).logits
    assert folded.shape == expected.shape
    torch.testing.assert_close(folded, expected, rtol=1e-4, atol=1e-5)


def test_folding_leaves_the_model_as_it_was(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Segmenter(model, settings=InferenceSettings(fold_head=True))
    assert type(model.decode_head).__name__ == "SegformerDecodeHead"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_segmenter_masks_match_with_and_without_folding(model):
    images = [torch.randint(0, 256, (40 + 9 * i, 52, 3), dtype=torch.uint8).numpy() for i in range(3)]
    folded = Segmenter(model, settings=InferenceSettings(fold_head=True))(images)
    plain = Segmenter(model, settings=InferenceSettings(fold_head=False))(images)
    assert all((a == b).mean() > 0.999 for a, b in zip(folded, plain))


def test_training_mode_head_is_refused(model):
    with pytest.raises(ValueError, match="eval mode"):
        FoldedSegformer(model.train())


def test_a_head_that_cannot_be_folded_runs_as_saved(model):
    model.config.reshape_last_stage = False  # last stage as tokens: outside what the folding handles
    assert not can_fold(model)
    with pytest.raises(ValueError, match="4-D stage outputs"):
        FoldedSegformer(model)
    assert Segmenter(model, settings=InferenceSettings(fold_head=True))._forward is model
