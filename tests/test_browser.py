"""The annotation page in a real browser: headless Debian chromium driven by playwright-core.

Loads the page, uploads a real photo, clicks on an object, checks on screenshots that the mask is
drawn where the page says it is, and that the exported COCO annotations decode to that mask, which
in turn agrees with PyTorch on the server. Runs with the WASM decoder and with the server fallback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from segany import SamPredictor  # noqa: E402
from segany.io import read_image  # noqa: E402
from segany.masks import decode_rle  # noqa: E402
from segany.serve.app import ORT_DIR, ORT_FILES, BackgroundServer, create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")


def _require_browser() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed (apt-get install -y nodejs npm; .ci/run does)")
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is not installed (apt-get install -y chromium; .ci/run does)")
    if not (REPO / "web" / "node_modules" / "playwright-core").exists():
        pytest.skip("playwright-core is not installed (cd web && npm ci; .ci/run does)")
    if not all((ORT_DIR / f).exists() for f in ORT_FILES):
        pytest.skip("onnxruntime-web assets are not vendored (python scripts/vendor_web_assets.py; .ci/run does)")


@pytest.fixture(scope="module")
def server_url(ref_model):
    _require_browser()
    with BackgroundServer(create_app(ref_model)) as url:
        yield url


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()))


def run_page_script(script: str, *args: str) -> dict:
    """Run a page script of tests/browser/ with node; its JSON result, checked to have finished
    with no error and no console error or page error."""
    proc = subprocess.run(["node", str(REPO / "tests/browser" / script), *args],
                          capture_output=True, text=True, timeout=400, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"], result.get("error")
    assert not [line for line in result["console"] if line.startswith(("error", "pageerror"))], result["console"]
    return result


@pytest.mark.parametrize("decoder", ["wasm", "server"])
def test_click_draws_mask_and_export_decodes_to_it(server_url, ref_model, coco_photo, tmp_path, decoder):
    url = server_url + ("/?decoder=server" if decoder == "server" else "/")
    result = run_page_script("annotate.mjs", url, str(coco_photo), str(tmp_path), "0.47", "0.42")
    assert result["decoder"] == decoder

    h, w = result["size"]
    page_mask = np.array(json.loads((tmp_path / "mask.json").read_text()), dtype=bool).reshape(h, w)
    assert 0 < page_mask.sum() < h * w

    # The exported COCO JSON (downloaded through the UI) decodes to exactly the mask on the page.
    coco = json.loads((tmp_path / "export_coco.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["thing"]
    (ann,) = coco["annotations"]
    assert np.array_equal(decode_rle(ann["segmentation"]), page_mask)

    # That mask is the model's answer: the same click through PyTorch on the server.
    predictor = SamPredictor(ref_model)
    predictor.set_image(read_image(coco_photo))
    x, y = result["imageXY"]
    masks, scores, _ = predictor.predict(np.array([[x, y]]), np.array([1]), multimask_output=True)
    assert iou(page_mask, masks[int(np.argmax(scores))]) > 0.99

    # Pixel check on screenshots: the canvas changed where the mask is, and (almost) only there.
    before = np.asarray(Image.open(tmp_path / "before.png").convert("RGB"), dtype=np.int16)
    after = np.asarray(Image.open(tmp_path / "after.png").convert("RGB"), dtype=np.int16)
    assert before.shape == after.shape
    changed = np.abs(after - before).sum(axis=2) > 30
    shown = np.asarray(Image.fromarray(page_mask).resize(changed.shape[::-1], Image.NEAREST))
    assert changed[shown].mean() > 0.9, "most mask pixels are drawn"
    # Smoothing of the scaled canvas and the outline spill over a pixel or two.
    near = cv2.dilate(shown.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    assert near[changed].mean() > 0.98, "little is drawn outside the mask (only the point marker)"
    assert result["candidates"] == 3
    assert (result["afterUndo"], result["afterRedo"]) == (0, 1)
    assert result["editing"] == {"objects": 0, "points": [result["imageXY"]]} and result["afterEdit"] == 1

    # Box drag + shift-click: a box prompt and a background point, answered like PyTorch.
    prompt = result["boxPrompt"]
    assert prompt["labels"] == [0] and len(prompt["points"]) == 1 and len(prompt["box"]) == 4
    box_mask = np.array(json.loads((tmp_path / "mask_box.json").read_text()), dtype=bool).reshape(h, w)
    single, _, _ = predictor.predict(np.array(prompt["points"]), np.array([0]), np.array(prompt["box"]), multimask_output=False)
    assert iou(box_mask, single[0]) > 0.99
    # WASM has all four decoder outputs to choose from; the server answers with the single mask.
    assert result["boxCandidates"] == (4 if decoder == "wasm" else 1)
    assert result["chosen"] == (1 if decoder == "wasm" else 0)

    # The cut-out is the chosen mask's bounding box of the photo, transparent outside the mask.
    chosen = np.array(json.loads((tmp_path / "mask_chosen.json").read_text()), dtype=bool).reshape(h, w)
    cut = np.asarray(Image.open(tmp_path / "cutout.png"))
    ys, xs = np.nonzero(chosen)
    crop = chosen[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert cut.shape == (*crop.shape, 4)
    assert np.array_equal(cut[..., 3] > 0, crop)
    photo = read_image(coco_photo)[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert np.abs(cut[..., :3][crop].astype(int) - photo[crop]).mean() < 3  # JPEG decoders differ slightly


@pytest.fixture(scope="module")
def default_server_url():
    _require_browser()
    from segany import load_default_model

    with BackgroundServer(create_app(load_default_model())) as url:
        yield url


def test_default_model_decodes_in_the_browser(default_server_url, coco_photo, tmp_path):
    """The shipped model has a 32x32 embedding (128x128 low-res masks): the WASM path must follow it."""
    from segany import load_default_model

    result = run_page_script("annotate.mjs", default_server_url + "/", str(coco_photo), str(tmp_path), "0.47", "0.42")
    assert result["decoder"] == "wasm"
    h, w = result["size"]
    page_mask = np.array(json.loads((tmp_path / "mask.json").read_text()), dtype=bool).reshape(h, w)
    predictor = SamPredictor(load_default_model())
    predictor.set_image(read_image(coco_photo))
    masks, scores, _ = predictor.predict(np.array([result["imageXY"]]), np.array([1]), multimask_output=True)
    best = masks[int(np.argmax(scores))]
    assert best.any()
    assert iou(page_mask, best) > 0.98


def test_zoom_in_tool_answers_clicks_on_a_crop(default_server_url, coco_photo, tmp_path):
    """With the Zoom tool on, an object's later clicks are answered on the server by the zoom-in
    session that `segany eval interactive --zoom-in` measures: the page shows exactly its mask."""
    from segany import load_default_model
    from segany.clicks import ClickSegmenter, ZoomIn

    clicks = "0.5,0.4717,1;0.4688,0.6179,0;0.55,0.4292,1"  # (320, 200) +, (300, 262) -, (352, 182) + on 640x424
    result = run_page_script("click_tool.mjs", default_server_url + "/", str(coco_photo), str(tmp_path), clicks, "zoomin", "z")
    state = result["state"]
    assert result["pressed"] == "true" and state["labels"] == [1, 0, 1]
    # The first click is decoded in the browser; the next two go to the server with zoom_in.
    zoomed = [r for r in result["requests"] if r.get("zoom_in")]
    assert [len(r["points"]) for r in zoomed] == [2, 3] and zoomed[-1]["points"] == state["points"]
    h, w = state["size"]
    page_mask = np.array(json.loads((tmp_path / "mask_zoomin.json").read_text()), dtype=bool).reshape(h, w)
    seg = ClickSegmenter(SamPredictor(load_default_model()), ZoomIn())
    seg.set_image(read_image(coco_photo))
    for n in range(1, 4):
        masks, _ = seg.predict(np.array(state["points"][:n], float), np.array(state["labels"][:n]))
    assert state["zoomCrop"] == list(seg.view) and seg.view != (0, 0, w, h)
    assert np.array_equal(page_mask, masks[0])
    x0, y0, x1, y1 = seg.view
    outside = np.ones_like(page_mask)
    outside[y0:y1, x0:x1] = False
    assert page_mask.any() and not page_mask[outside].any()  # nothing outside the crop
    assert result["off"] == {"pressed": "false", "zoomCrop": None}
    assert len(result["requests"]) == result["requestsBeforeOff"]  # off: answered in the browser again


def test_edges_tool_shows_the_refined_mask(default_server_url, coco_photo, tmp_path):
    """With the Edges tool on, every click is answered on the server with refine: the page shows
    exactly segany.refine.refine_mask of the model's mask."""
    from segany import load_default_model
    from segany.refine import refine_mask

    clicks = "0.5,0.4717,1;0.4688,0.6179,0"  # (320, 200) +, (300, 262) - on 640x424
    result = run_page_script("click_tool.mjs", default_server_url + "/", str(coco_photo), str(tmp_path), clicks, "refine", "r")
    state = result["state"]
    assert result["pressed"] == "true" and state["labels"] == [1, 0]
    assert [(len(r["points"]), r.get("refine")) for r in result["requests"]] == [(1, True), (2, True)]
    h, w = state["size"]
    page_mask = np.array(json.loads((tmp_path / "mask_refine.json").read_text()), dtype=bool).reshape(h, w)
    image = read_image(coco_photo)
    predictor = SamPredictor(load_default_model())
    predictor.set_image(image)
    points, labels = np.array(state["points"], float), np.array(state["labels"])
    masks, _, _ = predictor.predict(points, labels, multimask_output=False)
    want = refine_mask(image, masks[0], points, labels)
    assert np.array_equal(page_mask, want) and not np.array_equal(want, masks[0])
    assert result["off"]["pressed"] == "false" and len(result["requests"]) == result["requestsBeforeOff"]


def test_16_bit_tiff_is_shown_as_the_model_sees_it(default_server_url, coco_photo, tmp_path):
    """Browsers cannot decode TIFF: the page draws the server's 8-bit rendering of a 16-bit TIFF
    (read_image's stretch) and answers clicks on it as PyTorch does."""
    from segany import load_default_model

    gray = np.asarray(Image.open(coco_photo).convert("L"))
    tiff = tmp_path / "raw.tif"
    Image.fromarray(gray.astype(np.uint16) * 16 + 100).save(tiff)
    out = tmp_path / "page"
    out.mkdir()
    result = run_page_script("annotate.mjs", default_server_url + "/", str(tiff), str(out), "0.47", "0.42")
    h, w = result["size"]
    assert (h, w) == gray.shape
    # The canvas before any click shows the photo, not the white that clipping gives.
    before = np.asarray(Image.open(out / "before.png").convert("L").resize((w, h)))
    assert np.corrcoef(before.ravel().astype(float), gray.ravel().astype(float))[0, 1] > 0.95
    page_mask = np.array(json.loads((out / "mask.json").read_text()), dtype=bool).reshape(h, w)
    predictor = SamPredictor(load_default_model())
    predictor.set_image(read_image(tiff))
    masks, scores, _ = predictor.predict(np.array([result["imageXY"]]), np.array([1]), multimask_output=True)
    best = masks[int(np.argmax(scores))]
    assert best.any() and iou(page_mask, best) > 0.98
