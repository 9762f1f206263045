"""A Hugging Face Space serving the demo of a pushed model (`export_space`), and the model card's link to it.

The Space folder is self-contained: `app.py` runs `hf_segformer.app.demo` from a copy of this package placed
beside it (so the Space runs exactly the app tested here), `requirements.txt` lists the package's own
dependencies (Gradio itself comes from the Space's `sdk_version`; peft, pinned to the installed version, for a
LoRA adapter) and `README.md` carries the Space metadata
(sdk, sdk_version, app_file, models). The model is a Hub id; the environment variable `HF_SEGFORMER_MODEL`
replaces it (a local folder, for a test run before pushing).
"""

from __future__ import annotations

import platform
import shutil
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import numpy as np
from huggingface_hub import SpaceCard, SpaceCardData

from hf_segformer.data.images import list_images
from hf_segformer.errors import RecipeError
from hf_segformer.hub.redaction import REPO_ID, public_text
from hf_segformer.outputs import writable_folder

MODEL_ENV = "HF_SEGFORMER_MODEL"
APP_MARKER = "# Written by hf-segformer demo --export-space"  # tells a previous export from user files
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # hf_segformer/, copied whole into the Space


def space_requirements(adapter: bool = False) -> list[str]:
    """The installed hf-segformer package's own dependencies (no extras), and with `adapter` (the model is a LoRA
    adapter, loaded onto its base model by peft) the installed peft. Gradio is left out: the Space installs the
    version of its sdk_version."""
    try:
        listed = requires("hf-segformer") or []
    except PackageNotFoundError as err:
        raise RecipeError("--export_space reads the dependencies of the installed hf-segformer package; install "
                          "it first (pip install -e '.[demo]' in its checkout).") from err
    needed = [r.split(";")[0].strip() for r in listed if "extra ==" not in r and not r.lower().startswith("gradio")]
    if adapter:
        try:
            needed.append(f"peft=={version('peft')}")
        except PackageNotFoundError:
            raise RecipeError("--export_space: the model is a LoRA adapter, and its Space needs peft: install it "
                              "here (pip install 'hf-segformer[lora]') so that the Space gets the same version.") \
                from None
    return needed


def _app_source(model_id: str, palette: np.ndarray | None, mode: str, token_merging: str | None) -> str:
    colours = "None" if palette is None else repr([[int(v) for v in rgb] for rgb in palette])
    return f'''"""Gradio Space: semantic segmentation with {model_id}."""
{APP_MARKER}; it runs hf_segformer.app.demo from the package copy beside it.

import os
from pathlib import Path

from hf_segformer.app.demo import launch

MODEL = os.environ.get("{MODEL_ENV}", "{model_id}")  # Hub model id; a local model folder to try it
PALETTE = {colours}  # class colours [R, G, B] by class id; None: default colours
HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "examples"

if __name__ == "__main__":
    launch(MODEL, EXAMPLES if EXAMPLES.is_dir() else None, palette=PALETTE, host=None, port=None,
           mode={mode!r}, token_merging={token_merging!r})
'''


def _card(model_id: str, has_examples: bool) -> SpaceCard:
    import gradio  # the optional [demo] extra: only an export needs its version

    name = model_id.split("/")[-1]
    data = SpaceCardData(title=f"{name} segmentation"[:60], sdk="gradio", sdk_version=gradio.__version__,
                         python_version=".".join(platform.python_version_tuple()[:2]), app_file="app.py",
                         models=[model_id], tags=["segformer", "semantic-segmentation", "hf-segformer"],
                         emoji="🗺️", colorFrom="blue", colorTo="green", pinned=False,
                         short_description=f"Semantic segmentation with {name}"[:60])
    body = "\n\n".join([
        f"# {name}: semantic segmentation",
        f"Upload an image{' or pick an example' if has_examples else ''} to see what "
        f"[{model_id}](https://huggingface.co/{model_id}) predicts for every pixel: the mask over the image "
        "(adjustable opacity), the classes in their colours, and each class's share of the image. Inference mode "
        "(whole image or sliding window) and token merging (SegFormer++) can be switched in the page.",
        "Run it on your machine: `pip install gradio==" + gradio.__version__ + " -r requirements.txt && python "
        f"app.py`; `{MODEL_ENV}=path/to/model python app.py` serves another (local or Hub) model.",
        "The `hf_segformer/` folder is a copy of the hf-segformer package that wrote this Space.",
    ])
    return SpaceCard(public_text(f"---\n{data.to_yaml()}\n---\n\n{body}\n"))


def export_space(folder: str | Path, model_id: str, *, examples: str | Path | Sequence[str | Path] | None = None,
                 palette: np.ndarray | None = None, mode: str = "whole", token_merging: str | None = None,
                 adapter: bool = False) -> Path:
    """Write the Space folder serving the demo of the Hub model `model_id` (`adapter`: a LoRA adapter); returns the
    folder.

    The folder must be new, empty, or an earlier export (whose files are replaced)."""
    if not REPO_ID.match(model_id) or "/" not in model_id:
        raise RecipeError(f"The Space needs the model's Hub id (namespace/name); got '{model_id}'.")
    requirements = space_requirements(adapter)  # refused before anything is written
    folder = Path(folder)
    app = folder / "app.py"
    if folder.is_dir() and any(folder.iterdir()) and not (app.is_file() and APP_MARKER in app.read_text()):
        raise RecipeError(f"--export_space: {folder} is not empty and not an earlier Space export; give a new folder.")
    files = list_images(examples) if isinstance(examples, (str, Path)) else [str(p) for p in examples or []]
    writable_folder(folder, "export_space")
    for stale in ("hf_segformer", "examples"):
        shutil.rmtree(folder / stale, ignore_errors=True)
    shutil.copytree(PACKAGE_DIR, folder / "hf_segformer", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if files:
        (folder / "examples").mkdir()
        for path in files:
            shutil.copy2(path, folder / "examples" / Path(path).name)
    app.write_text(_app_source(model_id, palette, mode, token_merging))
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
    _card(model_id, bool(files)).save(folder / "README.md")
    return folder

