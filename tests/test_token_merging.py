"""Token merging on transformers' SegFormer: presets really merge, ratio 0 and removal are exact, odd sizes,
batches, bf16 autocast and training work, and bad settings are errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.models import build_tiny_segformer

from hf_segformer.errors import RecipeError
from hf_segformer.modeling.token_merging import (
    PRESETS,
    StageMerging,
    apply_token_merging,
    bipartite_soft_matching,
    grid_split,
    pool_tokens,
    remove_token_merging,
    resolve_token_merging,
    unpool_tokens,
)

ID2LABEL = {0: "a", 1: "b", 2: "c"}
ODD_BATCH = (2, 3, 70, 45)  # stage grids 18×12, 9×6, 5×3, 3×2: no stage a multiple of the strides


def sharp_segformer(seed: int = 0):
    """The tiny SegFormer with encoder Linear weights drawn wider (std 0.2): at transformers' init (std 0.02)
    attention is near-uniform and contributes ~1e-4 of the residual stream, so merging would barely show;
    trained models attend selectively, as these weights do."""
    model = build_tiny_segformer(ID2LABEL, seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.segformer.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.2)
    return model


def pixels(shape=ODD_BATCH, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def encoder_and_logits(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    return out.hidden_states[-1], out.logits


def test_ratio_zero_reproduces_the_unmerged_model_exactly():
    model, x = sharp_segformer(), pixels()
    reference = encoder_and_logits(model, x)
    zero = [StageMerging(query="bsm", query_ratio=0.0, kv="bsm", kv_ratio=0.0, proportional_attention=True)] * 4
    apply_token_merging(model, zero)
    merged = encoder_and_logits(model, x)
    assert torch.equal(merged[0], reference[0]) and torch.equal(merged[1], reference[1])


@pytest.mark.parametrize("preset", ["hq", "fast", "2x2"])
def test_each_preset_changes_the_output(preset):
    model, x = sharp_segformer(), pixels()
    hidden, logits = encoder_and_logits(model, x)
    apply_token_merging(model, preset)
    merged_hidden, merged_logits = encoder_and_logits(model, x)
    assert merged_logits.shape == logits.shape
    relative = (merged_hidden - hidden).abs().mean() / hidden.abs().mean()
    assert relative > 0.02, f"{preset} changed the encoder output by only {relative:.2e}: is it merging at all?"
    assert torch.isfinite(merged_logits).all()


def expected_tokens(tokens_h: int, tokens_w: int, mode: str, ratio: float, stride: tuple[int, int]) -> int:
    """The documented rule: pooling keeps one token per stride cell; matching removes floor(ratio·N) tokens,
    at most every token but the one destination per stride cell."""
    total, cells = tokens_h * tokens_w, math.ceil(tokens_h / stride[0]) * math.ceil(tokens_w / stride[1])
    if mode == "pool":
        return cells
    if mode == "bsm":
        return total - min(math.floor(ratio * total), total - cells)
    return total


@pytest.mark.parametrize("preset", ["none", "hq", "fast", "2x2"])
def test_attention_sees_the_documented_number_of_tokens(preset):
    model = sharp_segformer()
    model.set_attn_implementation("eager")  # attention weights are returned by the eager path only
    apply_token_merging(model, preset)
    x = pixels((1, 3, 130, 100))
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True, output_attentions=True)
    for stage, (setting, hidden, weights) in enumerate(zip(PRESETS[preset], out.hidden_states, out.attentions)):
        height, width = hidden.shape[-2:]
        reduction = model.config.sr_ratios[stage]
        queries = expected_tokens(height, width, setting.query, setting.query_ratio, setting.query_stride)
        keys = expected_tokens(height // reduction, width // reduction, setting.kv, setting.kv_ratio, setting.kv_stride)
        assert weights.shape[-2:] == (queries, keys), f"stage {stage + 1} ({height}×{width} tokens)"


def test_remove_restores_the_model_exactly_and_reapplying_switches_presets():
    model, x = sharp_segformer(), pixels()
    reference = encoder_and_logits(model, x)[1]
    apply_token_merging(model, "hq")
    apply_token_merging(model, "fast")  # switching replaces, does not stack
    switched = encoder_and_logits(model, x)[1]
    remove_token_merging(model)
    assert torch.equal(encoder_and_logits(model, x)[1], reference)
    assert all("forward" not in module.__dict__ for module in model.modules())
    fresh = sharp_segformer()
    apply_token_merging(fresh, "fast")
    assert torch.equal(encoder_and_logits(fresh, x)[1], switched)
    apply_token_merging(model, "none")
    assert torch.equal(encoder_and_logits(model, x)[1], reference)


def test_batched_samples_merge_independently():
    model, x = sharp_segformer(), pixels()
    apply_token_merging(model, "hq")
    batched = encoder_and_logits(model, x)[1]
    alone = torch.cat([encoder_and_logits(model, x[i : i + 1])[1] for i in range(len(x))])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("preset", ["hq", "fast", "2x2"])
def test_training_step_under_bf16_autocast_reaches_every_weight(preset):
    model = sharp_segformer().train()
    apply_token_merging(model, preset)
    labels = torch.randint(0, len(ID2LABEL), (2, 70, 45), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(pixel_values=pixels(), labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no finite gradient for {missing[:5]}"
    assert model.segformer.stages[0].blocks[0].attention.k_proj.weight.grad.abs().sum() > 0


def test_training_after_inference_mode_use():
    """Predicting (inference mode) and then fine-tuning the same merged model in one process works."""
    grid_split.cache_clear()  # the grids must be first made under inference mode
    model = sharp_segformer()
    apply_token_merging(model, "hq")
    with torch.inference_mode():
        model(pixel_values=pixels())
    labels = torch.zeros(2, 70, 45, dtype=torch.long)
    loss = model.train()(pixel_values=pixels(), labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert model.segformer.stages[2].blocks[0].attention.q_proj.weight.grad.abs().sum() > 0  # merged stage learns


@pytest.mark.parametrize("spec, message", [
    ("hqq", "unknown preset 'hqq'"),
    ([{"query": "neighbor_2D"}] * 4, "unknown query mode 'neighbor_2D'"),
    ([{"kv": "bsm_r2D", "kv_ratio": 0.9}] * 4, "unknown kv mode 'bsm_r2D'"),
    ([{"kv": "bsm", "kv_ratio": 1.5}] * 4, "kv_ratio must be in [0, 1]"),
    ([{"query": "pool", "query_ratio": 0.5}] * 4, "query_ratio=0.5 needs query: bsm"),
    ([{"kv": "bsm", "kv_stride": 0}] * 4, "kv_stride must be a positive integer"),
    ([{"q_mode": "bsm"}] * 4, "unknown stage key(s) q_mode"),
    ([{"kv": "bsm", "kv_ratio": 0.6}] * 3, "4 encoder stages but 3"),
    ("[{not json", "neither a preset nor a JSON list"),
])
def test_bad_settings_are_clear_errors(spec, message):
    with pytest.raises(RecipeError) as err:
        apply_token_merging(build_tiny_segformer(ID2LABEL), spec)
    assert message in str(err.value)


def test_settings_from_a_recipe_or_the_command_line():
    from_yaml = resolve_token_merging([{"kv": "bsm", "kv_ratio": 0.6, "kv_stride": [2, 2]}] * 2
                                      + [{"query": "bsm", "query_ratio": 0.8, "query_stride": 4}] * 2)
    from_cli = resolve_token_merging('[{"kv": "bsm", "kv_ratio": 0.6}, {"kv": "bsm", "kv_ratio": 0.6}, '
                                     '{"query": "bsm", "query_ratio": 0.8, "query_stride": 4}, '
                                     '{"query": "bsm", "query_ratio": 0.8, "query_stride": [4, 4]}]')
    assert from_yaml == from_cli == PRESETS["hq"] == resolve_token_merging("HQ")


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 11), width=st.integers(1, 11), stride_h=st.integers(1, 4), stride_w=st.integers(1, 4),
       ratio=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_matching_round_trip_on_any_grid(height, width, stride_h, stride_w, ratio, seed):
    x = torch.randn(2, height * width, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    matching = bipartite_soft_matching(x, height, width, ratio, (stride_h, stride_w))
    expected = expected_tokens(height, width, "bsm", ratio, (stride_h, stride_w))
    if matching is None:
        assert expected == height * width
        return
    merged = matching.merge(x)
    assert merged.shape == (2, expected, 5)
    sizes = matching.sizes()
    assert torch.equal(sizes.sum(1), torch.full((2,), float(height * width), dtype=sizes.dtype))
    # size-weighted averaging keeps the sum of all tokens
    torch.testing.assert_close((merged * sizes[..., None].to(x.dtype)).sum(1), x.sum(1))
    restored = matching.unmerge(merged)
    assert restored.shape == x.shape
    kept = matching.kept[..., None].expand(-1, -1, 5)
    assert torch.equal(restored.gather(1, kept), x.gather(1, kept))  # unmerged tokens come back as they were
    # every merged-away position gets its destination's merged value
    destination_rows = merged[:, matching.kept.shape[1]:]
    moved, into = matching.moved[..., None].expand(-1, -1, 5), matching.into[..., None].expand(-1, -1, 5)
    assert torch.equal(restored.gather(1, moved), destination_rows.gather(1, into))


@pytest.mark.parametrize("height, width, stride", [(5, 7, (2, 2)), (9, 6, (4, 4)), (3, 2, (2, 3)), (1, 1, (2, 2))])
def test_pooling_round_trip_on_odd_grids(height, width, stride):
    cells = torch.randn(2, 4, math.ceil(height / stride[0]), math.ceil(width / stride[1]))
    blocky = cells.repeat_interleave(stride[0], 2).repeat_interleave(stride[1], 3)[:, :, :height, :width]
    tokens = blocky.flatten(2).transpose(1, 2)
    pooled, pooled_h, pooled_w = pool_tokens(tokens, height, width, stride)
    assert pooled.shape == (2, cells.shape[2] * cells.shape[3], 4)
    torch.testing.assert_close(pooled, cells.flatten(2).transpose(1, 2))  # partial border cells: their own mean
    torch.testing.assert_close(unpool_tokens(pooled, (pooled_h, pooled_w), height, width, stride), tokens)


def test_proportional_attention_makes_merging_duplicate_keys_exact():
    """Keys/values that are exact copies of their destination merge without changing the attention when each
    merged key weighs as the number of tokens it stands for; without that weighting the result moves."""
    model = sharp_segformer()
    attention = model.segformer.stages[3].blocks[0].attention  # sequence reduction 1: keys are the tokens
    height, width, channels = 4, 6, attention.q_proj.in_features
    cells = torch.randn(1, channels, height // 2, width // 2, generator=torch.Generator().manual_seed(3))
    tokens = cells.repeat_interleave(2, 2).repeat_interleave(2, 3).flatten(2).transpose(1, 2)
    with torch.no_grad():
        reference = attention(tokens, height, width)[0]
        outputs = {}
        for proportional in (True, False):
            setting = StageMerging(kv="bsm", kv_ratio=0.5, kv_stride=(2, 2), proportional_attention=proportional)
            apply_token_merging(model, [StageMerging()] * 3 + [setting])
            outputs[proportional] = attention(tokens, height, width)[0]
    torch.testing.assert_close(outputs[True], reference, rtol=1e-5, atol=1e-6)
    assert (outputs[False] - reference).abs().max() > 1e-3


def test_recipe_field_trains_with_token_merging(tmp_path, train_tiny, monkeypatch):
    import hf_segformer.modeling.prepare

    applied = []
    monkeypatch.setattr(hf_segformer.modeling.prepare, "apply_token_merging",
                        lambda model, spec: applied.append(apply_token_merging(model, spec)))
    results = train_tiny(tmp_path, "--token_merging", "hq", "--max_steps", "2")
    assert applied and applied[0] == resolve_token_merging("hq")
    assert 0.0 <= results["eval_mean_iou"] <= 1.0
