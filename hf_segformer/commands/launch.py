"""`hf-segformer train --num_processes N [--accelerate_config FILE]`: one command starts the training processes
through Accelerate's launcher (`accelerate.commands.launch`), each running `hf-segformer train` on the rest of the
arguments, with the threads and precision a bare `accelerate launch` would get wrong and without its warnings.

    hf-segformer train --config recipe.yaml --num_processes 4
    hf-segformer train --config recipe.yaml --accelerate_config accelerate_configs/multi_gpu_bf16.yaml

One process and no config file: the run stays in this process, as without these options.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from hf_segformer.errors import USER_ERROR_EXIT, RecipeError

TRAIN_MODULE = "hf_segformer.cli"  # what each process runs: `python -m hf_segformer.cli train ...`
LAUNCH_HELP = """\
Launch options (hf-segformer train only, not recipe fields):
  --num_processes N         training processes on this machine (DDP: one per GPU, or gloo on the CPU); each gets
                            an equal share of the cores and decides its precision as one process would
                            (default 1: the run stays in this process)
  --accelerate_config FILE  an Accelerate config file (accelerate_configs/*.yaml) to launch with; --num_processes
                            overrides its num_processes
"""


@dataclass(frozen=True)
class LaunchRequest:
    """What `train` was asked to launch, and the arguments each process trains on."""

    num_processes: int | None
    accelerate_config: str | None
    train_argv: list[str]

    @property
    def in_process(self) -> bool:
        """One process and no config file: run here, no launcher."""
        return self.accelerate_config is None and (self.num_processes or 1) == 1


def split_launch_options(argv: list[str]) -> LaunchRequest:
    """Take --num_processes and --accelerate_config out of train's arguments; bad values are RecipeErrors."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--num_processes")
    parser.add_argument("--accelerate_config")
    known, rest = parser.parse_known_args(argv)
    count = None
    if known.num_processes is not None:
        try:
            count = int(known.num_processes)
        except ValueError:
            count = 0
        if count < 1:
            raise RecipeError(f"--num_processes must be a whole number ≥ 1; got '{known.num_processes}'.")
    config = known.accelerate_config
    if config is not None and not Path(config).is_file():
        raise RecipeError(f"--accelerate_config {config} does not exist; give an Accelerate config file "
                          "(accelerate_configs/*.yaml, or one written by `accelerate config`).")
    return LaunchRequest(count, config, rest)


def read_accelerate_config(path: str) -> dict:
    """The config file's fields (only those that decide how train adds to them are read)."""
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"--accelerate_config {path} is not valid YAML: {err}") from None
    if not isinstance(config, dict):
        raise RecipeError(f"--accelerate_config {path} must be a mapping of field: value.")
    return config


def launcher_arguments(request: LaunchRequest, threads: int) -> list[str]:
    """The `accelerate launch` arguments that start `request`'s processes, `threads` torch threads each.

    Without a config file every value the launcher would otherwise default with a warning is given: one machine,
    mixed_precision 'no' (the run's `precision: auto` decides, per device), no dynamo. Several processes always
    use the DDP launcher (torchrun); on a machine without GPUs each process joins a gloo group. A free port is
    picked unless the config names one, so two runs on one machine do not collide."""
    args: list[str] = []
    config = read_accelerate_config(request.accelerate_config) if request.accelerate_config else {}
    count = request.num_processes or int(config.get("num_processes") or 1)
    if request.accelerate_config:
        args += ["--config_file", request.accelerate_config]
        if request.num_processes:
            args += ["--num_processes", str(request.num_processes)]
        if count > 1 and str(config.get("distributed_type", "NO")).upper() == "NO":
            args.append("--multi_gpu")  # a one-process config given more processes: still DDP
    else:
        args += ["--num_processes", str(count), "--num_machines", "1", "--mixed_precision", "no",
                 "--dynamo_backend", "no"]
        if count > 1:
            args.append("--multi_gpu")
    args += ["--num_cpu_threads_per_process", str(threads)]
    if count > 1 and config.get("main_process_port") is None:
        args += ["--main_process_port", "0"]
    return [*args, "--module", TRAIN_MODULE, "train", *request.train_argv]


def launch_threads(request: LaunchRequest) -> int:
    """Threads per process: the user's OMP_NUM_THREADS, else an equal share of the usable cores."""
    from hf_segformer.runtime import fair_threads

    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    config = read_accelerate_config(request.accelerate_config) if request.accelerate_config else {}
    machines = int(config.get("num_machines") or 1)
    count = request.num_processes or int(config.get("num_processes") or 1)
    return int(fair_threads(max(1, count // machines)).value)


def launch(request: LaunchRequest) -> int:
    """Start the processes and wait for them; the exit code is the first failing process's (2 for a user error),
    whose own `error:` line is already printed, or 128 + the signal that stopped the launcher (143: SIGTERM)."""
    if "LOCAL_RANK" in os.environ or "TORCHELASTIC_RUN_ID" in os.environ:
        raise RecipeError("--num_processes/--accelerate_config: this process was itself started by a launcher "
                          "(accelerate launch, torchrun); give the process count to that launcher, or run "
                          "`hf-segformer train --num_processes N` on its own.")
    with HeldLauncherLog() as held:
        held.code = _launch(request)
    return held.code


def _launch(request: LaunchRequest) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(launcher_arguments(request, launch_threads(request)))
    try:
        launch_command(args)
    except subprocess.CalledProcessError as err:
        return err.returncode
    except ChildFailedError as err:
        codes = [failure.exitcode for failure in err.failures.values()]
        # a user error in one process fails the others' collectives (they exit with it, quietly): it is the cause
        return USER_ERROR_EXIT if USER_ERROR_EXIT in codes else next((code for code in codes if code > 0), 1)
    except SignalException as err:  # SIGTERM (a pre-emption) reached the launcher: it was passed on to the
        # processes, which saved a checkpoint and said how to resume before they ended
        return 128 + int(err.sigval)
    return 0


class HeldLauncherLog(logging.Handler):
    """The launcher's own log lines (torch elastic's: a process failed, the others sent SIGTERM), held until the
    processes end: shown after any other outcome, dropped after a user error, whose one `error:` line the failing
    process printed and which they would only repeat as the launcher's noise."""

    LOGGER = "torch.distributed.elastic"

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.code: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> HeldLauncherLog:
        logger = logging.getLogger(self.LOGGER)
        self._propagate, logger.propagate = logger.propagate, False
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger(self.LOGGER)
        logger.removeHandler(self)
        logger.propagate = self._propagate
        if self.code != USER_ERROR_EXIT:
            for record in self.records:
                logging.getLogger(record.name).handle(record)
