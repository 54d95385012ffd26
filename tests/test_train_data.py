"""Readers and augmentations of segany.train.data on the shared COCO-MVal / COCO tiny data."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from segany.masks import encode_rle
from segany.train.data import (
    IGNORE,
    AugmentConfig,
    DataError,
    DataSource,
    InteractiveDataset,
    load_source,
    read_coco,
    read_folder_pairs,
    read_mask_file,
    read_sa1b,
)

VAL = r"(0[7-9]|1[0-9])_[0-9]{12}$"


@pytest.fixture()
def mixed_pairs(tmp_path, data_dir):
    """Four COCO-MVal pairs with mixed extensions/case and every supported mask encoding."""
    src = data_dir / "coco_mval"
    stems = sorted(p.stem for p in (src / "images").iterdir())[::200][:4]
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    gts = [np.asarray(Image.open(src / "masks" / f"{s}.png")) > 0 for s in stems]
    # .jpg, .JPG, .png, .bmp images
    shutil.copy(src / "images" / f"{stems[0]}.jpg", images / f"{stems[0]}.jpg")
    shutil.copy(src / "images" / f"{stems[1]}.jpg", images / f"{stems[1]}.JPG")
    Image.open(src / "images" / f"{stems[2]}.jpg").save(images / f"{stems[2]}.png")
    Image.open(src / "images" / f"{stems[3]}.jpg").save(images / f"{stems[3]}.bmp")
    # 0/255, 0/1, 0/255 with a 128 ignore band, palette
    Image.fromarray(gts[0].astype(np.uint8) * 255).save(masks / f"{stems[0]}.png")
    Image.fromarray(gts[1].astype(np.uint8)).save(masks / f"{stems[1]}.PNG")
    band = gts[2].astype(np.uint8) * 255
    import cv2

    edge = cv2.morphologyEx(gts[2].astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8)) > 0
    band[edge] = 128
    Image.fromarray(band).save(masks / f"{stems[2]}.bmp")
    pal = Image.fromarray(gts[3].astype(np.uint8) * 2, mode="L").convert("P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    index = gts[3].astype(np.uint8) * 2
    index[:5, :5] = 255  # void
    index[-5:, -5:] = 1  # a second object
    pal = Image.fromarray(index, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(masks / f"{stems[3]}.png")
    return images, masks, stems, gts, edge


def test_folder_pairs_by_stem_any_extension_and_encoding(mixed_pairs):
    images, masks, stems, gts, edge = mixed_pairs
    records = read_folder_pairs(images, masks)
    assert [r.name for r in records] == sorted(stems)
    by = {r.name: r for r in records}
    for i in (0, 1):
        image, m = by[stems[i]].load()
        assert image.shape[:2] == m.shape[1:] and m.shape[0] == 1
        assert np.array_equal(m[0] == 1, gts[i]) and set(np.unique(m)) <= {0, 1}
    _, m = by[stems[2]].load()
    assert np.array_equal(m[0] == IGNORE, edge)
    assert np.array_equal(m[0] == 1, gts[2] & ~edge)
    _, m = by[stems[3]].load()
    assert m.shape[0] == 2  # palette index 2 (object) and 1 (corner square)
    assert (m[:, :5, :5] == IGNORE).all()
    assert np.array_equal(m[1] == 1, gts[3] & ~np.pad(np.ones((5, 5), bool), ((0, gts[3].shape[0] - 5), (0, gts[3].shape[1] - 5))))


def test_folder_pairs_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        read_folder_pairs(tmp_path / "nope", tmp_path)
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    with pytest.raises(DataError, match="no image"):
        read_folder_pairs(tmp_path / "i", tmp_path / "m")


def test_coco_reader_bad_files(tmp_path):
    with pytest.raises(DataError, match="cannot read COCO annotations .*missing.json"):
        read_coco(tmp_path / "missing.json", tmp_path)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)))  # an image given by mistake
    with pytest.raises(DataError, match="photo.jpg is not a JSON file"):
        read_coco(photo, tmp_path)
    results = tmp_path / "results.json"
    results.write_text('[{"image_id": 1, "score": 0.9}]')  # a COCO results list, not instances
    with pytest.raises(DataError, match="not a COCO instances JSON"):
        read_coco(results, tmp_path)


def test_coco_reader_polygons_and_crowd_skipped(data_dir):
    ann = data_dir / "coco_tiny" / "annotations" / "instances_val2017.json"
    data = json.loads(ann.read_text())
    records = read_coco(ann, data_dir / "coco_tiny" / "val2017")
    total = sum(len(r.load_masks()) for r in records)
    non_crowd = sum(1 for a in data["annotations"] if not a.get("iscrowd"))
    assert total == non_crowd == 804
    # Polygon decoding agrees with the annotated area (COCO areas are polygon areas).
    rec = records[0]
    image, masks = rec.load()
    anns = [a for a in data["annotations"] if not a["iscrowd"] and a["image_id"] == int(rec.name)]
    for a, m in zip(anns, masks):
        assert abs(int(m.sum()) - a["area"]) <= 0.1 * a["area"] + 20


def test_sa1b_layout_roundtrip(tmp_path, data_dir):
    src = data_dir / "coco_tiny"
    rec = read_coco(src / "annotations" / "instances_train2017.json", src / "train2017")[0]
    image, masks = rec.load()
    shutil.copy(rec.image_path, tmp_path / "sa_1.jpg")
    anns = [{"id": i, "segmentation": encode_rle(m.astype(bool))} for i, m in enumerate(masks)]
    (tmp_path / "sa_1.json").write_text(
        json.dumps({"image": {"file_name": "sa_1.jpg", "height": image.shape[0], "width": image.shape[1]}, "annotations": anns})
    )
    records = read_sa1b(tmp_path)
    assert len(records) == 1
    _, decoded = records[0].load()
    assert np.array_equal(decoded, masks)
    (tmp_path / "sa_1.json").write_text(json.dumps({"annotations": anns}))  # no "image" record
    with pytest.raises(DataError, match="not an SA-1B annotation JSON"):
        read_sa1b(tmp_path)[0].load()
    (tmp_path / "sa_1.json").write_text('{"image": ')  # cut short
    with pytest.raises(DataError, match="sa_1.json is not a JSON file"):
        read_sa1b(tmp_path)[0].load()


def test_validation_photos_are_excluded(data_dir):
    source = DataSource(
        kind="folder", images="coco_mval/images", masks="coco_mval/masks", include=r"(0[0-6])_[0-9]{12}$",
        exclude_ids_from="coco_mval/images", exclude_ids_include=VAL,
    )
    kept = load_source(source, data_dir)
    all_train = load_source(DataSource(kind="folder", images="coco_mval/images", masks="coco_mval/masks",
                                       include=r"(0[0-6])_[0-9]{12}$"), data_dir)
    ids = lambda recs: {re.search(r"\d{12}", r.name).group(0) for r in recs}  # noqa: E731
    val_ids = {re.search(r"\d{12}", p.stem).group(0) for p in (data_dir / "coco_mval" / "images").iterdir()
               if re.search(VAL, p.stem)}
    assert len(all_train) == 560
    assert not ids(kept) & val_ids
    assert len(ids(all_train) & val_ids) == 29  # the photos that carry a validation object
    assert len(ids(all_train) - ids(kept)) == 29


def test_dataset_resize_pad_flip_cap(data_dir):
    src = data_dir / "coco_tiny"
    records = read_coco(src / "annotations" / "instances_train2017.json", src / "train2017")
    rec = max(records[:10], key=lambda r: len(r.load_masks()))
    image, masks = rec.load()
    ds = InteractiveDataset([rec], img_size=128, max_masks=3, augment=AugmentConfig(hflip_prob=0.0))
    s = ds.sample(0, np.random.default_rng(0))
    assert s.image.shape == (3, 128, 128) and s.masks.shape[0] == 3 and s.masks.shape[1:] == (128, 128)
    h, w = image.shape[:2]
    nh, nw = round(h * 128 / max(h, w)), round(w * 128 / max(h, w))
    assert (s.masks[:, nh:, :] == IGNORE).all() and (s.masks[:, :, nw:] == IGNORE).all()
    from segany.modeling.sam import PIXEL_MEAN, PIXEL_STD

    normalised = (s.image - np.array(PIXEL_MEAN, np.float32)[:, None, None]) / np.array(PIXEL_STD, np.float32)[:, None, None]
    assert normalised[:, nh:, :].abs().max() < 1e-5  # padding is zero after normalisation, as at inference
    flipped = InteractiveDataset([rec], 128, 64, AugmentConfig(hflip_prob=1.0)).sample(0, np.random.default_rng(0))
    plain = InteractiveDataset([rec], 128, 64, AugmentConfig(hflip_prob=0.0)).sample(0, np.random.default_rng(0))
    assert len(plain.masks) == len(flipped.masks)
    assert np.array_equal(flipped.image[:, :nh, :nw].numpy(), plain.image[:, :nh, :nw].numpy()[:, :, ::-1])


def test_dataset_jitter_and_copy_paste(data_dir):
    src = data_dir / "coco_tiny"
    records = read_coco(src / "annotations" / "instances_train2017.json", src / "train2017")[:4]
    aug = AugmentConfig(scale_range=(0.3, 2.0), color_jitter=0.4, copy_paste_prob=1.0, copy_paste_max_objects=2,
                        min_mask_pixels=4)
    ds = InteractiveDataset(records, img_size=96, max_masks=64, augment=aug)
    plain = InteractiveDataset(records, img_size=96, max_masks=64)
    grew = 0
    for seed in range(6):
        s = ds.sample(0, np.random.default_rng(seed))
        assert s.image.shape == (3, 96, 96) and s.masks.dtype.is_floating_point is False
        assert ((s.masks == 0) | (s.masks == 1) | (s.masks == IGNORE)).all()
        assert ((s.masks == 1).flatten(1).sum(1) >= 4).all()
        grew += len(s.masks) > len(plain.sample(0, np.random.default_rng(seed)).masks)
    assert grew > 0  # pasted objects become new targets


def test_read_mask_file_binary_01(tmp_path):
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:7] = 1
    Image.fromarray(m).save(tmp_path / "a.png")
    out = read_mask_file(tmp_path / "a.png")
    assert out.shape == (1, 10, 12) and out.sum() == 12


@pytest.mark.parametrize("suffix, dtype, mode", [(".png", np.uint16, None), (".tif", np.int32, "I")])
def test_read_mask_file_label_maps(tmp_path, suffix, dtype, mode):
    """16- and 32-bit integer masks are instance label maps: one object per non-zero value."""
    labels = np.zeros((20, 30), dtype)
    labels[2:6, 3:9] = 3
    labels[10:12, 0:30] = 300
    labels[15:20, 25:30] = 7
    Image.fromarray(labels, mode=mode).save(tmp_path / f"labels{suffix}")
    out = read_mask_file(tmp_path / f"labels{suffix}")
    assert out.shape == (3, 20, 30) and out.dtype == np.uint8
    for obj, value in zip(out, (3, 7, 300)):  # in label order
        assert np.array_equal(obj == 1, labels == value) and not (obj == IGNORE).any()


def test_read_mask_file_refuses_float_and_huge_label_maps(tmp_path, monkeypatch):
    Image.fromarray(np.ones((8, 8), np.float32), mode="F").save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="floating-point"):
        read_mask_file(tmp_path / "f.tif")
    labels = np.arange(64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(labels).save(tmp_path / "many.png")
    import segany.train.data as data

    monkeypatch.setattr(data, "MAX_LABEL_MASK_BYTES", 1000)
    with pytest.raises(DataError, match="63 objects at 8x8.*split the image"):
        read_mask_file(tmp_path / "many.png")
