"""`SegformerTrainer`: the HF Trainer with a segmentation loss, the published SegFormer optimizer groups,
a guard against NaN/Inf losses and streaming confusion-matrix evaluation."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
import transformers.trainer
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from hf_segformer.data.augmented_pairs import AugmentedPairs, EpochKeyedSampler
from hf_segformer.errors import TrainingError
from hf_segformer.evaluation.metrics import confusion_and_loss, confusion_matrices
from hf_segformer.hub.folder_upload import PublicUploads
from hf_segformer.logits import pack_labels
from hf_segformer.modeling.lora import saving_adapter
from hf_segformer.training.callbacks import TrainerBound
from hf_segformer.training.ema import WeightAverage
from hf_segformer.training.losses import SegmentationLoss
from hf_segformer.training.stream import StreamingTrainerMixin

logger = logging.getLogger(__name__)

# A checkpoint is written under this name and renamed `checkpoint-N` once complete: `get_last_checkpoint` (and so
# `resume_from_checkpoint: last`) never sees one cut short, and output_dir's claim still counts it as a run's.
PARTIAL_CHECKPOINT_PREFIX = f"{PREFIX_CHECKPOINT_DIR}-partial"
PARTIAL_MODEL = f"{PREFIX_CHECKPOINT_DIR}-partial-model"  # the final model, moved into output_dir once complete


class SegformerTrainer(StreamingTrainerMixin, Trainer):
    """Trainer whose evaluation keeps one C×C confusion matrix per sample instead of every logit.

    `prediction_step` returns per-sample confusion matrices as the "predictions" (the Trainer then gathers
    them across processes without double-counting the samples that distributed samplers repeat) and the
    number of labelled pixels per sample as the "labels"; `SegmentationMetrics` sums them.
    With `eval_confusion=False` it returns the logits as the plain Trainer does, and the labels as
    `pack_labels` rows (the Trainer pads only dimension 1 when it concatenates batches, so label maps of
    different widths would not stack): the classic path of `metric_backend: evaluate_hub`, where
    `compute_metrics` (`LogitsMeanIoU`) gets every logit at once.
    A streaming training set (`TrainStream`) gets its own loader and its position saved in every checkpoint
    (`StreamingTrainerMixin`).

    Built with what the run needs: `train_sampler` (e.g. data.rare_classes.RareClassSampler; None: the Trainer's
    own), `ema` (a training.ema.WeightAverage of `model`, when the recipe sets ema_decay: evaluated and saved as
    the model) and the callbacks; those that need the Trainer itself (`TrainerBound`) are bound to it here.
    """

    def __init__(self, *args: Any, ignore_index: int = 255, eval_confusion: bool = True,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 train_sampler: torch.utils.data.Sampler | None = None, ema: WeightAverage | None = None,
                 callbacks: list[TrainerCallback] | None = None, **kwargs: Any):
        if ema is not None:  # ahead of the others: the average is updated before a callback evaluates the step
            callbacks = [ema, *(callbacks or [])]
        super().__init__(*args, callbacks=callbacks, **kwargs)
        for callback in callbacks or []:
            if isinstance(callback, TrainerBound):
                callback.bind(self)
        self.ignore_index = ignore_index
        self.loss_fn = loss_fn or SegmentationLoss(ignore_index=ignore_index)
        self.eval_confusion = eval_confusion
        self._batch_confusion: torch.Tensor | None = None  # set by compute_loss during evaluation
        # Our loss is already a mean over pixels: the Trainer must divide by the accumulation steps itself
        # and must not rescale by the world size (it would if it believed the model used num_items_in_batch).
        self.model_accepts_loss_kwargs = False
        self.nonfinite_losses = 0
        self.ema = ema
        self.train_sampler = train_sampler
        self._checkpoint_to_push: str | None = None  # a partial checkpoint, pushed once renamed
        if isinstance(self.train_dataset, AugmentedPairs):
            self.add_callback(AugmentationEpoch(self.train_dataset))

    def _get_train_sampler(self, train_dataset=None):
        if self.train_sampler is not None and (train_dataset is None or train_dataset is self.train_dataset):
            sampler = self.train_sampler
        else:
            sampler = super()._get_train_sampler(train_dataset)
        pairs = self.train_dataset if train_dataset is None else train_dataset
        if not isinstance(pairs, AugmentedPairs):
            return sampler
        return EpochKeyedSampler(None if isinstance(sampler, torch.utils.data.RandomSampler) else sampler, pairs)

    def evaluate(self, *args, **kwargs):
        """With `ema_decay`, the averaged weights are what is evaluated."""
        with self.ema.swapped() if self.ema is not None else contextlib.nullcontext():
            return super().evaluate(*args, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """With `ema_decay`, the saved model is the average; checkpoints (`_internal_call`) keep the raw
        weights the optimizer state belongs to, and the average beside them."""
        use_average = self.ema is not None and not _internal_call
        with (self.ema.swapped() if use_average else contextlib.nullcontext(),
              saving_adapter(self.model, output_dir or self.args.output_dir, self.args.should_save)):
            return super().save_model(output_dir, _internal_call)

    def save_model_atomically(self, output_dir: str | None = None) -> None:
        """`save_model` into a partial folder whose files are then moved into `output_dir`: a save cut short (a full
        disk, a kill) leaves no half-written model.safetensors, nor replaces the one a finished run saved."""
        output_dir = output_dir or self.args.output_dir
        partial = os.path.join(output_dir, PARTIAL_MODEL)
        with saving_explained(output_dir, "the final model", "The partial model was removed; nothing saved before "
                              "was replaced"):
            try:
                self.save_model(partial)
            except BaseException:
                if self.args.should_save:
                    shutil.rmtree(partial, ignore_errors=True)
                raise
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            for name in os.listdir(partial):
                os.replace(os.path.join(partial, name), os.path.join(output_dir, name))
            os.rmdir(partial)
        self.accelerator.wait_for_everyone()

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written as `checkpoint-partial-N` and renamed `checkpoint-N` when complete (see
        PARTIAL_CHECKPOINT_PREFIX); a full disk removes the partial folder and says so."""
        run_dir = self._get_output_dir(trial=trial)
        step = self.state.global_step
        final = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        partial = os.path.join(run_dir, f"{PARTIAL_CHECKPOINT_PREFIX}-{step}")
        if self.args.should_save:
            shutil.rmtree(partial, ignore_errors=True)  # left by a save that was killed
        self.accelerator.wait_for_everyone()
        with saving_explained(run_dir, f"checkpoint-{step}", "The partial checkpoint was removed; the earlier "
                              "checkpoints are intact"):
            transformers.trainer.PREFIX_CHECKPOINT_DIR = PARTIAL_CHECKPOINT_PREFIX  # the name it saves under
            try:
                super()._save_checkpoint(model, trial)
            except BaseException:
                if self.args.should_save:
                    shutil.rmtree(partial, ignore_errors=True)
                raise
            finally:
                transformers.trainer.PREFIX_CHECKPOINT_DIR = PREFIX_CHECKPOINT_DIR
        if self.state.best_model_checkpoint == partial:
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(partial, "trainer_state.json"))
        self.accelerator.wait_for_everyone()  # every process's files (rng_state_N.pth) are in
        if self.args.should_save:
            replaced = f"{partial}-replaced"
            if os.path.isdir(final):  # the same step saved again
                os.replace(final, replaced)
            os.replace(partial, final)
            shutil.rmtree(replaced, ignore_errors=True)
            if self._checkpoint_to_push == partial:
                self._checkpoint_to_push = None
                self._push_from_checkpoint(final)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The Trainer's own push during training (`hub_strategy`), uploading what `push_model` would (a LoRA
        adapter's config without local paths: `hub.folder_upload`). A partial checkpoint is pushed once renamed: the
        upload runs in the background and reads the folder by its name."""
        if os.path.basename(checkpoint_folder).startswith(PARTIAL_CHECKPOINT_PREFIX):
            self._checkpoint_to_push = checkpoint_folder
            return
        with uploading_publicly():
            super()._push_from_checkpoint(checkpoint_folder)

    def push_to_hub(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's push of output_dir (`save_model` makes one with push_to_hub), uploading what `push_model`
        would."""
        with uploading_publicly():
            return super().push_to_hub(*args, **kwargs)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the decode head at `head_lr_multiplier` × the learning rate.

        Weight decay follows the Trainer's rule (none on biases and on every norm layer: the encoder's
        LayerNorms and the head's BatchNorm), as the published recipe's `norm: decay_mult 0`. MiT has no
        separate position block: position comes from the Mix-FFN's depthwise convolutions, which keep decay
        (MMSegmentation's `pos_block` key matches nothing in MiT either). Multiplier 1: the plain Trainer.
        """
        multiplier = getattr(self.args, "head_lr_multiplier", 1.0)
        if self.optimizer is not None or multiplier == 1.0:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                head = "decode_head" in name.split(".")  # also under peft's prefix (base_model.model.)
                groups.setdefault((head, name in decay), []).append(param)
        lr = self.args.learning_rate
        # Encoder groups first: the Trainer logs the learning rate of the first group.
        param_groups = [{"params": params, "lr": lr * (multiplier if head else 1.0),
                         "weight_decay": self.args.weight_decay if decays else 0.0}
                        for (head, decays), params in sorted(groups.items())]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        if {"params", "model"} & set(optimizer_kwargs):
            raise ValueError(f"head_lr_multiplier cannot be combined with optim={self.args.optim}, which builds "
                             "its own parameter groups; set head_lr_multiplier: 1.0.")
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's scheduler, with the warm-up clamped to leave at least one decay step.

        A warm-up ratio rounds up (5 % of 1 step is 1 step), and transformers' polynomial schedule then divides by
        zero decay steps: `--max_steps 1`, the usual smoke test, must run with any schedule.
        """
        if self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        warmup = self.args.get_warmup_steps(num_training_steps)
        clamped = max(0, min(warmup, num_training_steps - 1))
        if clamped == warmup:
            return super().create_scheduler(num_training_steps, optimizer)
        logger.info("Warm-up of %d step(s) leaves no step to decay over in a %d-step run: warm-up clamped to %d.",
                    warmup, num_training_steps, clamped)
        original = self.args.warmup_steps
        self.args.warmup_steps = clamped
        try:
            return super().create_scheduler(num_training_steps, optimizer)
        finally:
            self.args.warmup_steps = original

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels", None)
        if labels is None:
            raise ValueError("SegformerTrainer needs 'labels' in every batch.")
        sizes = inputs.pop("pixel_sizes", None)
        if sizes is not None:  # images of different sizes, padded by the collator (keep-ratio evaluation)
            loss = self._evaluate_by_size(model, inputs["pixel_values"], labels, sizes)
            return (loss, {"loss": loss}) if return_outputs else loss
        outputs = model(**inputs)
        if model.training:
            loss = self._finite_or_skipped(self.loss_fn(outputs.logits, labels), model)
        elif not self.eval_confusion:
            loss = self.loss_fn(outputs.logits, labels)
        else:  # evaluation: plain cross-entropy and the confusion matrices share one upsampling per sample
            self._batch_confusion, loss = confusion_and_loss(outputs.logits, labels, outputs.logits.shape[1],
                                                             self.ignore_index)
        outputs["loss"] = loss
        return (loss, outputs) if return_outputs else loss

    def _evaluate_by_size(self, model, pixel_values: torch.Tensor, labels: torch.Tensor,
                          sizes: torch.Tensor) -> torch.Tensor:
        """Confusion matrices and mean cross-entropy of a batch of padded images, each image run without its padding
        (together with the others of its size): the prediction must not depend on what it was batched with."""
        if model.training or not self.eval_confusion:
            raise ValueError("Images of different sizes in one batch are supported only for evaluation with "
                             "metric_backend: confusion (use eval_size, not eval_scale, with evaluate_hub).")
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (height, width) in enumerate(sizes.tolist()):
            groups[(height, width)].append(i)
        confusion, loss_sum, pixels = None, 0.0, 0
        for (height, width), indices in groups.items():
            logits = model(pixel_values=pixel_values[indices, :, :height, :width]).logits
            if confusion is None:
                confusion = torch.zeros((len(sizes), logits.shape[1], logits.shape[1]), dtype=torch.int64,
                                        device=logits.device)
            part, loss = confusion_and_loss(logits, labels[indices], logits.shape[1], self.ignore_index)
            confusion[indices] = part
            loss_sum, pixels = loss_sum + loss * part.sum(), pixels + part.sum()
        self._batch_confusion = confusion
        return loss_sum / max(int(pixels), 1)

    def _finite_or_skipped(self, loss: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
        """The loss, or — for a NaN/Inf loss, up to `max_nonfinite_losses` times — a zero loss that still
        reaches every parameter (DDP expects a gradient from each process); past that, a clear error."""
        if torch.isfinite(loss):
            return loss
        self.nonfinite_losses += 1
        value = loss.detach().item()
        allowed = getattr(self.args, "max_nonfinite_losses", 0)
        step, epoch = self.state.global_step + 1, self.state.epoch or 0.0
        if self.nonfinite_losses > allowed:
            raise TrainingError(nonfinite_loss_message(value, step, epoch, self.args,
                                                       self._get_learning_rate() if self.lr_scheduler else None))
        logger.warning("Training loss is %s at step %d (epoch %.2f): batch skipped (%d of %d allowed).",
                       value, step, epoch, self.nonfinite_losses, allowed)
        return torch.stack([param.sum() for param in model.parameters() if param.requires_grad]).sum() * 0.0

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        self._batch_confusion = None
        loss, logits, labels = super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        if prediction_loss_only or labels is None:
            return loss, logits, labels
        confusion = self._batch_confusion
        if confusion is None:
            if logits is None:
                return loss, logits, labels
            if not self.eval_confusion:
                return loss, logits, pack_labels(labels)
            confusion = confusion_matrices(logits, labels, logits.shape[1], self.ignore_index)
        return loss, confusion, confusion.sum(dim=(1, 2))

    # transformers 5 saves SegFormer under its legacy parameter names (`segformer.encoder.block…`) and renames
    # them on `from_pretrained`, but the Trainer reloads checkpoints (resume, load_best_model_at_end) with a
    # raw, non-strict `load_state_dict`: only the 8 decode-head tensors whose names did not change are
    # restored, silently. Plain checkpoints are therefore reloaded through `from_pretrained`, strictly.

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        if self.ema is not None and model is None:
            self.ema.resume_folder = resume_from_checkpoint
        if model is None and self._is_plain_checkpoint(resume_from_checkpoint):
            self._load_weights_strictly(resume_from_checkpoint)
        else:
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self) -> None:
        if self._is_plain_checkpoint(self.state.best_model_checkpoint):
            self._load_weights_strictly(self.state.best_model_checkpoint)
        else:
            super()._load_best_model()
        if self.ema is not None:  # the best evaluation was of that checkpoint's average
            self.ema.load(self.state.best_model_checkpoint)

    def _is_plain_checkpoint(self, folder: str | None) -> bool:
        return (folder is not None and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
                and os.path.isfile(os.path.join(folder, "config.json"))
                and any(os.path.isfile(os.path.join(folder, name))
                        for name in ("model.safetensors", "model.safetensors.index.json")))

    def _load_weights_strictly(self, folder: str) -> None:
        reloaded = type(self.model).from_pretrained(folder)
        self.model.load_state_dict(reloaded.state_dict(), strict=True)
        logger.info("Loaded all %d tensors from %s", len(reloaded.state_dict()), folder)


def nonfinite_loss_message(value: float, step: int, epoch: float, args: Any, learning_rate: float | None) -> str:
    """Why a loss becomes NaN/Inf, for the run's own settings."""
    causes = []
    if args.fp16:
        causes.append("fp16 overflow in the forward pass (activations above 65 504): use bf16 (same speed on "
                      "recent GPUs, fp32 range) or fp32")
    lr = f" ({learning_rate:.3g} now)" if learning_rate is not None else ""
    causes.append(f"a learning rate too high for this batch size{lr}: lower learning_rate, or lengthen "
                  "warmup_steps, or set max_grad_norm (1.0)")
    if getattr(args, "class_weights", None) is not None:
        causes.append("extreme class weights: lower class_weight_clip")
    causes.append("a corrupt input batch: run `hf-segformer check-data` on the recipe")
    output_dir = getattr(args, "output_dir", None)
    has_checkpoint = bool(output_dir) and os.path.isdir(output_dir) and any(
        name.startswith("checkpoint-") for name in os.listdir(output_dir))
    then = ("Resume from the last checkpoint with --resume_from_checkpoint last after the change"
            if has_checkpoint else
            f"No checkpoint was saved yet (output_dir {output_dir}): start again after the change, with "
            "--overwrite_output_dir")
    return (f"Training loss is {value} at step {step} (epoch {epoch:.2f}); stopping rather than training on "
            "NaNs. Likely causes: " + "; ".join(causes) + f". {then}, or allow a few skipped batches with "
            "max_nonfinite_losses: N.")


class AugmentationEpoch(TrainerCallback):
    """Tells `AugmentedPairs` the epoch that starts (after a resume, the checkpoint's), before its sampler runs."""

    def __init__(self, pairs: AugmentedPairs):
        self.pairs = pairs

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.pairs.epoch = int((state.epoch or 0.0) + 1e-6)  # 2.9999 after 3 epochs of float steps: epoch 3


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC as Python raises it, or as safetensors and torch's zip writer report it (no errno there: torch says
    "[enforce fail at inline_container.cc…] file write failed" or "unexpected pos")."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return True
    text = str(err)
    return "No space left on device" in text or "inline_container" in text


@contextlib.contextmanager
def uploading_publicly() -> Iterator[None]:
    """The Trainer's uploads (transformers' shared `hf_api`) made through `hub.folder_upload.PublicUploads`."""
    shared_api = transformers.trainer.hf_api
    transformers.trainer.hf_api = lambda: PublicUploads(shared_api())
    try:
        yield
    finally:
        transformers.trainer.hf_api = shared_api


@contextlib.contextmanager
def saving_explained(folder: str, what: str, kept: str) -> Iterator[None]:
    """A full disk while saving `what` into `folder` is a TrainingError saying so, with the space left and what
    was kept."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        if not is_disk_full(err):
            raise
        try:
            free = f"{shutil.disk_usage(folder).free / 1024**3:.2f} GB free"
        except OSError:
            free = "free space unknown"
        raise TrainingError(f"The disk is full: saving {what} into {folder} failed ({free}). {kept}. Free some "
                            "space (or lower save_total_limit, or pick an output_dir on another disk) and resume "
                            "with --resume_from_checkpoint last.") from err


@contextlib.contextmanager
def out_of_memory_explained(args: Any, crop_size: int, during: str) -> Iterator[None]:
    """Running out of memory inside the block is a TrainingError naming this run's memory knobs (`during`: what ran
    out of memory, e.g. "training")."""
    try:
        yield
    except torch.OutOfMemoryError as err:
        raise TrainingError(out_of_memory_message(args, crop_size, during)) from err


def out_of_memory_message(args: Any, crop_size: int, during: str) -> str:
    """The knobs that bring a run's memory down, with this run's values."""
    return (f"Out of memory during {during} (per-device train batch {args.per_device_train_batch_size}, "
            f"crop_size {crop_size}, gradient_accumulation_steps {args.gradient_accumulation_steps}, "
            f"activation_checkpointing {bool(args.activation_checkpointing)}, eval batch "
            f"{args.per_device_eval_batch_size}). To fit: halve per_device_train_batch_size and double "
            "gradient_accumulation_steps (same effective batch); or set activation_checkpointing: true (about "
            "30% slower, much less activation memory); or lower crop_size; use bf16/fp16 if not already; "
            "for evaluation lower per_device_eval_batch_size or eval_size. Resume with "
            "--resume_from_checkpoint last.")
