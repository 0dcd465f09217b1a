"""Safe image decoding: every input becomes upright RGB uint8 pixels or a typed reject.

Policies (each one is tested in tests/fgid_builder/test_io.py):
- the pixel limit is checked on the header size *before* any pixel is decoded, and PIL's own
  decompression-bomb error is mapped to the same reason;
- truncated files are rejected, never padded with grey (PIL's `LOAD_TRUNCATED_IMAGES` is forced
  off while loading);
- EXIF orientation is applied, so every box and landmark downstream is in the upright frame;
- transparency (RGBA, LA, PA, palette with a transparent index) is composited on **white**, the
  way viewers show a cut-out on a page; dropping alpha instead would expose whatever colour the
  encoder left under transparent pixels (often black), which detectors read as a dark background;
- 16/32-bit integer images are scaled to 8 bits (value / 257), float images are taken as 0..1
  when their maximum is <= 1 and as 0..255 otherwise;
- animated images (GIF, WebP, APNG) give their first frame;
- nothing but pixels leaves this module: no EXIF, ICC, XMP or comments are carried (GPS and
  camera serials must not reach the shards).
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fgid_builder.schema import ImageRejected, Reason

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; a 64 MP RGB frame is 192 MB decoded
DEFAULT_MIN_SIDE = 64  # smaller images cannot hold a face the detector finds

_TRUNCATED_FLAG_LOCK = threading.Lock()


@dataclass
class DecodedImage:
    """Upright RGB pixels of one input, plus what the index wants to know about it."""

    rgb: np.ndarray  # (H, W, 3) uint8, EXIF orientation applied
    width: int
    height: int
    format: str  # PIL's format name of the source ("JPEG", "PNG", ...)
    mode: str  # the source's PIL mode before conversion ("CMYK", "I;16", "P", ...)


def read_input(path: str | os.PathLike) -> bytes:
    """The bytes of a local file; any OSError becomes an UNREADABLE reject with the cause."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        detail = f"{type(e).__name__}: {e.strerror or e}"
        raise ImageRejected(Reason.UNREADABLE, detail) from e


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = DEFAULT_MIN_SIDE
) -> DecodedImage:
    """Decode `data` to upright RGB uint8 or raise `ImageRejected` with the reason."""
    if not data:
        raise ImageRejected(Reason.EMPTY_FILE, "0 bytes")
    try:
        with warnings.catch_warnings():
            # Our own limit (below) decides; PIL's warning threshold is not ours.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageRejected(Reason.TOO_LARGE, str(e)) from e
    except UnidentifiedImageError as e:
        raise ImageRejected(Reason.NOT_AN_IMAGE, "not a recognised image format") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageRejected(Reason.NOT_AN_IMAGE, f"{type(e).__name__}: {e}") from e

    fmt = im.format or "unknown"
    src_mode = im.mode
    w, h = im.size
    if w * h > max_pixels:  # header size: nothing decoded yet
        raise ImageRejected(Reason.TOO_LARGE, f"{w}x{h} = {w * h} pixels > {max_pixels}")
    if min(w, h) < min_side:
        raise ImageRejected(Reason.TOO_SMALL, f"{w}x{h}: shorter side < {min_side}")

    _load_strict(im)
    try:
        im = ImageOps.exif_transpose(im)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error):
        pass  # a malformed EXIF block must not cost the photo: it stays as stored
    rgb = _to_rgb_array(im)
    height, width = rgb.shape[:2]
    return DecodedImage(rgb=rgb, width=int(width), height=int(height), format=fmt, mode=src_mode)


def _load_strict(im: Image.Image) -> None:
    """Decode the first frame; a short file is TRUNCATED, corrupt data NOT_AN_IMAGE."""
    with _TRUNCATED_FLAG_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
        except Image.DecompressionBombError as e:
            raise ImageRejected(Reason.TOO_LARGE, str(e)) from e
        except EOFError as e:
            raise ImageRejected(Reason.TRUNCATED, f"EOFError: {e}") from e
        except (OSError, SyntaxError, ValueError) as e:
            msg = str(e)
            low = msg.lower()
            if "truncat" in low or "premature" in low or "broken data stream" in low:
                raise ImageRejected(Reason.TRUNCATED, msg) from e
            raise ImageRejected(Reason.NOT_AN_IMAGE, f"corrupt image data: {msg}") from e
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _to_rgb_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.int64)
        a = np.clip(a, 0, 65535)
        grey = ((a + 128) // 257).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a)
        scale = 255.0 if a.size and float(a.max()) <= 1.0 else 1.0
        grey = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    if im.mode != "RGB":
        im = im.convert("RGB")  # CMYK (PIL undoes Adobe inversion), L, 1, YCbCr, LAB, HSV
    return np.ascontiguousarray(np.asarray(im, dtype=np.uint8))
