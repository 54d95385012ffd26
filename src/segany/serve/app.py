"""The segany annotation server: a REST API (FastAPI) and the browser tool, in one process.

The image encoder runs here, once per image (and once per zoom-in crop); embeddings are cached in an
LRU bounded by memory. The browser fetches the embedding and the ONNX decoder and decodes clicks itself
(onnxruntime-web); ``POST /api/images/{id}/segment`` does the same on the server for clients without
WASM, and answers zoom-in sessions.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import re
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..clicks import ClickSegmenter, ZoomIn
from ..io import ImageReadError, is_high_depth, read_image
from ..masks import decode_rle, encode_rle
from ..modeling import Sam
from ..predictor import ImageEmbedding, SamPredictor
from ..refine import refine_mask
from .formats import Annotation, ImageInfo, coco_json, index_png, sa1b_json

log = logging.getLogger("segany.serve")

WEB_DIR = Path(__file__).parent / "web"
ORT_DIR = WEB_DIR / "vendor" / "ort"
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")

# Content type of the upload -> the Pillow format its bytes must decode as.
IMAGE_TYPES = {
    "image/jpeg": "JPEG",
    "image/png": "PNG",
    "image/webp": "WEBP",
    "image/bmp": "BMP",
    "image/tiff": "TIFF",
}


MAX_POINTS = 64


def _safe_stem(name: str) -> str:
    """A file stem fit for a Content-Disposition header."""
    return re.sub(r"[^\w.-]+", "_", Path(name).stem)[:80] or "image"


@dataclass
class ServeConfig:
    max_upload_bytes: int = 32 * 2**20
    max_pixels: int = 40_000_000  # decompression-bomb guard, checked before decoding
    embedding_cache_bytes: int = 1 * 2**30
    image_store_bytes: int = 2 * 2**30
    decoder_path: str | None = None  # a pre-exported decoder; else exported from the model on first use
    data_dir: str | None = None  # uploads are kept here (default: a temporary folder)


class ApiError(HTTPException):
    """An error a client can fix: a status code and a one-line message, sent as JSON."""


class LRUCache:
    """A thread-safe LRU of values with known sizes, evicting the oldest beyond ``capacity`` bytes."""

    def __init__(self, capacity: int, on_evict: Any = None) -> None:
        self.capacity = capacity
        self.on_evict = on_evict
        self.used = 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any | None:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key][0]

    def put(self, key: Any, value: Any, size: int) -> None:
        with self._lock:
            if key in self._items:
                self.used -= self._items.pop(key)[1]
            self._items[key] = (value, size)
            self.used += size
            while self.used > self.capacity and len(self._items) > 1:
                _, (old, old_size) = self._items.popitem(last=False)
                self.used -= old_size
                if self.on_evict is not None:
                    self.on_evict(old)

    def pop(self, key: Any) -> None:
        with self._lock:
            if key in self._items:
                self.used -= self._items.pop(key)[1]

    def pop_matching(self, predicate: Any) -> None:
        """Drop every key for which ``predicate(key)`` is true."""
        with self._lock:
            for key in [k for k in self._items if predicate(k)]:
                self.used -= self._items.pop(key)[1]

    def __contains__(self, key: Any) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list[Any]:
        with self._lock:
            return [v for v, _ in self._items.values()]


@dataclass
class ImageRecord:
    info: ImageInfo
    path: Path
    annotations: list[Annotation] = field(default_factory=list)
    next_annotation_id: int = 1
    # Browsers cannot show the file as the model sees it (TIFF, or more than 8 bits per pixel):
    # the page shows the server's 8-bit rendering (/view.png) instead.
    converted: bool = False

    def image(self) -> np.ndarray:
        return read_image(self.path)


@dataclass
class Job:
    id: str
    image_id: int
    status: Literal["queued", "running", "done", "failed"] = "queued"
    progress: float = 0.0
    error: str | None = None
    result: list[dict] | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "job_id": self.id,
            "image_id": self.image_id,
            "status": self.status,
            "progress": round(self.progress, 4),
            "error": self.error,
            "masks": None if self.result is None else len(self.result),
            "seconds": round((self.finished or time.time()) - self.started, 3),
        }


# -- request bodies ---------------------------------------------------------------------------


class RLE(BaseModel):
    size: tuple[int, int] = Field(description="[height, width]")
    counts: str | list[int] = Field(description="COCO RLE counts: compressed string or uncompressed list")


class MaskPrompt(BaseModel):
    """A mask prompt: either a binary mask at the image size, or low-res logits of a previous answer."""

    rle: RLE | None = None
    logits: str | None = Field(None, description="base64 of the low_res_logits of a response (float32; 256*256 for official models)")


class SegmentRequest(BaseModel):
    points: list[tuple[float, float]] = Field(default_factory=list, description="(x, y) in image pixels")
    labels: list[int] = Field(default_factory=list, description="1 foreground, 0 background, one per point")
    box: tuple[float, float, float, float] | None = Field(None, description="x0, y0, x1, y1 in image pixels")
    mask_input: MaskPrompt | None = None
    multimask: bool | None = Field(None, description="3 candidates; default: true for a single point without box")
    format: Literal["rle", "png"] = "rle"
    return_logits: bool = Field(False, description="also return the low-res logits (base64 float32) of each mask")
    zoom_in: bool = Field(
        False,
        description="answer the points as one object's clicks, in order, with zoom-in (RITM's settings): "
        "each answer is fed back, and every click after the first is answered on a crop around the current "
        "mask, encoded on the server (cached per crop). The response gives the crop as zoom_crop.",
    )

    refine: bool = Field(
        False,
        description="fit each mask's boundary to the image's edges with GrabCut (segany.refine); the clicks "
        "are kept. Low-res logits, when asked for, stay the model's own, to be fed back.",
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[int]) -> list[int]:
        if any(label not in (0, 1) for label in v):
            raise ValueError("labels must be 0 (background) or 1 (foreground)")
        return v


class AnnotationIn(BaseModel):
    label: str = Field("object", max_length=200)
    segmentation: RLE
    score: float | None = None
    stability_score: float | None = None
    point_coords: list[tuple[float, float]] = Field(default_factory=list)
    point_labels: list[int] = Field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    source: Literal["click", "box", "auto", "import"] = "click"


class EverythingRequest(BaseModel):
    points_per_side: int = Field(32, ge=1, le=128)
    pred_iou_thresh: float = Field(0.88, ge=0, le=1)
    stability_score_thresh: float = Field(0.95, ge=0, le=1)
    crop_n_layers: int = Field(0, ge=0, le=3)
    min_mask_region_area: int = Field(0, ge=0)


# -- the application --------------------------------------------------------------------------


class SegmentService:
    """State behind the API: images, embeddings, annotations, jobs, the ONNX decoder."""

    def __init__(self, model: Sam, config: ServeConfig) -> None:
        self.model = model.eval()
        self.config = config
        self.embeddings = LRUCache(config.embedding_cache_bytes)
        self.images = LRUCache(config.image_store_bytes, on_evict=self._forget_image)
        self.jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._encoder_lock = threading.Lock()
        self._decoder_lock = threading.Lock()
        self._decoder_bytes: dict[tuple[bool, bool], bytes] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segany-job")
        self._tmp = None
        if config.data_dir:
            self.data_dir = Path(config.data_dir)
            self.data_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="segany-serve-")
            self.data_dir = Path(self._tmp.name)

    # images

    def add_image(self, name: str, data: bytes, content_type: str | None) -> ImageRecord:
        expected = IMAGE_TYPES.get((content_type or "").split(";")[0].strip().lower())
        if expected is None:
            raise ApiError(415, f"unsupported content type {content_type!r}; send one of {', '.join(IMAGE_TYPES)}")
        if len(data) > self.config.max_upload_bytes:
            raise ApiError(413, f"upload too large ({len(data)} bytes, limit {self.config.max_upload_bytes})")
        try:
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                width, height, fmt, high_depth = im.width, im.height, im.format, is_high_depth(im)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
            raise ApiError(400, f"{name}: not a readable image") from None
        if fmt != expected and not (fmt == "MPO" and expected == "JPEG"):
            raise ApiError(415, f"{name}: content type {content_type} but the data is {fmt}")
        if width * height > self.config.max_pixels:
            raise ApiError(413, f"{name}: {width}x{height} pixels is over the limit of {self.config.max_pixels}")
        image_id = next(self._ids)
        path = self.data_dir / f"{image_id}{Path(name).suffix.lower()[:8] or '.img'}"
        path.write_bytes(data)
        try:
            image = read_image(path, max_pixels=self.config.max_pixels)
        except ImageReadError:
            path.unlink(missing_ok=True)
            raise ApiError(400, f"{name}: not a readable image (truncated or corrupt)") from None
        h, w = image.shape[:2]  # after EXIF orientation
        record = ImageRecord(
            ImageInfo(image_id, Path(name).name or f"image{image_id}", w, h),
            path,
            converted=fmt == "TIFF" or high_depth,
        )
        self.images.put(image_id, record, len(data))
        return record

    def image(self, image_id: int) -> ImageRecord:
        record = self.images.get(image_id)
        if record is None:
            raise ApiError(404, f"no image {image_id} (unknown, deleted, or evicted from the store)")
        return record

    def _forget_embeddings(self, image_id: int) -> None:
        """The image's embedding and those of its zoom-in crops (keys (image_id, box))."""
        self.embeddings.pop_matching(lambda key: key == image_id or (isinstance(key, tuple) and key[0] == image_id))

    def _forget_image(self, record: ImageRecord) -> None:
        self._forget_embeddings(record.info.id)
        record.path.unlink(missing_ok=True)

    def delete_image(self, image_id: int) -> None:
        record = self.image(image_id)
        self.images.pop(image_id)
        self._forget_embeddings(image_id)
        record.path.unlink(missing_ok=True)

    # embeddings

    def embedding(self, image_id: int, crop: tuple[int, int, int, int] | None = None) -> ImageEmbedding:
        """The embedding of the image, or of its crop (x0, y0, x1, y1) for zoom-in; cached."""
        record = self.image(image_id)
        if crop is not None and tuple(crop) == (0, 0, record.info.width, record.info.height):
            crop = None
        key: Any = image_id if crop is None else (image_id, tuple(crop))
        cached = self.embeddings.get(key)
        if cached is not None:
            return cached
        with self._encoder_lock:
            cached = self.embeddings.get(key)
            if cached is not None:
                return cached
            image = record.image()
            if crop is not None:
                x0, y0, x1, y1 = crop
                image = np.ascontiguousarray(image[y0:y1, x0:x1])
            predictor = SamPredictor(self.model)
            predictor.set_image(image)
            embedding = predictor.get_embedding()
            self.embeddings.put(key, embedding, embedding.features.numel() * embedding.features.element_size())
            return embedding

    # segmentation on the server

    def segment(self, image_id: int, req: SegmentRequest) -> dict[str, Any]:
        record = self.image(image_id)
        h, w = record.info.height, record.info.width
        if len(req.points) != len(req.labels):
            raise ApiError(422, f"{len(req.points)} points but {len(req.labels)} labels")
        if len(req.points) > MAX_POINTS:
            raise ApiError(422, f"{len(req.points)} points; at most {MAX_POINTS} per request")
        if not req.points and req.box is None and req.mask_input is None:
            raise ApiError(422, "give at least one point, a box or a mask prompt")
        for x, y in req.points:
            if not (0 <= x < w and 0 <= y < h):
                raise ApiError(422, f"point ({x}, {y}) is outside the {w}x{h} image")
        if req.box is not None:
            x0, y0, x1, y1 = req.box
            if not (x1 > x0 and y1 > y0):
                raise ApiError(422, "box must have x1 > x0 and y1 > y0")
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                raise ApiError(422, f"box {list(req.box)} is outside the {w}x{h} image")
        zoom_crop = None
        multimask = req.multimask if req.multimask is not None else (len(req.points) == 1 and req.box is None)
        if req.zoom_in:
            if req.mask_input is not None or req.return_logits:
                raise ApiError(422, "zoom_in answers the clicks itself: it takes no mask_input and returns no low-res logits")
            masks, scores, zoom_crop = self._segment_zoomed(image_id, record, req, multimask)
            logits = None
        else:
            predictor = SamPredictor(self.model)
            predictor.set_embedding(self.embedding(image_id))
            mask_input = self._mask_prompt(req.mask_input, predictor, (h, w)) if req.mask_input else None
            masks, scores, logits = predictor.predict(
                np.array(req.points, dtype=float) if req.points else None,
                np.array(req.labels) if req.points else None,
                np.array(req.box, dtype=float) if req.box is not None else None,
                mask_input,
                multimask_output=multimask,
            )
        if req.refine:
            image = record.image()
            points, labels = np.array(req.points, dtype=float).reshape(-1, 2), np.array(req.labels, dtype=int)
            # GrabCut releases the GIL: an object's three candidates are refined side by side.
            with ThreadPoolExecutor(max_workers=len(masks)) as pool:
                masks = np.stack(list(pool.map(lambda m: refine_mask(image, m, points, labels), masks)))
        order = np.argsort(-scores)
        out = []
        for i in order:
            item: dict[str, Any] = {"score": float(scores[i]), "area": int(masks[i].sum())}
            rle = encode_rle(masks[i])
            if req.format == "rle":
                item["rle"] = rle
            else:
                buf = io.BytesIO()
                Image.fromarray((masks[i] * 255).astype(np.uint8)).save(buf, format="PNG")
                item["png"] = base64.b64encode(buf.getvalue()).decode("ascii")
            from pycocotools import mask as mask_utils

            item["bbox"] = [float(v) for v in mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()})]
            if logits is not None and req.return_logits:
                item["low_res_logits"] = base64.b64encode(logits[i].astype("<f4").tobytes()).decode("ascii")
            out.append(item)
        response = {"image_id": image_id, "size": [h, w], "multimask": multimask, "refined": req.refine, "masks": out}
        if req.zoom_in:
            response["zoom_crop"] = list(zoom_crop)
        return response

    def _segment_zoomed(
        self, image_id: int, record: ImageRecord, req: SegmentRequest, multimask: bool
    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
        """Replay the clicks as a zoom-in session (:class:`segany.clicks.ClickSegmenter`): the same
        answers as ``segany eval interactive --zoom-in``. Stateless: the crops follow from the clicks,
        and their embeddings come from the cache, so a replay encodes only a crop it has not seen (and
        reads the image file only then). The last answer has ``multimask`` candidates, like a plain request."""
        segmenter = ClickSegmenter(SamPredictor(self.model), ZoomIn(), embed=lambda view: self.embedding(image_id, view))
        segmenter.set_image_size(record.info.height, record.info.width)
        points = np.array(req.points, dtype=float).reshape(-1, 2)
        labels = np.array(req.labels, dtype=int)
        box = np.array(req.box, dtype=float) if req.box is not None else None
        last = max(len(points), 1)
        for n in range(1, last + 1):
            # Earlier answers follow the session's rule: 3 candidates for the first one only.
            masks, scores = segmenter.predict(points[:n], labels[:n], box, multimask=multimask if n == last else None)
        return masks, scores, segmenter.view

    @staticmethod
    def _mask_prompt(prompt: MaskPrompt, predictor: SamPredictor, size: tuple[int, int]) -> np.ndarray:
        if (prompt.rle is None) == (prompt.logits is None):
            raise ApiError(422, "mask_input needs exactly one of 'rle' or 'logits'")
        if prompt.logits is not None:
            try:
                raw = base64.b64decode(prompt.logits, validate=True)
            except ValueError:
                raise ApiError(422, "mask_input.logits is not valid base64") from None
            mh, mw = predictor.model.prompt_encoder.mask_input_size
            if len(raw) != mh * mw * 4:
                raise ApiError(422, f"mask_input.logits must be {mh}*{mw} float32 ({mh * mw * 4} bytes), got {len(raw)}")
            return np.frombuffer(raw, dtype="<f4").reshape(1, mh, mw).astype(np.float32)
        mask = _decode_rle_checked(prompt.rle, size, "mask_input.rle")
        # A binary mask becomes logits in the model's padded low-res frame: +/-10 inside/outside.
        resized = predictor.transform.apply_image(np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2))[..., 0]
        img_size = predictor.model.image_encoder.img_size
        mh, mw = predictor.model.prompt_encoder.mask_input_size
        padded = np.zeros((img_size, img_size), dtype=np.float32)
        padded[: resized.shape[0], : resized.shape[1]] = resized / 255.0
        low = np.asarray(Image.fromarray(padded).resize((mw, mh), Image.BILINEAR))
        return ((low > 0.5).astype(np.float32) * 20.0 - 10.0)[None]

    # annotations

    def set_annotations(self, image_id: int, items: list[AnnotationIn]) -> list[Annotation]:
        record = self.image(image_id)
        size = (record.info.height, record.info.width)
        new = [self._annotation(record, item, size) for item in items]
        record.annotations = new
        return new

    def add_annotation(self, image_id: int, item: AnnotationIn) -> Annotation:
        record = self.image(image_id)
        ann = self._annotation(record, item, (record.info.height, record.info.width))
        record.annotations.append(ann)
        return ann

    @staticmethod
    def _annotation(record: ImageRecord, item: AnnotationIn, size: tuple[int, int]) -> Annotation:
        mask = _decode_rle_checked(item.segmentation, size, "segmentation")
        ann = Annotation(
            id=record.next_annotation_id,
            label=item.label.strip() or "object",
            segmentation=encode_rle(mask),
            score=item.score,
            stability_score=item.stability_score,
            point_coords=[list(p) for p in item.point_coords],
            point_labels=list(item.point_labels),
            box=list(item.box) if item.box else None,
            source=item.source,
        )
        record.next_annotation_id += 1
        return ann

    # the ONNX decoder for the browser

    def decoder_bytes(self, upsample: bool = True, quantize: bool = False) -> bytes:
        key = (upsample, quantize)
        with self._decoder_lock:
            if key not in self._decoder_bytes:
                if self.config.decoder_path and upsample and not quantize:
                    data = Path(self.config.decoder_path).read_bytes()
                else:
                    from ..export.onnx import export_decoder_bytes, quantize_onnx

                    data = export_decoder_bytes(self.model, upsample=upsample)
                    if quantize:
                        data = quantize_onnx(data)
                self._decoder_bytes[key] = data
            return self._decoder_bytes[key]

    # automatic masks

    def start_everything(self, image_id: int, req: EverythingRequest) -> Job:
        self.image(image_id)
        try:
            from ..automatic import SamAutomaticMaskGenerator
        except ImportError:
            raise ApiError(501, "automatic mask generation is not available in this build (segany.automatic)") from None
        job = Job(id=f"job{next(self._ids)}", image_id=image_id)
        self.jobs[job.id] = job
        self._executor.submit(self._run_everything, job, req, SamAutomaticMaskGenerator)
        return job

    def _run_everything(self, job: Job, req: EverythingRequest, generator_cls: type) -> None:
        job.status = "running"
        try:
            record = self.image(job.image_id)
            generator = generator_cls(
                self.model,
                points_per_side=req.points_per_side,
                pred_iou_thresh=req.pred_iou_thresh,
                stability_score_thresh=req.stability_score_thresh,
                crop_n_layers=req.crop_n_layers,
                min_mask_region_area=req.min_mask_region_area,
                output_mode="coco_rle",
            )
            _track_progress(generator, job)
            results = generator.generate(record.image())
            job.result = [_jsonable(r) for r in results]
            job.progress = 1.0
            job.status = "done"
        except Exception as e:  # reported through the job, never lost in the thread
            log.exception("everything job %s failed", job.id)
            job.error = f"{type(e).__name__}: {e}"
            job.status = "failed"
        finally:
            job.finished = time.time()

    def job(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise ApiError(404, f"no job {job_id!r}")
        return self.jobs[job_id]


def _track_progress(generator: Any, job: Job) -> None:
    """Count the generator's decoder batches to report progress (the official API has no callback)."""
    predictor = getattr(generator, "predictor", None)
    grids = getattr(generator, "point_grids", None)
    per_batch = getattr(generator, "points_per_batch", None)
    n_layers = getattr(generator, "crop_n_layers", None)
    if predictor is None or grids is None or not per_batch or n_layers is None:
        return
    total = sum((4**i if i else 1) * -(-len(grids[i]) // per_batch) for i in range(n_layers + 1))
    done = itertools.count(1)
    predict_torch = predictor.predict_torch

    def counted(*args: Any, **kwargs: Any) -> Any:
        out = predict_torch(*args, **kwargs)
        job.progress = min(0.99, next(done) / total)
        return out

    predictor.predict_torch = counted


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode_rle_checked(rle: RLE, size: tuple[int, int], what: str) -> np.ndarray:
    if tuple(rle.size) != tuple(size):
        raise ApiError(422, f"{what} has size {list(rle.size)} but the image is {list(size)} (height, width)")
    if isinstance(rle.counts, list) and sum(rle.counts) != size[0] * size[1]:
        raise ApiError(422, f"{what}: uncompressed counts must add up to height*width = {size[0] * size[1]}")
    try:
        mask = decode_rle({"size": list(rle.size), "counts": rle.counts})
    except Exception:  # pycocotools raises bare exceptions on garbage
        raise ApiError(422, f"{what} is not a valid COCO RLE") from None
    if mask.shape != tuple(size):
        raise ApiError(422, f"{what} is not a valid COCO RLE for a {size[1]}x{size[0]} image")
    return mask


def create_app(model: Sam, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI application serving ``model``; run it with uvicorn (see ``segany serve``)."""
    config = config or ServeConfig()
    service = SegmentService(model, config)
    app = FastAPI(
        title="segany",
        version=__version__,
        description="Segment Anything annotation server: upload images, get embeddings, segment with points, "
        "boxes and masks, run automatic 'everything' jobs, and export annotations (COCO, SA-1B, PNG).",
    )
    app.state.service = service

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        message = f"invalid request: {'.'.join(first['loc'][1:]) or 'body'}: {first['msg']}"
        return JSONResponse({"error": message, "details": details}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.middleware("http")
    async def limits_and_headers(request: Request, call_next):
        # Refuse oversized bodies before the multipart parser spools them.
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > config.max_upload_bytes + 2**16:
            return JSONResponse(
                {"error": f"request too large ({length} bytes, limit {config.max_upload_bytes})"}, status_code=413
            )
        response = await call_next(request)
        # Cross-origin isolation lets onnxruntime-web use WASM threads (SharedArrayBuffer).
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        response.headers["Cross-Origin-Embedder-Policy"] = "require-corp"
        return response

    def image_json(record: ImageRecord) -> dict[str, Any]:
        info = record.info
        return {
            "image_id": info.id,
            "file_name": info.file_name,
            "width": info.width,
            "height": info.height,
            "annotations": len(record.annotations),
            "embedding_cached": info.id in service.embeddings,
            # What the page should draw: the uploaded file, or the server's 8-bit rendering of it.
            "view": f"/api/images/{info.id}/view.png" if record.converted else f"/api/images/{info.id}/file",
        }

    @app.get("/api/info", tags=["server"], summary="Model, limits and browser-decoding assets")
    def info() -> dict[str, Any]:
        c = model.config if hasattr(model, "config") else None
        return {
            "version": __version__,
            "model": getattr(c, "name", "custom"),
            "device": str(model.device),
            "embedding_shape": [1, model.prompt_encoder.embed_dim, *model.prompt_encoder.image_embedding_size],
            "img_size": model.image_encoder.img_size,
            "wasm_assets": all((ORT_DIR / f).exists() for f in ORT_FILES),
            "limits": {
                "max_upload_bytes": config.max_upload_bytes,
                "max_pixels": config.max_pixels,
                "content_types": list(IMAGE_TYPES),
            },
            "cache": {"embeddings": len(service.embeddings), "bytes": service.embeddings.used},
        }

    @app.post("/api/images", status_code=201, tags=["images"], summary="Upload an image; returns its id")
    async def upload_image(file: UploadFile = File(...)) -> dict[str, Any]:
        data = await file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            raise ApiError(413, f"upload too large (limit {config.max_upload_bytes} bytes)")
        record = service.add_image(file.filename or "image", data, file.content_type)
        return image_json(record)

    @app.get("/api/images", tags=["images"], summary="List images")
    def list_images() -> list[dict[str, Any]]:
        return [image_json(r) for r in sorted(service.images.values(), key=lambda r: r.info.id)]

    @app.get("/api/images/{image_id}", tags=["images"], summary="One image's size and state")
    def get_image(image_id: int) -> dict[str, Any]:
        return image_json(service.image(image_id))

    @app.get("/api/images/{image_id}/file", tags=["images"], summary="The uploaded file")
    def get_image_file(image_id: int) -> FileResponse:
        return FileResponse(service.image(image_id).path)

    @app.get(
        "/api/images/{image_id}/view.png",
        tags=["images"],
        summary="The image as the model sees it: 8-bit RGB PNG, EXIF orientation applied",
        responses={200: {"content": {"image/png": {}}}},
    )
    def get_image_view(image_id: int) -> Response:
        buf = io.BytesIO()
        Image.fromarray(service.image(image_id).image()).save(buf, format="PNG", compress_level=1)
        return Response(buf.getvalue(), media_type="image/png")

    @app.delete("/api/images/{image_id}", status_code=204, tags=["images"], summary="Forget an image")
    def delete_image(image_id: int) -> Response:
        service.delete_image(image_id)
        return Response(status_code=204)

    @app.get(
        "/api/images/{image_id}/embedding",
        tags=["segment"],
        summary="The image embedding: raw little-endian float32 (format=f32) or a .npy file",
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    def get_embedding(image_id: int, format: Literal["f32", "npy"] = "f32") -> Response:
        embedding = service.embedding(image_id)
        array = embedding.features.detach().to("cpu", torch.float32).numpy()
        headers = {
            "X-Embedding-Shape": ",".join(map(str, array.shape)),
            "X-Original-Size": ",".join(map(str, embedding.original_size)),
            "X-Input-Size": ",".join(map(str, embedding.input_size)),
        }
        if format == "npy":
            buf = io.BytesIO()
            np.save(buf, array)
            headers["Content-Disposition"] = f'attachment; filename="embedding_{image_id}.npy"'
            return Response(buf.getvalue(), media_type="application/octet-stream", headers=headers)
        return Response(array.astype("<f4").tobytes(), media_type="application/octet-stream", headers=headers)

    @app.post("/api/images/{image_id}/segment", tags=["segment"], summary="Masks for points, a box and/or a mask")
    def segment(image_id: int, req: SegmentRequest) -> dict[str, Any]:
        return service.segment(image_id, req)

    @app.post(
        "/api/images/{image_id}/everything",
        status_code=202,
        tags=["everything"],
        summary="Start automatic mask generation; poll the job",
    )
    def everything(image_id: int, req: EverythingRequest | None = None) -> dict[str, Any]:
        return service.start_everything(image_id, req or EverythingRequest()).summary()

    @app.get("/api/jobs/{job_id}", tags=["everything"], summary="Job status and progress (0..1)")
    def get_job(job_id: str) -> dict[str, Any]:
        return service.job(job_id).summary()

    @app.get("/api/jobs/{job_id}/result", tags=["everything"], summary="Masks of a finished job (COCO RLE)")
    def get_job_result(job_id: str) -> dict[str, Any]:
        job = service.job(job_id)
        if job.status == "failed":
            raise ApiError(409, f"job {job_id} failed: {job.error}")
        if job.status != "done":
            raise ApiError(409, f"job {job_id} is {job.status} ({job.progress:.0%})")
        return {**job.summary(), "annotations": job.result}

    @app.get("/api/images/{image_id}/annotations", tags=["annotations"], summary="Saved objects")
    def get_annotations(image_id: int) -> list[dict[str, Any]]:
        return [a.to_dict() for a in service.image(image_id).annotations]

    @app.put("/api/images/{image_id}/annotations", tags=["annotations"], summary="Replace all saved objects")
    def put_annotations(image_id: int, items: list[AnnotationIn]) -> list[dict[str, Any]]:
        return [a.to_dict() for a in service.set_annotations(image_id, items)]

    @app.post("/api/images/{image_id}/annotations", status_code=201, tags=["annotations"], summary="Save one object")
    def post_annotation(image_id: int, item: AnnotationIn) -> dict[str, Any]:
        return service.add_annotation(image_id, item).to_dict()

    @app.delete("/api/images/{image_id}/annotations/{annotation_id}", status_code=204, tags=["annotations"])
    def delete_annotation(image_id: int, annotation_id: int) -> Response:
        record = service.image(image_id)
        kept = [a for a in record.annotations if a.id != annotation_id]
        if len(kept) == len(record.annotations):
            raise ApiError(404, f"image {image_id} has no annotation {annotation_id}")
        record.annotations = kept
        return Response(status_code=204)

    @app.get(
        "/api/images/{image_id}/export",
        tags=["annotations"],
        summary="Export one image's objects: COCO JSON, SA-1B JSON or an index PNG",
        responses={200: {"content": {"application/json": {}, "image/png": {}}}},
    )
    def export_image(image_id: int, format: Literal["coco", "sa1b", "png"] = "coco") -> Response:
        record = service.image(image_id)
        stem = _safe_stem(record.info.file_name)
        if format == "png":
            return Response(
                index_png(record.info, record.annotations),
                media_type="image/png",
                headers={"Content-Disposition": f'attachment; filename="{stem}_objects.png"'},
            )
        body = coco_json([(record.info, record.annotations)]) if format == "coco" else sa1b_json(record.info, record.annotations)
        return JSONResponse(body, headers={"Content-Disposition": f'attachment; filename="{stem}_{format}.json"'})

    @app.get("/api/export", tags=["annotations"], summary="All images' objects as one COCO JSON")
    def export_all() -> JSONResponse:
        records = sorted(service.images.values(), key=lambda r: r.info.id)
        return JSONResponse(coco_json([(r.info, r.annotations) for r in records]))

    @app.get(
        "/api/decoder.onnx",
        tags=["segment"],
        summary="The prompt encoder + mask decoder as ONNX (official SamOnnxModel signature, 4 masks)",
        description="upsample=false drops the full-size `masks` output (the browser tool upsamples the one "
        "mask it shows); quantize=true gives the dynamically quantized (uint8 weights) model.",
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    def decoder(upsample: bool = True, quantize: bool = False) -> Response:
        return Response(service.decoder_bytes(upsample, quantize), media_type="application/octet-stream")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app


class BackgroundServer:
    """Run an app with uvicorn in a daemon thread (tests, benchmarks, notebooks)::

    with BackgroundServer(create_app(model)) as url:
        ...  # http://127.0.0.1:PORT
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
