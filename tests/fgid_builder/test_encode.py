"""WebDataset members of a sample: round trip, deterministic bytes, no EXIF."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from fgid_builder.encode import decode_sample, encode_sample, mask_preview
from fgid_builder.process import ImageProcessor
from fgid_builder.schema import LABEL_COLORS, SCHEMA_VERSION, load_npy


@pytest.fixture(scope="module")
def sample(shipped_photos):
    path = next(p for p in shipped_photos if p.name == "grace_hopper.jpg")
    return ImageProcessor.default().process(path.read_bytes(), path.name).samples[0]


def test_members_and_round_trip(sample):
    members = encode_sample(sample)
    assert set(members) == {"__key__", "jpg", "mask.png", "id.npy", "json"}
    assert members["__key__"] == sample.key
    jpg = Image.open(io.BytesIO(members["jpg"]))
    assert jpg.format == "JPEG" and jpg.size == (512, 512) and not jpg.getexif()
    mask = Image.open(io.BytesIO(members["mask.png"]))
    assert mask.mode == "L" and mask.size == (512, 512)
    assert np.array_equal(np.asarray(mask), sample.mask)
    emb = load_npy(members["id.npy"])
    assert emb.dtype == np.float32 and np.allclose(emb, sample.embedding)
    meta = json.loads(members["json"])
    assert meta["schema_version"] == SCHEMA_VERSION and meta["key"] == sample.key
    assert meta["embedding"]["dim"] == 128
    assert set(meta["models"]) == {"detect", "parse", "embed", "caption"}

    back = decode_sample(members)
    assert back.key == sample.key and back.face == meta["face"]
    assert back.captions == sample.captions
    assert np.allclose(back.portrait_landmarks5, sample.portrait_landmarks5, atol=0.05)
    assert np.abs(back.portrait.astype(int) - sample.portrait.astype(int)).mean() < 3


def test_deterministic_bytes(sample):
    assert encode_sample(sample) == encode_sample(sample)


def test_incomplete_sample_refused(sample):
    import dataclasses

    with pytest.raises(ValueError, match="embedding"):
        encode_sample(dataclasses.replace(sample, embedding=None))


def test_mask_preview_palette():
    mask = np.array([[0, 1], [4, 17]], dtype=np.uint8)
    rgb = mask_preview(mask)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[1, 1]) == LABEL_COLORS[17] and tuple(rgb[0, 1]) == LABEL_COLORS[1]
