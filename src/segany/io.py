"""Reading images and writing masks, with errors a user can act on."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Guard against decompression bombs while still allowing large aerial/microscopy tiles.
MAX_IMAGE_PIXELS = 200_000_000


class ImageReadError(ValueError):
    """A file is missing or is not a readable image."""


def read_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, applying its EXIF orientation."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"image not found: {path}")
    if path.is_dir():
        raise ImageReadError(f"expected an image file, got a folder: {path}")
    try:
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise ImageReadError(f"image too large ({im.width}x{im.height} pixels, limit {max_pixels}): {path}")
            im = ImageOps.exif_transpose(im)
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
