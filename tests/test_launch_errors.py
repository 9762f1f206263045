"""A user error met by one process of a multi-process run ends the run with that one `error:` line and exit 2: the
other processes, whose collectives fail with it, exit quietly, and the launcher does not report it again (a run
that cannot go on, exit 1, is said once too). A real crash stays visible in full. The line starts a line of its
own, after any progress bar."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from support.images import write_pairs
from support.models import TINY_ID2LABEL, save_tiny_model
from support.processes import offline_env
from tqdm import tqdm

from hf_segformer import cli
from hf_segformer.commands.launch import HeldLauncherLog
from hf_segformer.errors import DataError, TrainingError
from hf_segformer.training import peer_errors


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line]


@pytest.mark.slow
def test_a_bad_image_met_by_one_of_two_processes_ends_the_run_with_its_one_line_and_exit_2(tmp_path):
    data = tmp_path / "data"
    write_pairs(data, ["a", "b", "c", "d"], split="train", size=(32, 32))
    write_pairs(data, ["a"], split="validation", size=(32, 32))
    bad = data / "images" / "train" / "c.png"
    bad.write_bytes(bad.read_bytes()[:200])  # cut short, as an interrupted copy leaves it
    model = save_tiny_model(tmp_path / "tiny", eval_size=32)
    env = {k: v for k, v in offline_env().items() if not k.startswith("ACCELERATE_")}
    command = [str(Path(sys.executable).with_name("hf-segformer")), "train", "--num_processes", "2", "--data_dir",
               str(data), "--id2label", str(list(TINY_ID2LABEL.values())), "--model_name_or_path", str(model),
               "--output_dir", str(tmp_path / "run"), "--crop_size", "32", "--eval_size", "32", "--train_scale",
               "32", "32", "--per_device_train_batch_size", "2", "--max_steps", "1", "--eval_strategy", "no",
               "--save_strategy", "no", "--report_to", "none", "--check_data", "false", "--precision", "fp32",
               "--dataloader_num_workers", "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            check=False)
    err = result.stderr
    assert result.returncode == 2, err[-3000:]
    (line,) = error_lines(err)  # once: not repeated by the other process or the launcher
    assert line.startswith(f"error: {bad}: cannot be decoded as an image"), err[-3000:]
    for noise in ("Traceback", "Connection closed", "exitcode", "closing signal", "ChildFailedError"):
        assert noise not in err, err[-3000:]
    assert not (tmp_path / "run" / "model.safetensors").exists()


@pytest.fixture()
def group(monkeypatch):
    """Two processes' view of one run's store: `group(rank)` makes this process that rank."""
    store = dist.HashStore()

    def be(rank: int) -> None:
        monkeypatch.setattr(peer_errors, "_group", lambda: (store, rank))

    return be


def raise_(err: Exception):
    def command() -> int:
        raise err
    return command


def test_the_peer_of_a_process_stopped_on_a_user_error_exits_2_quietly(group, capsys):
    group(1)
    assert cli._report_user_errors(raise_(DataError("x.png: cannot be decoded"))) == 2
    assert error_lines(capsys.readouterr().err) == ["error: x.png: cannot be decoded"]
    group(0)  # the other process: its collective fails on the closed connection
    assert cli._report_user_errors(raise_(RuntimeError("Connection closed by peer"))) == 2
    assert capsys.readouterr().err == ""
    assert cli._report_user_errors(raise_(DataError("x.png: cannot be decoded"))) == 2  # met by both: said once
    assert capsys.readouterr().err == ""


def test_a_run_that_cannot_go_on_is_said_once_with_exit_1(group, capsys):
    group(0)
    assert cli._report_user_errors(raise_(TrainingError("Training loss is nan at step 3"))) == 1
    group(1)
    assert cli._report_user_errors(raise_(TrainingError("Training loss is nan at step 3"))) == 1
    assert cli._report_user_errors(raise_(RuntimeError("Connection closed by peer"))) == 1
    assert error_lines(capsys.readouterr().err) == ["error: Training loss is nan at step 3"]


def test_a_crash_with_no_error_said_in_the_run_is_raised_as_it_was(group):
    group(0)
    with pytest.raises(RuntimeError, match="a bug"):
        cli._report_user_errors(raise_(RuntimeError("a bug")))


@pytest.mark.parametrize("code, shown", [(2, False), (1, True), (143, True)])
def test_the_launcher_s_own_lines_are_dropped_only_after_a_user_error(caplog, code, shown):
    caplog.set_level(logging.WARNING)
    with HeldLauncherLog() as held:
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").error("failed (exitcode: %s)", code)
        assert "failed (exitcode" not in caplog.text  # held until the processes end
        held.code = code
    assert ("failed (exitcode" in caplog.text) is shown


def test_the_error_line_starts_its_own_line_after_an_open_progress_bar(capsys):
    def training() -> int:
        bar = tqdm(total=2)
        bar.update(0)
        raise DataError("x.png: cannot be decoded")

    assert cli._report_user_errors(training) == 2
    err = capsys.readouterr().err
    assert err.endswith("\nerror: x.png: cannot be decoded\n")  # the bar ended, and not redrawn after the line
