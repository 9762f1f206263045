"""Fixtures over the support code in tests/support/ (tiny image/mask folders, tiny models, a tiny training run).

Everything is small (32×48 images, a handful of files) so that the suite stays fast on a 2-core machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import tempfile  # noqa: E402
from contextlib import ExitStack  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from support import machine_share  # noqa: E402
from support.images import save_exif_rotated, save_image, save_mask, stripes_mask, write_pairs  # noqa: E402
from support.models import build_tiny_segformer, save_tiny_model  # noqa: E402

from hf_segformer import runtime  # noqa: E402

# ---- parallel workers (pytest -n auto) ---------------------------------------------------------------------

_EVERY_CORE: set[int] = set()
_OWN_CORES: set[int] = set()
_LOCK: machine_share.MachineLock | None = None
_ALONE: ExitStack | None = None  # the machine, held alone by this worker


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per usable core (the run's own count: physical cores in this process's affinity), as the
    memory available now allows (not one per hyper-thread or per core of a big box)."""
    return machine_share.auto_workers(runtime.usable_cores(), runtime.available_memory())


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Whole test files to a worker (a `--dist` mode other than `load` is kept): a module's shared fixture (a
    training run, the launch forms started together) is then built once, not once per worker."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadFileScheduling  # xdist is there: it is the one calling this hook

    return LoadFileScheduling(config, log)


def pytest_configure(config) -> None:
    """In a parallel worker: pin it to its share of the cores and join the machine lock (see support/machine_share)."""
    global _LOCK
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))
    if not worker or workers < 2:
        return
    cores = machine_share.all_cores()
    _EVERY_CORE.update(cores)
    _OWN_CORES.update(machine_share.worker_share(int(worker.removeprefix("gw")), workers, cores))
    machine_share.set_cores(_OWN_CORES)
    if machine_share.CAN_LOCK:
        run = os.environ.get("PYTEST_XDIST_TESTRUNUID", "run")
        _LOCK = machine_share.MachineLock(Path(tempfile.gettempdir()) / f"hf-segformer-tests-{run}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """A `whole_machine` test runs alone on every core (kept so through a run of them: the machine drains once);
    the others share the machine, each on its worker's cores."""
    global _ALONE
    if _LOCK is None:
        return (yield)
    if not item.get_closest_marker("whole_machine"):
        with _LOCK.shared():
            return (yield)
    if _ALONE is None:
        _ALONE = ExitStack()
        _ALONE.enter_context(_LOCK.alone())
        machine_share.set_cores(_EVERY_CORE)
    try:
        return (yield)
    finally:
        if nextitem is None or not nextitem.get_closest_marker("whole_machine"):
            machine_share.set_cores(_OWN_CORES)
            _ALONE.close()
            _ALONE = None


# ---- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture
def write_image():
    return save_image


@pytest.fixture
def write_exif_rotated():
    return save_exif_rotated


@pytest.fixture
def write_mask():
    return save_mask


@pytest.fixture
def make_pairs():
    return write_pairs


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A data folder one level below tmp_path (so no stray id2label.json in its parent is picked up)."""
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def stripes():
    return stripes_mask


@pytest.fixture
def tiny_segformer():
    return build_tiny_segformer


@pytest.fixture
def train_tiny():
    """Run `hf_segformer.training.run.main` in-process on a tiny synthetic set (32×32, 8 + 4 images), in fp32
    unless the overrides say otherwise; returns the runner."""
    from hf_segformer.data.synthetic import write_synthetic_dataset
    from hf_segformer.training.arguments import parse_recipe
    from hf_segformer.training.run import main

    def run(tmp_path: Path, *overrides: str) -> dict:
        data_dir = write_synthetic_dataset(tmp_path / "data", num_train=8, num_validation=4, size=32)
        argv = ["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "run"), "--model_variant", "b0",
                "--crop_size", "32", "--eval_size", "32", "--train_scale", "64", "32", "--cat_max_ratio", "1.0",
                "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "0.01",
                "--report_to", "none", "--dataloader_num_workers", "0", "--check_data", "false",
                "--precision", "fp32", *overrides]  # fp32: tests compare figures exactly; auto is bf16 on some CPUs
        return main(*parse_recipe(argv))

    return run


@pytest.fixture
def saved_model(tmp_path: Path):
    """Save a tiny SegFormer and its image processor (eval size 32) as training does (`Trainer.save_model` with
    the processor as processing class); returns a function (id2label, folder name) → the folder."""
    def save(id2label: dict[int, str], name: str = "model", eval_size: int = 32, seed: int = 0) -> Path:
        return save_tiny_model(tmp_path / name, id2label, eval_size, seed)

    return save


@pytest.fixture
def row_workers_in_process(monkeypatch):
    """The deploy report's row workers run in this process (support.deploy_workers.run_row_here), for tests of
    what the report makes of a row's mIoU, files and flags: a fresh worker costs a Python start with torch per
    row. Memory isolation is test_deploy_report.py::test_each_row_is_measured_in_a_fresh_process's, with real
    workers."""
    from support.deploy_workers import run_row_here

    from hf_segformer.evaluation.deploy import report

    monkeypatch.setattr(report, "run_row_worker", run_row_here)


def _launches_or_trains(code, module_globals: dict, depth: int = 3) -> bool:
    """Whether a test's code (its nested functions, and the helpers of its module it calls, `depth` calls deep)
    starts a process or a whole training run: the names it uses, resolved in its module."""
    import subprocess

    from support import processes

    from hf_segformer.evaluation.deploy.report import deploy_report  # one worker process per row
    from hf_segformer.training import run as training_run

    heavy = (subprocess, subprocess.run, subprocess.Popen, subprocess.check_output, processes.run_offline,
             processes.run, processes.finetune, training_run.main, deploy_report)
    names = set(code.co_names)  # a function's own imports show as names too
    if "subprocess" in names or {"hf_segformer.training.run", "main"} <= names or "deploy_report" in names:
        return True
    for name in code.co_names:
        value = module_globals.get(name)
        if any(value is item for item in heavy):
            return True
        helper = getattr(value, "__code__", None)
        if depth and helper is not None and getattr(value, "__module__", None) == module_globals.get("__name__") \
                and _launches_or_trains(helper, module_globals, depth - 1):
            return True
    return any(_launches_or_trains(const, module_globals, depth) for const in code.co_consts
               if hasattr(const, "co_names"))


def _own_fixtures(item):
    """The functions of the project's fixtures a test uses (its module's and conftest's, not pytest's own)."""
    for name in item.fixturenames:
        for fixturedef in item._fixtureinfo.name2fixturedefs.get(name, ()):
            func = getattr(fixturedef, "func", None)
            if getattr(func, "__code__", None) is not None and not func.__module__.startswith(("_pytest", "pytest")):
                yield func


def pytest_collection_modifyitems(config, items):
    """`slow` by rule: a test that starts a process (training, evaluation, a launcher, a server) or runs a whole
    training (`train_tiny`, `training.run.main`), directly, through a helper of its module or through a fixture it
    uses. `pytest -m "not slow"` is the fast tier."""
    for item in items:
        function = getattr(item, "function", None)
        if function is None or item.get_closest_marker("slow"):
            continue
        if "train_tiny" in item.fixturenames or _launches_or_trains(function.__code__, item.module.__dict__) or any(
                _launches_or_trains(fixture.__code__, fixture.__globals__) for fixture in _own_fixtures(item)):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def evaluations_read(monkeypatch) -> list[int]:
    """The number of images each `SegformerTrainer.evaluate` call reads, in order, filled as the test trains."""
    from hf_segformer.training.trainer import SegformerTrainer

    read: list[int] = []
    evaluate = SegformerTrainer.evaluate

    def counting(self, eval_dataset=None, *args, **kwargs):
        read.append(len(eval_dataset if eval_dataset is not None else self.eval_dataset))
        return evaluate(self, eval_dataset, *args, **kwargs)

    monkeypatch.setattr(SegformerTrainer, "evaluate", counting)
    return read
