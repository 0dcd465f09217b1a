"""Training fixtures: FGID shards made from real photos, and the tiny config.

`fgid_shards` uses `fgid build` when the builder provides it; until then it runs dlib's real
detector, 68-point landmarks and ResNet embedding on the shipped photos and draws the parsing
mask from the landmark polygons (what the embedded `landmarks` parser does). The captions are
templated from the region names; they are fixture text, not an MLLM's output.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fgid_builder.schema import (
    LABEL_IDS,
    REGION_NAMES,
    dumps_json,
    make_key,
    npy_bytes,
    region_stats,
    sha256_bytes,
)

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "training" / "configs" / "tiny.yaml"


def _dlib_models() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("face_recognition_models is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _poly(draw: ImageDraw.ImageDraw, pts: np.ndarray, label: int) -> None:
    draw.polygon([tuple(map(float, p)) for p in pts], fill=label)


def landmark_mask(lm: np.ndarray, size: int = 512) -> np.ndarray:
    """CelebAMask-HQ ids drawn from 68 landmarks (skin, brows, eyes, ears, nose, lips, mouth)."""
    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    jaw, brows = lm[0:17], lm[17:27]
    face_h = jaw[8, 1] - brows[:, 1].min()
    forehead = brows[::-1] - np.array([0, 0.25 * face_h])
    _poly(draw, np.concatenate([jaw, forehead]), LABEL_IDS["skin"])
    w = 0.08 * (jaw[16, 0] - jaw[0, 0])
    for idx, label in ((0, "l_ear"), (16, "r_ear")):
        x, y = lm[idx]
        dx = -w if idx == 0 else w
        draw.ellipse(
            [min(x, x + dx), y - 1.5 * w, max(x, x + dx), y + 1.5 * w], fill=LABEL_IDS[label]
        )
    _poly(draw, lm[17:22], LABEL_IDS["l_brow"])
    _poly(draw, lm[22:27], LABEL_IDS["r_brow"])
    _poly(draw, lm[36:42], LABEL_IDS["l_eye"])
    _poly(draw, lm[42:48], LABEL_IDS["r_eye"])
    _poly(draw, np.concatenate([lm[27:28], lm[31:36]]), LABEL_IDS["nose"])
    _poly(draw, np.concatenate([lm[48:55], lm[64:59:-1]]), LABEL_IDS["u_lip"])
    _poly(draw, np.concatenate([lm[54:60], lm[48:49], lm[60:61], lm[67:63:-1]]), LABEL_IDS["l_lip"])
    _poly(draw, lm[60:68], LABEL_IDS["mouth"])
    return np.asarray(img)


def dlib_samples(photos: list[Path]) -> list[dict]:
    """Real detections, landmarks and 128-d embeddings of every face in the photos."""
    import dlib

    models = _dlib_models()
    detector = dlib.get_frontal_face_detector()
    shape68 = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
    encoder = dlib.face_recognition_model_v1(
        str(models / "dlib_face_recognition_resnet_model_v1.dat")
    )
    out = []
    for photo in photos:
        data = photo.read_bytes()
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        digest = sha256_bytes(data)
        for i, det in enumerate(detector(rgb, 1)):
            cx, cy = (det.left() + det.right()) / 2, (det.top() + det.bottom()) / 2
            half = 1.1 * max(det.width(), det.height())
            box = (cx - half, cy - half * 1.1, cx + half, cy + half * 0.9)
            portrait = (
                Image.fromarray(rgb)
                .crop(tuple(round(v) for v in box))
                .resize((512, 512), Image.BICUBIC)
            )
            arr = np.asarray(portrait)
            s = 512 / (box[2] - box[0])
            rect = dlib.rectangle(
                round((det.left() - box[0]) * s),
                round((det.top() - box[1]) * s),
                round((det.right() - box[0]) * s),
                round((det.bottom() - box[1]) * s),
            )
            shape = shape68(arr, rect)
            lm = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)
            emb = np.asarray(encoder.compute_face_descriptor(arr, shape), dtype=np.float32)
            emb /= np.linalg.norm(emb)
            mask = landmark_mask(lm)
            regions = region_stats(mask)
            captions = {
                "global": f"a photo of a person, face {i} of {photo.stem.replace('_', ' ')}",
                "facial": "",
                "regions": {n: f"The {n} look natural in this photo." for n in REGION_NAMES},
            }
            captions["facial"] = " ".join(captions["regions"].values())
            meta = {
                "schema_version": 1,
                "key": make_key(digest, i),
                "source": {"uri": photo.name, "sha256": digest},
                "regions": regions,
                "captions": captions,
                "embedding": {"dim": int(emb.shape[0])},
            }
            out.append(
                {"key": meta["key"], "portrait": arr, "mask": mask, "emb": emb, "meta": meta}
            )
    return out


def write_shards(samples: list[dict], folder: Path, per_shard: int) -> list[Path]:
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    samples = sorted(samples, key=lambda s: s["key"])
    for n, start in enumerate(range(0, len(samples), per_shard)):
        path = folder / f"{n:06d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for s in samples[start : start + per_shard]:
                jpg, png = io.BytesIO(), io.BytesIO()
                Image.fromarray(s["portrait"]).save(jpg, format="JPEG", quality=95)
                Image.fromarray(s["mask"]).save(png, format="PNG")
                sink.write(
                    {
                        "__key__": s["key"],
                        "jpg": jpg.getvalue(),
                        "mask.png": png.getvalue(),
                        "id.npy": npy_bytes(s["emb"]),
                        "json": dumps_json(s["meta"]),
                    }
                )
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def face_samples(shipped_photos: list[Path]) -> list[dict]:
    samples = dlib_samples(shipped_photos)
    if len(samples) < 8:
        pytest.skip(f"only {len(samples)} faces found in the shipped photos; need 8")
    return samples


@pytest.fixture(scope="session")
def fgid_shards(face_samples: list[dict], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four shards of real faces (at least 8 samples)."""
    folder = tmp_path_factory.mktemp("shards")
    per_shard = -(-len(face_samples) // 4)
    paths = write_shards(face_samples, folder, per_shard)
    (folder / "keys.json").write_text(json.dumps([s["key"] for s in face_samples]))
    return paths


@pytest.fixture(scope="session")
def tiny_config_path() -> Path:
    return TINY_CONFIG
