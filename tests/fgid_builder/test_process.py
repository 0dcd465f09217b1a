"""One image through every stage in process: samples, rejects as values, per-stage timings."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fgid_builder.process import STAGE_ORDER, ImageProcessor
from fgid_builder.schema import Reason


@pytest.fixture(scope="module")
def proc() -> ImageProcessor:
    return ImageProcessor.default()


def test_photo_becomes_samples_with_timings(proc, shipped_photos):
    path = next(p for p in shipped_photos if p.name == "astronaut.png")
    r = proc.process(path.read_bytes(), path.name)
    assert len(r.samples) == 1 and not r.rejects
    assert set(r.timings) == set(STAGE_ORDER)
    s = r.samples[0]
    assert s.mask is not None and s.embedding is not None and s.captions is not None
    assert set(s.models) == {"detect", "parse", "embed", "caption"}
    assert s.regions["eyes"]["present"] and not s.regions["ears"]["present"]
    assert r.members[0]["__key__"] == s.key


def test_bad_inputs_are_values(proc):
    r = proc.process(b"hello, not an image", "x.jpg")
    assert r.samples == [] and r.rejects[0][:2] == (None, Reason.NOT_AN_IMAGE)
    buf = io.BytesIO()
    Image.fromarray(np.full((200, 200, 3), 127, np.uint8)).save(buf, format="PNG")
    r = proc.process(buf.getvalue(), "grey.png")
    assert r.samples == [] and r.rejects == [(None, Reason.NO_FACE, "the detector found no face")]


def test_stage_failure_is_an_error_value(shipped_photos):
    class Broken:
        def parse(self, samples):
            raise RuntimeError("boom")

        def model_info(self):  # pragma: no cover - never reached
            raise AssertionError

    p = ImageProcessor.default()
    p.parser = Broken()
    path = next(x for x in shipped_photos if x.name == "astronaut.png")
    r = p.process(path.read_bytes(), path.name)
    assert r.samples == [] and r.rejects[0][1] == Reason.ERROR
    assert r.rejects[0][2].startswith("parse: RuntimeError: boom")
