"""Throughput and memory of `fgid build` on the shared deepface photos.

    python benchmarks/build_throughput.py [--photos ../shared/data/faces/deepface] [--skip-640]
                                          [--skip-cluster]

Prints:
1. the sequential in-process time per image of each stage (fgid_builder.process.ImageProcessor
   timings, plus reading the file and writing the shard), on one core;
2. the pipeline's images/s with `--workers 1` and `--workers 2`, each `fgid build --no-report`
   in its own process (the QA report is a view of the finished dataset, left out here), and
   with `--workers 2 --address` joining a `ray start --head` cluster that the benchmark starts
   (and joins once, untimed) before timing, as on a cluster where Ray is already up; it is
   joined twice, since the first Ray Data job on a cluster also starts Ray Data's own detached
   actors (stats, autoscaling coordinator, actor locations) that later jobs reuse;
3. the 2-worker rates against twice the sequential rate (target >= 85%): end to end (images
   over the wall time of the whole command, Python start to exit), over the processing phase
   (from Ray up and the plan made to the last shard committed: actor start-up included), and
   once the actors are up (from the first result to the last);
4. the peak memory of the whole run (RSS summed over the driver and every process it started:
   Ray's raylet, GCS and workers, sampled every 0.2 s) at 64 inputs and at 640 inputs (the 64
   photos re-encoded at ten sizes), which should not grow with the number of images.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "faces" / "deepface"
STAGES = ("read", "decode", "detect", "faces", "parse", "embed", "caption", "encode", "write")
RAY_DATA_ACTORS = ("_StatsActor", "AutoscalingCoordinator", "ActorLocationTracker")


def _env(**extra: str) -> dict[str, str]:
    """The children's environment: this checkout's packages first (whatever is installed)."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)


def sequential_pinned(photos_dir: Path) -> dict[str, float]:
    """`sequential` in a child process pinned to one core (the libraries' own threads too, as
    in a Ray actor with num_cpus=1)."""
    cmd = [sys.executable, __file__, "--photos", str(photos_dir), "--sequential-json"]
    env = _env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
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

    def __init__(self, pid: int, *more_roots: int, every: float = 0.2):
        import psutil

        self.root = psutil.Process(pid)
        self.more_roots = [psutil.Process(p) for p in more_roots]  # e.g. a `ray start` head
        self.every = every
        self.peak = 0
        self.peak_procs = 0
        self.cpu: dict[int, float] = {}  # pid -> latest user+system seconds seen
        self.cpu0: dict[int, float] | None = None  # what the processes alive at start had used
        self.names: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        procs = []
        for root in (self.root, *self.more_roots):
            try:
                procs += [root, *root.children(recursive=True)]
            except psutil.Error:
                pass
        if not procs:
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
        if self.cpu0 is None:  # a joined cluster's earlier work is not this run's
            self.cpu0 = {pid: c for pid, c in self.cpu.items() if pid != self.root.pid}
        if total > self.peak:
            self.peak, self.peak_procs = total, len(procs)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.every)

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds: the driver, the stage actors, Ray Data's own actors (stats, autoscaling
        coordinator, actor locations), Ray's daemons (GCS, raylet, dashboard, agents, monitors)
        and idle workers."""
        out = {"driver": 0.0, "actors": 0.0, "ray_data": 0.0, "ray": 0.0}
        for pid, sec in self.cpu.items():
            sec -= (self.cpu0 or {}).get(pid, 0.0)
            name = self.names.get(pid, "")
            if pid == self.root.pid:
                out["driver"] += sec
            elif "MapWorker" in name or "StagePool" in name:
                out["actors"] += sec
            elif any(a in name for a in RAY_DATA_ACTORS):
                out["ray_data"] += sec
            else:
                out["ray"] += sec
        return out

    def __enter__(self) -> TreeMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def pipeline(
    inp: Path,
    workers: int,
    extra: list[str] | None = None,
    *,
    address: str | None = None,
    head_pid: int | None = None,
) -> dict:
    """One `fgid build --no-report` in its own process; its summary, the wall time of the whole
    command, and the peak RSS and CPU of its process tree (plus the `ray start` head's when
    joining one)."""
    env = _env(RAY_ADDRESS="")
    if address:
        extra = [*(extra or []), "--address", address]
        env["RAY_AUTH_MODE"] = "token"  # `ray start` clusters use token authentication
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "pipelines.cli", "build", str(inp), str(out),
               "--workers", str(workers), "--no-progress", "--no-report", *(extra or [])]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        roots = [head_pid] if head_pid else []
        with TreeMonitor(proc.pid, *roots) as mem:
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def ray_head(num_cpus: int):
    """A local `ray start --head` cluster for the duration: yields (address, head pid).

    It runs in its own process group with a private temp dir, and is stopped by signalling that
    group (then by pid what it left), not by `ray stop`, which stops every Ray on the machine.
    Before yielding, one driver joins and leaves (untimed), so the cluster is fully up."""
    import psutil

    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="fgidray", dir="/tmp")  # Ray's socket paths stay short
    env = _env(RAY_AUTH_MODE="token", RAY_ADDRESS="")
    cmd = ["ray", "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}",
           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}",
           "--block"]  # fmt: skip
    head = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline and head.poll() is None:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        join = f"import ray; ray.init(address={address!r}, log_to_driver=False); ray.shutdown()"
        subprocess.run([sys.executable, "-c", join], env=env, check=True, capture_output=True)
        yield address, head.pid
    finally:
        started: list = []
        with contextlib.suppress(psutil.Error):
            started = psutil.Process(head.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        _gone, alive = psutil.wait_procs(started, timeout=30)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def describe(s: dict) -> str:
    n = max(1, s["images_read"])
    cpu = s["cpu_seconds"]
    plan = f"{s['seconds_plan']:.1f} s plan" + (
        " (while Ray started)" if s.get("planned_while_ray_started") else ""
    )
    return (
        f"{n / s['wall_seconds']:.2f} images/s end to end ({s['wall_seconds']:.1f} s wall), "
        f"{s['images_per_second']:.2f} over {s['seconds_process']:.1f} s processing, "
        f"{s['steady_images_per_second']:.2f} once the actors were up; {s['samples']} samples"
        f"\n      start-up: {s['seconds_ray_start']:.1f} s Ray start, {plan}, first result "
        f"{s['seconds_first_result']:.1f} s into processing; "
        f"{s.get('seconds_ray_stop', 0.0):.1f} s Ray stop"
        f"\n      actors in stage code {100 * s['worker_utilisation']:.0f}% of the time, "
        f"{1000 * s['worker_seconds'] / n:.0f} ms wall per image; CPU s (per image): actors "
        f"{cpu['actors']:.1f} ({1000 * cpu['actors'] / n:.0f} ms), driver {cpu['driver']:.1f}, "
        f"Ray Data's actors {cpu['ray_data']:.1f}, Ray daemons {cpu['ray']:.1f}; "
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
    ap.add_argument(
        "--skip-cluster", action="store_true", help="skip the runs joining a `ray start` cluster"
    )
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

    runs = {f"--workers {w}": pipeline(args.photos, w) for w in (1, 2)}
    if not args.skip_cluster:
        with ray_head(num_cpus=2) as (address, head_pid):
            for label in ("--workers 2 --address", "--workers 2 --address, again"):
                runs[label] = pipeline(args.photos, 2, address=address, head_pid=head_pid)
    print(f"\npipeline (fgid build --no-report, own process), {len(photos)} inputs:")
    for label, s in runs.items():
        print(f"  {label}: " + describe(s))
    print("  (--address: a `ray start --head --num-cpus 2` cluster started and joined once "
          "before timing; 'again': its second timed job, Ray Data's detached actors reused)")  # fmt: skip
    one = runs["--workers 1"]
    print(f"  1 worker vs sequential: {100 * one['images_per_second'] * seq:.0f}% over "
          f"processing, {100 * one['images_read'] / one['wall_seconds'] * seq:.0f}% end to end")  # fmt: skip
    print(f"\n2 workers vs 2x sequential ({2 / seq:.2f} images/s; target >= 85%):")
    rows = [("end to end, cold start (Ray started by the run)", "--workers 2", "wall"),
            ("  over processing (actor start-up included)", "--workers 2", "process"),
            ("  once the actors are up", "--workers 2", "steady"),
            ("end to end, joining a running cluster", "--workers 2 --address", "wall"),
            ("  over processing", "--workers 2 --address", "process"),
            ("end to end, joining it again", "--workers 2 --address, again", "wall"),
            ("  over processing", "--workers 2 --address, again", "process")]  # fmt: skip
    for text, label, kind in rows:
        if label not in runs:
            continue
        s = runs[label]
        rate = {
            "wall": s["images_read"] / s["wall_seconds"],
            "process": s["images_per_second"],
            "steady": s["steady_images_per_second"],
        }[kind]
        print(f"  {text:50s} {rate:6.2f} images/s {100 * rate / (2 / seq):5.0f}%")
    n = runs["--workers 2"]["images_read"]
    budget, work = n / (0.85 * 2 / seq), n * seq / 2
    short = {"--workers 2": "cold start", "--workers 2 --address": "joining a running cluster",
             "--workers 2 --address, again": "joining it again"}  # fmt: skip
    over = ", ".join(
        f"{what} {runs[label]['wall_seconds'] - work:.1f} s"
        for label, what in short.items()
        if label in runs
    )
    print(f"  85% end to end on {n} images needs the whole run within {budget:.1f} s; the image "
          f"work alone takes {work:.1f} s on two cores at the sequential rate, leaving "
          f"{budget - work:.1f} s for everything else (Python and Ray start, actor start-up, "
          f"Ray stop); measured wall minus that work: {over}")  # fmt: skip

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
              f"{runs['--workers 2']['peak_rss_bytes'] / 2**20:.0f} MiB, {n} inputs "
              f"{big['peak_rss_bytes'] / 2**20:.0f} MiB")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.1f} (other processes share these cores)")
    print(
        "\nper-stage ms (json): "
        + json.dumps({k: round(1000 * v, 1) for k, v in per_stage.items()})
    )


if __name__ == "__main__":
    main()
