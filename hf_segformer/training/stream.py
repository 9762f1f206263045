"""A process's training stream (`data.train_stream.TrainStream`) in the HF Trainer: a data loader that Accelerate
does not shard again (the stream is already this process's part), the position saved into every checkpoint and
restored on resume, and the reported epoch."""

from __future__ import annotations

import logging
import os

import torch
import transformers.trainer
from transformers import TrainerCallback

from hf_segformer.data.train_stream import TrainStream, load_stream_state, save_stream_state
from hf_segformer.errors import DataError

logger = logging.getLogger("hf_segformer")


class StreamEpoch(TrainerCallback):
    """A stream has no epochs: the Trainer counts the run as one epoch of max_steps and reports
    `epoch = steps done / max_steps`, but after a resume (with its data skipping off) it counts the steps of the
    resumed part only. This sets the count from the global step, which a checkpoint restores."""

    def on_step_end(self, args, state, control, **kwargs):
        state.epoch = state.global_step / state.max_steps


class StreamingTrainerMixin:
    """Trainer methods for a `TrainStream` training set (a no-op for any other dataset).

    - The train loader is not sharded by Accelerate: by default Accelerate would have the main process read the
      stream and dispatch slices of it (`dispatch_batches`), or keep one slice of every batch per process
      (`IterableDatasetShard`); either way, on a stream already split by `split_dataset_by_node`, most of the
      data would never be seen.
    - Every checkpoint holds each process's stream position (`stream_state/rank*.json`); resuming restores it, and
      the Trainer's own data skipping (replaying and discarding every batch trained on) is switched off.
    - The reported epoch is the fraction of max_steps done, after a resume too (`StreamEpoch`).
    """

    def get_train_dataloader(self):
        if not isinstance(self.train_dataset, TrainStream):
            return super().get_train_dataloader()
        from accelerate.data_loader import prepare_data_loader

        self.train_dataset.keep_positions((self.args.gradient_accumulation_steps + 4) * self._train_batch_size)
        # Its own generator: starting the iterator draws a seed, which must not come from torch's global RNG (the
        # checkpoint restores that RNG before the iterator starts; dropout would then draw other numbers on resume).
        loader = torch.utils.data.DataLoader(self.train_dataset, batch_size=self._train_batch_size,
                                             collate_fn=self.data_collator, num_workers=0,
                                             pin_memory=self.args.dataloader_pin_memory, generator=torch.Generator())
        return prepare_data_loader(loader, device=self.args.device, num_processes=1, process_index=0,
                                   put_on_device=True, dispatch_batches=False,
                                   non_blocking=self.args.accelerator_config.non_blocking)

    def _stream_consumed(self) -> int:
        return self.state.global_step * self.args.gradient_accumulation_steps * self._train_batch_size

    def _save_checkpoint(self, model, trial) -> None:
        if isinstance(self.train_dataset, TrainStream):  # first, so that a trainer_state.json implies a position
            # The folder the Trainer is writing now: SegformerTrainer saves under a partial name and renames it
            # when complete, so the position goes where the rest of this checkpoint goes.
            prefix = transformers.trainer.PREFIX_CHECKPOINT_DIR
            folder = os.path.join(self._get_output_dir(trial=trial), f"{prefix}-{self.state.global_step}")
            save_stream_state(folder, self.args.process_index, self.train_dataset.state_dict(self._stream_consumed()))
        super()._save_checkpoint(model, trial)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        if isinstance(self.train_dataset, TrainStream):
            self.args.ignore_data_skip = True  # the stream restores its own position
            if not any(isinstance(callback, StreamEpoch) for callback in self.callback_handler.callbacks):
                self.add_callback(StreamEpoch)
            if resume_from_checkpoint:
                if resume_from_checkpoint is True:
                    from transformers.trainer_utils import get_last_checkpoint

                    resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
                    if resume_from_checkpoint is None:
                        raise DataError(f"No checkpoint to resume from in {self.args.output_dir}.")
                self.train_dataset.load_state_dict(load_stream_state(resume_from_checkpoint, self.args.process_index,
                                                                     self.args.world_size))
                logger.info("Training stream resumes at example %d (pass %d).", self.train_dataset._start.consumed,
                            self.train_dataset._start.pass_index)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
