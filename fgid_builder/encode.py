"""A FaceSample as WebDataset members (the field's extension is its encoding), and back.

Bytes are deterministic for a given Pillow/libjpeg/zlib: fixed JPEG quality and subsampling, no
optimisation passes that depend on timing, PNG at a fixed compression level, no EXIF, ICC or
text chunks, canonical JSON.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
from PIL import Image

from fgid_builder.align import transform_points
from fgid_builder.schema import (
    LABEL_COLORS,
    NUM_LABELS,
    PORTRAIT_SIZE,
    Captions,
    FaceSample,
    dumps_json,
    load_npy,
    npy_bytes,
)

JPEG_QUALITY = 95
JPEG_SUBSAMPLING = 0  # 4:4:4: no chroma loss at the lips/eyes edges the parser and CLIP read
PNG_COMPRESS_LEVEL = 6

MEMBERS = ("jpg", "mask.png", "id.npy", "json")


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").save(
        buf, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING, optimize=False
    )
    return buf.getvalue()


def png_l_bytes(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), "L").save(
        buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False
    )
    return buf.getvalue()


def encode_sample(sample: FaceSample) -> dict[str, Any]:
    """`{"__key__", "jpg", "mask.png", "id.npy", "json"}` for a fully processed sample."""
    if sample.mask is None or sample.embedding is None or sample.captions is None:
        missing = [
            n
            for n, v in (
                ("mask", sample.mask),
                ("embedding", sample.embedding),
                ("captions", sample.captions),
            )
            if v is None
        ]
        raise ValueError(f"{sample.key}: not ready to encode, missing {', '.join(missing)}")
    if sample.portrait.shape != (PORTRAIT_SIZE, PORTRAIT_SIZE, 3):
        raise ValueError(f"{sample.key}: portrait shape {sample.portrait.shape}")
    if sample.mask.shape != (PORTRAIT_SIZE, PORTRAIT_SIZE) or int(sample.mask.max()) >= NUM_LABELS:
        raise ValueError(f"{sample.key}: mask must be {PORTRAIT_SIZE}^2 with ids < {NUM_LABELS}")
    emb = np.asarray(sample.embedding, dtype=np.float32)
    return {
        "__key__": sample.key,
        "jpg": jpeg_bytes(sample.portrait),
        "mask.png": png_l_bytes(sample.mask),
        "id.npy": npy_bytes(emb),
        "json": dumps_json(sample.to_json()),
    }


def decode_sample(members: dict[str, bytes]) -> FaceSample:
    """A FaceSample from the members `encode_sample` wrote (for readers and tests).

    Portrait landmarks are recomputed from the source landmarks and the crop affine.
    """
    meta = json.loads(members["json"])
    portrait = np.asarray(Image.open(io.BytesIO(members["jpg"])).convert("RGB"))
    mask = np.asarray(Image.open(io.BytesIO(members["mask.png"])))
    affine = meta["crop"]["affine"]
    face = meta["face"]
    lm5 = np.asarray(face["landmarks5"], dtype=np.float32)
    lm = np.asarray(face["landmarks"], np.float32) if face.get("landmarks") else None
    key = members.get("__key__", meta["key"])
    if isinstance(key, bytes):
        key = key.decode()
    return FaceSample(
        key=key,
        source=meta["source"],
        face=face,
        crop_affine=affine,
        portrait=portrait,
        portrait_landmarks5=transform_points(lm5, affine),
        portrait_landmarks=None if lm is None else transform_points(lm, affine),
        mask=mask,
        embedding=load_npy(members["id.npy"]),
        regions=meta.get("regions", {}),
        captions=None if meta.get("captions") is None else Captions.from_json(meta["captions"]),
        models=meta.get("models", {}),
    )


def mask_preview(mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colour image of a label map in the CelebAMask-HQ palette."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i, c in LABEL_COLORS.items():
        palette[i] = c
    return palette[np.asarray(mask, dtype=np.uint8)]
