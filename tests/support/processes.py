"""Runs in their own processes, as the tests launch them: offline, one torch thread each (the machine has two
cores), unbuffered output captured; a free port for Accelerate's rendezvous and app servers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = Path(sys.executable).with_name("accelerate")
RUNTIME = ("runtime", "per_second")  # metrics that change from run to run


def offline_env() -> dict[str, str]:
    """The environment of a test's process: no Hub, one thread, unbuffered, the repository importable."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def run_offline(command: list[str], cwd: str | Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a training/evaluation process; stdout and stderr captured, the exit code left to the caller."""
    return subprocess.run(command, cwd=cwd, env=offline_env(), capture_output=True, text=True, timeout=timeout)


def run(command: list[str], cwd: Path, expect_code: int = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    """`run_offline` that asserts the exit code, showing the output's tail when it differs."""
    result = run_offline(command, cwd, timeout)
    assert result.returncode == expect_code, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def finetune(recipe: Path, output_dir: Path, *extra: str, script: str = "recipes/finetune.py",
             expect_code: int = 0) -> subprocess.CompletedProcess:
    """A training run of `recipe` (or of a test script taking the same arguments) in its own process."""
    return run([sys.executable, str(REPO / script), "--config", str(recipe), "--output_dir", str(output_dir),
                *extra], recipe.parent, expect_code)


def step_losses(output_dir: Path) -> dict[int, float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}


def eval_metrics(output_dir: Path) -> dict:
    """The numbers of eval_results.json that two runs of the same weights must share (not timings, not labels such
    as the evaluation precision)."""
    metrics = json.loads((output_dir / "eval_results.json").read_text())
    return {k: v for k, v in metrics.items() if not k.endswith(RUNTIME) and isinstance(v, (int, float))}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ISOLATED_TEST = "HF_SEGFORMER_ISOLATED_TEST"


def ran_in_own_process(nodeid: str) -> bool:
    """Run the test `nodeid` again in a fresh pytest process and assert it passed there; True in the suite's
    process, False inside that fresh process (where the test body runs). For tests that load OpenVINO/NNCF: their
    runtime threads and torch patches must not live on in the suite's process."""
    if os.environ.get(ISOLATED_TEST) == nodeid:
        return False
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid], cwd=REPO,
                            env={**offline_env(), ISOLATED_TEST: nodeid}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and "1 passed" in result.stdout, result.stdout[-6000:] + result.stderr[-3000:]
    return True
