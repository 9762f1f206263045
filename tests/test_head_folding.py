"""The folded decode head (inference) and the reordered head (training): the stock head's logits and gradients up to
float rounding, without touching the model or what is saved."""

from __future__ import annotations

import copy

import pytest
import torch
from support.models import build_tiny_segformer

from hf_segformer.inference.segmenter import InferenceSettings, Segmenter
from hf_segformer.modeling.head_folding import FoldedSegformer, can_fold, fuse_decode_head_for_training

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


# ---- the reordered head for training ------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (3, 3, 45, 70)])
def test_reordered_training_head_gives_the_stock_logits_and_gradients(shape):
    torch.manual_seed(0)
    stock = build_tiny_segformer(ID2LABEL).train()
    stock.config.classifier_dropout_prob = 0.0
    stock.decode_head.dropout.p = 0.0  # dropout draws differ between two forwards, not the maths
    fused = copy.deepcopy(stock)
    assert fuse_decode_head_for_training(fused)
    pixel_values = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, len(ID2LABEL), (shape[0], shape[2], shape[3]))
    losses = {}
    for name, net in (("stock", stock), ("fused", fused)):
        torch.manual_seed(1)  # the encoder's stochastic depth draws the same in both runs
        logits = net(pixel_values=pixel_values).logits
        losses[name] = (logits, torch.nn.functional.cross_entropy(
            torch.nn.functional.interpolate(logits, size=shape[2:], mode="bilinear"), labels))
        losses[name][1].backward()
    torch.testing.assert_close(losses["fused"][0], losses["stock"][0], rtol=1e-4, atol=1e-5)
    for (name, p_stock), (_, p_fused) in zip(stock.named_parameters(), fused.named_parameters()):
        torch.testing.assert_close(p_fused.grad, p_stock.grad, rtol=1e-3, atol=1e-6, msg=name)
    # BatchNorm ran in training mode on the same sums: the same running statistics
    torch.testing.assert_close(fused.decode_head.batch_norm.running_var, stock.decode_head.batch_norm.running_var)


def test_reordered_head_saves_and_reloads_as_the_stock_model(tmp_path):
    model = build_tiny_segformer(ID2LABEL)
    keys = list(model.state_dict())
    assert fuse_decode_head_for_training(model)
    assert list(model.state_dict()) == keys
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    assert "forward" not in vars(reloaded.decode_head)  # a plain SegformerDecodeHead again
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixel_values=pixel_values).logits, model.eval()(pixel_values=pixel_values).logits,
                                   rtol=1e-4, atol=1e-5)
