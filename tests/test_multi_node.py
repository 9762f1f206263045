"""Multi-node training through Accelerate: two "machines" on loopback, one CPU process each (gloo).

Both launches use `accelerate_configs/multi_node.yaml` with the flags that `slurm/finetune.sbatch` passes
(`--num_machines 2 --num_processes 2 --machine_rank 0|1 --main_process_ip 127.0.0.1 --main_process_port P`), so
what is tested is the shipped config and what the SLURM template changes in it.

A user relies on: the quickstart recipe trained on two machines logging, at every step, the loss of one process
with the whole batch and ending with its metrics; the same for a stream of shards split by examples between the
machines (`split_dataset_by_node`), augmentation included.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.commands import train_here
from support.processes import ACCELERATE, REPO, eval_metrics, free_port, offline_env, step_losses
from support.streams import tiny_streaming_recipe

QUICKSTART = REPO / "recipes" / "quickstart.yaml"
# The quickstart at CI size: 8 + 4 synthetic 32×32 images, crop = image, 4 steps. Dropout off and the decode
# head's BatchNorm synchronised: otherwise the 2-machine run would legitimately differ from one process (dropout
# masks are drawn per process; BatchNorm would normalise each machine's half batch). The comparisons add fp32
# (auto would pick bf16 on a CPU with native bf16); the SLURM template's run keeps its config's precision.
TINY_QUICKSTART = ["--synthetic_num_train", "8", "--synthetic_num_validation", "4", "--synthetic_image_size", "32",
                   "--crop_size", "32", "--eval_size", "32", "--train_scale", "64", "32", "--ratio_range", "1.0", "1.0",
                   "--hflip_prob", "0.0", "--max_steps", "4", "--logging_steps", "1",
                   "--sync_batchnorm", "true", "--drop_path_rate", "0.0", "--classifier_dropout_prob", "0.0",
                   "--dataloader_num_workers", "0", "--dataloader_persistent_workers", "false", "--report_to", "none",
                   "--per_device_eval_batch_size", "2", "--save_strategy", "steps", "--save_steps", "4"]


def two_machines(script_args: list[str], cwd: Path, timeout: int = 600) -> list[str]:
    """Start `accelerate launch` for machine_rank 0 and 1 at once, as SLURM starts one task per node; their logs."""
    port = str(free_port())
    launches = []
    for rank in (0, 1):
        command = [str(ACCELERATE), "launch", "--config_file", str(REPO / "accelerate_configs/multi_node.yaml"),
                   "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                   "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--mixed_precision", "no",
                   str(REPO / "recipes/finetune.py"), *script_args]
        launches.append(subprocess.Popen(command, cwd=cwd, env=offline_env(), stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True))
    logs = []
    for launch in launches:
        try:
            logs.append(launch.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for other in launches:
                other.kill()
            raise
    for rank, (launch, log) in enumerate(zip(launches, logs)):
        assert launch.returncode == 0, f"machine_rank {rank}:\n{log[-5000:]}"
    return logs


@pytest.mark.slow
def test_quickstart_on_two_machines_trains_like_one_process_with_the_whole_batch(tmp_path):
    # fp32: compared exactly (auto is bf16 on CPUs with native bf16)
    common = ["--config", str(QUICKSTART), "--data_dir", str(tmp_path / "data"), *TINY_QUICKSTART, "--precision", "fp32"]
    logs = two_machines([*common, "--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "2"],
                        tmp_path)
    assert ("2 process(es) (DistributedType.MULTI_CPU), per-device train batch 2 × gradient accumulation 1 → 4 "
            "images per optimizer step; decode-head BatchNorm synchronised") in logs[0]
    # the process of machine 1 is global rank 1: it wrote its own RNG state into the shared checkpoint folder
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoint-4").glob("rng_state*")) == \
           ["rng_state_0.pth", "rng_state_1.pth"]
    train_here(*common, "--output_dir", tmp_path / "one", "--per_device_train_batch_size", "4")  # the reference

    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    assert [two[s] for s in sorted(two)] == pytest.approx([one[s] for s in sorted(one)], rel=1e-4)
    assert eval_metrics(tmp_path / "two") == pytest.approx(eval_metrics(tmp_path / "one"), rel=1e-4, abs=1e-5,
                                                           nan_ok=True)


@pytest.mark.slow
def test_a_stream_split_by_examples_over_two_machines_trains_like_one_process(tmp_path):
    # 12 pairs in 3 shards (3 is not a multiple of 2: `auto` splits by examples, as asked here explicitly);
    # 4 steps × 4 images cross into a second pass; flips and colour distortion are drawn per example.
    recipe = tiny_streaming_recipe(tmp_path, num_train=12, train_shards=3, max_steps=4, streaming_split="examples",
                                   hflip_prob=0.5, photometric_distortion=True, sync_batchnorm=True,
                                   drop_path_rate=0.0, classifier_dropout_prob=0.0)
    logs = two_machines(["--config", str(recipe), "--output_dir", str(tmp_path / "two"),
                         "--per_device_train_batch_size", "2"], tmp_path)
    assert "Training stream: process 0 of 2 reads all shards, keeping 1 example in 2" in logs[0]
    train_here("--config", recipe, "--output_dir", tmp_path / "one", "--per_device_train_batch_size", "4")

    one, two = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert sorted(two) == [1, 2, 3, 4]
    assert [two[s] for s in sorted(two)] == pytest.approx([one[s] for s in sorted(one)], rel=1e-4)
    # Evaluation after 4 steps: the 2-process SyncBN sums in another order, and the steps' rounding (3e-5 to 7e-5 of
    # the loss at steps 3-4) grows to 4.6e-4 of eval_loss on this data (measured); mIoU and accuracies agree exactly.
    assert eval_metrics(tmp_path / "two") == pytest.approx(eval_metrics(tmp_path / "one"), rel=1e-3, abs=1e-5,
                                                           nan_ok=True)


FAKE_SRUN = """#!/usr/bin/env bash
# Stand-in for srun: the task once per node of the job (SLURM_NODEID 0 … SLURM_NNODES-1), all at once, here.
while [[ "$1" == --* ]]; do shift; done
pids=()
for node in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$node "$@" & pids+=($!); done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo 127.0.0.1   # scontrol show hostnames: the first node of the allocation is this machine
"""


@pytest.mark.slow
def test_the_slurm_template_starts_a_two_node_run(tmp_path):
    """`sbatch accelerate_configs/slurm/finetune.sbatch` as SLURM would run it on 2 nodes with 1 GPU each, with
    srun and scontrol played on this machine: the job trains with 2 processes, one per node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    job = tmp_path / "job"  # the submit folder: the repository root (recipes/, accelerate_configs/)
    job.mkdir()
    for folder in ("recipes", "accelerate_configs"):
        (job / folder).symlink_to(REPO / folder)
    env = {**offline_env(), "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_GPUS_ON_NODE": "1",
           "SLURM_CPUS_PER_TASK": "1", "MAIN_PROCESS_PORT": str(free_port()), "RECIPE": "recipes/quickstart.yaml"}
    result = subprocess.run(["bash", str(REPO / "accelerate_configs/slurm/finetune.sbatch"),
                             "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "run"),
                             *TINY_QUICKSTART, "--max_steps", "2", "--save_steps", "2",
                             "--per_device_train_batch_size", "2"],
                            cwd=job, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "main process 127.0.0.1:" in log and "2 machines, 2 processes" in log
    assert "2 process(es) (DistributedType.MULTI_CPU), per-device train batch 2" in log
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoint-2").glob("rng_state*")) == \
           ["rng_state_0.pth", "rng_state_1.pth"]
    assert (tmp_path / "run" / "eval_results.json").is_file()
