"""The FGID sample: label map, key rules, reject reasons and the per-face record.

This module is the contract between the builder, the shard writer, the index, training and eval
(see DESIGN.md, "The sample"). Nothing here imports a model.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

# 2: subject's-left labels, person/background in the embedded masks, one type per field (region
#    bbox always a list, weights_sha256 always a string, prompt a JSON string, landmarks a list),
#    `captions.measured`; the JSON Schema is `sample.schema.json` beside this module.
SCHEMA_VERSION = 2
PORTRAIT_SIZE = 512

# The 19 classes of face-parsing.PyTorch (CelebAMask-HQ annotations), in the id order its BiSeNet
# (and facexlib's, and ConsistentID's) emits them. `l_*` is the SUBJECT's left: on a frontal photo
# l_eye (4) lies on the image's right. The official ConsistentID table mislabels 6, 9, 11, 15, 17
# and 18; these are the ids the network actually produces.
LABELS: dict[int, str] = {
    0: "background",
    1: "skin",
    2: "l_brow",
    3: "r_brow",
    4: "l_eye",
    5: "r_eye",
    6: "eye_g",
    7: "l_ear",
    8: "r_ear",
    9: "ear_r",
    10: "nose",
    11: "mouth",
    12: "u_lip",
    13: "l_lip",
    14: "neck",
    15: "neck_l",
    16: "cloth",
    17: "hair",
    18: "hat",
}
LABEL_IDS: dict[str, int] = {name: i for i, name in LABELS.items()}
NUM_LABELS = len(LABELS)

# CelebAMask-HQ's preview colour of each class, by class name (its `g_mask.py` lists them in its
# own class order: skin, nose, eye_g, l_eye, r_eye, l_brow, r_brow, l_ear, r_ear, mouth, u_lip,
# l_lip, hair, hat, ear_r, neck_l, neck, cloth); keyed by name so each face-parsing id gets its
# class's colour, not the colour of whatever CelebAMask-HQ lists at that position.
CELEBAMASK_HQ_COLORS: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "skin": (204, 0, 0),
    "nose": (76, 153, 0),
    "eye_g": (204, 204, 0),
    "l_eye": (51, 51, 255),
    "r_eye": (204, 0, 204),
    "l_brow": (0, 255, 255),
    "r_brow": (255, 204, 204),
    "l_ear": (102, 51, 0),
    "r_ear": (255, 0, 0),
    "mouth": (102, 204, 0),
    "u_lip": (255, 255, 0),
    "l_lip": (0, 0, 153),
    "hair": (0, 0, 204),
    "hat": (255, 51, 153),
    "ear_r": (0, 204, 204),
    "neck_l": (0, 51, 0),
    "neck": (255, 153, 51),
    "cloth": (0, 204, 0),
}
# Preview colour by label id (export previews, report overlays and palette).
LABEL_COLORS: dict[int, tuple[int, int, int]] = {
    i: CELEBAMASK_HQ_COLORS[name] for i, name in LABELS.items()
}

# The five facial regions ConsistentID captions and encodes, and the label ids each covers.
REGION_NAMES: tuple[str, ...] = ("face", "ears", "eyes", "nose", "mouth")
REGION_LABELS: dict[str, tuple[int, ...]] = {
    "face": (1,),
    "ears": (7, 8),
    "eyes": (4, 5),
    "nose": (10,),
    "mouth": (11, 12, 13),
}
# Labels a portrait's foreground covers (person, not background/clothes are included).
FOREGROUND_LABELS: tuple[int, ...] = tuple(i for i in LABELS if i != 0)

# The five-point landmark order used everywhere (as insightface emits it): image-left eye,
# image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
LANDMARKS5_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


class Reason(str, Enum):
    """Why an input (or a face of it) produced no sample. The value is the index reason code."""

    EMPTY_FILE = "empty_file"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    TOO_LARGE = "too_large"  # over the pixel limit (bomb guard) or --max-input-bytes
    TOO_SMALL = "too_small"  # the whole image is under the minimum side
    UNREADABLE = "unreadable"  # I/O error, permission, symlink loop
    NOT_A_FILE = "not_a_file"  # a FIFO, device, socket or folder where a file was expected
    TIMEOUT = "timeout"  # reading the input (or a download) took longer than its timeout
    UNSUPPORTED_FORMAT = "unsupported_format"  # an image format Pillow here cannot decode
    OUTSIDE_INPUT = "outside_input"  # a symlink out of INPUT (--follow-external-symlinks)
    DUPLICATE = "duplicate"  # same bytes as another input; its samples are recorded once
    NO_FACE = "no_face"
    TOO_MANY_FACES = "too_many_faces"
    FACE_TOO_SMALL = "face_too_small"
    BAD_LANDMARKS = "bad_landmarks"  # a face whose landmarks cannot define an alignment
    ERROR = "error"  # an unexpected exception in a stage; detail holds the message
    # downloads (fgid_builder.fetch) and planned inputs
    HTTP_404 = "http_404"  # 404 / 410
    HTTP_4XX = "http_4xx"  # any other 4xx answer (403, 429 after the retries, ...)
    HTTP_5XX = "http_5xx"  # a server error after the retries
    HTTP_ERROR = "http_error"  # no usable answer: connection refused or dropped, bad redirect
    OPTED_OUT = "opted_out"  # the owner opted out (X-Robots-Tag noai/noimageai, an opt-out list)
    CHANGED_SINCE_PLAN = "changed_since_plan"  # the bytes read differ from the planned sha256


class ImageRejected(Exception):
    """Raised by library code for an input that cannot become a sample; carries the reason."""

    def __init__(self, reason: Reason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


class ModelFileError(Exception):
    """A weight file is missing, truncated or of the wrong format.

    The message is one line naming the file and where it is expected; the CLI exits with 2.
    """


_KEY_RE = re.compile(r"^[0-9a-f]{16}_f[0-9]+$")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_key(source_sha256: str, face_index: int) -> str:
    """`{sha256(source bytes)[:16]}_f{face_index}`: never derived from a file name."""
    if not re.fullmatch(r"[0-9a-f]{16,64}", source_sha256):
        raise ValueError(f"not a hex sha256: {source_sha256!r}")
    if face_index < 0:
        raise ValueError("face_index must be >= 0")
    return f"{source_sha256[:16]}_f{face_index}"


def is_valid_key(key: str) -> bool:
    return bool(_KEY_RE.match(key))


@dataclass(frozen=True)
class ModelInfo:
    """What produced a stage's output: recorded with every sample.

    In the sample JSON every field is a string whatever the backend: `weights_sha256` is "" for
    a backend without weights, `prompt` the canonical JSON of the prompt record ("" if none), so
    builds from different backends load together (`sample.schema.json`).
    """

    name: str
    version: str
    weights_sha256: str = ""
    prompt: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.weights_sha256 is None:
            object.__setattr__(self, "weights_sha256", "")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "weights_sha256": self.weights_sha256,
            "prompt": "" if self.prompt is None else dumps_json(self.prompt).decode(),
        }


@dataclass
class DetectedFace:
    """One face as a detector reports it, in upright source-image pixels."""

    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1
    score: float
    landmarks5: np.ndarray  # (5, 2) float32, LANDMARKS5_NAMES order
    landmarks: np.ndarray | None = None  # (68, 2) or (106, 2) float32 dense landmarks, if any

    @property
    def size(self) -> float:
        """Face size in pixels: the shorter side of the box."""
        x0, y0, x1, y1 = self.bbox
        return float(min(x1 - x0, y1 - y0))


@dataclass
class Captions:
    """Caption text is description only: a region the captioner did not see has an empty
    caption and `measured[region] = False` (default: measured where the caption is not empty)."""

    global_: str
    facial: str
    regions: dict[str, str]  # exactly REGION_NAMES
    measured: dict[str, bool] | None = None

    def __post_init__(self) -> None:
        if self.measured is None:
            self.measured = {r: bool(self.regions.get(r, "").strip()) for r in self.regions}

    def to_json(self) -> dict[str, Any]:
        return {
            "global": self.global_,
            "facial": self.facial,
            "regions": dict(self.regions),
            "measured": dict(self.measured or {}),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Captions:
        measured = d.get("measured")
        return cls(
            global_=d["global"],
            facial=d["facial"],
            regions=dict(d["regions"]),
            measured=None if measured is None else dict(measured),
        )


@dataclass
class FaceSample:
    """One face of one photo, filled in stage by stage.

    `portrait`, `mask` and `embedding` are arrays; `meta` is the JSON member minus what the
    writer adds (`schema_version`, `key`). Landmarks inside `meta["face"]` are in source pixels;
    `portrait_landmarks5` / `portrait_landmarks` are the same points in portrait pixels, which is
    what parse / embed / caption backends read.
    """

    key: str
    source: dict[str, Any]  # uri, sha256, width, height
    face: dict[str, Any]  # index, bbox, landmarks5, landmarks, det_score, area_ratio, yaw...
    crop_affine: list[list[float]]  # 2x3, source pixels -> portrait pixels
    portrait: np.ndarray  # (512, 512, 3) uint8 RGB
    portrait_landmarks5: np.ndarray  # (5, 2) float32
    portrait_landmarks: np.ndarray | None = None  # (68|106, 2) float32
    mask: np.ndarray | None = None  # (512, 512) uint8 label map
    embedding: np.ndarray | None = None  # (D,) float32, unit norm
    regions: dict[str, Any] = field(default_factory=dict)
    captions: Captions | None = None
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        emb_dim = None if self.embedding is None else int(self.embedding.shape[0])
        return {
            "schema_version": SCHEMA_VERSION,
            "key": self.key,
            "source": self.source,
            "face": self.face,
            "crop": {"affine": self.crop_affine, "size": PORTRAIT_SIZE},
            "regions": self.regions,
            "captions": None if self.captions is None else self.captions.to_json(),
            "embedding": {"dim": emb_dim, "dtype": "float32", "normalized": True},
            "models": self.models,
        }


def region_stats(mask: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per-region presence, area fraction and bbox (x0, y0, x1, y1) from a label map."""
    h, w = mask.shape
    out: dict[str, dict[str, Any]] = {}
    for name in REGION_NAMES:
        sel = np.isin(mask, REGION_LABELS[name])
        n = int(sel.sum())
        if n == 0:
            out[name] = {"present": False, "area": 0.0, "bbox": [0, 0, 0, 0]}
            continue
        ys, xs = np.nonzero(sel)
        out[name] = {
            "present": True,
            "area": round(n / float(h * w), 6),
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
        }
    return out


def sample_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) every sample's `json` member follows."""
    from importlib.resources import files

    return json.loads(files("fgid_builder").joinpath("sample.schema.json").read_text())


def dumps_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, no whitespace variance, so shards are reproducible."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def npy_bytes(arr: np.ndarray) -> bytes:
    """`.npy` bytes without pickle (object arrays are refused)."""
    if arr.dtype == object:
        raise TypeError("object arrays would need pickle")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
