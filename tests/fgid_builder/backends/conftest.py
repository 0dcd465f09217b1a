"""Tiny real-format models, built once per session into a temporary models directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.fgid_builder.backends import tiny_models as tm


@pytest.fixture(scope="session")
def photos(shipped_photos: list[Path]) -> list[np.ndarray]:
    """The shipped photos decoded upright to RGB (the 112 px aligned crop left out)."""
    out = []
    for p in shipped_photos:
        img = np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
        if min(img.shape[:2]) >= 256:
            out.append(img)
    return out


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """insightface buffalo_l + antelopev2 (nested, as its zip unpacks), facexlib BiSeNet and
    RetinaFace mobilenet0.25, all random weights in the real formats."""
    root = tmp_path_factory.mktemp("models")
    tm.insightface_pack(root, "buffalo_l")
    tm.insightface_pack(root, "antelopev2", nested=True, batched_outputs=True)
    tm.bisenet_pth(root)
    tm.retinaface_pth(root, "mobile0.25")
    return root


@pytest.fixture(scope="session")
def mllm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mllm_models")
    tm.tiny_llava(root / "mllm" / "tiny-llava")
    tm.tiny_qwen2vl(root / "mllm" / "tiny-qwen2vl")
    return root


@pytest.fixture(scope="session")
def portrait_samples(models_dir: Path, photos: list[np.ndarray]):
    """FaceSamples (portrait + portrait landmarks) from the insightface detector + alignment."""
    from fgid_builder.detect.insightface_scrfd import InsightFaceDetector
    from fgid_builder.faces import FaceGates, faces_from_detections
    from fgid_builder.io import decode_image
    from fgid_builder.schema import sha256_bytes

    det = InsightFaceDetector(models_dir=str(models_dir))
    samples = []
    for img in photos:
        import io

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        data = buf.getvalue()
        decoded = decode_image(data)
        faces = det.detect([decoded.rgb])[0]
        got, _ = faces_from_detections(
            decoded, faces, source={"uri": "x.png", "sha256": sha256_bytes(data)}, gates=FaceGates()
        )
        samples.extend(got)
    assert samples, "the tiny SCRFD should yield a face per photo"
    return samples


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg, msg
    return msg
