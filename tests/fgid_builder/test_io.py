"""Decoding: every awkward input becomes upright RGB uint8 or a typed reject."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fgid_builder.io import decode_image, read_input
from fgid_builder.schema import ImageRejected, Reason


def _bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(w: int = 96, h: int = 80) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], axis=2), "RGB")


def _reject(data: bytes, **kw) -> ImageRejected:
    with pytest.raises(ImageRejected) as exc:
        decode_image(data, **kw)
    return exc.value


def test_empty_file():
    assert _reject(b"").reason == Reason.EMPTY_FILE


def test_text_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n")
    assert _reject(read_input(p)).reason == Reason.NOT_AN_IMAGE


def test_truncated_jpeg_is_rejected_not_padded():
    data = _bytes(_gradient(400, 300), "JPEG", quality=90)
    e = _reject(data[: len(data) // 2])
    assert e.reason == Reason.TRUNCATED


def test_truncated_png():
    data = _bytes(_gradient(400, 300), "PNG")
    assert _reject(data[: len(data) // 2]).reason == Reason.TRUNCATED


def test_unreadable_path_keeps_cause(tmp_path):
    with pytest.raises(ImageRejected) as exc:
        read_input(tmp_path / "missing.jpg")
    assert exc.value.reason == Reason.UNREADABLE
    assert "FileNotFoundError" in exc.value.detail
    with pytest.raises(ImageRejected) as exc:
        read_input(tmp_path)  # a directory
    assert exc.value.reason == Reason.UNREADABLE


def test_cmyk_jpeg_to_rgb():
    cmyk = _gradient().convert("CMYK")
    d = decode_image(_bytes(cmyk, "JPEG", quality=95))
    assert d.rgb.dtype == np.uint8 and d.rgb.shape == (80, 96, 3)
    assert d.mode == "CMYK" and d.format == "JPEG"
    ref = np.asarray(cmyk.convert("RGB"), dtype=np.int16)
    assert np.abs(d.rgb.astype(np.int16) - ref).mean() < 6


def test_16bit_png_scaled_to_8bit():
    a = (np.arange(96 * 80, dtype=np.uint32).reshape(80, 96) * 8).astype(np.uint16)
    im = Image.fromarray(a)  # uint16 -> mode I;16
    assert im.mode == "I;16"
    d = decode_image(_bytes(im, "PNG"))
    assert d.rgb.dtype == np.uint8 and d.rgb.shape == (80, 96, 3)
    expected = ((a.astype(np.int64) + 128) // 257).astype(np.uint8)
    assert np.array_equal(d.rgb[:, :, 0], expected)
    assert np.array_equal(d.rgb[:, :, 0], d.rgb[:, :, 2])


def test_rgba_composited_on_white():
    a = np.zeros((80, 96, 4), dtype=np.uint8)
    a[:, :48] = (255, 0, 0, 255)  # opaque red
    a[:, 48:] = (0, 0, 0, 0)  # fully transparent black
    d = decode_image(_bytes(Image.fromarray(a, "RGBA"), "PNG"))
    assert tuple(d.rgb[10, 10]) == (255, 0, 0)
    assert tuple(d.rgb[10, 90]) == (255, 255, 255)


def test_la_and_palette_and_grey():
    la = Image.fromarray(np.full((80, 96, 2), (40, 0), dtype=np.uint8), "LA")
    assert tuple(decode_image(_bytes(la, "PNG")).rgb[0, 0]) == (255, 255, 255)
    p = _gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    d = decode_image(_bytes(p, "PNG"))
    assert d.mode == "P" and d.rgb.shape == (80, 96, 3)
    grey = _gradient().convert("L")
    d = decode_image(_bytes(grey, "PNG"))
    assert d.rgb.shape == (80, 96, 3) and np.array_equal(d.rgb[:, :, 0], d.rgb[:, :, 1])


def test_exif_orientation_applied_and_not_carried():
    im = _gradient(120, 80)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    exif[0x010F] = "SerialCam"  # make
    d = decode_image(_bytes(im, "JPEG", quality=95, exif=exif.tobytes()))
    assert (d.width, d.height) == (80, 120)  # upright frame
    assert isinstance(d.rgb, np.ndarray)  # pixels only: nothing else is returned


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (96, 80), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = _bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    d = decode_image(data)
    r, g, b = d.rgb[40, 40]
    assert r > 200 and b < 50


def test_too_large_from_header_before_decoding():
    # A PNG whose header declares 100000 x 100000 with almost no data behind it.
    data = _bytes(Image.new("L", (8, 8)), "PNG")
    ihdr = data.index(b"IHDR")
    import struct
    import zlib

    body = b"IHDR" + struct.pack(">II", 100_000, 100_000) + data[ihdr + 12 : ihdr + 17]
    crc = struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    bomb = data[: ihdr - 4] + struct.pack(">I", 13) + body + crc + data[ihdr + 21 :]
    e = _reject(bomb)
    assert e.reason == Reason.TOO_LARGE
    assert _reject(_bytes(_gradient(400, 300), "PNG"), max_pixels=1000).reason == Reason.TOO_LARGE


def test_too_small():
    assert _reject(_bytes(_gradient(40, 30), "PNG")).reason == Reason.TOO_SMALL
