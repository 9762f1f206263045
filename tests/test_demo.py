"""The Gradio demo (`hf-segformer demo`): driven in headless Chromium, fed bad files, and exported as a Space
folder whose `python app.py` serves predictions of a local model.

The browser tests need Debian's `chromium` (Playwright is pointed at it; its own browser download cannot work
here) and skip with the reason where it is absent.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from huggingface_hub import SpaceCard
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")

from support.images import save_image
from support.models import build_tiny_segformer
from support.processes import free_port  # noqa: E402

from hf_segformer import cli
from hf_segformer.app.demo import DemoModel, launch, read_upload
from hf_segformer.app.space import MODEL_ENV
from hf_segformer.data.palettes import colourise
from hf_segformer.errors import DataError, RecipeError
from hf_segformer.hub.model_card import space_link
from hf_segformer.inference.segmenter import InferenceSettings, Segmenter
from hf_segformer.modeling.build import build_image_processor
from hf_segformer.modeling.token_merging import apply_token_merging, has_token_merging

ID2LABEL = {0: "background", 1: "road", 2: "building"}
COLOURS = [(10, 20, 30), (200, 40, 40), (40, 200, 90)]  # the "dataset's" colours, unlike the default palette
SIZE = (64, 48)  # width, height of the uploaded test images
MAX_PIXELS = 64 * 64  # the test apps' cap: SIZE fits, the "huge" image does not
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> SimpleNamespace:
    """A tiny saved model (eval size 32) and the images the tests upload."""
    root = tmp_path_factory.mktemp("demo")
    model = root / "model"
    build_tiny_segformer(ID2LABEL).save_pretrained(model)
    build_image_processor(32).save_pretrained(model)
    images = root / "images"
    images.mkdir()
    Image.new("RGBA", SIZE, (200, 10, 10, 128)).save(images / "transparent.png")
    grey = np.random.default_rng(1).integers(0, 256, SIZE[::-1], dtype=np.uint8)
    Image.fromarray(grey, "L").save(images / "grey.png")
    (images / "broken.png").write_bytes(b"these bytes are no PNG")
    (images / "notes.txt").write_text("not an image")
    return SimpleNamespace(model=model, photo=save_image(images / "photo.png", size=SIZE, seed=3),
                           huge=save_image(images / "huge.png", size=(200, 150), seed=4),
                           examples=save_image(root / "examples" / "example.png", size=SIZE, seed=5).parent,
                           images=images)


def expected_mask(model: Path, image: Path | Image.Image, mode: str = "whole") -> np.ndarray:
    """The prediction made outside the demo, by a Segmenter of its own."""
    return Segmenter.from_pretrained(model, InferenceSettings(mode=mode))(image)


def table_of(mask: np.ndarray) -> list[list[str]]:
    """The class table's rows as the page shows them: class, share (%), pixels; largest first."""
    counts = np.bincount(mask.ravel(), minlength=len(ID2LABEL))
    order = sorted((c for c in ID2LABEL if counts[c]), key=lambda c: -counts[c])
    return [[ID2LABEL[c], f"{100 * counts[c] / mask.size:.2f}".rstrip("0").rstrip("."), str(counts[c])]
            for c in order]


# --- without a browser ------------------------------------------------------------------------------------------

def test_uploads_are_converted_downscaled_or_refused_with_a_readable_message(files, tmp_path):
    image, notes = read_upload(files.images / "grey.png", "grey.png", MAX_PIXELS)
    assert image.mode == "RGB" and image.size == SIZE and "grayscale" in notes[0]
    image, notes = read_upload(files.images / "transparent.png", "transparent.png", MAX_PIXELS)
    assert image.mode == "RGB" and "RGBA" in notes[0] and np.asarray(image)[0, 0].tolist() == [200, 10, 10]
    image, notes = read_upload(files.huge, "huge.png", MAX_PIXELS)
    assert image.width * image.height <= MAX_PIXELS and image.width / image.height == pytest.approx(200 / 150, 0.05)
    assert "200×150" in notes[0] and f"{image.width}×{image.height}" in notes[0]
    jpeg = tmp_path / "big.jpg"
    Image.open(files.huge).resize((800, 600)).save(jpeg, quality=90)
    image, notes = read_upload(jpeg, "big.jpg", MAX_PIXELS)  # decoded at a reduced scale, then resized
    assert image.width * image.height <= MAX_PIXELS and "800×600" in notes[0]
    for name in ("broken.png", "notes.txt"):
        with pytest.raises(DataError) as err:
            read_upload(files.images / name, name, MAX_PIXELS)
        message = str(err.value)
        assert name in message and "not an image" in message and "PNG" in message
        assert str(files.images) not in message  # the server's path stays out of the page


def test_controls_give_the_segmenters_prediction_and_a_failed_load_is_reported(files, tmp_path):
    demo_model = DemoModel(str(files.model), palette=COLOURS)
    assert demo_model.loaded(60) and "is ready" in demo_model.status() and "warm-up" in demo_model.status()
    assert demo_model.palette.tolist() == [list(c) for c in COLOURS]
    photo = Image.open(files.photo).convert("RGB")
    reference = Segmenter.from_pretrained(files.model, InferenceSettings(mode="slide"))
    apply_token_merging(reference.model, "2x2")
    np.testing.assert_array_equal(demo_model.segment(photo, "slide", "2x2"), reference(photo))
    assert has_token_merging(demo_model.segmenter.model)
    np.testing.assert_array_equal(demo_model.segment(photo, "whole", "none"), expected_mask(files.model, photo))
    assert not has_token_merging(demo_model.segmenter.model)

    missing = DemoModel(str(tmp_path / "no-model"))
    assert missing.loaded(60)
    assert "Could not load the model no-model" in missing.status() and "Traceback" not in missing.status()
    with pytest.raises(RecipeError, match="Could not load the model"):
        missing.segment(photo)


def test_cli_refuses_a_missing_model_and_a_space_without_a_hub_id(files, tmp_path, capsys):
    assert cli.main(["demo", "--model", str(tmp_path / "nowhere")]) == 2
    assert "no such folder, and not a Hub id" in capsys.readouterr().err
    assert cli.main(["demo", "--model", str(files.model), "--export-space", str(tmp_path / "space")]) == 2
    assert "--hub_model_id" in capsys.readouterr().err
    assert not (tmp_path / "space" / "app.py").exists()


def test_exported_space_runs_its_app_against_a_local_model(files, tmp_path):
    space = tmp_path / "space"
    export = ["demo", "--model", str(files.model), "--hub_model_id", "someone/tiny-segformer", "--export-space"]
    assert cli.main([*export, str(space)]) == 0
    assert cli.main([*export, str(files.images)]) == 2  # a folder of other files is never overwritten
    colour_map = json.dumps({"#%02X%02X%02X" % colour: i for i, colour in enumerate(COLOURS)})
    assert cli.main([*export, str(space), "--examples", str(files.examples), "--colour_map", colour_map]) == 0
    card = SpaceCard.load(space / "README.md").data  # written over the earlier export
    assert (card.sdk, card.sdk_version, card.app_file, card.models) == ("gradio", gr.__version__, "app.py",
                                                                        ["someone/tiny-segformer"])
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert any(r.startswith("transformers") for r in requirements) and any(r.startswith("torch") for r in requirements)
    assert not any(r.startswith("gradio") for r in requirements)  # the Space installs sdk_version's
    assert (space / "examples" / "example.png").is_file()
    assert "https://huggingface.co/spaces/me/demo" in space_link("me/demo")
    with pytest.raises(RecipeError):
        space_link("not a space id")

    port = free_port()
    env = {**os.environ, MODEL_ENV: str(files.model), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": ""}
    vendored = subprocess.run([sys.executable, "-c", "import hf_segformer; print(hf_segformer.__file__)"],
                              cwd=space, env=env, capture_output=True, text=True, check=True).stdout
    assert Path(vendored.strip()).parent == space / "hf_segformer"  # the Space runs its own copy
    log = (tmp_path / "app.log").open("w")
    app = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_http(url, app, tmp_path / "app.log")
        from gradio_client import Client, handle_file

        overlay_path, table, notice = Client(url, verbose=False).predict(
            handle_file(str(files.photo)), "whole", "none", 1.0, api_name="/segment")
        mask = expected_mask(files.model, files.photo)
        assert [[row[0], f"{row[1]:g}", str(row[2])] for row in table["data"]] == table_of(mask)
        blended = np.asarray(Image.open(overlay_path).convert("RGB"))[: SIZE[1], : SIZE[0]]
        np.testing.assert_array_equal(blended, colourise(mask, np.array(COLOURS, np.uint8)))  # opacity 1: the colours
        assert notice == ""
    finally:
        app.terminate()
        app.wait(20)
        log.close()


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"app.py did not answer on {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


# --- in Chromium ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium chromium-driver); the browser "
                    "tests drive it headless")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser "
                                                                        "download: the tests use the system Chromium)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def app(files, browser):
    """The demo served on 127.0.0.1 with the tiny model; its loader waits for `gate` (to see the loading state)."""
    gate = threading.Event()

    def load() -> Segmenter:
        gate.wait(60)
        return Segmenter.from_pretrained(files.model)

    port = free_port()
    demo = launch(load, files.examples, palette=COLOURS, name="tiny-segformer", port=port, max_pixels=MAX_PIXELS,
                  block=False, quiet=True)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", gate=gate)
    gate.set()
    demo.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    yield page
    page.close()


def upload(page, path: Path) -> None:
    page.set_input_files("#input-image input[type=file]", str(path))


def overlay_src(page, previous: str | None = None) -> str:
    """The overlay's image URL, once there is one (different from `previous`)."""
    page.wait_for_function("previous => { const img = document.querySelector('#overlay img');"
                           " return img && img.complete && img.naturalWidth > 0 && img.src !== previous; }",
                           arg=previous)
    return page.locator("#overlay img").get_attribute("src")


# The class table's cells as shown: Gradio's data frame draws its rows as a virtual grid.
TABLE_ROWS_JS = ("() => [...document.querySelectorAll('#class-table [role=row].virtual-row')]"
                 ".map(row => [...row.querySelectorAll('[role=gridcell]')].map(cell => cell.innerText.trim()))")


def wait_for_table(page, rows: list[list[str]]) -> None:
    try:
        page.wait_for_function(f"rows => JSON.stringify(({TABLE_ROWS_JS})()) === JSON.stringify(rows)", arg=rows,
                               timeout=15_000)
    except Exception:  # noqa: BLE001 - a time-out: show what the page has instead
        assert page.evaluate(TABLE_ROWS_JS) == rows


def test_browser_upload_shows_overlay_legend_and_class_table(app, page, files, tmp_path):
    page.goto(app.url)
    page.wait_for_selector("#status >> text=Loading model")
    assert page.locator("#legend li").count() == 0
    app.gate.set()
    page.wait_for_selector("#status >> text=warm-up")
    assert "tiny-segformer" in page.inner_text("#status") and "is ready" in page.inner_text("#status")
    legend = page.locator("#legend li")
    assert legend.locator(".name").all_inner_texts() == list(ID2LABEL.values())
    swatches = legend.locator(".swatch").evaluate_all("els => els.map(e => getComputedStyle(e).backgroundColor)")
    assert swatches == [f"rgb({r}, {g}, {b})" for r, g, b in COLOURS]

    upload(page, files.photo)
    first = overlay_src(page)
    mask = expected_mask(files.model, files.photo)
    wait_for_table(page, table_of(mask))
    assert page.inner_text("#notice").strip() == ""

    page.fill("#opacity input[type=number]", "1")
    page.press("#opacity input[type=number]", "Enter")
    src = overlay_src(page, first)
    shown = np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))
    np.testing.assert_array_equal(shown[: SIZE[1], : SIZE[0]], colourise(mask, np.array(COLOURS, np.uint8)))

    slide = table_of(expected_mask(files.model, files.photo, "slide"))
    assert slide != table_of(mask)  # so that the table must change
    page.locator("#mode").get_by_label("slide").check()
    wait_for_table(page, slide)
    page.screenshot(path=tmp_path / "demo.png", full_page=True)
    assert Image.open(tmp_path / "demo.png").size[0] == 1400


def test_browser_bad_input_gives_a_message_and_the_app_keeps_serving(app, page, files):
    app.gate.set()
    page.goto(app.url)
    page.wait_for_selector("#status >> text=warm-up")

    upload(page, files.images / "broken.png")
    page.wait_for_selector("#notice >> text=broken.png is not an image this demo can read")
    assert page.locator("#overlay img").count() == 0

    upload(page, files.images / "notes.txt")  # refused by the page itself, before the server sees it
    page.wait_for_selector("text=Invalid file type: notes.txt")

    for name, says in (("transparent.png", "RGBA"), ("grey.png", "grayscale"), ("huge.png", "downscaled to 73×55")):
        previous = page.locator("#overlay img").get_attribute("src") if page.locator("#overlay img").count() else None
        upload(page, files.images / name)
        overlay_src(page, previous)
        page.wait_for_selector(f"#notice >> text={says}")
    assert "Traceback" not in page.inner_text("body")

    previous = page.locator("#overlay img").get_attribute("src")
    page.locator("#examples button").first.click()  # the example goes through the same path as an upload
    overlay_src(page, previous)
    wait_for_table(page, table_of(expected_mask(files.model, files.examples / "example.png")))
    assert page.inner_text("#notice").strip() == ""
