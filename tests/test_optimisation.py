"""The optimisation recipe: loss scaling under accumulation and DDP, activation checkpointing, SyncBatchNorm,
the published parameter groups and schedule, and the loss at the logits' resolution.

A user relies on: the same effective batch giving the same training (loss and gradients) whether it is one
batch, accumulated micro-batches or several processes; `head_lr_multiplier` and the warm-up + poly schedule
doing what the published SegFormer recipe does; `loss_resolution: logits` being the loss of the downsampled
labels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from scripts.train_step_script import one_step, samples, tiny_model
from support.processes import ACCELERATE, run_offline
from torch import nn

from hf_segformer.errors import RecipeError
from hf_segformer.modeling.batchnorm import AllReduceBatchNorm2d, convert_sync_batchnorm
from hf_segformer.training.arguments import SegformerTrainingArguments
from hf_segformer.training.losses import SegmentationLoss, downsample_labels
from hf_segformer.training.trainer import SegformerTrainer

ROOT = Path(__file__).resolve().parents[1]


def assert_same_gradients(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys() and len(expected) > 100
    scale = max(g.abs().max().item() for g in expected.values())
    for name, gradient in expected.items():
        torch.testing.assert_close(actual[name], gradient, rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.fixture(scope="module")
def one_batch_frozen_bn() -> dict:
    return one_step(4, frozen_batchnorm=True)


@pytest.mark.parametrize("batch_size,accumulation", [(2, 2), (1, 4)])
def test_accumulation_gives_the_gradients_of_one_batch(one_batch_frozen_bn, batch_size, accumulation):
    accumulated = one_step(batch_size, accumulation, frozen_batchnorm=True)
    assert accumulated["loss"] == pytest.approx(one_batch_frozen_bn["loss"], rel=1e-4)
    assert_same_gradients(accumulated["gradients"], one_batch_frozen_bn["gradients"])


def test_logged_loss_is_the_batch_mean_not_scaled(one_batch_frozen_bn):
    model = tiny_model()
    model.decode_head.batch_norm.eval()
    batch = samples()
    with torch.no_grad():
        logits = model(torch.stack([s["pixel_values"] for s in batch])).logits
    expected = SegmentationLoss(ignore_index=255)(logits, torch.stack([s["labels"] for s in batch]))
    assert one_batch_frozen_bn["loss"] == pytest.approx(float(expected), rel=1e-3)


def test_activation_checkpointing_gives_the_same_gradients(one_batch_frozen_bn):
    checkpointed = one_step(4, frozen_batchnorm=True, activation_checkpointing=True)
    assert checkpointed["loss"] == pytest.approx(one_batch_frozen_bn["loss"], rel=1e-5)
    assert_same_gradients(checkpointed["gradients"], one_batch_frozen_bn["gradients"])


@pytest.mark.slow
def test_two_processes_train_like_one_batch(tmp_path):
    """2 CPU processes × batch 2 (gloo) with synchronised BatchNorm = 1 process × batch 4, BatchNorm training."""
    output = tmp_path / "ddp.pt"
    command = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "accelerate_configs/cpu_2proc.yaml"),
               "--main_process_port", "0", str(ROOT / "tests/scripts/train_step_script.py"), str(output), "--batch_size", "2",
               "--sync_batchnorm"]
    result = run_offline(command, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ddp = torch.load(output)
    single = one_step(4)
    assert ddp["world_size"] == 2
    assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-4)  # not × world size
    assert_same_gradients(ddp["gradients"], single["gradients"])


def test_all_reduce_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    synced = convert_sync_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)), on_gpu=False)
    synced.load_state_dict(plain.state_dict())
    assert isinstance(synced[1], AllReduceBatchNorm2d)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(synced(x), plain(x))
    torch.testing.assert_close(synced[1].running_var, plain[1].running_var)


# ----------------------------------------------------------------------------------------------------------------
# Parameter groups and schedule
# ----------------------------------------------------------------------------------------------------------------


def make_trainer(tmp_path, **overrides) -> SegformerTrainer:
    args = SegformerTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, learning_rate=1e-3,
                                      weight_decay=0.01, **overrides)
    return SegformerTrainer(model=tiny_model(), args=args, train_dataset=samples())


def test_published_parameter_groups(tmp_path):
    trainer = make_trainer(tmp_path, head_lr_multiplier=10.0)
    optimizer = trainer.create_optimizer()
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    no_decay = set()
    for module_name, module in trainer.model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            if isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)) or name == "bias":
                no_decay.add(f"{module_name}.{name}")
    assert any("batch_norm" in n for n in no_decay) and any("layer_norm" in n for n in no_decay)
    for name, param in trainer.model.named_parameters():
        lr, decay = setting[id(param)]
        assert lr == pytest.approx(1e-2 if name.startswith("decode_head.") else 1e-3), name
        assert decay == (0.0 if name in no_decay else 0.01), name
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)  # the logged learning rate is the encoder's


def test_multiplier_one_is_the_plain_trainer(tmp_path):
    groups = make_trainer(tmp_path).create_optimizer().param_groups
    assert len(groups) == 2 and {g["lr"] for g in groups} == {1e-3}


def test_warmup_then_poly_keeps_the_head_at_ten_times(tmp_path):
    trainer = make_trainer(tmp_path, head_lr_multiplier=10.0, warmup_steps=10, lr_scheduler_type="polynomial",
                           lr_scheduler_kwargs={"power": 1.0, "lr_end": 0.0})
    trainer.create_optimizer_and_scheduler(num_training_steps=110)
    encoder, head = [], []
    for _ in range(110):
        lrs = sorted({g["lr"] for g in trainer.optimizer.param_groups})
        encoder.append(lrs[0])
        head.append(lrs[-1])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert encoder[0] == 0.0 and encoder[5] == pytest.approx(0.5e-3) and encoder[10] == pytest.approx(1e-3)
    assert encoder[60] == pytest.approx(0.5e-3)  # power 1: halfway through the decay, half the rate
    assert encoder[109] == pytest.approx(1e-3 / 100)
    assert all(h == pytest.approx(10 * e) for h, e in zip(head[1:], encoder[1:]))


def test_bad_optimisation_fields_are_recipe_errors(tmp_path):
    with pytest.raises(RecipeError, match="head_lr_multiplier"):
        SegformerTrainingArguments(output_dir=str(tmp_path), head_lr_multiplier=0.0)
    with pytest.raises(RecipeError, match="loss_resolution"):
        SegformerTrainingArguments(output_dir=str(tmp_path), loss_resolution="half")


# ----------------------------------------------------------------------------------------------------------------
# Loss at the logits' resolution
# ----------------------------------------------------------------------------------------------------------------


def test_downsample_labels_takes_each_cells_majority():
    labels = torch.tensor([[0, 0, 1, 1],
                           [0, 2, 1, 255],
                           [3, 3, 255, 255],
                           [3, 1, 255, 2]])[None]
    assert downsample_labels(labels, (2, 2)).tolist() == [[[0, 1], [3, 255]]]
    tie = torch.tensor([[5, 5], [2, 2]])[None]  # two labels, two pixels each: the smaller wins
    assert downsample_labels(tie, (1, 1)).tolist() == [[[2]]]
    odd = torch.arange(30).reshape(1, 5, 6)  # not a multiple: nearest neighbour
    assert downsample_labels(odd, (2, 3)).shape == (1, 2, 3)


def test_loss_at_logits_resolution_is_the_loss_of_downsampled_labels():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 8, 8, requires_grad=True)
    labels = torch.randint(0, 5, (2, 32, 32))
    labels[:, :4, :] = 255
    at_logits = SegmentationLoss(ignore_index=255, resolution="logits")(logits, labels)
    small = downsample_labels(labels, (8, 8))
    expected = nn.functional.cross_entropy(logits, small, ignore_index=255)
    torch.testing.assert_close(at_logits, expected)
    assert not torch.allclose(at_logits, SegmentationLoss(ignore_index=255)(logits, labels))
