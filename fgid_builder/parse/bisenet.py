"""facexlib BiSeNet face parsing: 19 CelebAMask-HQ classes at 512 px on the aligned portrait.

The network and its preprocessing are the ones FGID's masks came from (ImageNet mean/std on the
512 RGB image, argmax of the main head); the ids it emits are `schema.LABELS` unchanged.
Weights: facexlib's `parsing_bisenet.pth` under `DIR/facexlib/weights/`, or any BiSeNet-19 state
dict of the face-parsing.PyTorch layout (ConsistentID's `face_parsing.pth`) via `weights=`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fgid_builder.models import file_sha256, model_path
from fgid_builder.registry import Backend
from fgid_builder.schema import NUM_LABELS, PORTRAIT_SIZE, FaceSample, ModelFileError, ModelInfo

FACEXLIB_SUBDIR = "facexlib/weights"
BISENET_FILE = "parsing_bisenet.pth"

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_state_dict_file(path: str | os.PathLike, *, what: str) -> dict[str, Any]:
    """A torch state dict from `.pth` (tensors only: `weights_only=True`) or `.safetensors`.

    Any unreadable file (truncated zip, pickle of something else, wrong format) is a one-line
    ModelFileError naming the file.
    """
    import torch

    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(p), device="cpu")
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError/zip errors
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"{what} is truncated or not a torch state dict: {p} ({msg})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ModelFileError(f"{what} is not a state dict (name -> tensor): {p}")
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def load_weights_into(module: Any, path: str | os.PathLike, *, what: str) -> None:
    """Strictly load a state dict file into `module`; a key/shape mismatch names the file."""
    state = load_state_dict_file(path, what=what)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:2])[:200]
        raise ModelFileError(f"{what} does not match the network: {path} ({detail})") from None


def torch_device(device: str) -> Any:
    """`auto`: CUDA when this process sees a GPU (a Ray actor given num_gpus), else CPU."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} but torch sees no CUDA device")
    return torch.device(device)


class BiSeNetParser(Backend):
    """19-class face parsing of the 512 portrait.

    Options: `models_dir`, `weights` (explicit .pth), `device` (auto | cpu | cuda[:N]), `input_size`
    (network input side; 512 as FGID), `half` (fp16 on CUDA), `num_threads` (torch CPU threads).
    """

    stage = "parse"
    name = "bisenet"

    def __init__(
        self,
        *,
        models_dir: str | None = None,
        weights: str | None = None,
        device: str = "auto",
        input_size: int = 512,
        half: bool = False,
        num_threads: int | None = None,
    ) -> None:
        super().__init__()
        if input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        self.models_dir = None if models_dir is None else str(models_dir)
        self.weights = weights
        self.device = device
        self.input_size = int(input_size)
        self.half = bool(half)
        self.num_threads = num_threads

    def _weights_path(self) -> Path:
        return model_path(
            f"{FACEXLIB_SUBDIR}/{BISENET_FILE}",
            models_dir=self.models_dir,
            what="BiSeNet face-parsing weights",
            explicit=self.weights,
        )

    def _load(self) -> None:
        import torch
        from facexlib.parsing.bisenet import BiSeNet

        path = self._weights_path()
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        net = BiSeNet(num_class=NUM_LABELS)
        load_weights_into(net, path, what="BiSeNet face-parsing weights")
        dev = torch_device(self.device)
        net = net.to(dev).eval()
        if self.half and dev.type == "cuda":
            net = net.half()
        self._m_net, self._m_dev = net, dev

    def model_info(self) -> ModelInfo:
        path = self._weights_path()
        return ModelInfo(
            name="facexlib-bisenet",
            version=f"{path.name}; classes={NUM_LABELS}; input={self.input_size}",
            weights_sha256=file_sha256(path),
        )

    def parse(self, samples: list[FaceSample]) -> list[np.ndarray]:
        import cv2
        import torch

        self.load()
        if not samples:
            return []
        imgs = []
        for s in samples:
            img = s.portrait
            if img.shape[:2] != (self.input_size, self.input_size):
                img = cv2.resize(
                    img, (self.input_size, self.input_size), interpolation=cv2.INTER_LINEAR
                )
            imgs.append(((img.astype(np.float32) / 255.0) - _MEAN) / _STD)
        x = torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy()).to(self._m_dev)
        if self.half and self._m_dev.type == "cuda":
            x = x.half()
        with torch.inference_mode():
            logits = self._m_net(x)[0]
            labels = logits.argmax(1).to(torch.uint8).cpu().numpy()
        out = []
        for lab in labels:
            if lab.shape != (PORTRAIT_SIZE, PORTRAIT_SIZE):
                lab = cv2.resize(
                    lab, (PORTRAIT_SIZE, PORTRAIT_SIZE), interpolation=cv2.INTER_NEAREST
                )
            out.append(np.ascontiguousarray(lab, dtype=np.uint8))
        return out
