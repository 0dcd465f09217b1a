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


def sequential_pinned(photos_dir: Path) -> dict[str, float]:
    """`sequential` in a child process pinned to one core (the libraries' own threads too, as
    in a Ray actor with num_cpus=1)."""
    cmd = [sys.executable, __file__, "--photos", str(photos_dir), "--sequential-json"]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def list_photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))


def sequential(photos: list[Path]) -> dict[str, float]:
    """Mean seconds per image of each stage, in this process."""
    from fgid_builder.io import read_input
    from fgid_builder.process import ImageProcessor
    from fgid_builder.shards import write_shard

    proc = ImageProcessor.default()
    proc.process(read_input(photos[0]), "warm-up")  # load the models outside the timings
    totals = dict.fromkeys(STAGES, 0.0)
    members = []
    cpu0 = time.process_time()
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
    out = {k: v / len(photos) for k, v in totals.items()}
    out["cpu"] = (time.process_time() - cpu0) / len(photos)
    return out


class TreeMonitor:
    """Peak summed RSS and total CPU seconds of a process and all its descendants (Ray's
    raylet, GCS, workers), sampled in a thread."""

    def __init__(self, pid: int, every: float = 0.2):
        import psutil

        self.root = psutil.Process(pid)
        self.every = every
        self.peak = 0
        self.peak_procs = 0
        self.cpu: dict[int, float] = {}  # pid -> latest user+system seconds seen
        self.names: dict[int, str] = {}
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
                with p.oneshot():
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    self.cpu[p.pid] = t.user + t.system
                    name = " ".join(p.cmdline()[:1]) or p.name()
                    if not name.startswith("ray::IDLE"):  # workers rename once they get work
                        self.names[p.pid] = name
            except psutil.Error:
                pass
        if total > self.peak:
            self.peak, self.peak_procs = total, len(procs)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds: the driver, the stage actors, Ray's own processes."""
        out = {"driver": 0.0, "actors": 0.0, "ray": 0.0}
        for pid, sec in self.cpu.items():
            name = self.names.get(pid, "")
            if pid == self.root.pid:
                out["driver"] += sec
            elif "MapWorker" in name or "StagePool" in name:
                out["actors"] += sec
            else:
                out["ray"] += sec
        return out

    def __enter__(self) -> TreeMonitor:
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
        with TreeMonitor(proc.pid) as mem:
            stdout, stderr = proc.communicate()
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"fgid build failed ({proc.returncode}):\n{stderr[-3000:]}")
        summary = json.loads((out / "logs" / "summary.json").read_text())
    summary["wall_seconds"] = wall
    summary["peak_rss_bytes"] = mem.peak
    summary["peak_processes"] = mem.peak_procs
    summary["cpu_seconds"] = mem.cpu_by_role()
    return summary


def describe(s: dict) -> str:
    n = max(1, s["images_read"])
    cpu = s["cpu_seconds"]
    return (
        f"{s['images_per_second']:.2f} images/s over {s['seconds_process']:.1f} s processing, "
        f"{s['steady_images_per_second']:.2f} images/s once the actors were up (first result "
        f"after {s['seconds_first_result']:.1f} s; +{s['seconds_ray_start']:.1f} s Ray start, "
        f"{s['seconds_plan']:.1f} s plan; {s['wall_seconds']:.1f} s wall; {s['samples']} samples)"
        f"\n      actors in stage code {100 * s['worker_utilisation']:.0f}% of the time, "
        f"{1000 * s['worker_seconds'] / n:.0f} ms wall per image; CPU per image: actors "
        f"{1000 * cpu['actors'] / n:.0f} ms, driver {1000 * cpu['driver'] / n:.0f} ms, "
        f"Ray daemons {1000 * cpu['ray'] / n:.0f} ms; "
        f"peak RSS {s['peak_rss_bytes'] / 2**20:.0f} MiB over {s['peak_processes']} processes"
    )


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
    ap.add_argument("--sequential-json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.sequential_json:  # the child of sequential_pinned
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        print(json.dumps(sequential(list_photos(args.photos))))
        return
    photos = list_photos(args.photos)
    if not photos:
        sys.exit(f"no photos in {args.photos}")
    print(f"{len(photos)} photos from {args.photos}; {os.cpu_count()} CPUs; "
          f"load average before: {os.getloadavg()[0]:.1f}")  # fmt: skip

    per_stage = sequential_pinned(args.photos)
    seq = sum(per_stage[k] for k in STAGES)
    print("\nsequential, in process pinned to one core, ms per image:")
    for k in STAGES:
        print(f"  {k:8s} {1000 * per_stage[k]:8.1f}")
    print(f"  {'total':8s} {1000 * seq:8.1f}   -> {1 / seq:.2f} images/s on one core "
          f"(CPU time {1000 * per_stage['cpu']:.1f} ms per image)")  # fmt: skip
    print("  (dlib: 'detect' includes the 68 landmarks; 'faces' = gates + alignment + quality)")

    runs = {w: pipeline(args.photos, w) for w in (1, 2)}
    print("\npipeline (fgid build, own process), 64 inputs:")
    for w, s in runs.items():
        print(f"  --workers {w}: " + describe(s))
    ratio = runs[2]["images_per_second"] / (2.0 / seq)
    ratio1 = runs[1]["images_per_second"] / (1.0 / seq)
    steady = runs[2]["steady_images_per_second"] / (2.0 / seq)
    print(f"  1 worker vs sequential: {100 * ratio1:.0f}%")
    print(f"  2 workers vs 2x sequential: {100 * ratio:.0f}% overall, {100 * steady:.0f}% once "
          "the actors are up (target >= 85%)")  # fmt: skip

    if not args.skip_640:
        with tempfile.TemporaryDirectory() as tmp:
            big_dir, sub_dir = Path(tmp) / "all", Path(tmp) / "sub"
            big_dir.mkdir()
            sub_dir.mkdir()
            n = reencode_ten_sizes(photos, big_dir)
            # one size of each photo, the sizes cycling: the sequential rate of this input mix
            for i, p in enumerate(photos):
                name = f"{p.stem}_s{i % 10}.jpg"
                (sub_dir / name).write_bytes((big_dir / name).read_bytes())
            seq_big = sum(sequential_pinned(sub_dir)[k] for k in STAGES)
            big = pipeline(big_dir, 2)
        print(f"\n{n} inputs (the photos re-encoded at ten sizes), --workers 2: " + describe(big))
        print(f"  sequential on this mix {1 / seq_big:.2f} images/s on one core; 2 workers vs 2x "
              f"sequential: {100 * big['images_per_second'] / (2 / seq_big):.0f}% overall, "
              f"{100 * big['steady_images_per_second'] / (2 / seq_big):.0f}% once the actors "
              "are up")  # fmt: skip
        print(f"peak memory, --workers 2: {len(photos)} inputs "
              f"{runs[2]['peak_rss_bytes'] / 2**20:.0f} MiB, {n} inputs "
              f"{big['peak_rss_bytes'] / 2**20:.0f} MiB")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.1f} (other processes share these cores)")
    print(
        "\nper-stage ms (json): "
        + json.dumps({k: round(1000 * v, 1) for k, v in per_stage.items()})
    )


if __name__ == "__main__":
    main()
