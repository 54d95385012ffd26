"""The REST API of `segany serve`, with FastAPI's TestClient on the fixture model and real photos."""

from __future__ import annotations

import base64
import io
import json
import re
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from segany import SamPredictor  # noqa: E402
from segany.io import read_image  # noqa: E402
from segany.masks import decode_rle, encode_rle  # noqa: E402
from segany.serve.app import LRUCache, ServeConfig, create_app  # noqa: E402


@pytest.fixture(scope="module")
def client(ref_model):
    with TestClient(create_app(ref_model, ServeConfig(max_upload_bytes=2 * 2**20, max_pixels=2_000_000))) as c:
        yield c


@pytest.fixture(scope="module")
def uploaded(client, coco_photo):
    with open(coco_photo, "rb") as f:
        r = client.post("/api/images", files={"file": (coco_photo.name, f, "image/jpeg")})
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture(scope="module")
def predictor(ref_model, coco_photo):
    p = SamPredictor(ref_model)
    p.set_image(read_image(coco_photo))
    return p


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def assert_json_error(r, status: int, words: str = "") -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body["error"], str) and "Traceback" not in r.text
    assert words.lower() in body["error"].lower(), body


def test_upload_returns_an_id_and_size(uploaded, coco_photo):
    h, w = read_image(coco_photo).shape[:2]
    assert uploaded["image_id"] >= 1 and (uploaded["height"], uploaded["width"]) == (h, w)
    assert uploaded["file_name"] == coco_photo.name


def test_view_is_the_image_the_model_sees(client, uploaded, coco_photo):
    """Browser-readable uploads are drawn from the file; a 16-bit TIFF from the server's 8-bit
    rendering (read_image's stretch), which is also what the model is given."""
    assert uploaded["view"] == f"/api/images/{uploaded['image_id']}/file"
    gray = np.asarray(Image.open(coco_photo).convert("L"))
    buf = io.BytesIO()
    Image.fromarray(gray.astype(np.uint16) * 16 + 100).save(buf, format="TIFF")
    r = client.post("/api/images", files={"file": ("raw.tif", buf.getvalue(), "image/tiff")})
    assert r.status_code == 201, r.text
    info = r.json()
    assert info["view"] == f"/api/images/{info['image_id']}/view.png"
    view = client.get(info["view"])
    assert view.status_code == 200 and view.headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(view.content)))
    assert shown.shape == (*gray.shape, 3) and shown.std() > 0.8 * gray.std()  # not clipped to white
    assert np.corrcoef(shown[..., 0].ravel().astype(float), gray.ravel().astype(float))[0, 1] > 0.99
    assert client.get("/api/images/999999/view.png").status_code == 404
    # A 16-bit colour PNG: browsers would show its 12-bit data nearly black.
    import cv2

    ok, png = cv2.imencode(".png", np.asarray(Image.open(coco_photo).convert("RGB")).astype(np.uint16) * 16)
    r = client.post("/api/images", files={"file": ("raw.png", png.tobytes(), "image/png")})
    assert r.status_code == 201 and r.json()["view"].endswith("/view.png")


def test_embedding_as_raw_float32_and_npy(client, uploaded, predictor):
    iid = uploaded["image_id"]
    r = client.get(f"/api/images/{iid}/embedding")
    assert r.status_code == 200 and r.headers["x-embedding-shape"] == "1,256,64,64"
    raw = np.frombuffer(r.content, dtype="<f4").reshape(1, 256, 64, 64)
    expected = predictor.get_image_embedding().numpy()
    assert np.abs(raw - expected).max() < 1e-5
    assert r.headers["x-original-size"] == f"{uploaded['height']},{uploaded['width']}"
    r = client.get(f"/api/images/{iid}/embedding", params={"format": "npy"})
    assert np.array_equal(np.load(io.BytesIO(r.content)), raw)
    assert client.get(f"/api/images/{iid}").json()["embedding_cached"] is True


def test_segment_point_matches_predictor_as_rle_and_png(client, uploaded, predictor):
    iid = uploaded["image_id"]
    r = client.post(f"/api/images/{iid}/segment", json={"points": [[300, 200]], "labels": [1]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["multimask"] is True and len(body["masks"]) == 3
    scores = [m["score"] for m in body["masks"]]
    assert scores == sorted(scores, reverse=True)
    masks, iou, _ = predictor.predict(np.array([[300, 200]]), np.array([1]), multimask_output=True)
    best = int(np.argmax(iou))
    assert np.array_equal(decode_rle(body["masks"][0]["rle"]), masks[best])
    assert abs(scores[0] - float(iou[best])) < 1e-5 and body["masks"][0]["area"] == int(masks[best].sum())
    r = client.post(f"/api/images/{iid}/segment", json={"points": [[300, 200]], "labels": [1], "format": "png"})
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["masks"][0]["png"]))))
    assert np.array_equal(png > 127, masks[best])


def test_segment_refine_fits_each_mask_to_the_image_edges(client, uploaded, predictor, coco_photo):
    """refine: true answers with segany.refine.refine_mask applied to each of the model's masks."""
    from segany.refine import refine_mask

    iid = uploaded["image_id"]
    prompt = {"points": [[300, 200], [330, 240]], "labels": [1, 0]}
    plain = client.post(f"/api/images/{iid}/segment", json=prompt).json()
    body = client.post(f"/api/images/{iid}/segment", json={**prompt, "refine": True, "return_logits": True}).json()
    assert plain["refined"] is False and body["refined"] is True
    image = read_image(coco_photo)
    for p, r in zip(plain["masks"], body["masks"]):
        want = refine_mask(image, decode_rle(p["rle"]), np.array(prompt["points"], float), np.array(prompt["labels"]))
        assert np.array_equal(decode_rle(r["rle"]), want) and r["area"] == int(want.sum())
        assert r["score"] == p["score"] and "low_res_logits" in r  # the model's own logits, to feed back
    # With zoom_in the replayed session's answer is refined the same way.
    zoomed = client.post(f"/api/images/{iid}/segment", json={**prompt, "zoom_in": True}).json()
    both = client.post(f"/api/images/{iid}/segment", json={**prompt, "zoom_in": True, "refine": True}).json()
    assert both["zoom_crop"] == zoomed["zoom_crop"] and both["refined"] is True
    want = refine_mask(image, decode_rle(zoomed["masks"][0]["rle"]), np.array(prompt["points"], float), np.array(prompt["labels"]))
    assert np.array_equal(decode_rle(both["masks"][0]["rle"]), want)


def test_segment_box_and_mask_prompts(client, uploaded, predictor):
    iid = uploaded["image_id"]
    box = [100, 80, 420, 330]
    r = client.post(f"/api/images/{iid}/segment", json={"box": box, "return_logits": True})
    body = r.json()
    assert r.status_code == 200 and body["multimask"] is False and len(body["masks"]) == 1
    masks, _, logits = predictor.predict(box=np.array(box), multimask_output=False)
    assert np.array_equal(decode_rle(body["masks"][0]["rle"]), masks[0])
    returned = np.frombuffer(base64.b64decode(body["masks"][0]["low_res_logits"]), dtype="<f4").reshape(256, 256)
    assert np.abs(returned - logits[0]).max() < 1e-4
    # Feeding the logits back as a mask prompt is the official refinement loop.
    r = client.post(
        f"/api/images/{iid}/segment",
        json={"points": [[300, 200]], "labels": [1], "mask_input": {"logits": body["masks"][0]["low_res_logits"]},
              "multimask": False},
    )
    refined, _, _ = predictor.predict(np.array([[300, 200]]), np.array([1]), mask_input=logits, multimask_output=False)
    assert np.array_equal(decode_rle(r.json()["masks"][0]["rle"]), refined[0])
    # A binary mask prompt as RLE is accepted too.
    r = client.post(f"/api/images/{iid}/segment", json={"mask_input": {"rle": encode_rle(masks[0])}})
    assert r.status_code == 200 and len(r.json()["masks"]) == 1


def test_annotations_and_exports_round_trip(client, uploaded, predictor):
    iid = uploaded["image_id"]
    masks, iou, _ = predictor.predict(np.array([[300, 200]]), np.array([1]), multimask_output=False)
    box_mask, _, _ = predictor.predict(box=np.array([10, 10, 200, 150]), multimask_output=False)
    # Uncompressed RLE (what the browser sends) and compressed RLE are both accepted.
    fortran = box_mask[0].astype(np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], fortran, [2]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    items = [
        {"label": "person", "segmentation": encode_rle(masks[0]), "score": float(iou[0])},
        {"label": "board", "segmentation": {"size": list(box_mask[0].shape), "counts": counts}},
    ]
    r = client.put(f"/api/images/{iid}/annotations", json=items)
    assert r.status_code == 200 and [a["label"] for a in r.json()] == ["person", "board"]
    coco = client.get(f"/api/images/{iid}/export", params={"format": "coco"}).json()
    assert [c["name"] for c in coco["categories"]] == ["person", "board"]
    assert coco["images"][0]["width"] == uploaded["width"]
    decoded = [decode_rle(a["segmentation"]) for a in coco["annotations"]]
    assert np.array_equal(decoded[0], masks[0]) and np.array_equal(decoded[1], box_mask[0])
    assert coco["annotations"][0]["area"] == int(masks[0].sum())
    from pycocotools import mask as mask_utils

    rle = coco["annotations"][1]["segmentation"]
    assert coco["annotations"][1]["bbox"] == mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()}).tolist()
    sa1b = client.get(f"/api/images/{iid}/export", params={"format": "sa1b"}).json()
    assert sa1b["image"]["height"] == uploaded["height"] and len(sa1b["annotations"]) == 2
    assert np.array_equal(decode_rle(sa1b["annotations"][0]["segmentation"]), masks[0])
    png = np.asarray(Image.open(io.BytesIO(client.get(f"/api/images/{iid}/export", params={"format": "png"}).content)))
    expected = np.zeros(masks[0].shape, np.uint8)
    expected[masks[0]] = 1
    expected[box_mask[0]] = 2
    assert np.array_equal(png, expected)
    # One more, then delete it.
    r = client.post(f"/api/images/{iid}/annotations", json={"label": "x", "segmentation": encode_rle(masks[0])})
    assert r.status_code == 201
    assert client.delete(f"/api/images/{iid}/annotations/{r.json()['id']}").status_code == 204
    assert len(client.get(f"/api/images/{iid}/annotations").json()) == 2
    assert len(client.get("/api/export").json()["annotations"]) >= 2


def test_openapi_documents_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/images", "/api/images/{image_id}/embedding", "/api/images/{image_id}/segment",
                 "/api/images/{image_id}/everything", "/api/jobs/{job_id}", "/api/images/{image_id}/export"):
        assert path in paths
    assert client.get("/docs").status_code == 200


def test_page_and_decoder_are_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "segany" in r.text and r.headers["cross-origin-opener-policy"] == "same-origin"
    assert client.get("/static/app.js").status_code == 200
    import onnxruntime

    session = onnxruntime.InferenceSession(client.get("/api/decoder.onnx").content, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["masks", "iou_predictions", "low_res_masks"]


@pytest.mark.parametrize(
    "body, words",
    [
        ({"points": [[10, 10]], "labels": [1, 0]}, "labels"),
        ({"points": [[-5, 10]], "labels": [1]}, "outside"),
        ({"points": [[10, 10]], "labels": [2]}, "labels"),
        ({}, "at least one"),
        ({"box": [50, 50, 10, 10]}, "x1 > x0"),
        ({"box": [0, 0, 10]}, "box"),
        ({"points": "nope", "labels": [1]}, "points"),
        ({"points": [[10, 10]], "labels": [1], "format": "gif"}, "format"),
        ({"mask_input": {"logits": "AAAA"}}, "256*256"),
        ({"mask_input": {"rle": {"size": [5, 5], "counts": [25]}}}, "size"),
        ({"mask_input": {"rle": {"size": [424, 640], "counts": "!!garbage"}}}, "rle"),
        ({"points": [[1, 1]] * 65, "labels": [1] * 65}, "at most 64"),
    ],
)
def test_bad_segment_requests_get_4xx_json(client, uploaded, body, words):
    r = client.post(f"/api/images/{uploaded['image_id']}/segment", json=body)
    assert_json_error(r, 422, words)


def test_bad_requests_get_4xx_json(client, uploaded):
    iid = uploaded["image_id"]
    assert_json_error(client.get("/api/images/9999/embedding"), 404, "no image")
    assert_json_error(client.get(f"/api/images/{iid}/embedding", params={"format": "jpg"}), 422)
    assert_json_error(client.get("/api/images/abc"), 422)
    assert_json_error(client.get(f"/api/images/{iid}/export", params={"format": "xml"}), 422)
    assert_json_error(client.get("/api/jobs/nope"), 404, "no job")
    assert_json_error(client.get("/api/nothing-here"), 404)
    r = client.post(f"/api/images/{iid}/segment", content=b"{not json", headers={"content-type": "application/json"})
    assert_json_error(r, 422, "json")
    bad_ann = [{"label": "a", "segmentation": {"size": [3, 3], "counts": [9]}}]
    assert_json_error(client.put(f"/api/images/{iid}/annotations", json=bad_ann), 422, "size")
    assert_json_error(client.delete(f"/api/images/{iid}/annotations/777"), 404)


def test_upload_limits_and_content_types(client, coco_photo):
    assert_json_error(client.post("/api/images", files={"file": ("a.txt", b"hello", "text/plain")}), 415, "content type")
    assert_json_error(client.post("/api/images", files={"file": ("a.png", b"not a png", "image/png")}), 400, "not a readable")
    jpeg = coco_photo.read_bytes()
    assert_json_error(client.post("/api/images", files={"file": ("a.png", jpeg, "image/png")}), 415, "JPEG")
    assert_json_error(client.post("/api/images", files={"file": ("a.jpg", jpeg[: len(jpeg) // 3], "image/jpeg")}), 400)
    # A decompression bomb: a tiny PNG that decodes to 3000x3000 pixels, over the 2 MP limit.
    bomb = png_bytes(np.zeros((3000, 3000), np.uint8))
    assert len(bomb) < 100_000
    assert_json_error(client.post("/api/images", files={"file": ("bomb.png", bomb, "image/png")}), 413, "pixels")
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8))
    assert len(big) > 2 * 2**20
    assert_json_error(client.post("/api/images", files={"file": ("big.png", big, "image/png")}), 413, "too large")
    assert_json_error(client.post("/api/images"), 422)


def test_embedding_cache_is_bounded_by_memory():
    cache = LRUCache(capacity=10)
    for key in range(5):
        cache.put(key, str(key), size=4)
    assert len(cache) == 2 and cache.used == 8 and cache.get(0) is None
    cache.get(3)
    cache.put(5, "5", size=4)
    assert cache.get(3) == "3" and cache.get(4) is None


def test_image_store_evicts_old_uploads_and_their_files(ref_model, coco_photo):
    size = coco_photo.stat().st_size
    app = create_app(ref_model, ServeConfig(image_store_bytes=int(2.5 * size)))
    service = app.state.service
    with TestClient(app) as c:
        ids = [
            c.post("/api/images", files={"file": ('we"ird\nname.jpg', coco_photo.read_bytes(), "image/jpeg")}).json()["image_id"]
            for _ in range(3)
        ]
        files = sorted(service.data_dir.iterdir())
        assert len(files) == 2 and c.get(f"/api/images/{ids[0]}").status_code == 404
        r = c.get(f"/api/images/{ids[-1]}/export", params={"format": "coco"})
        assert r.status_code == 200
        assert re.fullmatch(r'attachment; filename="[\w.-]+_coco\.json"', r.headers["content-disposition"])


def test_embedding_cache_evicts_images_beyond_budget(ref_model, coco_photo, data_dir):
    one_embedding = 256 * 64 * 64 * 4
    app = create_app(ref_model, ServeConfig(embedding_cache_bytes=int(1.5 * one_embedding)))
    with TestClient(app) as c:
        ids = []
        for path in [coco_photo, data_dir / "coco_tiny" / "val2017" / "000000005001.jpg"]:
            with open(path, "rb") as f:
                ids.append(c.post("/api/images", files={"file": (path.name, f, "image/jpeg")}).json()["image_id"])
            assert c.get(f"/api/images/{ids[-1]}/embedding").status_code == 200
        info = c.get("/api/info").json()
        assert info["cache"]["embeddings"] == 1 and info["cache"]["bytes"] == one_embedding
        assert [c.get(f"/api/images/{i}").json()["embedding_cached"] for i in ids] == [False, True]


def test_everything_job_reports_progress_and_masks(ref_model, coco_photo):
    pytest.importorskip("segany.automatic", reason="segany.automatic (branch amg) is not merged yet")
    with TestClient(create_app(ref_model)) as c:
        with open(coco_photo, "rb") as f:
            iid = c.post("/api/images", files={"file": (coco_photo.name, f, "image/jpeg")}).json()["image_id"]
        r = c.post(f"/api/images/{iid}/everything", json={"points_per_side": 8})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        progress = []
        deadline = time.time() + 300
        while True:
            status = c.get(f"/api/jobs/{job_id}").json()
            progress.append(status["progress"])
            if status["status"] in ("done", "failed") or time.time() > deadline:
                break
            time.sleep(0.2)
        assert status["status"] == "done", status
        assert progress == sorted(progress) and progress[-1] == 1.0
        result = c.get(f"/api/jobs/{job_id}/result").json()
        assert result["masks"] == len(result["annotations"])
        for ann in result["annotations"]:
            mask = decode_rle(ann["segmentation"])
            assert mask.shape == (read_image(coco_photo).shape[:2]) and int(mask.sum()) == ann["area"]
        json.dumps(result)


def test_everything_errors(client, uploaded):
    assert_json_error(client.post("/api/images/9999/everything"), 404)
    r = client.post(f"/api/images/{uploaded['image_id']}/everything", json={"points_per_side": 0})
    assert_json_error(r, 422)


def test_segment_zoom_in_replays_the_click_session(coco_photo, monkeypatch):
    """zoom_in answers a click list as segany.clicks.ClickSegmenter does (the method measured by
    `segany eval interactive --zoom-in`), encoding each crop once across requests."""
    from segany import load_default_model
    from segany.clicks import ClickSegmenter, ZoomIn

    model = load_default_model()
    points = [[320, 200], [300, 262], [352, 182]]
    labels = [1, 0, 1]
    seg = ClickSegmenter(SamPredictor(model), ZoomIn())
    seg.set_image(read_image(coco_photo))
    for n in range(1, len(points) + 1):
        want, want_scores = seg.predict(np.array(points[:n], float), np.array(labels[:n]))
    assert seg.view != (0, 0, 640, 424)  # the last answer came from a crop

    app = create_app(model, ServeConfig())
    with TestClient(app) as client:
        with open(coco_photo, "rb") as f:
            iid = client.post("/api/images", files={"file": (coco_photo.name, f, "image/jpeg")}).json()["image_id"]
        encoded = []
        original = SamPredictor.set_image
        monkeypatch.setattr(
            SamPredictor, "set_image", lambda self, image, *a, **k: (encoded.append(image.shape), original(self, image, *a, **k))[1]
        )
        body = client.post(f"/api/images/{iid}/segment", json={"points": points, "labels": labels, "zoom_in": True}).json()
        again = client.post(f"/api/images/{iid}/segment", json={"points": points, "labels": labels, "zoom_in": True}).json()
        assert body["zoom_crop"] == list(seg.view) and body["multimask"] is False and len(body["masks"]) == 1
        assert np.array_equal(decode_rle(body["masks"][0]["rle"]), want[0])
        assert body["masks"][0]["score"] == pytest.approx(float(want_scores[0]), abs=1e-6)
        # The whole image once, then each crop once; the repeated request encodes nothing.
        x0, y0, x1, y1 = seg.view
        assert encoded[0] == (424, 640, 3) and (y1 - y0, x1 - x0, 3) in encoded
        assert len(encoded) == len(set(encoded)) and again == body
        # One click is the ordinary ambiguous answer: 3 candidates, the same as without zoom_in.
        one = client.post(f"/api/images/{iid}/segment", json={"points": points[:1], "labels": [1], "zoom_in": True}).json()
        plain = client.post(f"/api/images/{iid}/segment", json={"points": points[:1], "labels": [1]}).json()
        assert one["zoom_crop"] == [0, 0, 640, 424] and [m["rle"] for m in one["masks"]] == [m["rle"] for m in plain["masks"]]
        # A zoomed session takes no mask prompt and returns no crop-frame logits.
        r = client.post(f"/api/images/{iid}/segment", json={"points": points, "labels": labels, "zoom_in": True, "return_logits": True})
        assert_json_error(r, 422, "zoom_in")
        # Deleting the image drops its crops' embeddings too.
        assert client.get("/api/info").json()["cache"]["embeddings"] == len(encoded) >= 2
        assert client.delete(f"/api/images/{iid}").status_code == 204
        assert client.get("/api/info").json()["cache"]["embeddings"] == 0
