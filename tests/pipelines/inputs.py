"""A folder of awkward inputs built from the package-shipped face photos (small, so tests are
quick). `EXPECTED` maps each uri to the reason its index row must carry (None: samples)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from fgid_builder.demo import demo_photos


def _photos() -> dict[str, Image.Image]:
    by_name = {p.name: p for p in demo_photos()}
    out = {}
    for name in ("astronaut.png", "grace_hopper.jpg", "t1.jpg"):
        if name in by_name:
            out[name] = Image.open(by_name[name]).convert("RGB")
    return out


def _jpeg(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=kw.pop("quality", 90), **kw)
    return buf.getvalue()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def make_bad_inputs(root: Path) -> dict[str, str | None]:
    """Write the inputs under `root`; returns uri -> expected reason (None = becomes samples)."""
    root.mkdir(parents=True, exist_ok=True)
    ph = _photos()
    astro, grace = ph["astronaut.png"], ph["grace_hopper.jpg"]
    expected: dict[str, str | None] = {}

    def put(name: str, data: bytes, reason: str | None) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        expected[name] = reason

    put("good/astronaut.jpg", _jpeg(astro), None)
    put("good/grace hopper ü.jpg", _jpeg(grace), None)
    put("good/new\nline.jpg", _jpeg(astro.resize((400, 400))), None)
    put("zero.jpg", b"", "empty_file")
    put("text.jpg", b"this is not a photo\n" * 20, "not_an_image")
    full = _jpeg(grace)
    put("truncated.jpg", full[: len(full) // 2], "truncated")
    put("cmyk.jpg", _jpeg(grace.resize((420, 492)).convert("CMYK")), None)
    grey16 = np.asarray(astro.convert("L").resize((440, 440)), dtype=np.uint16) * 257
    put("grey16.png", _png(Image.fromarray(grey16)), None)
    rgba = astro.resize((460, 460)).convert("RGBA")
    rgba.putalpha(200)
    put("rgba.png", _png(rgba), None)
    put("palette.png", _png(grace.resize((430, 504)).convert("P", palette=Image.ADAPTIVE)), None)
    # stored rotated 90 degrees, with EXIF saying how to turn it upright (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    put("exif_rotated.jpg", _jpeg(grace.resize((450, 527)).rotate(90, expand=True), exif=exif),
        None)  # fmt: skip
    put("grey.jpg", _jpeg(grace.resize((410, 480)).convert("L")), None)
    buf = io.BytesIO()
    frames = [astro.resize((420, 420)), Image.new("RGB", (420, 420), (0, 90, 0))]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    put("animated.gif", buf.getvalue(), None)
    put("bomb.png", _png(Image.new("1", (9000, 8000))), "too_large")
    put("tiny.png", _png(astro.resize((24, 24))), "too_small")
    rng = np.random.default_rng(0)
    put("noface.png", _png(Image.fromarray(rng.integers(0, 255, (240, 320, 3), np.uint8))),
        "no_face")  # fmt: skip
    if "t1.jpg" in ph:  # a group photo: 6 faces, more than --max-faces 2 keeps
        put("group.jpg", _jpeg(ph["t1.jpg"]), "too_many_faces")
    shutil.copyfile(root / "good/astronaut.jpg", root / "zz copy of astronaut.jpg")
    expected["zz copy of astronaut.jpg"] = "duplicate"
    os.symlink("..", root / "good" / "loop")
    expected["good/loop"] = "unreadable"
    return expected
