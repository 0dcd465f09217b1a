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
  camera serials must not reach the shards);
- an input is read only when it is a regular file (checked with `fstat` on the descriptor that
  is then read, opened with O_NONBLOCK so a FIFO or a device never blocks the open), at most
  `max_bytes` of it (`--max-input-bytes`), within `timeout` seconds: anything else is a reject
  (`not_a_file`, `too_large`, `timeout`), never a hang or unbounded memory;
- an image in a format no installed Pillow plug-in opens, recognised by its signature (HEIF/
  HEIC, JPEG XL; AVIF and JPEG 2000 where Pillow was built without them) is
  `unsupported_format`, not `not_an_image`.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fgid_builder.schema import ImageRejected, Reason

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; a 64 MP RGB frame is 192 MB decoded
DEFAULT_MIN_SIDE = 64  # smaller images cannot hold a face the detector finds
# An input file over this size is rejected before it is read (`--max-input-bytes`): 64 MiB is
# far above any photo at DEFAULT_MAX_PIXELS, and bounds the bytes a worker or the planner holds.
DEFAULT_MAX_INPUT_BYTES = 64 << 20
# Reading one input may take at most this long (`--read-timeout`): a stalled network mount or a
# file that keeps growing ends as a `timeout` reject instead of holding a worker for ever.
DEFAULT_READ_TIMEOUT = 60.0
READ_CHUNK = 1 << 20
# Entries one listing of INPUT may visit (`--max-entries`; pipelines.plan): bounds a walk that a
# symlink (followed with --follow-external-symlinks) or a huge list file would make endless.
DEFAULT_MAX_ENTRIES = 10_000_000

_TRUNCATED_FLAG_LOCK = threading.Lock()


@dataclass
class DecodedImage:
    """Upright RGB pixels of one input, plus what the index wants to know about it."""

    rgb: np.ndarray  # (H, W, 3) uint8, EXIF orientation applied
    width: int
    height: int
    format: str  # PIL's format name of the source ("JPEG", "PNG", ...)
    mode: str  # the source's PIL mode before conversion ("CMYK", "I;16", "P", ...)


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(st: os.stat_result, max_bytes: int | None) -> None:
    """A NOT_A_FILE reject unless `st` is a regular file; TOO_LARGE when over `max_bytes`."""
    if not stat.S_ISREG(st.st_mode):
        raise ImageRejected(Reason.NOT_A_FILE, _file_kind(st.st_mode))
    if max_bytes is not None and st.st_size > max_bytes:
        raise ImageRejected(Reason.TOO_LARGE, f"{st.st_size} bytes > --max-input-bytes {max_bytes}")


def _unreadable(e: OSError) -> ImageRejected:
    if e.errno == errno.ELOOP:
        return ImageRejected(Reason.UNREADABLE, "symlink loop")
    return ImageRejected(Reason.UNREADABLE, f"{type(e).__name__}: {e.strerror or e}")


def iter_input(
    path: str | bytes | os.PathLike,
    *,
    max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES,
    timeout: float | None = DEFAULT_READ_TIMEOUT,
    chunk: int = READ_CHUNK,
) -> Iterator[bytes]:
    """The bytes of a local regular file in chunks, or an `ImageRejected` with the reason.

    Never blocks on a FIFO or device (stat first, then open with O_NONBLOCK and check the
    opened descriptor, so a file swapped for a FIFO in between is caught too); at most
    `max_bytes` are read, also from a file that grows while it is read; past `timeout` seconds
    the read stops with a TIMEOUT reject (checked between chunks)."""
    try:
        check_regular(os.stat(path), max_bytes)
        flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
    except OSError as e:
        raise _unreadable(e) from e
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        try:
            check_regular(os.fstat(fd), max_bytes)
        except OSError as e:
            raise _unreadable(e) from e
        total = 0
        while True:
            want = chunk if max_bytes is None else min(chunk, max_bytes + 1 - total)
            try:
                data = os.read(fd, max(1, want))
            except OSError as e:
                raise _unreadable(e) from e
            if not data:
                return
            total += len(data)
            if max_bytes is not None and total > max_bytes:
                raise ImageRejected(
                    Reason.TOO_LARGE, f"grew past --max-input-bytes {max_bytes} while read"
                )
            yield data
            if deadline is not None and time.monotonic() > deadline:
                raise ImageRejected(
                    Reason.TIMEOUT, f"reading took more than --read-timeout {timeout:g} s"
                )
    finally:
        os.close(fd)


def read_input(
    path: str | bytes | os.PathLike,
    *,
    max_bytes: int | None = DEFAULT_MAX_INPUT_BYTES,
    timeout: float | None = DEFAULT_READ_TIMEOUT,
) -> bytes:
    """The bytes of a local regular file (see `iter_input`); any problem is an `ImageRejected`
    (UNREADABLE with the OSError's cause, NOT_A_FILE, TOO_LARGE, TIMEOUT)."""
    return b"".join(iter_input(path, max_bytes=max_bytes, timeout=timeout))


# ISO base media file brands (bytes 8..12 after `ftyp`) of image formats Pillow may lack.
_FTYP_BRANDS = {
    b"avif": "AVIF",
    b"avis": "AVIF",
    b"heic": "HEIF",
    b"heix": "HEIF",
    b"hevc": "HEIF",
    b"hevx": "HEIF",
    b"heim": "HEIF",
    b"heis": "HEIF",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
}


def sniff_unsupported(data: bytes) -> str | None:
    """The Pillow format id (AVIF, HEIF, JXL, JPEG2000) of an image recognised by its signature
    when no Pillow plug-in here opens that format, else None (then data Pillow could not open
    is corrupt, or no image)."""
    fmt = None
    if len(data) >= 12 and data[4:8] == b"ftyp":
        fmt = _FTYP_BRANDS.get(data[8:12])
    elif data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        fmt = "JXL"
    elif data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or data[:4] == b"\xff\x4f\xff\x51":
        fmt = "JPEG2000"
    if fmt is None:
        return None
    Image.init()
    return None if fmt in Image.OPEN else fmt


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
        fmt = sniff_unsupported(data)
        if fmt is not None:
            raise ImageRejected(
                Reason.UNSUPPORTED_FORMAT, f"{fmt}: not decodable by this Pillow"
            ) from e
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
