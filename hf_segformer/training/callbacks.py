"""Trainer callbacks: the sample grid (image | ground truth | prediction | error) at every evaluation, the
last evaluation's metrics (the run's final report reuses them when they are of the final weights), and the base of
callbacks that need the Trainer itself (`TrainerBound`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from transformers import Trainer, TrainerCallback

from hf_segformer.data.images import entry_name, open_image
from hf_segformer.data.labels import LabelDecoder
from hf_segformer.data.loading import spread_indices
from hf_segformer.data.palettes import default_palette
from hf_segformer.inference.segmenter import Segmenter
from hf_segformer.visuals import sample_grid

SAMPLES_FILE = "eval_samples.png"  # the latest evaluation's grid, in output_dir


class TrainerBound(TrainerCallback):
    """A callback that needs the Trainer itself (its TensorBoard writer, an evaluation, its scheduler), beyond what
    transformers hands every callback: `SegformerTrainer` binds the ones it is built with. With another Trainer,
    `callback.bind(trainer)` before `trainer.add_callback(callback)`."""

    trainer: Trainer | None = None

    def bind(self, trainer: Trainer) -> None:
        self.trainer = trainer


class SampleGridCallback(TrainerBound):
    """At each evaluation of a training run, predict a few validation images (whole-image inference, as the
    evaluation does) and log image | ground truth | prediction | error to TensorBoard (`eval/samples`), and
    to `output_dir/eval_samples.png` (the latest evaluation's grid).

    `dataset`: the evaluation split with undecoded `image` / `label` columns. The model and the image
    processor come from the Trainer; TensorBoard is written through the bound Trainer's own TensorBoard writer.
    """

    def __init__(self, dataset, decoder: LabelDecoder, num_samples: int = 4, palette: np.ndarray | None = None):
        self.indices = spread_indices(len(dataset), num_samples)
        self.dataset = dataset
        self.decoder = decoder
        self.palette = palette
        self._samples: list[tuple[Image.Image, np.ndarray]] | None = None

    def _load_samples(self, segmenter: Segmenter) -> list[tuple[Image.Image, np.ndarray]]:
        """The grid's images read as the model reads them (8-bit RGB or its bands), and their masks."""
        if self._samples is None:
            self._samples = []
            for index in self.indices:
                row = self.dataset[index]
                image = segmenter.read(row["image"], entry_name(row["image"]))
                self._samples.append((image, self.decoder(open_image(row["label"]), entry_name(row["label"]))))
        return self._samples

    def on_evaluate(self, args, state, control, model=None, processing_class=None, **kwargs):
        if not state.is_world_process_zero or model is None or processing_class is None or not self.indices:
            return
        was_training = model.training
        segmenter = Segmenter(model, processing_class, device=model.device, precision=args.precision)
        samples = self._load_samples(segmenter)
        predictions = [mask.cpu().numpy() for mask in segmenter.masks([image for image, _ in samples])]
        model.train(was_training)
        palette = self.palette if self.palette is not None else default_palette(model.config.num_labels)
        grid = sample_grid([(image, label, prediction) for (image, label), prediction in zip(samples, predictions)],
                           palette, self.decoder.ignore_index)
        grid.save(Path(args.output_dir) / SAMPLES_FILE)
        writer = self._tensorboard_writer()
        if writer is not None:
            writer.add_image("eval/samples", np.asarray(grid), state.global_step, dataformats="HWC")
            writer.flush()

    def _tensorboard_writer(self):
        from transformers.integrations import TensorBoardCallback

        if self.trainer is None:
            return None
        for callback in self.trainer.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                return callback.tb_writer
        return None


class LastEvaluation(TrainerCallback):
    """The metrics and step of this process's latest evaluation.

    The Trainer evaluates after the last step of a run with an evaluation strategy; the final report needs the
    same numbers, and evaluating the same weights again cost a whole evaluation (12 s of a 25-minute aerial run).
    """

    def __init__(self):
        self.step: int | None = None
        self.metrics: dict | None = None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.step, self.metrics = state.global_step, dict(metrics or {})

    def of_step(self, step: int) -> dict | None:
        """The metrics if the latest evaluation was made at `step`, else None."""
        return self.metrics if self.step == step and self.metrics else None
