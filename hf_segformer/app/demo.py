"""The Gradio app behind `hf-segformer demo`: a segmentation model's predictions in the browser (`build_demo`,
`launch`).

A visitor uploads an image (or picks an example) and sees the image blended with its predicted mask (opacity
slider), a legend of every class in the dataset's colours and a table of each class's share of the image;
inference mode (whole / slide) and the token-merging preset are controls. The model is loaded once, in a
background thread while the server starts, so the page can say that it is loading; one warm-up forward pass
follows, so that the first visitor does not pay for lazy initialisation. Bad input (a file that is not an
image, an image above the pixel cap, grayscale or RGBA) gives a message in the page; the app keeps serving.

    hf-segformer demo --model outputs/my-run --examples photos/ --port 7860
    hf-segformer demo --config recipes/my-data.yaml --export_space space/ --hub_model_id me/my-model

`hf-segformer demo --export_space` writes a folder that is a Hugging Face Space serving this same app
(`space.export_space`).
"""

from __future__ import annotations

import dataclasses
import html
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hf_segformer.errors import DataError, RecipeError, require_extra

gr = require_extra("gradio", "demo", "hf-segformer demo", "gradio")  # missing: the CLI prints one line, not a traceback

from hf_segformer.data.bands import BandImage
from hf_segformer.data.images import IMAGE_EXTENSIONS, as_rgb, list_images
from hf_segformer.data.palettes import default_palette, pixels_per_class
from hf_segformer.hub.redaction import hub_repo_id
from hf_segformer.inference.segmenter import MODES, InferenceSettings, Segmenter
from hf_segformer.modeling.token_merging import PRESETS, apply_token_merging
from hf_segformer.visuals import overlay

logger = logging.getLogger(__name__)

MAX_PIXELS = 2048 * 2048  # larger uploads are downscaled: the prediction and the page stay quick on a CPU
MAX_UPLOAD = "50mb"  # refused by the page itself, with Gradio's message
LOAD_TIMEOUT_S = 900.0  # how long a request waits for a model that is still loading
IMAGE_HEIGHT = 420  # pixels of the page given to the input image and to the overlay
TABLE_HEADERS = ["class", "share of the image (%)", "pixels"]
MODE_NAMES = {"1": "black-and-white", "L": "grayscale", "LA": "grayscale with transparency (dropped)",
              "P": "palette", "PA": "palette with transparency (dropped)", "RGBA": "RGBA (transparency dropped)",
              "CMYK": "CMYK", "I;16": "16-bit grayscale", "I": "32-bit grayscale", "F": "floating-point"}

Palette = np.ndarray | Sequence[Sequence[int]] | Callable[[int], np.ndarray]
ModelSource = str | Path | Segmenter | Callable[[], Segmenter]


@dataclass
class Prediction:
    """One visitor's current image (as segmented), its mask, and what the page says about the upload."""

    image: Image.Image | BandImage  # a band-stack model's upload: its bands (overlays draw its display bands)
    mask: np.ndarray
    notes: list[str] = field(default_factory=list)


def read_upload(path: str | Path, name: str, max_pixels: int = MAX_PIXELS,
                said: set[str] | None = None) -> tuple[Image.Image, list[str]]:
    """An uploaded file as the upright RGB image the model sees, and notes for the page on what was changed.

    An image above `max_pixels` is downscaled (JPEGs are decoded directly at a reduced scale); a file PIL cannot
    decode, or one beyond PIL's decompression-bomb limit, is a DataError that says what to upload instead."""
    try:
        image = Image.open(path)
        width, height = image.size
        if width * height > max_pixels:
            image.draft("RGB", fitted_size(width, height, max_pixels))
        image.load()
    except Image.DecompressionBombError as err:
        raise DataError(f"{name} is too large to open: {err} Downscale it (below {max_pixels:,} pixels is "
                        "enough for this demo) and upload it again.") from err
    except Exception as err:  # noqa: BLE001 - whatever a decoder raises on a bad file, the page says it plainly
        detail = str(err).replace(str(path), name)  # PIL names the server-side temporary file
        raise DataError(f"{name} is not an image this demo can read ({type(err).__name__}: {detail}). Upload a "
                        f"{', '.join(sorted(ext.lstrip('.').upper() for ext in IMAGE_EXTENSIONS))} image.") from err
    notes = []
    if image.mode != "RGB":
        notes.append(f"{name} is a {MODE_NAMES.get(image.mode, image.mode)} image: converted to RGB for the model.")
    image = as_rgb(image, name, said)
    if width * height > max_pixels:
        if image.width * image.height > max_pixels:  # not (fully) reduced by the JPEG draft
            image = image.resize(fitted_size(image.width, image.height, max_pixels), Image.BILINEAR)
        notes.append(f"{name} is {width}×{height} pixels, above this demo's limit of {max_pixels:,}: downscaled to "
                     f"{image.width}×{image.height} for the segmentation.")
    return image, notes


def read_band_upload(segmenter: Segmenter, path: str | Path, name: str, max_pixels: int = MAX_PIXELS
                     ) -> tuple[BandImage, list[str]]:
    """An uploaded band stack (.npy, TIFF, 16-bit PNG) read as the band-stack model reads it, downscaled above
    `max_pixels`; a file of another band count, or not a stack, is the reader's DataError, named as uploaded."""
    try:
        image = segmenter.read(path, name)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever a decoder raises on a bad file, the page says it plainly
        detail = str(err).replace(str(path), name)
        raise DataError(f"{name} is not a band stack this demo can read ({type(err).__name__}: {detail}). Upload "
                        f"a .npy or TIFF file of {segmenter.num_channels} bands.") from err
    notes = []
    width, height = image.size
    if width * height > max_pixels:
        image = image.resize(fitted_size(width, height, max_pixels), Image.BILINEAR)
        notes.append(f"{name} is {width}×{height} pixels, above this demo's limit of {max_pixels:,}: downscaled to "
                     f"{image.width}×{image.height} for the segmentation.")
    return image, notes


def fitted_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) scaled by one factor to at most `max_pixels` pixels."""
    factor = min(1.0, math.sqrt(max_pixels / (width * height)))
    return max(1, int(width * factor)), max(1, int(height * factor))


def class_shares(mask: np.ndarray, id2label: dict[int, str]) -> list[list[Any]]:
    """[class name, share of the image in %, pixels] of each class present, largest first."""
    return [[id2label.get(c, str(c)), round(100 * pixels / mask.size, 2), pixels]
            for c, pixels in pixels_per_class(mask, len(id2label))]


def legend_html(id2label: dict[int, str], palette: np.ndarray) -> str:
    """Every class of the model with its colour swatch, in class-id order."""
    items = []
    for class_id in sorted(id2label):
        r, g, b = (int(v) for v in palette[class_id])
        items.append(f'<li data-class-id="{class_id}" style="display:flex;align-items:center;gap:6px">'
                     f'<span class="swatch" style="display:inline-block;width:16px;height:16px;'
                     f'border:1px solid #444;background-color:rgb({r}, {g}, {b})"></span>'
                     f'<span class="name">{html.escape(id2label[class_id])}</span></li>')
    return ('<ul class="legend" style="list-style:none;padding:0;margin:0;display:flex;flex-wrap:wrap;'
            f'gap:6px 16px">{"".join(items)}</ul>')


def resolve_palette(palette: Palette | None, num_labels: int) -> np.ndarray:
    """[num_labels, 3] uint8 colours: the given ones (classes beyond them keep the default colours), a function
    of the class count's result, or the default palette."""
    if palette is None:
        return default_palette(num_labels)
    if callable(palette):
        return np.asarray(palette(num_labels), dtype=np.uint8)
    given = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:num_labels]
    colours = default_palette(num_labels)
    colours[: len(given)] = given
    return colours


def source_name(source: ModelSource) -> str:
    """How the page names the model: a Hub id, a local folder's name (never its path), or the model's own."""
    if isinstance(source, Segmenter):
        return Path(str(getattr(source.model.config, "name_or_path", "") or "model")).name or "model"
    if isinstance(source, (str, Path)):
        return hub_repo_id(str(source)) or Path(source).resolve().name
    return "model"


class DemoModel:
    """The model behind the app, loaded once in a background thread and warmed up with one forward pass.

    Requests wait for the load (the page shows that it is in progress); they run one at a time under a lock,
    because the inference mode and the token-merging preset are set on the one shared model per request.
    """

    def __init__(self, source: ModelSource, palette: Palette | None = None, name: str | None = None,
                 max_pixels: int = MAX_PIXELS):
        self.name = name or source_name(source)
        self.max_pixels = max_pixels
        self.segmenter: Segmenter | None = None
        self.palette: np.ndarray | None = None
        self.error: str | None = None
        self.warmup_seconds: float | None = None
        self._source, self._palette = source, palette
        self._base_settings = InferenceSettings()
        self._merging: str = "none"
        self._said: set[str] = set()  # image modes whose conversion was logged
        self._lock = threading.Lock()
        self._ready = threading.Event()
        threading.Thread(target=self._load, name="demo-model-loader", daemon=True).start()

    def _load(self) -> None:
        try:
            source = self._source
            if isinstance(source, Segmenter):
                segmenter = source
            elif callable(source):
                segmenter = source()
            else:
                segmenter = Segmenter.from_pretrained(source)
            self._base_settings = segmenter.settings
            self.palette = resolve_palette(self._palette, segmenter.num_labels)
            height, width = segmenter.input_size or (512, 512)
            start = time.perf_counter()
            bands = segmenter.num_channels  # a band-stack model warms up on a stack of its band count
            segmenter(np.zeros((height, width, bands), np.float32) if bands else
                      Image.new("RGB", (width, height), (124, 116, 104)))
            self.warmup_seconds = time.perf_counter() - start
            self.segmenter = segmenter
        except Exception as err:  # noqa: BLE001 - shown in the page; the server goes on running
            logger.exception("Could not load the model %s", self.name)
            self.error = f"Could not load the model {self.name}: {type(err).__name__}: {err}"
        finally:
            self._ready.set()

    def loaded(self, timeout: float | None = 0.0) -> bool:
        """Whether loading has finished (successfully or not), waiting up to `timeout` seconds for it."""
        return self._ready.wait(timeout)

    def wait(self, timeout: float | None = LOAD_TIMEOUT_S) -> Segmenter:
        """The loaded segmenter; RecipeError if it could not be loaded (or is still loading after `timeout`)."""
        if not self.loaded(timeout):
            raise RecipeError(f"The model {self.name} is still loading; try again in a minute.")
        if self.segmenter is None:
            raise RecipeError(self.error or f"The model {self.name} could not be loaded.")
        return self.segmenter

    def status(self) -> str:
        """One line of Markdown for the page: loading, ready (with the warm-up time) or the load error."""
        if not self.loaded():
            return f"Loading model **{self.name}** … predictions start as soon as it is loaded."
        if self.segmenter is None:
            return f"**Error:** {self.error}"
        return (f"Model **{self.name}** is ready: {self.segmenter.num_labels} classes, on "
                f"{self.segmenter.device.type}; warm-up forward pass {self.warmup_seconds:.2f} s.")

    def segment(self, image: Image.Image | BandImage, mode: str = "whole", token_merging: str = "none"
                ) -> np.ndarray:
        """Class ids [H, W] of an RGB image (a band-stack model: its bands) with the given inference mode and
        token-merging preset."""
        segmenter = self.wait()
        if mode not in MODES:
            raise RecipeError(f"Inference mode must be one of {', '.join(MODES)}; got '{mode}'.")
        with self._lock:
            if token_merging != self._merging:
                apply_token_merging(segmenter.model, token_merging)
                self._merging = token_merging
            segmenter.settings = dataclasses.replace(self._base_settings, mode=mode)
            return segmenter(image)

    def predict_upload(self, path: str | Path, name: str, mode: str, token_merging: str) -> Prediction:
        segmenter = self.wait()
        image, notes = (read_band_upload(segmenter, path, name, self.max_pixels) if segmenter.num_channels else
                        read_upload(path, name, self.max_pixels, self._said))
        return Prediction(image, self.segment(image, mode, token_merging), notes)


def build_demo(model: ModelSource | DemoModel, examples: str | Path | Sequence[str | Path] | None = None, *,
               palette: Palette | None = None, name: str | None = None, max_pixels: int = MAX_PIXELS,
               mode: str = "whole", token_merging: str | None = None) -> gr.Blocks:
    """The Gradio app. `model`: a saved model folder or Hub id (loaded in the background), a Segmenter, or a
    function that returns one; `examples`: a folder of images or a list of image files; `palette`: the
    dataset's class colours ([N, 3], or a function of the class count)."""
    demo_model = model if isinstance(model, DemoModel) else DemoModel(model, palette, name, max_pixels)
    files = list_images(examples) if isinstance(examples, (str, Path)) else [str(p) for p in examples or []]
    merging_choices = list(PRESETS)
    token_merging = token_merging or "none"

    def page_status():
        yield demo_model.status(), ""
        demo_model.loaded(LOAD_TIMEOUT_S)
        legend = legend_html(demo_model.segmenter.id2label, demo_model.palette) if demo_model.segmenter else ""
        yield demo_model.status(), legend

    def render(prediction: Prediction, alpha: float):
        segmenter = demo_model.segmenter
        picture = overlay(prediction.image, prediction.mask, demo_model.palette, segmenter.id2label, float(alpha))
        notice = "\n\n".join(f"Note: {note}" for note in prediction.notes)
        return picture, class_shares(prediction.mask, segmenter.id2label), notice, prediction

    def failed(err: Exception):
        if not isinstance(err, (DataError, RecipeError)):
            logger.exception("Segmentation failed")
            err = f"Segmentation failed ({type(err).__name__}: {err}). The app keeps running: try another image."
        return None, [], f"**Error:** {err}", None

    def on_image(payload: dict | None, mode: str, merging: str, alpha: float):
        if not payload:
            return None, [], "", None
        try:
            name = Path(payload.get("orig_name") or payload["path"]).name
            return render(demo_model.predict_upload(payload["path"], name, mode, merging), alpha)
        except Exception as err:  # noqa: BLE001 - the page gets a message, never a traceback
            return failed(err)

    def on_settings(prediction: Prediction | None, mode: str, merging: str, alpha: float):
        if prediction is None:
            return gr.skip(), gr.skip(), gr.skip(), None
        try:
            return render(Prediction(prediction.image, demo_model.segment(prediction.image, mode, merging),
                                     prediction.notes), alpha)
        except Exception as err:  # noqa: BLE001
            return failed(err)

    def on_opacity(prediction: Prediction | None, alpha: float):
        if prediction is None or demo_model.segmenter is None:
            return gr.skip()
        return overlay(prediction.image, prediction.mask, demo_model.palette, demo_model.segmenter.id2label,
                       float(alpha))

    with gr.Blocks(title=f"{demo_model.name} · semantic segmentation", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(f"# Semantic segmentation: {html.escape(demo_model.name)}\nUpload an image or pick an "
                    "example: every pixel is given one of the model's classes.")
        status = gr.Markdown(demo_model.status(), elem_id="status")
        state = gr.State(None)
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], label="Image",
                                 height=IMAGE_HEIGHT, elem_id="input-image")
                if files:
                    gr.Examples(examples=[[f] for f in files], inputs=[image], label="Examples", elem_id="examples")
                opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Mask opacity", elem_id="opacity")
                with gr.Row():
                    mode_choice = gr.Radio(list(MODES), value=mode, label="Inference mode", elem_id="mode",
                                           info="whole: resized at once; slide: overlapping windows at full size")
                    merging_choice = gr.Dropdown(merging_choices, value=token_merging, label="Token merging",
                                                 elem_id="token-merging",
                                                 info="SegFormer++ presets: faster attention, same weights")
            with gr.Column():
                picture = gr.Image(type="pil", format="png", label="Segmentation", interactive=False,
                                   height=IMAGE_HEIGHT, elem_id="overlay")
                notice = gr.Markdown(label="Messages", elem_id="notice")
                legend = gr.HTML(elem_id="legend", label="Classes")
                table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["str", "number", "number"],
                                     label="Share of the image per class", interactive=False, elem_id="class-table")
        outputs = [picture, table, notice, state]
        controls = [mode_choice, merging_choice, opacity]
        demo.load(page_status, outputs=[status, legend], show_progress="hidden", concurrency_limit=None,
                  api_visibility="private")
        image.change(on_image, [image, *controls], outputs, preprocess=False, concurrency_id="model",
                     api_name="segment")
        for control in (mode_choice, merging_choice):
            control.change(on_settings, [state, *controls], outputs, concurrency_id="model",
                           api_visibility="private")
        opacity.change(on_opacity, [state, opacity], picture, show_progress="hidden", trigger_mode="always_last",
                       api_visibility="private")
    demo.queue(default_concurrency_limit=1)
    return demo


def launch(model: ModelSource | DemoModel, examples: str | Path | Sequence[str | Path] | None = None, *,
           palette: Palette | None = None, name: str | None = None, host: str | None = "127.0.0.1",
           port: int | None = None, max_pixels: int = MAX_PIXELS, mode: str = "whole",
           token_merging: str | None = None, block: bool = True, quiet: bool = False) -> gr.Blocks:
    """Build the app and serve it on host:port (None: Gradio's GRADIO_SERVER_NAME / GRADIO_SERVER_PORT or its
    defaults, as on a Space). `block=False` returns at once with the server running; `demo.close()` stops it."""
    demo = build_demo(model, examples, palette=palette, name=name, max_pixels=max_pixels, mode=mode,
                      token_merging=token_merging)
    folders = [examples] if isinstance(examples, (str, Path)) else [Path(p).parent for p in examples or []]
    allowed = sorted({str(Path(folder).resolve()) for folder in folders}) or None  # Gradio serves only these
    demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=False,
                max_file_size=MAX_UPLOAD, allowed_paths=allowed, quiet=quiet)
    return demo
