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
    assert exc.value.reason == Reason.NOT_A_FILE


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


# --------------------------------------------------------------------------- safe reading


def _within(seconds: float, fn, *args, **kwargs):
    """fn(*args) in a daemon thread: its result, or a failure when it blocks past `seconds`
    (a read blocked on a FIFO would otherwise hang the test for ever)."""
    import threading

    got: dict = {}

    def run():
        try:
            got["value"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            got["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} blocked for more than {seconds} s"
    if "error" in got:
        raise got["error"]
    return got["value"]


def _read_reject(path, **kw) -> ImageRejected:
    with pytest.raises(ImageRejected) as exc:
        _within(10, read_input, path, **kw)
    return exc.value


def test_a_fifo_is_not_a_file_and_never_blocks(tmp_path):
    import os

    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    e = _read_reject(fifo)
    assert e.reason == Reason.NOT_A_FILE and "FIFO" in e.detail


def test_devices_and_folders_are_not_files(tmp_path):
    e = _read_reject("/dev/zero")
    assert e.reason == Reason.NOT_A_FILE and "character device" in e.detail
    assert _read_reject(tmp_path).reason == Reason.NOT_A_FILE


def test_a_socket_is_not_a_file(tmp_path):
    import socket

    path = tmp_path / "s.jpg"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        e = _read_reject(path)
    assert e.reason == Reason.NOT_A_FILE and "socket" in e.detail


def test_size_cap_rejects_a_sparse_giant_without_reading_it(tmp_path):
    """A 1.5 GB sparse x.jpg: TOO_LARGE at once, nothing read (the peak RSS of whole builds is
    asserted in tests/pipelines/test_hostile_inputs.py)."""
    import time

    big = tmp_path / "x.jpg"
    with open(big, "wb") as f:
        f.truncate(1536 << 20)
    t = time.perf_counter()
    e = _read_reject(big)
    assert e.reason == Reason.TOO_LARGE and "--max-input-bytes" in e.detail
    assert time.perf_counter() - t < 1.0
    small = tmp_path / "s.jpg"
    small.write_bytes(b"x" * 1000)
    assert read_input(small, max_bytes=1000) == b"x" * 1000
    assert _read_reject(small, max_bytes=999).reason == Reason.TOO_LARGE


def test_read_time_limit(tmp_path):
    """The deadline is checked between chunks: a zero timeout stops after the first one."""
    from fgid_builder.io import iter_input

    p = tmp_path / "slow.jpg"
    p.write_bytes(b"y" * 10_000)
    with pytest.raises(ImageRejected) as exc:
        list(iter_input(p, timeout=0.0, chunk=1000))
    assert exc.value.reason == Reason.TIMEOUT and "--read-timeout" in exc.value.detail
    assert read_input(p, timeout=30) == b"y" * 10_000


def test_heic_is_unsupported_format_and_avif_decodes_where_pillow_can():
    """A HEIC file (an ISO-BMFF `ftyp` box with the HEIC brand, then data: all Pillow looks at
    before it gives up) is `unsupported_format` unless a HEIF plug-in is installed; AVIF is
    decoded when this Pillow has AVIF (else `unsupported_format` too)."""
    from PIL import Image as PILImage
    from PIL import features

    PILImage.init()
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)
    if "HEIF" in PILImage.OPEN:
        pytest.skip("a HEIF plug-in is installed here")
    e = _reject(heic)
    assert e.reason == Reason.UNSUPPORTED_FORMAT and "HEIF" in e.detail
    if features.check("avif"):
        d = decode_image(_bytes(_gradient(), "AVIF"))
        assert d.format == "AVIF" and d.rgb.shape == (80, 96, 3)
        junk = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(200)
        assert _reject(junk).reason == Reason.NOT_AN_IMAGE  # a corrupt AVIF, not unsupported
    else:
        avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(200)
        assert _reject(avif).reason == Reason.UNSUPPORTED_FORMAT
