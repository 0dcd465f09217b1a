"""facexlib RetinaFace detection (boxes + 5 points), resnet50 or mobilenet0.25, batched.

Weights are the files facexlib downloads, placed under `DIR/facexlib/weights/`:
`detection_Resnet50_Final.pth` and `detection_mobilenet0.25_Final.pth`. Preprocessing is
facexlib's (BGR minus (104, 117, 123), priors per stride, variance decoding); images of a
batch are padded to one size so the batch runs as a single forward pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fgid_builder.detect.insightface_scrfd import clip_boxes
from fgid_builder.models import file_sha256, model_path
from fgid_builder.parse.bisenet import FACEXLIB_SUBDIR, load_weights_into, torch_device
from fgid_builder.registry import Backend
from fgid_builder.schema import DetectedFace, ModelInfo

RETINAFACE_FILES = {
    "resnet50": "detection_Resnet50_Final.pth",
    "mobile0.25": "detection_mobilenet0.25_Final.pth",
}
_BGR_MEAN = np.array([104.0, 117.0, 123.0], np.float32)


class RetinaFaceDetector(Backend):
    """RetinaFace boxes + 5 points (no dense landmarks).

    Options: `network` (resnet50 | mobile0.25), `models_dir`, `weights` (explicit .pth),
    `conf_threshold` (0.8, facexlib's default), `nms_threshold` (0.4), `max_side` (downscale
    so the longer side is at most this; 0 keeps the original size as facexlib does),
    `device` (auto | cpu | cuda[:N]), `num_threads`.
    """

    stage = "detect"
    name = "retinaface"

    def __init__(
        self,
        *,
        network: str = "resnet50",
        models_dir: str | None = None,
        weights: str | None = None,
        conf_threshold: float = 0.8,
        nms_threshold: float = 0.4,
        max_side: int = 1280,
        device: str = "auto",
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        if network not in RETINAFACE_FILES:
            raise ValueError(
                f"unknown RetinaFace network {network!r}; choose {', '.join(RETINAFACE_FILES)}"
            )
        if max_side < 0:
            raise ValueError("max_side must be >= 0")
        self.network = network
        self.models_dir = None if models_dir is None else str(models_dir)
        self.weights = weights
        self.conf_threshold = float(conf_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_side = int(max_side)
        self.device = device
        self.num_threads = num_threads

    def _weights_path(self) -> Path:
        return model_path(
            f"{FACEXLIB_SUBDIR}/{RETINAFACE_FILES[self.network]}",
            models_dir=self.models_dir,
            what=f"RetinaFace {self.network} weights",
            explicit=self.weights,
        )

    def _load(self) -> None:
        import torch
        from facexlib.detection.retinaface import RetinaFace

        path = self._weights_path()
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        dev = torch_device(self.device)
        net = RetinaFace(network_name=self.network, half=False, device=dev)
        load_weights_into(net, path, what=f"RetinaFace {self.network} weights")
        self._m_net, self._m_dev = net.to(dev).eval(), dev

    def model_info(self) -> ModelInfo:
        path = self._weights_path()
        return ModelInfo(
            name=f"facexlib-retinaface/{self.network}",
            version=f"{path.name}; max_side={self.max_side}",
            weights_sha256=file_sha256(path),
        )

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        import cv2

        h, w = image.shape[:2]
        scale = 1.0
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            image = cv2.resize(
                image,
                (max(1, round(w * scale)), max(1, round(h * scale))),
                interpolation=cv2.INTER_LINEAR,
            )
        bgr = image[:, :, ::-1].astype(np.float32) - _BGR_MEAN
        return bgr, scale

    def detect(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        import torch
        from facexlib.detection.retinaface_utils import PriorBox, decode, decode_landm

        self.load()
        if not images:
            return []
        prepared = [self._prepare(img) for img in images]
        ph = max(p.shape[0] for p, _ in prepared)
        pw = max(p.shape[1] for p, _ in prepared)
        ph, pw = -(-ph // 32) * 32, -(-pw // 32) * 32
        batch = np.zeros((len(prepared), ph, pw, 3), np.float32)  # zero = the mean colour
        for i, (p, _) in enumerate(prepared):
            batch[i, : p.shape[0], : p.shape[1]] = p
        x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy()).to(self._m_dev)
        cfg = self._m_net.cfg
        with torch.inference_mode():
            loc, conf, landms = self._m_net(x)
            priors = PriorBox(cfg, image_size=(ph, pw)).forward().to(self._m_dev)
        box_scale = torch.tensor([pw, ph] * 2, dtype=torch.float32, device=self._m_dev)
        lmk_scale = torch.tensor([pw, ph] * 5, dtype=torch.float32, device=self._m_dev)
        results: list[list[DetectedFace]] = []
        for i, (_, scale) in enumerate(prepared):
            scores = conf[i, :, 1]
            keep = scores > self.conf_threshold
            if not bool(keep.any()):
                results.append([])
                continue
            boxes = decode(loc[i][keep], priors[keep], cfg["variance"]) * box_scale / scale
            pts = decode_landm(landms[i][keep], priors[keep], cfg["variance"]) * lmk_scale / scale
            s = scores[keep]
            # exp() of an extreme size offset overflows to inf and the box corners to nan: such
            # a box is nowhere in the photo (and nan would pass every size gate), so drop it
            finite = torch.isfinite(boxes).all(1) & torch.isfinite(pts).all(1)
            boxes, pts, s = boxes[finite], pts[finite], s[finite]
            import torchvision

            order = torchvision.ops.nms(boxes.float(), s.float(), self.nms_threshold)
            h, w = images[i].shape[:2]
            boxes_np = clip_boxes(boxes[order].float().cpu().numpy(), w, h)
            pts_np = pts[order].float().cpu().numpy().reshape(-1, 5, 2)
            s_np = s[order].float().cpu().numpy()
            results.append(
                [
                    DetectedFace(
                        bbox=tuple(float(v) for v in b),
                        score=float(sc),
                        landmarks5=k.astype(np.float32),
                        landmarks=None,
                    )
                    for b, sc, k in zip(boxes_np, s_np, pts_np, strict=True)
                ]
            )
        return results
