"""Throughput of the production backends per stage, on real-size networks with random weights.

    python benchmarks/backends_throughput.py [--stages scrfd,2d106,bisenet,arcface,mllm]
        [--n 16] [--batch 8] [--threads 1] [--device auto] [--cache-dir DIR] [--pack-dir DIR]

Every figure goes through fgid's own backend classes and loading code (pack routing, ONNX
sessions, letterbox / alignment / decoding), so it is what `fgid build` would get per stage.

What runs:
- scrfd, 2d106, arcface: the three networks of insightface's buffalo_l pack rebuilt at their
  real sizes in benchmarks/insightface_nets.py (SCRFD-10GF with keypoints, 4.23 M params,
  10.0 G MACs at 640x480; a MobileNet-0.5 106-point regressor; ArcFace IResNet-50, 43.6 M
  params, 6.3 G MACs), random weights, exported to ONNX as det_10g.onnx / 2d106det.onnx /
  w600k_r50.onnx with the signatures insightface's model router recognises (checked with
  insightface.model_zoo.get_model when insightface is installed). The exports are cached under
  --cache-dir (default $XDG_CACHE_HOME/fgid/bench-insightface, else <tmp>/fgid-cache/...)
  and rebuilt only when that code or torch changes. `--pack-dir` runs a real pack instead.
- scrfd: whole photos (the package-shipped ones, cycled to --n) letterboxed to 640x640, one
  session call per image as det_10g's batch-1 input requires. Untrained, SCRFD scores every
  anchor ~0.01 (its own initialisation), so no box passes det_thresh and decoding/NMS cost
  what they cost on a photo without faces.
- 2d106: the 106-point model on one given box per photo (the detector above finds none), one
  face per call and --batch faces per call.
- bisenet: facexlib's real BiSeNet (19 classes, 512 px), random weights, on 512 portraits.
- arcface: the aligned 112 crop of each 512 portrait, batch 1 and 4 x --batch.
- mllm: a small LLaVA-shaped model (CLIP ViT 224/14, 4 layers; Llama 4 layers, hidden 512),
  both FGID questions per face, --max-new-tokens greedy tokens each; batched (--batch faces, so
  2x that many sequences per generate call) against one question of one image at a time, as
  the official FGID_caption.py loop does. Not LLaVA-1.5-7B-sized: on a CPU that would take
  minutes per caption.

Output: one JSON line per network built and per measurement, then a table. Images/s is whole
photos per second for scrfd; faces/s for the per-face stages. Each measurement is one timed
pass after one warm-up pass over the same inputs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("scrfd", "2d106", "bisenet", "arcface", "mllm")
ROWS: list[dict] = []


def _photos(n: int) -> list[np.ndarray]:
    from PIL import Image, ImageOps

    from fgid_builder.demo import demo_photos

    photos = [np.asarray(ImageOps.exif_transpose(Image.open(p)).convert("RGB"))
              for p in demo_photos()]  # fmt: skip
    return [photos[i % len(photos)] for i in range(n)]


def _samples(n: int):
    """512 portraits with their portrait-space 5 points (a fixed frontal layout)."""
    from PIL import Image

    from fgid_builder.schema import FaceSample

    portraits = [np.asarray(Image.fromarray(p).resize((512, 512))) for p in _photos(n)]
    lm5 = np.array([[190, 240], [322, 240], [256, 310], [200, 370], [312, 370]], np.float32)
    return [
        FaceSample(key=f"{i:016x}_f0", source={}, face={}, crop_affine=[], portrait=p,
                   portrait_landmarks5=lm5)
        for i, p in enumerate(portraits)
    ]  # fmt: skip


def _timed(fn) -> float:
    fn()  # warm-up: session/graph initialisation, allocator, caches
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _emit(**row) -> None:
    ROWS.append(row)
    print(json.dumps(row, sort_keys=True), flush=True)


def bench_scrfd(args, models: Path | None, images: list[np.ndarray]) -> None:
    from fgid_builder.detect.insightface_scrfd import InsightFaceDetector

    det = InsightFaceDetector(landmarks_106=False, device=args.device, num_threads=args.threads,
                              **_pack_kw(args, models))  # fmt: skip
    found: list[int] = []

    def run() -> None:
        found[:] = [len(f) for f in det.detect(images)]

    dt = _timed(run)
    _emit(stage="detect", backend="insightface SCRFD-10GF (det_10g.onnx)", det_size=640,
          batch=1, n=len(images), faces_found=sum(found), per_s=round(len(images) / dt, 2),
          unit="images")  # fmt: skip


def bench_2d106(args, models: Path | None, images: list[np.ndarray]) -> None:
    from fgid_builder.detect.insightface_scrfd import InsightFaceDetector

    det = InsightFaceDetector(
        device=args.device, num_threads=args.threads, **_pack_kw(args, models)
    )
    det.load()
    if det._m_lmk is None:
        raise SystemExit("the pack has no 106-point landmark model")

    def box(img: np.ndarray) -> np.ndarray:  # the central square, a typical portrait face
        h, w = img.shape[:2]
        s = 0.5 * min(h, w)
        return np.array([[w / 2 - s / 2, h / 2 - s / 2, w / 2 + s / 2, h / 2 + s / 2, 1.0]])

    for bs in (1, args.batch):
        if bs == 1:
            calls = [(img, box(img)) for img in images]
        else:
            calls = [(images[i], np.repeat(box(images[i]), len(images[i : i + bs]), 0))
                     for i in range(0, len(images), bs)]  # fmt: skip
        n = sum(len(b) for _, b in calls)

        def run(calls=calls) -> None:
            for img, boxes in calls:
                det._landmarks_106(img, boxes)

        dt = _timed(run)
        _emit(stage="landmarks", backend="insightface 2d106det (MobileNet-0.5)", batch=bs, n=n,
              per_s=round(n / dt, 2), unit="faces")  # fmt: skip


def _bench_batches(fn, samples, batch_sizes, *, stage: str, backend: str) -> None:
    """Time `fn` over all faces in batches of each size; one emitted figure per size."""
    for bs in batch_sizes:

        def run(bs=bs) -> None:
            for i in range(0, len(samples), bs):
                fn(samples[i : i + bs])

        dt = _timed(run)
        _emit(stage=stage, backend=backend, batch=bs, n=len(samples),
              per_s=round(len(samples) / dt, 2), unit="faces")  # fmt: skip


def bench_arcface(args, models: Path | None, samples) -> None:
    from fgid_builder.embed.arcface import ArcFaceEmbedder

    emb = ArcFaceEmbedder(device=args.device, num_threads=args.threads, **_pack_kw(args, models))
    _bench_batches(emb.embed, samples, (1, args.batch * 4), stage="embed",
                   backend="insightface ArcFace IResNet-50 (w600k_r50.onnx)")  # fmt: skip


def bench_bisenet(args, models: Path, samples) -> None:
    from fgid_builder.parse.bisenet import BiSeNetParser
    from tests.fgid_builder.backends.tiny_models import bisenet_pth

    bisenet_pth(models)
    parser = BiSeNetParser(models_dir=str(models), device=args.device, num_threads=args.threads)
    _bench_batches(parser.parse, samples, (1, args.batch), stage="parse",
                   backend="facexlib BiSeNet (19 classes, 512 px)")  # fmt: skip


def bench_mllm(args, models: Path, samples) -> None:
    from fgid_builder.caption.mllm import MLLMCaptioner
    from tests.fgid_builder.backends.tiny_models import tiny_llava

    tiny_llava(models / "mllm" / "bench-llava", image_size=224, patch=14, vision_hidden=256,
               vision_layers=4, layers=4, hidden=512)  # fmt: skip
    subset = samples[: args.mllm_n]
    for bs, label in ((args.batch, "batched"), (1, "one-at-a-time")):
        cap = MLLMCaptioner(model="bench-llava", models_dir=str(models), batch_size=bs * (2 if bs > 1 else 1),
                            max_new_tokens=args.max_new_tokens, device=args.device,
                            num_threads=args.threads,
                            generate_kwargs={"min_new_tokens": args.max_new_tokens})  # fmt: skip
        dt = _timed(lambda cap=cap: cap.caption(subset))
        _emit(stage="caption", backend=f"mllm, small LLaVA-shaped ({label})", batch=bs,
              n=len(subset), max_new_tokens=args.max_new_tokens,
              per_s=round(len(subset) / dt, 3), unit="faces (2 captions each)",
              tokens_per_s=round(2 * len(subset) * args.max_new_tokens / dt, 1))  # fmt: skip


def _pack_kw(args, models: Path | None) -> dict:
    return {"pack_dir": args.pack_dir} if args.pack_dir else {"models_dir": str(models)}


def _table() -> None:
    print(f"\n{'stage':<10} {'backend':<50} {'batch':>5} {'n':>4} {'per s':>9}  unit")
    for r in ROWS:
        if "stage" in r:
            print(f"{r['stage']:<10} {r['backend']:<50} {r['batch']:>5} {r['n']:>4} "
                  f"{r['per_s']:>9}  {r['unit']}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--stages", default=",".join(STAGES),
                    help=f"comma-separated subset of {', '.join(STAGES)} (default: all)")  # fmt: skip
    ap.add_argument("--n", type=int, default=16, help="photos / faces per measurement (16)")
    ap.add_argument(
        "--mllm-n", type=int, default=8, help="faces captioned per mllm measurement (8)"
    )
    ap.add_argument("--batch", type=int, default=8,
                    help="faces per call for the batched rows (8; ArcFace uses 4x this)")  # fmt: skip
    ap.add_argument("--max-new-tokens", type=int, default=32, help="tokens per caption (32)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads per backend (onnxruntime intra-op, torch); default: "
                         "$OMP_NUM_THREADS, else the libraries' own default")  # fmt: skip
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    ap.add_argument("--cache-dir", default=None,
                    help="where the ONNX exports are kept between runs")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights (0)")
    ap.add_argument("--pack-dir", default=None,
                    help="a real insightface pack folder: its ONNX files instead of the exports")  # fmt: skip
    args = ap.parse_args()
    stages = set(args.stages.split(","))
    if stages - set(STAGES):
        ap.error(f"unknown stage(s) {', '.join(sorted(stages - set(STAGES)))}")
    if args.threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        args.threads = int(os.environ["OMP_NUM_THREADS"])
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    _emit(machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
          threads=args.threads or torch.get_num_threads(), cuda=torch.cuda.is_available(),
          torch=torch.__version__)  # fmt: skip

    insightface_models = None
    if {"scrfd", "2d106", "arcface"} & stages and not args.pack_dir:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from insightface_nets import buffalo_l_pack

        t = time.perf_counter()
        cache = Path(args.cache_dir) if args.cache_dir else None
        insightface_models, built = buffalo_l_pack(cache, seed=args.seed)
        for b in built:
            _emit(network=b.file, architecture=b.architecture, params_m=b.params_m,
                  gmacs=b.gmacs, published=b.published, insightface_router=b.insightface_router)  # fmt: skip
        _emit(exports=str(insightface_models), ready_s=round(time.perf_counter() - t, 1))
    samples = _samples(args.n)
    if "scrfd" in stages:
        bench_scrfd(args, insightface_models, _photos(args.n))
    if "2d106" in stages:
        bench_2d106(args, insightface_models, _photos(args.n))
    if "arcface" in stages:
        bench_arcface(args, insightface_models, samples)
    with tempfile.TemporaryDirectory() as tmp:
        if "bisenet" in stages:
            bench_bisenet(args, Path(tmp), samples)
        if "mllm" in stages:
            bench_mllm(args, Path(tmp), samples)
    _table()


if __name__ == "__main__":
    main()
