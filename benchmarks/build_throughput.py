"""Throughput and memory of `fgid build` on the shared deepface photos.

    python benchmarks/build_throughput.py [--photos ../shared/data/faces/deepface] [--skip-640]

Prints:
1. the sequential in-process time per image of each stage (fgid_builder.process.ImageProcessor
   timings, plus reading the file and writing the shard), on one core;
2. the pipeline's images/s with `--workers 1` and `--workers 2` (each `fgid build` in its own
   process; the rate is over the processing phase, Ray start-up and planning reported apart)
   and the 2-worker rate as a fraction of twice the sequential rate (target >= 85%);
3. the peak memory of the whole run (RSS summed over the driver and every process it started:
   Ray's raylet, GCS and workers, sampled every 0.2 s) at 64 inputs and at 640 inputs (the 64
   photos re-encoded at ten sizes), which should not grow with the number of images.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "faces" / "deepface"
STAGES = ("read", "decode", "detect", "faces", "parse", "embed", "caption", "encode", "write")


def sequential(photos: list[Path]) -> dict[str, float]:
    """Mean seconds per image of each stage, in this process (one core)."""
    from fgid_builder.io import read_input
    from fgid_builder.process import ImageProcessor
    from fgid_builder.shards import write_shard

    proc = ImageProcessor.default()
    proc.process(read_input(photos[0]), "warm-up")  # load the models outside the timings
    totals = dict.fromkeys(STAGES, 0.0)
    members = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in photos:
            t = time.perf_counter()
            data = read_input(p)
            totals["read"] += time.perf_counter() - t
            res = proc.process(data, p.name)
            for k, v in res.timings.items():
                totals[k] += v
            t = time.perf_counter()
            write_shard(Path(tmp) / f"{len(members):06d}.tar", res.members)
            totals["write"] += time.perf_counter() - t
            members.extend(res.members)
    return {k: v / len(photos) for k, v in totals.items()}


class TreeRSS:
    """Peak of the summed RSS of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self.root = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        if total > self.peak:
            self.peak, self.peak_procs = total, len(procs)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def pipeline(inp: Path, workers: int, extra: list[str] | None = None) -> dict:
    """One `fgid build` in its own process; its summary plus the peak tree RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "pipelines.cli", "build", str(inp), str(out),
               "--workers", str(workers), "--no-progress", *(extra or [])]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, RAY_ADDRESS=""),
        )
        with TreeRSS(proc.pid) as mem:
            stdout, stderr = proc.communicate()
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"fgid build failed ({proc.returncode}):\n{stderr[-3000:]}")
        summary = json.loads((out / "logs" / "summary.json").read_text())
    summary["wall_seconds"] = wall
    summary["peak_rss_bytes"] = mem.peak
    summary["peak_processes"] = mem.peak_procs
    return summary


def reencode_ten_sizes(photos: list[Path], dest: Path) -> int:
    """640 inputs: each photo re-encoded at ten sizes (90%..45% of its sides)."""
    from PIL import Image, ImageOps

    n = 0
    for p in photos:
        with Image.open(p) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
            for i in range(10):
                scale = 0.9 - 0.05 * i
                size = (max(64, round(im.width * scale)), max(64, round(im.height * scale)))
                buf = io.BytesIO()
                im.resize(size, Image.BILINEAR).save(buf, format="JPEG", quality=90)
                (dest / f"{p.stem}_s{i}.jpg").write_bytes(buf.getvalue())
                n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--skip-640", action="store_true", help="skip the 640-input memory run")
    args = ap.parse_args()
    photos = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if not photos:
        sys.exit(f"no photos in {args.photos}")
    print(f"{len(photos)} photos from {args.photos}; {os.cpu_count()} CPUs")

    per_stage = sequential(photos)
    seq = sum(per_stage.values())
    print("\nsequential, in process, ms per image:")
    for k in STAGES:
        print(f"  {k:8s} {1000 * per_stage[k]:8.1f}")
    print(f"  {'total':8s} {1000 * seq:8.1f}   -> {1 / seq:.2f} images/s on one core")
    print("  (dlib: 'detect' includes the 68 landmarks; 'faces' = gates + alignment + quality)")

    runs = {w: pipeline(args.photos, w) for w in (1, 2)}
    print("\npipeline (fgid build, own process), 64 inputs:")
    for w, s in runs.items():
        print(
            f"  --workers {w}: {s['images_per_second']:.2f} images/s over "
            f"{s['seconds_process']:.1f} s processing (+{s['seconds_ray_start']:.1f} s Ray start, "
            f"{s['seconds_plan']:.1f} s plan; {s['wall_seconds']:.1f} s wall), "
            f"peak RSS {s['peak_rss_bytes'] / 2**20:.0f} MiB over {s['peak_processes']} processes"
        )
    ratio = runs[2]["images_per_second"] / (2.0 / seq)
    ratio1 = runs[1]["images_per_second"] / (1.0 / seq)
    print(f"  1 worker vs sequential: {100 * ratio1:.0f}%")
    print(f"  2 workers vs 2x sequential: {100 * ratio:.0f}% (target >= 85%)")

    if not args.skip_640:
        with tempfile.TemporaryDirectory() as tmp:
            n = reencode_ten_sizes(photos, Path(tmp))
            big = pipeline(Path(tmp), 2)
        print(f"\nmemory, --workers 2: {len(photos)} inputs peak "
              f"{runs[2]['peak_rss_bytes'] / 2**20:.0f} MiB; {n} inputs peak "
              f"{big['peak_rss_bytes'] / 2**20:.0f} MiB "
              f"({big['images_per_second']:.2f} images/s, {big['samples']} samples)")  # fmt: skip
    print(
        "\nper-stage ms (json): "
        + json.dumps({k: round(1000 * v, 1) for k, v in per_stage.items()})
    )


if __name__ == "__main__":
    main()
