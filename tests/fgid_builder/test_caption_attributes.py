"""The measured-attribute describer: exact region keys, every region named, nothing invented."""

from __future__ import annotations

import re

import numpy as np
import pytest

from fgid_builder.caption.attributes import TERCILES, AttributeCaptioner, describe
from fgid_builder.caption.regions import TERCILE_MEASURES, measure_face
from fgid_builder.process import ImageProcessor
from fgid_builder.schema import REGION_NAMES
from tests.sample_checks import caption_problems

FORBIDDEN = re.compile(
    r"\b(man|woman|male|female|boy|girl|he|she|his|her|old|young|aged?|years?)\b", re.I
)


@pytest.fixture(scope="module")
def samples(shipped_photos):
    proc = ImageProcessor.default()
    out = []
    for path in shipped_photos[:2]:
        out.extend(proc.process(path.read_bytes(), path.name).samples)
    assert out
    return out


def test_captions_shape_and_honesty(samples):
    for s in samples:
        c = s.captions
        assert set(c.regions) == set(REGION_NAMES)
        assert c.global_.strip() and c.facial.strip()
        seen = [r for r in REGION_NAMES if r != "ears"]
        assert all(c.regions[r].strip() for r in seen)
        for word in seen:
            assert word in c.facial.lower()
        # no ear detector: an empty caption flagged as not measured, no sentence about it
        assert c.regions["ears"] == "" and not re.search(r"\bears?\b", c.facial, re.I)
        assert c.measured == {r: r != "ears" for r in REGION_NAMES}
        assert not caption_problems(c.to_json())
        for text in (c.global_, c.facial):
            assert not FORBIDDEN.search(text), text
        assert s.models["caption"]["name"] == "attribute-describer"


def test_thresholds_cover_every_measure(samples):
    assert set(TERCILES) == set(TERCILE_MEASURES)
    for lo, hi in TERCILES.values():
        assert lo < hi
    m = measure_face(samples[0].portrait, samples[0].portrait_landmarks, samples[0].mask)
    for name in TERCILE_MEASURES:
        assert m[name] is None or np.isfinite(m[name])


def test_black_and_white_photo_states_no_colours(samples):
    s = samples[0]
    grey = np.repeat(s.portrait.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    m = measure_face(grey, s.portrait_landmarks, s.mask)
    c = describe(m, s.face)
    assert "skin" not in c.global_ and "hair" not in c.global_
    assert "skin tone" not in c.regions["face"]


def test_model_info_names_it_honestly():
    info = AttributeCaptioner().model_info()
    assert info.name == "attribute-describer" and info.weights_sha256 == ""
    assert "no language model" in info.prompt["kind"]
