"""insightface ArcFace identity embedding (512-d, L2-normalised) from an insightface pack.

The face is cut from the 512 portrait with the standard ArcFace 112x112 similarity alignment
of the portrait-space 5 points (what insightface's `norm_crop` does), then the pack's
recognition ONNX (buffalo_l `w600k_r50.onnx`, antelopev2 `glintr100.onnx`) runs on the batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fgid_builder.detect.insightface_scrfd import (
    RECOGNITION,
    OnnxModelSpec,
    batch_is_dynamic,
    inspect_onnx,
    ort_session,
    pack_dir,
    require_task,
    route_pack,
)
from fgid_builder.models import file_sha256, require_file
from fgid_builder.registry import Backend
from fgid_builder.schema import FaceSample, ModelFileError, ModelInfo

# The ArcFace reference points for a 112x112 crop (insightface `arcface_dst`).
ARCFACE_DST = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama) mapping src points onto dst; a 2x3 matrix."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[1] = -1
    r = u @ np.diag(d) @ vt
    var_s = (s0**2).sum() / len(src)
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]]).astype(np.float32)


def arcface_crop(image: np.ndarray, landmarks5: np.ndarray, size: int = 112) -> np.ndarray:
    """The aligned `size`x`size` ArcFace crop (RGB uint8) of the face with these 5 points."""
    import cv2

    m = similarity_transform(landmarks5, ARCFACE_DST * (size / 112.0))
    return cv2.warpAffine(image, m, (size, size), borderValue=0.0)


class ArcFaceEmbedder(Backend):
    """ArcFace on the aligned 112 crop; rows L2-normalised float32.

    Options: `pack` (buffalo_l | antelopev2), `models_dir`, `pack_dir`, `model_file` (an
    explicit recognition .onnx, overrides the pack), `device` (auto | cpu | cuda[:N]), `num_threads`.
    """

    stage = "embed"
    name = "arcface"

    def __init__(
        self,
        *,
        pack: str = "buffalo_l",
        models_dir: str | None = None,
        pack_dir: str | None = None,
        model_file: str | None = None,
        device: str = "auto",
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        self.pack = pack
        self.models_dir = None if models_dir is None else str(models_dir)
        self.pack_dir = pack_dir
        self.model_file = model_file
        self.device = device
        self.num_threads = num_threads

    def _spec(self) -> OnnxModelSpec:
        if self.model_file:
            path = require_file(self.model_file, what="ArcFace recognition model")
            spec = inspect_onnx(path, where="the --model-file given for ArcFace")
            if spec is None or spec.task != RECOGNITION:
                raise ModelFileError(
                    f"ArcFace model file does not have a recognition signature (square input "
                    f">= 112, one output): {path}"
                )
            return spec
        root = pack_dir(self.pack, self.models_dir, self.pack_dir)
        example = "glintr100.onnx" if self.pack == "antelopev2" else "w600k_r50.onnx"
        routed = route_pack(root, pack=self.pack)
        require_task(routed, RECOGNITION, root, example)
        return routed[RECOGNITION]

    def _load(self) -> None:
        spec = self._spec()
        self._m_spec = spec
        self._m_sess = ort_session(spec.path, device=self.device, num_threads=self.num_threads)

    @property
    def dim(self) -> int:
        self.load()
        return int(self._m_spec.output_dim)

    def model_info(self) -> ModelInfo:
        spec = self._spec()
        return ModelInfo(
            name=f"insightface-arcface/{self.pack if not self.model_file else 'file'}",
            version=f"{Path(spec.path).name}; dim={spec.output_dim}",
            weights_sha256=file_sha256(spec.path),
        )

    def crops(self, samples: list[FaceSample]) -> np.ndarray:
        """The aligned crops the network sees, (N, S, S, 3) uint8 RGB."""
        self.load()
        size = int(self._m_spec.input_shape[2])
        return np.stack(
            [arcface_crop(s.portrait, np.asarray(s.portrait_landmarks5), size) for s in samples]
        )

    def embed(self, samples: list[FaceSample]) -> np.ndarray:
        self.load()
        if not samples:
            return np.zeros((0, int(self._m_spec.output_dim)), np.float32)
        mean, std = (0.0, 1.0) if self._m_spec.raw_input else (127.5, 127.5)
        blob = ((self.crops(samples).astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
        blob = np.ascontiguousarray(blob)
        name = self._m_sess.get_inputs()[0].name
        if batch_is_dynamic(self._m_spec.input_shape):
            feats = self._m_sess.run(None, {name: blob})[0]
        else:
            feats = np.concatenate([self._m_sess.run(None, {name: b[None]})[0] for b in blob])
        feats = feats.reshape(len(samples), -1).astype(np.float32)
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        return (feats / np.maximum(norms, 1e-12)).astype(np.float32)
