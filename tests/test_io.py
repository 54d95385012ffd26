"""Reading images: high-bit-depth single-channel files (microscopy, remote sensing) are stretched
onto 8 bits instead of being clipped; 8-bit and colour files keep their values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segany.cli import main
from segany.io import read_image, stretch_to_uint8


@pytest.fixture()
def gray_photo(coco_photo) -> np.ndarray:
    """A real photo as 8-bit grayscale, (H, W) uint8."""
    return np.asarray(Image.open(coco_photo).convert("L"))


def _as_12_bit(gray: np.ndarray) -> np.ndarray:
    """The photo as a dark 12-bit camera would store it in 16 bits, with a few hot pixels at 65535."""
    raw = gray.astype(np.uint16) * 16 + 100
    raw.flat[::9973] = 65535
    return raw


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_image_is_stretched_not_clipped(tmp_path, gray_photo, suffix):
    path = tmp_path / f"raw{suffix}"
    Image.fromarray(_as_12_bit(gray_photo)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (*gray_photo.shape, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 0] == image[..., 2]).all()
    # PIL's own conversion clips every value above 255: the picture is gone.
    clipped = np.asarray(Image.open(path).convert("RGB"))[..., 0]
    assert (clipped == 255).mean() > 0.95
    # The stretch gives the photo back: a linear map of the 8-bit values, hot pixels saturated.
    ours = image[..., 0].astype(float)
    assert np.corrcoef(ours.ravel(), gray_photo.ravel().astype(float))[0, 1] > 0.99
    assert ours.std() > 0.8 * gray_photo.std()
    hot = np.zeros(gray_photo.size, bool)
    hot[::9973] = True
    assert (ours.ravel()[hot] == 255).all()


def test_float_and_32_bit_images(tmp_path, gray_photo):
    values = gray_photo.astype(np.float32) / 255.0 * 3.0 - 1.0  # a float map in [-1, 2]
    values[0, :10] = np.nan
    values[1, :10] = np.inf
    Image.fromarray(values, mode="F").save(tmp_path / "map.tif")
    image = read_image(tmp_path / "map.tif")[..., 0]
    assert (image[0, :10] == 0).all() and (image[1, :10] == 255).all()
    finite = np.isfinite(values)
    assert np.corrcoef(image[finite].astype(float), gray_photo[finite].astype(float))[0, 1] > 0.99

    Image.fromarray(gray_photo.astype(np.int32) * 1000 - 50_000, mode="I").save(tmp_path / "int32.tif")
    image = read_image(tmp_path / "int32.tif")[..., 0]
    assert image.min() == 0 and image.max() == 255  # the photo's range, stretched onto 8 bits
    assert np.corrcoef(image.ravel().astype(float), gray_photo.ravel().astype(float))[0, 1] > 0.99


def test_stretch_edge_cases():
    assert (stretch_to_uint8(np.full((4, 5), 1234, np.uint16)) == 0).all()  # constant
    assert (stretch_to_uint8(np.full((2, 2), np.nan)) == 0).all()  # nothing finite
    sparse = np.zeros((100, 100), np.uint16)
    sparse[0, 0] = 4000  # percentiles coincide: the minimum and maximum are used instead
    out = stretch_to_uint8(sparse)
    assert out[0, 0] == 255 and out.sum() == 255


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
def test_8_bit_images_keep_their_values(tmp_path, coco_photo, mode):
    im = Image.open(coco_photo).convert(mode)
    im.save(tmp_path / "x.png")
    assert np.array_equal(read_image(tmp_path / "x.png"), np.asarray(im.convert("RGB")))


def test_segment_a_16_bit_image(capsys, tmp_path, gray_photo):
    """The default model answers on the 16-bit file as on the 8-bit photo it came from."""
    Image.fromarray(_as_12_bit(gray_photo)).save(tmp_path / "raw.png")
    Image.fromarray(gray_photo).save(tmp_path / "gray.png")
    h, w = gray_photo.shape
    areas = []
    for name in ("raw", "gray"):
        code = main(["segment", str(tmp_path / f"{name}.png"), "--point", f"{w // 2},{h // 2}", "-o", str(tmp_path / f"{name}_mask.png"), "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        areas.append(json.loads(out)["area"])
    raw_mask = np.asarray(Image.open(tmp_path / "raw_mask.png")) > 0
    gray_mask = np.asarray(Image.open(tmp_path / "gray_mask.png")) > 0
    assert raw_mask.any()
    assert (raw_mask & gray_mask).sum() / (raw_mask | gray_mask).sum() > 0.9


def _png_with_orientation(path, array: np.ndarray, orientation: int) -> None:
    """A PNG of ``array`` (8-bit through Pillow; 16-bit RGB through OpenCV, which Pillow cannot
    write) carrying an EXIF orientation tag in an eXIf chunk."""
    import struct
    import zlib

    import cv2

    exif = Image.Exif()
    exif[0x0112] = orientation
    if array.dtype == np.uint8:
        Image.fromarray(array).save(path, exif=exif)
        return
    assert cv2.imwrite(str(path), array[..., ::-1])
    data = path.read_bytes()
    payload = exif.tobytes().removeprefix(b"Exif\x00\x00")
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    end = data.rfind(b"IEND") - 4
    path.write_bytes(data[:end] + chunk + data[end:])


def test_16_bit_colour_is_stretched_with_its_colours(tmp_path, coco_photo):
    rgb = np.asarray(Image.open(coco_photo).convert("RGB"))
    raw = rgb.astype(np.uint16) * 16 + 100  # 12-bit colour in a 16-bit PNG
    _png_with_orientation(tmp_path / "raw.png", raw, 1)
    assert np.asarray(Image.open(tmp_path / "raw.png").convert("RGB")).max() < 20  # Pillow: the top byte, black
    image = read_image(tmp_path / "raw.png")
    assert image.shape == rgb.shape and image.dtype == np.uint8
    # One linear map for all three channels: colours keep their balance.
    slope, offset = np.polyfit(rgb.ravel().astype(float), image.ravel().astype(float), 1)
    assert np.abs(rgb * slope + offset - image).mean() < 1.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16_bit_colour_follows_exif_orientation(tmp_path, orientation):
    rgb = np.random.default_rng(orientation).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    rgb[0, 0], rgb[-1, -1] = 0, 255
    _png_with_orientation(tmp_path / "a8.png", rgb, orientation)
    _png_with_orientation(tmp_path / "a16.png", rgb.astype(np.uint16) * 257, orientation)
    assert Image.open(tmp_path / "a16.png").getexif().get(0x0112) == orientation
    assert np.array_equal(read_image(tmp_path / "a16.png"), read_image(tmp_path / "a8.png"))
