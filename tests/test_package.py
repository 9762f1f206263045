"""The package's face: the public API the README uses resolves, lazily, and the house has no import circles."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import hf_segformer

PACKAGE = Path(hf_segformer.__file__).resolve().parent


def test_every_public_name_resolves_to_the_object_its_module_defines():
    import importlib

    assert sorted(dir(hf_segformer)) == sorted(hf_segformer.__all__)
    for name, target in hf_segformer._PUBLIC.items():
        module, attribute = target if isinstance(target, tuple) else (target, name)
        assert getattr(hf_segformer, name) is getattr(importlib.import_module(module), attribute), name


def test_importing_the_package_imports_no_torch():
    code = "import sys, hf_segformer; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def _package_imports(path: Path) -> set[str]:
    """hf_segformer modules a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hf_segformer"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hf_segformer"))
    return found


def test_no_import_circles_and_no_relative_imports():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
        assert "from ." not in path.read_text(), f"{path}: relative import (the house uses absolute imports)"
    graph = {name: {m for m in _package_imports(path) if m in modules and m != name and m != "hf_segformer"}
             for name, path in modules.items()}
    visiting, done = set(), set()

    def visit(node: str, trail: list[str]) -> None:
        if node in done:
            return
        assert node not in visiting, "import circle: " + " → ".join(trail + [node])
        visiting.add(node)
        for target in graph[node]:
            visit(target, trail + [node])
        visiting.discard(node)
        done.add(node)

    for name in graph:
        visit(name, [])


def test_the_recipe_fields_import_nothing_heavy():
    # The data and model fields are read by light commands and by every parser: no transformers, no torch.
    code = ("import sys, hf_segformer.config.data, hf_segformer.config.model, hf_segformer.config.values; "
            "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    for module in ("data", "model", "values"):
        imported = {m for m in _package_imports(PACKAGE / "config" / f"{module}.py") if m.count(".") >= 1}
        assert all(m.startswith(("hf_segformer.config", "hf_segformer.errors", "hf_segformer.data.images"))
                   for m in imported), imported


def test_conversion_commands_start_without_transformers_or_torch():
    # coco-to-masks, import-annotations and their label helpers run on machines (and in loops) where a
    # transformers import (seconds) would be most of the command's time.
    code = ("import sys, hf_segformer.cli, hf_segformer.data.coco, hf_segformer.data.labels, "
            "hf_segformer.data.annotations.importer, hf_segformer.commands.coco_to_masks, "
            "hf_segformer.commands.import_annotations; "
            "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_dataset_card_template_is_package_data():
    from hf_segformer.hub.dataset_card import DATASET_CARD_TEMPLATE

    assert Path(DATASET_CARD_TEMPLATE).is_file() and PACKAGE in Path(DATASET_CARD_TEMPLATE).parents


def test_the_library_imports_no_command():
    # Commands import the library, never the other way round: the library works the same without the front door.
    commands = PACKAGE / "commands"
    for path in PACKAGE.rglob("*.py"):
        if commands in path.parents or path == PACKAGE / "cli.py":
            continue
        imported = {m for m in _package_imports(path) if m.startswith("hf_segformer.commands")}
        assert not imported, f"{path.relative_to(PACKAGE.parent)} imports {sorted(imported)}"


def test_every_command_has_its_module():
    from hf_segformer.cli import COMMANDS

    for name, (module, _) in COMMANDS.items():
        assert module.startswith("hf_segformer.commands."), name
        assert (PACKAGE.parent / (module.replace(".", "/") + ".py")).is_file(), module


def test_an_unknown_command_suggests_the_nearest_one(capsys):
    from hf_segformer.cli import USER_ERROR_EXIT, main

    assert main(["tran", "--config", "recipe.yaml"]) == USER_ERROR_EXIT == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown command 'tran' (did you mean 'train'?)" in captured.err
    assert "check-data" in captured.err and "export-onnx" in captured.err  # the list of commands
    assert main(["zzz"]) == 2 and "did you mean" not in capsys.readouterr().err


def test_the_model_card_imports_no_deploy_or_evaluation_runs():
    # The card renders a saved deploy_report.json (evaluation.deploy.render, plain data): it must not pull in the
    # report's exports, workers or the evaluate loop, and the renderer itself needs no torch.
    code = ("import sys, hf_segformer.evaluation.deploy.render; torch = 'torch' in sys.modules; "
            "import hf_segformer.hub.model_card, hf_segformer.hub.dataset_card; "
            "print(torch, sorted(m for m in sys.modules if m.startswith(('hf_segformer.evaluation.run', "
            "'hf_segformer.evaluation.deploy.report', 'hf_segformer.data.prepare', 'hf_segformer.inference'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False []", out.stdout + out.stderr


def test_a_missing_optional_dependency_is_one_line_naming_the_extra_that_installs_it(monkeypatch, capsys):
    from hf_segformer import cli
    from hf_segformer.errors import RecipeError
    from hf_segformer.inference.quantize import _require_quantization

    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # None in sys.modules: ImportError
    with pytest.raises(RecipeError, match=r"pip install 'hf-segformer\[onnx\]'"):
        _require_quantization()
    monkeypatch.setitem(sys.modules, "gradio", None)
    for module in ("hf_segformer.app.demo", "hf_segformer.commands.demo"):  # imported afresh, as on a first run
        monkeypatch.delitem(sys.modules, module, raising=False)
    assert cli.main(["demo", "--model", "a-model"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: hf-segformer demo needs the 'gradio' package: pip install 'hf-segformer[demo]' (gradio).")
