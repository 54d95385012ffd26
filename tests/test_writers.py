"""Writers: what is written decodes back to the generator's masks and fields."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from segany.automatic import SamAutomaticMaskGenerator
from segany.masks import decode_rle, masks_to_uncompressed_rle
from segany.writers import (
    coco_instances_document,
    label_map,
    sa1b_document,
    to_coco_rle,
    write_json,
    write_label_png,
    write_overlay,
    write_sa1b,
)


@pytest.fixture(scope="module")
def image(reference_arrays):
    return reference_arrays["img1"]


@pytest.fixture(scope="module")
def records(ref_model, image):
    generator = SamAutomaticMaskGenerator(
        ref_model, points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    out = generator.generate(image)
    assert len(out) > 5
    return out


def test_sa1b_json_round_trip(tmp_path, records, image):
    h, w = image.shape[:2]
    path = tmp_path / "sa_1.json"
    write_sa1b(path, records, image_id=7, file_name="sa_1.jpg", height=h, width=w)
    doc = json.loads(path.read_text())
    assert doc["image"] == {"image_id": 7, "width": w, "height": h, "file_name": "sa_1.jpg"}
    assert [a["id"] for a in doc["annotations"]] == list(range(1, len(records) + 1))
    for ann, rec in zip(doc["annotations"], records):
        assert set(ann) == {"id", "segmentation", "bbox", "area", "predicted_iou", "stability_score",
                            "crop_box", "point_coords"}
        np.testing.assert_array_equal(decode_rle(ann["segmentation"]), rec["segmentation"])
        for key in ("bbox", "area", "predicted_iou", "stability_score", "crop_box", "point_coords"):
            assert ann[key] == rec[key]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_any_segmentation_form_becomes_the_same_coco_rle(records):
    for rec in records[:5]:
        mask = rec["segmentation"]
        from_binary = to_coco_rle(mask)
        from_uncompressed = to_coco_rle(masks_to_uncompressed_rle(torch.as_tensor(mask[None]))[0])
        assert from_binary == from_uncompressed == to_coco_rle(from_binary)


def test_coco_instances_load_in_pycocotools(tmp_path, records, image):
    h, w = image.shape[:2]
    docs = [
        sa1b_document(records, image_id=1, file_name="a.jpg", height=h, width=w),
        sa1b_document(records[:3], image_id=2, file_name="b.jpg", height=h, width=w),
    ]
    path = tmp_path / "instances.json"
    write_json(path, coco_instances_document(docs))
    coco = COCO(str(path))
    assert sorted(coco.getImgIds()) == [1, 2]
    assert len(coco.getAnnIds(imgIds=[1])) == len(records) and len(coco.getAnnIds(imgIds=[2])) == 3
    ann_ids = coco.getAnnIds(imgIds=[1])
    assert len(set(coco.getAnnIds())) == len(records) + 3  # unique ids across images
    for ann_id, rec in zip(ann_ids, records):
        ann = coco.loadAnns([ann_id])[0]
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), rec["segmentation"])
        assert ann["score"] == rec["predicted_iou"] and ann["iscrowd"] == 0 and ann["category_id"] == 1


def test_label_map_png(tmp_path, records, image):
    h, w = image.shape[:2]
    path = tmp_path / "labels.png"
    write_label_png(path, records, h, w)
    labels = np.asarray(Image.open(path))
    assert labels.shape == (h, w) and labels.dtype == np.uint8
    masks = np.stack([r["segmentation"] for r in records])
    covered = masks.any(0)
    assert (labels[~covered] == 0).all() and (labels[covered] > 0).all()
    for k in np.unique(labels[covered]):
        inside = labels == k
        assert masks[k - 1][inside].all()
        # Where masks overlap, the smallest covering one is shown.
        areas = masks.sum((1, 2))
        covering = masks[:, inside].any(1)
        assert areas[k - 1] == areas[covering].min() or not inside.any()


def test_label_map_switches_to_16_bit():
    records = []
    for i in range(300):
        m = np.zeros((40, 50), bool)
        y, x = divmod(i, 50)
        m[y * 6 : y * 6 + 3, x] = True
        records.append({"segmentation": m})
    labels = label_map(records, 40, 50)
    assert labels.dtype == np.uint16 and labels.max() == 300
    assert len(np.unique(labels)) == 301


def test_overlay_pictures(tmp_path, data_dir):
    """A real object mask over its photo: coloured inside, outlined, untouched far away."""
    import cv2

    mask_path = sorted((data_dir / "coco_mval" / "masks").glob("*.png"))[5]
    photo = np.asarray(Image.open(data_dir / "coco_mval" / "images" / f"{mask_path.stem}.jpg").convert("RGB"))
    mask = np.asarray(Image.open(mask_path).convert("L")) > 127
    records = [{"segmentation": to_coco_rle(mask)}]
    far = ~cv2.dilate(mask.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    for name in ("overlay.png", "overlay.jpg"):
        write_overlay(tmp_path / name, photo, records)
        picture = np.asarray(Image.open(tmp_path / name)).astype(int)
        assert picture.shape == photo.shape
        changed = np.abs(picture - photo).sum(-1) > 30
        assert changed[mask].mean() > 0.5
        # PNG is exact; JPEG only adds compression noise near the coloured region.
        assert changed[far].mean() < (0.0 if name.endswith(".png") else 0.03) + 1e-9


def test_overlay_of_no_masks_is_the_photo(tmp_path, data_dir):
    """An image where nothing passes the filters still gets its overlay: the photo unchanged."""
    photo = np.asarray(Image.open(sorted((data_dir / "coco_mval" / "images").glob("*.jpg"))[0]).convert("RGB"))
    write_overlay(tmp_path / "overlay.png", photo, [])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "overlay.png")), photo)


def test_pictures_decode_one_mask_at_a_time(records, image):
    """Label maps and overlays read the records' masks one at a time (large images: never all at
    once), in order of their areas, and draw what the decoded masks give."""
    from segany.visualize import overlay_masks
    from segany.writers import RecordMasks

    class Counting(RecordMasks):
        reads = 0

        def __getitem__(self, index):
            Counting.reads += 1
            return super().__getitem__(index)

    rle_records = [{**r, "segmentation": to_coco_rle(r["segmentation"])} for r in records]
    masks = Counting(rle_records)
    eager = [r["segmentation"] for r in records]
    picture = overlay_masks(image, masks, areas=masks.areas())
    assert Counting.reads == len(records)  # once each: the areas come from the records
    assert np.array_equal(picture, overlay_masks(image, eager))
    h, w = image.shape[:2]
    assert np.array_equal(label_map(rle_records, h, w), label_map(records, h, w))
