"""Reading images and writing masks, with errors a user can act on."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Guard against decompression bombs while still allowing large aerial/microscopy tiles.
MAX_IMAGE_PIXELS = 200_000_000
# Single-channel images of more than 8 bits per pixel (microscopy, remote sensing), as PIL opens
# them: 16-bit and 32-bit integers, 32-bit floats. PIL's convert("RGB") clips their values at 255.
HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# Their values are stretched onto 0..255 between these percentiles of the finite values, so that a
# few hot or saturated pixels do not leave the rest of the image black.
STRETCH_PERCENTILES = (0.1, 99.9)


class ImageReadError(ValueError):
    """A file is missing or is not a readable image."""


# Percentiles are taken from a regular sample of at most this many values: as good for a contrast
# stretch, and a 200-megapixel image needs no sorted copy of itself.
STRETCH_SAMPLE = 1 << 22


def stretch_to_uint8(values: np.ndarray, percentiles: tuple[float, float] = STRETCH_PERCENTILES) -> np.ndarray:
    """A high-bit-depth array (any shape; colour channels share one range) as uint8: linear from the
    ``percentiles`` of its finite values (0 below the low one, 255 above the high one; from a regular
    sample of ``STRETCH_SAMPLE`` values for larger arrays); NaN and -inf give 0, +inf 255. Falls back
    to the minimum and maximum when the percentiles coincide; a constant image gives zeros."""
    values = np.asarray(values)
    floating = np.issubdtype(values.dtype, np.floating)
    flat = values.reshape(-1)
    sample = flat[:: max(1, flat.size // STRETCH_SAMPLE)].astype(np.float64)
    if floating:
        sample = sample[np.isfinite(sample)]
    low = high = 0.0
    if sample.size:
        low, high = np.percentile(sample, percentiles)
    if high <= low:  # e.g. a few bright pixels on a flat background: the whole range
        finite = flat[np.isfinite(flat)] if floating else flat
        if finite.size:
            low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.where(values == np.inf, 255, 0).astype(np.uint8) if floating else np.zeros(values.shape, np.uint8)
    scaled = values.astype(np.float32)
    if floating:
        np.nan_to_num(scaled, copy=False, nan=low, posinf=high, neginf=low)
    scaled -= np.float32(low)
    scaled *= np.float32(255.0 / (high - low))
    np.clip(scaled, 0, 255, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


def _decoded_bits(im: Image.Image) -> int:
    """Bits per channel in the file, from the decoder's raw mode (Pillow opens 16-bit colour as 8-bit)."""
    for tile in im.tile:
        args = tile.args if hasattr(tile, "args") else tile[3]
        rawmode = args if isinstance(args, str) else (args[0] if args else "")
        if isinstance(rawmode, str) and ";16" in rawmode:
            return 16
    return 8


def _is_16_bit_colour(im: Image.Image) -> bool:
    return im.mode in ("RGB", "RGBA") and _decoded_bits(im) == 16


def is_high_depth(im: Image.Image) -> bool:
    """Whether an opened image has more than 8 bits per channel, so that :func:`read_image` stretches it."""
    return im.mode in HIGH_DEPTH_MODES or _is_16_bit_colour(im)


# EXIF orientation -> the numpy steps that undo it (as ImageOps.exif_transpose does).
_ORIENTATION_STEPS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _read_16_bit_colour(path: Path, orientation: int) -> np.ndarray | None:
    """A colour image of 16 bits per channel through OpenCV (which keeps them), stretched jointly
    over its channels so that colours keep their balance; None if OpenCV cannot read it."""
    import cv2

    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint16 or data.ndim != 3 or data.shape[2] not in (3, 4):
        return None
    rgb = data[..., 2::-1]  # BGR(A) -> RGB
    rgb = _ORIENTATION_STEPS.get(orientation, lambda a: a)(rgb)
    return np.ascontiguousarray(stretch_to_uint8(rgb))


def read_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, applying its EXIF orientation.

    Images of more than 8 bits per channel (16-bit PNG or TIFF, grayscale or colour; 32-bit integer or
    float TIFF) are contrast-stretched onto 0..255 between the 0.1st and 99.9th percentiles of their
    values (:func:`stretch_to_uint8`; one range for all colour channels), so that 12-bit data in a
    16-bit file or a float map is not clipped to black or white. 8-bit images keep their values."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"image not found: {path}")
    if path.is_dir():
        raise ImageReadError(f"expected an image file, got a folder: {path}")
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise ImageReadError(
                    f"image too large ({im.width}x{im.height} pixels, limit {max_pixels:,}; segment and everything take --max-pixels): {path}"
                )
            if _is_16_bit_colour(im):
                colour = _read_16_bit_colour(path, im.getexif().get(0x0112, 1))
                if colour is not None:
                    return colour
            im = ImageOps.exif_transpose(im)
            if im.mode in HIGH_DEPTH_MODES:
                return np.repeat(stretch_to_uint8(np.asarray(im))[..., None], 3, axis=2)
            return np.asarray(im.convert("RGB")).copy()
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"not a readable image: {path} ({type(e).__name__})") from None
    except OSError as e:
        raise ImageReadError(f"could not read image {path}: {e}") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; give the file the permissions an ordinary open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Atomically save a uint8 (H, W) or (H, W, 3|4) array as PNG."""
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def save_mask_png(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Save a boolean mask as a 0/255 single-channel PNG."""
    save_png(path, (np.asarray(mask, dtype=bool) * 255).astype(np.uint8))
