"""The embedded identity embedder: dlib's ResNet (128-d) run on the aligned portrait.

dlib aligns its own 150x150 chip from a `full_object_detection`; we build that from the
portrait-space 68 points the detector gave. A sample with only five points (a 5-point detector
upstream) gets its 68 points from dlib's shape predictor on the portrait first.
Descriptors are L2-normalised float32, so cosine similarity is a dot product. (dlib's own
same-person rule is Euclidean distance < 0.6 on the raw descriptors, whose norm is close to 1.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fgid_builder.detect.dlib_hog import DlibLandmarker, _dlib, portrait_box_from_landmarks5
from fgid_builder.models import face_recognition_models_dir, file_sha256, require_file
from fgid_builder.registry import Backend
from fgid_builder.schema import FaceSample, ModelInfo

RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
EMBED_DIM = 128


def portrait_landmarks68(sample: FaceSample, landmarker: DlibLandmarker) -> np.ndarray:
    """The sample's 68 portrait points, predicted on the portrait when the detector gave none."""
    pts = sample.portrait_landmarks
    if pts is not None and np.asarray(pts).shape == (68, 2):
        return np.asarray(pts, dtype=np.float32)
    box = portrait_box_from_landmarks5(sample.portrait_landmarks5)
    return landmarker.predict(sample.portrait, box)


class DlibResNetEmbedder(Backend):
    stage = "embed"
    name = "dlib"

    def __init__(
        self,
        *,
        num_jitters: int = 0,
        padding: float = 0.25,
        batch_size: int = 16,
        weights_path: str | None = None,
        predictor_path: str | None = None,
        models_dir: str | None = None,
    ):
        super().__init__()
        if num_jitters < 0:
            raise ValueError("num_jitters must be >= 0")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.num_jitters = int(num_jitters)
        self.padding = float(padding)
        self.batch_size = int(batch_size)
        self.weights_path = weights_path
        self.predictor_path = predictor_path
        self.models_dir = models_dir
        self._m_model: Any = None
        self._m_landmarker: DlibLandmarker | None = None

    def _weights(self) -> Path:
        if self.weights_path:
            return require_file(self.weights_path, what="dlib ResNet face-recognition weights")
        return require_file(
            face_recognition_models_dir() / RESNET_FILE,
            what="dlib ResNet face-recognition weights",
            hint="pip install face-recognition-models, or pass weights_path",
        )

    def _load(self) -> None:
        dlib = _dlib()
        self._m_model = dlib.face_recognition_model_v1(str(self._weights()))
        self._m_landmarker = DlibLandmarker(predictor_path=self.predictor_path)

    def model_info(self) -> ModelInfo:
        dlib = _dlib()
        return ModelInfo(
            name="dlib-resnet-v1-128",
            version=f"dlib {dlib.__version__} (num_jitters={self.num_jitters}, "
            f"padding={self.padding})",
            weights_sha256=file_sha256(self._weights()),
        )

    def embed(self, samples: list[FaceSample]) -> np.ndarray:
        """(N, 128) float32, rows unit norm, in the order of `samples`."""
        self.load()
        dlib = _dlib()
        out = np.zeros((len(samples), EMBED_DIM), dtype=np.float32)
        assert self._m_landmarker is not None
        for start in range(0, len(samples), self.batch_size):
            chunk = samples[start : start + self.batch_size]
            images, dets = [], []
            for s in chunk:
                pts = portrait_landmarks68(s, self._m_landmarker)
                ipts = [dlib.point(int(round(x)), int(round(y))) for x, y in pts]
                x0, y0 = np.floor(pts.min(axis=0)).astype(int)
                x1, y1 = np.ceil(pts.max(axis=0)).astype(int)
                shape = dlib.full_object_detection(
                    dlib.rectangle(int(x0), int(y0), int(x1), int(y1)), ipts
                )
                group = dlib.full_object_detections()
                group.append(shape)
                images.append(np.ascontiguousarray(s.portrait, dtype=np.uint8))
                dets.append(group)
            vecs = self._m_model.compute_face_descriptor(
                images, dets, self.num_jitters, self.padding
            )
            for i, per_image in enumerate(vecs):
                v = np.asarray(per_image[0], dtype=np.float64)
                n = float(np.linalg.norm(v))
                out[start + i] = (v / n if n > 0 else v).astype(np.float32)
        return out
