"""insightface SCRFD detection (5 points) + the pack's 106-point 2d landmarks, on onnxruntime.

An insightface model pack is a folder of ONNX files (`buffalo_l`: det_10g, 2d106det, 1k3d68,
genderage, w600k_r50; `antelopev2`: scrfd_10g_bnkps, 2d106det, 1k3d68, genderage, glintr100).
Files are told apart the way insightface's own model router does it, by their input/output
signatures, so any pack laid out like these works. Decoding follows insightface's SCRFD and
Landmark classes (letterbox to `det_size`, (x - 127.5) / 128, distance decoding per stride,
NMS 0.4); the preprocessing is done here so the batch layout and the execution provider stay
under our control.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fgid_builder.models import MODELS_DIR_ENV, file_sha256, resolve_models_dir
from fgid_builder.registry import Backend
from fgid_builder.schema import DetectedFace, ModelFileError, ModelInfo

PACKS_SUBDIR = "insightface/models"

# task names as insightface's router assigns them
DETECTION = "detection"
RECOGNITION = "recognition"
LANDMARK_2D_106 = "landmark_2d_106"


@dataclass(frozen=True)
class OnnxModelSpec:
    """One routed file of a pack: its task and the facts the decoders need."""

    path: str
    task: str
    input_shape: tuple[Any, ...]
    num_outputs: int
    output_rank: int
    output_dim: Any  # last dimension of the first output
    raw_input: bool  # the graph normalises its own input (mean 0, std 1 outside)


def pack_dir(pack: str, models_dir: str | os.PathLike | None, explicit: str | None = None) -> Path:
    """The folder holding the pack's ONNX files: `DIR/insightface/models/<pack>/`.

    The antelopev2 zip unpacks into `antelopev2/antelopev2/`; that nesting is accepted too.
    """
    if explicit:
        root = Path(explicit).expanduser()
    else:
        base = resolve_models_dir(models_dir)
        if base is None:
            raise ModelFileError(
                f"insightface pack {pack!r} not found: no models directory given (expected "
                f"at DIR/{PACKS_SUBDIR}/{pack}/*.onnx; pass --models-dir DIR or set "
                f"{MODELS_DIR_ENV})"
            )
        root = base / PACKS_SUBDIR / pack
    if not any(root.glob("*.onnx")) and any((root / pack).glob("*.onnx")):
        root = root / pack
    if not root.is_dir() or not any(root.glob("*.onnx")):
        raise ModelFileError(
            f"insightface pack {pack!r} not found: no .onnx files in {root} (expected the "
            f"unzipped {pack}.zip there; pass --models-dir DIR or set {MODELS_DIR_ENV})"
        )
    return root


def _dims(value_info: Any) -> tuple[Any, ...]:
    out: list[Any] = []
    for d in value_info.type.tensor_type.shape.dim:
        out.append(int(d.dim_value) if d.dim_value > 0 else (d.dim_param or None))
    return tuple(out)


def inspect_onnx(path: str | os.PathLike, *, where: str) -> OnnxModelSpec | None:
    """Route one ONNX file by signature, as insightface's ModelRouter does; None if unrouted."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if p.stat().st_size == 0:
        raise ModelFileError(f"insightface model file is empty: {p} ({where})")
    try:
        model = onnx.load_model(str(p), load_external_data=False)
    except (DecodeError, ValueError, OSError) as exc:
        raise ModelFileError(
            f"insightface model file is truncated or not ONNX: {p} ({where}; {type(exc).__name__})"
        ) from None
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if not inputs or not graph.output:
        raise ModelFileError(f"insightface model file has no inputs/outputs: {p} ({where})")
    shape = _dims(inputs[0])
    outputs = [_dims(o) for o in graph.output]
    first_nodes = [n.name for n in graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in first_nodes)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in first_nodes)
    has_bn = any(n == "bn_data" for n in first_nodes[:3])
    raw_input = (has_sub and has_mul) or has_bn
    h = shape[2] if len(shape) == 4 else None
    w = shape[3] if len(shape) == 4 else None
    if len(outputs) >= 5:
        task = DETECTION
    elif (h, w) == (192, 192):
        dim = outputs[0][1] if len(outputs[0]) > 1 else None
        task = "landmark_3d_68" if dim == 3309 else f"landmark_2d_{int(dim) // 2}"
    elif (h, w) == (96, 96):
        task = "genderage"
    elif len(inputs) == 2 and (h, w) == (128, 128):
        task = "inswapper"
    elif isinstance(h, int) and h == w and h >= 112 and h % 16 == 0:
        task = RECOGNITION
    else:
        return None
    return OnnxModelSpec(
        path=str(p),
        task=task,
        input_shape=shape,
        num_outputs=len(outputs),
        output_rank=len(outputs[0]),
        output_dim=outputs[0][-1] if outputs[0] else None,
        raw_input=raw_input,
    )


def route_pack(root: Path, *, pack: str) -> dict[str, OnnxModelSpec]:
    """task -> the first file (by name) of the pack that serves it."""
    where = f"expected the ONNX files of insightface pack {pack!r} in {root}"
    routed: dict[str, OnnxModelSpec] = {}
    for f in sorted(root.glob("*.onnx")):
        spec = inspect_onnx(f, where=where)
        if spec is not None and spec.task not in routed:
            routed[spec.task] = spec
    return routed


def require_task(routed: dict[str, OnnxModelSpec], task: str, root: Path, example: str) -> str:
    if task not in routed:
        raise ModelFileError(
            f"insightface {task} model not found: no ONNX file with a {task} signature in "
            f"{root} (expected e.g. {root / example})"
        )
    return routed[task].path


def ort_session(path: str, *, device: str, num_threads: int | None) -> Any:
    """An onnxruntime session on CPU, or CUDA first when `device` is cuda[:N]; `auto` takes
    CUDA when onnxruntime has it and this process is allowed a GPU."""
    import onnxruntime as ort

    if device == "auto":
        has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
        device = "cuda" if has_cuda and os.environ.get("CUDA_VISIBLE_DEVICES") != "" else "cpu"

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if num_threads:
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError(
                f"device={device!r} but this onnxruntime has no CUDA provider; "
                "pip install onnxruntime-gpu (and uninstall onnxruntime)"
            )
        dev_id = int(device.split(":")[1]) if ":" in device else 0
        providers = [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(path, sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph classes
        raise ModelFileError(
            f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:200]}"
        ) from None


def combined_sha256(paths: list[str]) -> str:
    """One file's SHA-256, or for several the SHA-256 of their sorted `name sha256` lines."""
    if len(paths) == 1:
        return file_sha256(paths[0])
    lines = sorted(f"{Path(p).name} {file_sha256(p)}\n" for p in paths)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def batch_is_dynamic(shape: tuple[Any, ...]) -> bool:
    return not (isinstance(shape[0], int) and shape[0] == 1)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes (N, 4) clipped to the photo, as the dlib backend records them: a face cut by the
    border keeps its visible part, so `min_face` and `area_ratio` measure what is in the photo.
    The 5 points are left as predicted (alignment fills outside pixels by edge replication)."""
    out = np.asarray(boxes, dtype=np.float32).copy()
    out[:, 0::2] = np.clip(out[:, 0::2], 0.0, float(width))
    out[:, 1::2] = np.clip(out[:, 1::2], 0.0, float(height))
    return out


def _nms(dets: np.ndarray, thresh: float) -> list[int]:
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


class InsightFaceDetector(Backend):
    """SCRFD boxes + 5 points, and the pack's 106-point landmarks when it has them.

    Options: `pack` (buffalo_l | antelopev2 | any pack folder name), `models_dir`, `pack_dir`
    (explicit folder), `det_size` (square letterbox side, 640 as insightface), `det_thresh`,
    `nms_thresh`, `landmarks_106` (run 2d106det when present), `device` (auto | cpu | cuda[:N]),
    `num_threads` (onnxruntime intra-op threads).
    """

    stage = "detect"
    name = "insightface"

    def __init__(
        self,
        *,
        pack: str = "buffalo_l",
        models_dir: str | None = None,
        pack_dir: str | None = None,
        det_size: int = 640,
        det_thresh: float = 0.5,
        nms_thresh: float = 0.4,
        landmarks_106: bool = True,
        device: str = "auto",
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        if det_size < 32 or det_size % 32:
            raise ValueError(f"det_size must be a multiple of 32, got {det_size}")
        if not 0.0 < det_thresh < 1.0 or not 0.0 < nms_thresh <= 1.0:
            raise ValueError("det_thresh must be in (0, 1) and nms_thresh in (0, 1]")
        self.pack = pack
        self.models_dir = None if models_dir is None else str(models_dir)
        self.pack_dir = pack_dir
        self.det_size = int(det_size)
        self.det_thresh = float(det_thresh)
        self.nms_thresh = float(nms_thresh)
        self.landmarks_106 = bool(landmarks_106)
        self.device = device
        self.num_threads = num_threads

    # -- model files -------------------------------------------------------------------------
    def _files(self) -> tuple[OnnxModelSpec, OnnxModelSpec | None]:
        root = pack_dir(self.pack, self.models_dir, self.pack_dir)
        routed = route_pack(root, pack=self.pack)
        det_example = "scrfd_10g_bnkps.onnx" if self.pack == "antelopev2" else "det_10g.onnx"
        require_task(routed, DETECTION, root, det_example)
        det = routed[DETECTION]
        if det.num_outputs not in (6, 9, 10, 15):
            raise ModelFileError(
                f"insightface detection model has {det.num_outputs} outputs, not an SCRFD "
                f"layout (6, 9, 10 or 15): {det.path}"
            )
        if det.num_outputs in (6, 10):
            raise ModelFileError(
                f"insightface detection model has no keypoint outputs (5 points are needed): "
                f"{det.path} (use a *_bnkps / det_10g model)"
            )
        lmk = routed.get(LANDMARK_2D_106) if self.landmarks_106 else None
        return det, lmk

    def _load(self) -> None:
        det, lmk = self._files()
        self._m_det_spec, self._m_lmk_spec = det, lmk
        self._m_det = ort_session(det.path, device=self.device, num_threads=self.num_threads)
        self._m_lmk = (
            None
            if lmk is None
            else ort_session(lmk.path, device=self.device, num_threads=self.num_threads)
        )
        self._m_centers: dict[tuple[int, int, int], np.ndarray] = {}

    def model_info(self) -> ModelInfo:
        det, lmk = self._files()
        paths = [det.path] + ([lmk.path] if lmk is not None else [])
        version = "+".join(Path(p).name for p in paths)
        return ModelInfo(
            name=f"insightface-scrfd/{self.pack}",
            version=f"{version}; det_size={self.det_size}",
            weights_sha256=combined_sha256(paths),
        )

    # -- inference -----------------------------------------------------------------------------
    def _letterbox(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        import cv2

        size = self.det_size
        h, w = image.shape[:2]
        if h / w > 1.0:
            new_h, new_w = size, max(1, int(size / (h / w)))
        else:
            new_w, new_h = size, max(1, int(size * (h / w)))
        canvas = np.zeros((size, size, 3), dtype=np.uint8)
        canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h))
        return canvas, new_h / h

    def _anchor_centers(self, stride: int, num_anchors: int) -> np.ndarray:
        fh = fw = self.det_size // stride
        key = (fh, stride, num_anchors)
        if key not in self._m_centers:
            centers = np.stack(np.mgrid[:fh, :fw][::-1], axis=-1).astype(np.float32)
            centers = (centers * stride).reshape(-1, 2)
            if num_anchors > 1:
                centers = np.stack([centers] * num_anchors, axis=1).reshape(-1, 2)
            self._m_centers[key] = centers
        return self._m_centers[key]

    def _decode(self, outs: list[np.ndarray], scale: float) -> tuple[np.ndarray, np.ndarray]:
        fmc = 3 if len(outs) == 9 else 5
        strides = (8, 16, 32) if fmc == 3 else (8, 16, 32, 64, 128)
        num_anchors = 2 if fmc == 3 else 1
        dets, kpss = [], []
        for i, stride in enumerate(strides):
            scores = outs[i].reshape(-1)
            boxes = outs[i + fmc].reshape(-1, 4) * stride
            kps = outs[i + 2 * fmc].reshape(-1, 10) * stride
            centers = self._anchor_centers(stride, num_anchors)
            pos = np.where(scores >= self.det_thresh)[0]
            if pos.size == 0:
                continue
            c = centers[pos]
            b = boxes[pos]
            box = np.stack(
                [c[:, 0] - b[:, 0], c[:, 1] - b[:, 1], c[:, 0] + b[:, 2], c[:, 1] + b[:, 3]], -1
            )
            k = kps[pos].reshape(-1, 5, 2) + c[:, None, :]
            dets.append(np.hstack([box / scale, scores[pos, None]]))
            kpss.append(k / scale)
        if not dets:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        det = np.vstack(dets).astype(np.float32)
        kp = np.vstack(kpss).astype(np.float32)
        order = np.argsort(-det[:, 4], kind="stable")
        det, kp = det[order], kp[order]
        keep = _nms(det, self.nms_thresh)
        return det[keep], kp[keep]

    def _run_detector(self, canvases: list[np.ndarray]) -> list[list[np.ndarray]]:
        spec = self._m_det_spec
        name = self._m_det.get_inputs()[0].name
        blobs = [
            ((c.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None] for c in canvases
        ]
        if spec.output_rank == 3 and batch_is_dynamic(spec.input_shape) and len(blobs) > 1:
            outs = self._m_det.run(None, {name: np.concatenate(blobs)})
            return [[o[b] for o in outs] for b in range(len(blobs))]
        per_image = []
        for blob in blobs:
            outs = self._m_det.run(None, {name: blob})
            per_image.append([o[0] if o.ndim == 3 else o for o in outs])
        return per_image

    # Faces per 106-point batch: memory stays bounded however many boxes a photo has (a crowd,
    # or an untrained detector's thousands), since the points are predicted before any gate.
    LANDMARK_CHUNK = 32

    def _landmarks_106(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        chunks = [
            self._landmarks_106_batch(image, boxes[i : i + self.LANDMARK_CHUNK])
            for i in range(0, len(boxes), self.LANDMARK_CHUNK)
        ]
        return np.concatenate(chunks).astype(np.float32)

    def _landmarks_106_batch(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        import cv2

        spec = self._m_lmk_spec
        size = int(spec.input_shape[2])
        crops, mats = [], []
        for x0, y0, x1, y1 in boxes[:, :4]:
            s = size / (max(x1 - x0, y1 - y0) * 1.5)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            m = np.array([[s, 0, size / 2 - cx * s], [0, s, size / 2 - cy * s]], np.float32)
            crops.append(cv2.warpAffine(image, m, (size, size), borderValue=0.0))
            mats.append(m)
        mean, std = (0.0, 1.0) if spec.raw_input else (127.5, 128.0)
        blob = ((np.stack(crops).astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
        name = self._m_lmk.get_inputs()[0].name
        if batch_is_dynamic(spec.input_shape):
            preds = self._m_lmk.run(None, {name: np.ascontiguousarray(blob)})[0]
        else:
            preds = np.concatenate([self._m_lmk.run(None, {name: b[None]})[0] for b in blob])
        out = []
        for pred, m in zip(preds, mats, strict=True):
            pts = pred.reshape(-1, 2)[-106:].astype(np.float32)
            pts = (pts + 1.0) * (size // 2)
            pts = (pts - m[:, 2]) / m[0, 0]  # the crop is a pure scale + shift
            out.append(pts)
        return np.stack(out).astype(np.float32)

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        self.load()
        letterboxed = [self._letterbox(img) for img in images]
        raw = self._run_detector([c for c, _ in letterboxed])
        results: list[list[DetectedFace]] = []
        for img, (_, scale), outs in zip(images, letterboxed, raw, strict=True):
            det, kps = self._decode(outs, scale)
            dense = (  # cropped from the predicted box, as insightface does, before clipping
                self._landmarks_106(img, det)
                if self._m_lmk is not None and len(det)
                else [None] * len(det)
            )
            det[:, :4] = clip_boxes(det[:, :4], img.shape[1], img.shape[0])
            results.append(
                [
                    DetectedFace(
                        bbox=tuple(float(v) for v in d[:4]),
                        score=float(d[4]),
                        landmarks5=k.astype(np.float32),
                        landmarks=lm,
                    )
                    for d, k, lm in zip(det, kps, dense, strict=True)
                ]
            )
        return results
