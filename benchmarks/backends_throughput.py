"""Throughput of the production backends per stage, random weights, real-size networks.

    python benchmarks/backends_throughput.py [--stages scrfd,bisenet,arcface,mllm] [--n 16]
        [--batch 8] [--device auto] [--pack-dir DIR]   # DIR: a real insightface pack, if any

What runs:
- BiSeNet: facexlib's real architecture (19 classes, 512 px), random weights.
- SCRFD / ArcFace: with `--pack-dir`, the real pack's ONNX files; otherwise stand-ins of the
  same cost class exported here: a ResNet-18 trunk with SCRFD's 9-output head at 640 px
  (SCRFD-10G is ~10 GFLOPs, this ~15), and a torchvision ResNet-50 with a 512-d head at 112 px
  (w600k_r50 is an IResNet-50: ~6.3 GFLOPs, this ~1.0; so the ArcFace figure is optimistic).
- MLLM: a small LLaVA-shaped model (CLIP ViT 224/14, 4 layers; Llama 4 layers, hidden 512),
  both FGID questions per face, `--max-new-tokens` greedy; batched (`--batch` faces, so 2x
  that many sequences per generate call) against one question of one image at a time, as
  the official FGID_caption.py loop does.
Images/s = faces/s for the per-face stages. Prints one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _samples(n: int):
    from PIL import Image

    from fgid_builder.demo import demo_photos
    from fgid_builder.schema import FaceSample

    photos = [np.asarray(Image.open(p).convert("RGB").resize((512, 512))) for p in demo_photos()]
    lm5 = np.array([[190, 240], [322, 240], [256, 310], [200, 370], [312, 370]], np.float32)
    return [
        FaceSample(
            key=f"{i:016x}_f0",
            source={},
            face={},
            crop_affine=[],
            portrait=photos[i % len(photos)],
            portrait_landmarks5=lm5,
        )  # fmt: skip
        for i in range(n)
    ]


def _timed(fn, *, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _emit(**row) -> None:
    print(json.dumps(row, sort_keys=True), flush=True)


def _export(module, dummy, path: Path, outputs: list[str], dynamic: dict) -> Path:
    import torch

    torch.onnx.export(
        module.eval(), (dummy,), str(path), input_names=["input.1"], output_names=outputs,
        dynamic_axes=dynamic, dynamo=False, opset_version=13,
    )  # fmt: skip
    return path


def standin_pack(root: Path) -> Path:
    """det_10g.onnx + w600k_r50.onnx stand-ins (see the module docstring)."""
    import torch
    import torchvision

    pack = root / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True, exist_ok=True)

    class Scrfd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            r = torchvision.models.resnet18(weights=None)
            self.stem = torch.nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1)
            self.l2, self.l3, self.l4 = r.layer2, r.layer3, r.layer4
            self.heads = torch.nn.ModuleList(
                torch.nn.Conv2d(c, 2 * 15, 3, padding=1) for c in (128, 256, 512)
            )

        def forward(self, x):
            f8 = self.l2(self.stem(x))
            f16 = self.l3(f8)
            f32 = self.l4(f16)
            outs = {"score": [], "bbox": [], "kps": []}
            for f, head in zip((f8, f16, f32), self.heads, strict=True):
                y = head(f).permute(0, 2, 3, 1)
                outs["score"].append(torch.sigmoid(y[..., :2]).reshape(-1, 1) * 0.1)
                outs["bbox"].append(y[..., 2:10].reshape(-1, 4))
                outs["kps"].append(y[..., 10:].reshape(-1, 10))
            return tuple(outs["score"] + outs["bbox"] + outs["kps"])

    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    _export(Scrfd(), torch.zeros(1, 3, 640, 640), pack / "det_10g.onnx", names, {})
    r50 = torchvision.models.resnet50(weights=None)
    r50.fc = torch.nn.Linear(2048, 512)
    _export(r50, torch.zeros(1, 3, 112, 112), pack / "w600k_r50.onnx", ["fc1"],
            {"input.1": {0: "None"}, "fc1": {0: "None"}})  # fmt: skip
    return pack


def bench_insightface(args, models: Path, samples) -> None:
    from fgid_builder.detect.insightface_scrfd import InsightFaceDetector
    from fgid_builder.embed.arcface import ArcFaceEmbedder

    kw = {"pack_dir": args.pack_dir} if args.pack_dir else {"models_dir": str(models)}
    if "scrfd" in args.stages:
        det = InsightFaceDetector(device=args.device, landmarks_106=False, **kw)
        images = [s.portrait for s in samples]
        dt = _timed(lambda: det.detect(images))
        _emit(stage="detect", backend="insightface-scrfd", det_size=640, n=len(images),
              images_per_s=round(len(images) / dt, 2))  # fmt: skip
    if "arcface" in args.stages:
        emb = ArcFaceEmbedder(device=args.device, **kw)
        for bs in (1, args.batch * 4):

            def run(bs=bs):
                for i in range(0, len(samples), bs):
                    emb.embed(samples[i : i + bs])

            dt = _timed(run)
            _emit(stage="embed", backend="insightface-arcface", batch=bs, n=len(samples),
                  faces_per_s=round(len(samples) / dt, 2))  # fmt: skip


def bench_bisenet(args, models: Path, samples) -> None:
    from fgid_builder.parse.bisenet import BiSeNetParser
    from tests.fgid_builder.backends.tiny_models import bisenet_pth

    bisenet_pth(models)
    parser = BiSeNetParser(models_dir=str(models), device=args.device)
    for bs in (1, args.batch):

        def run(bs=bs):
            for i in range(0, len(samples), bs):
                parser.parse(samples[i : i + bs])

        dt = _timed(run)
        _emit(stage="parse", backend="facexlib-bisenet", batch=bs, n=len(samples),
              faces_per_s=round(len(samples) / dt, 2))  # fmt: skip


def bench_mllm(args, models: Path, samples) -> None:
    from fgid_builder.caption.mllm import MLLMCaptioner
    from tests.fgid_builder.backends.tiny_models import tiny_llava

    tiny_llava(models / "mllm" / "bench-llava", image_size=224, patch=14, vision_hidden=256,
               vision_layers=4, layers=4, hidden=512)  # fmt: skip
    subset = samples[: args.mllm_n]
    for bs, label in ((args.batch, "batched"), (1, "one-at-a-time")):
        cap = MLLMCaptioner(model="bench-llava", models_dir=str(models), batch_size=bs * (2 if bs > 1 else 1),
                            max_new_tokens=args.max_new_tokens, device=args.device,
                            generate_kwargs={"min_new_tokens": args.max_new_tokens})  # fmt: skip
        dt = _timed(lambda cap=cap: cap.caption(subset))
        _emit(stage="caption", backend="mllm (LLaVA-shaped, small)", mode=label,
              faces_per_batch=bs, n=len(subset), max_new_tokens=args.max_new_tokens,
              captions_per_s=round(len(subset) / dt, 3),
              tokens_per_s=round(2 * len(subset) * args.max_new_tokens / dt, 1))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--stages", default="scrfd,bisenet,arcface,mllm")
    ap.add_argument("--n", type=int, default=16, help="faces/images per measurement")
    ap.add_argument("--mllm-n", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--pack-dir", default=None, help="a real insightface pack folder")
    args = ap.parse_args()
    args.stages = set(args.stages.split(","))
    import torch

    _emit(machine=platform.processor() or platform.machine(), torch_threads=torch.get_num_threads(),
          cuda=torch.cuda.is_available())  # fmt: skip
    samples = _samples(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        if {"scrfd", "arcface"} & args.stages:
            if not args.pack_dir:
                standin_pack(models)
            bench_insightface(args, models, samples)
        if "bisenet" in args.stages:
            bench_bisenet(args, models, samples)
        if "mllm" in args.stages:
            bench_mllm(args, models, samples)


if __name__ == "__main__":
    main()
