"""Identity assignment at scale: time and peak memory on synthetic embeddings.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/identity_scale.py     # 100k and 1M, 512-d
    python benchmarks/identity_scale.py --sizes 100000 --dim 128          # dlib's dimension

Each size runs in its own process (so each peak RSS is its own), one after another in this run.
The embeddings are synthetic but shaped like real face embeddings: identity centres in a cone
(centre-to-centre cosine ~0.80, as unrelated faces of one embedder are far from orthogonal),
samples around their centre at a same-person cosine ~0.96, 1-9 samples per identity. The
threshold is the recorded dlib one (fgid_builder.identities.CALIBRATED). Printed per size, as
one JSON line each: seconds of assign_identities (graph build, queries, links, average-linkage
re-cut), RSS before it (the embeddings and keys) and its peak during it (sampled every 50 ms),
and pair precision/recall of the identities
against the synthetic truth on 200k sampled pairs (half same-identity). While a size runs, a
JSON line per 65,536 vectors added to the graph or queried goes to stderr (phase, done, wall
and CPU seconds so far, RSS now): a run stopped early still shows its rate and memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def synthetic(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit vectors and their true identity."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 10, size=n)  # 1..9 samples per identity
    sizes = sizes[: int(np.searchsorted(np.cumsum(sizes), n)) + 1]
    truth = np.repeat(np.arange(len(sizes)), sizes)[:n]
    g = rng.normal(size=dim).astype(np.float32)
    g /= np.linalg.norm(g)
    u = rng.normal(size=(len(sizes), dim)).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    centres = np.sqrt(0.8) * g + np.sqrt(0.2) * u  # centre-to-centre cosine ~0.8
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.empty((n, dim), dtype=np.float32)
    block = 1 << 16
    for start in range(0, n, block):
        c = centres[truth[start : start + block]]
        x = c + rng.normal(scale=np.sqrt(0.04 / dim), size=c.shape).astype(np.float32)
        vectors[start : start + block] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return vectors, truth


def pair_quality(identity: list[str], truth: np.ndarray, seed: int = 1) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    ident = np.unique(np.asarray(identity), return_inverse=True)[1]
    n = len(truth)
    a = rng.integers(0, n, 100_000)
    b = rng.integers(0, n, 100_000)
    order = np.argsort(truth, kind="stable")  # same-identity pairs: neighbours in truth order
    i = rng.integers(0, n - 1, 200_000)
    same_a, same_b = order[i], order[i + 1]
    keep = truth[same_a] == truth[same_b]
    a = np.concatenate([a, same_a[keep][:100_000]])
    b = np.concatenate([b, same_b[keep][:100_000]])
    ok = a != b
    a, b = a[ok], b[ok]
    same = truth[a] == truth[b]
    pred = ident[a] == ident[b]
    tp = int(np.sum(pred & same))
    return {
        "pairs": int(len(a)),
        "precision": tp / max(int(pred.sum()), 1),
        "recall": tp / max(int(same.sum()), 1),
    }


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(n: int, dim: int, threads: int) -> dict:
    from fgid_builder.identities import AssignConfig, assign_identities, recorded_threshold

    vectors, truth = synthetic(n, dim)
    keys = [f"{i:016x}_f0" for i in range(n)]
    import threading

    rss_data = _rss_mib()
    peak = [rss_data]
    done = threading.Event()

    def sample() -> None:  # the peak while assigning (ru_maxrss would include the data's)
        while not done.wait(0.05):
            peak[0] = max(peak[0], _rss_mib())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    cfg = AssignConfig(threshold=recorded_threshold("dlib"), threads=threads)
    t, cpu = time.perf_counter(), time.process_time()

    def progress(phase: str, done_: int, total: int) -> None:
        line = {
            "samples": total,
            "phase": phase,
            "done": done_,
            "seconds": round(time.perf_counter() - t, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1),
            "rss_mib": round(_rss_mib()),
            "load_average": round(os.getloadavg()[0], 1),
        }
        print(json.dumps(line), file=sys.stderr, flush=True)

    result = assign_identities(keys, vectors, cfg, progress=progress)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    done.set()
    sampler.join()
    rss = max(peak[0], _rss_mib())
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "samples": n,
        "dim": dim,
        "true_identities": int(truth.max()) + 1,
        "identities": len(set(result.identity)),
        "seconds_assign": round(seconds, 2),
        "cpu_seconds_assign": round(cpu, 2),  # all threads; wall time on a busy machine lies
        "load_average": round(os.getloadavg()[0], 1),
        "samples_per_second": round(n / seconds),
        "peak_rss_mib_during_assign": round(rss),
        "rss_before_assign_mib": round(rss_data),
        "assign_extra_mib": round(rss - rss_data),
        "process_max_rss_mib": round(max_rss),
        "query_threads": threads or os.cpu_count(),
        **{
            k: round(v, 4) if isinstance(v, float) else v
            for k, v in pair_quality(result.identity, truth).items()
        },
        "settings": result.settings,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument(
        "--dim", type=int, default=512, help="512 = ArcFace (production); 128 = dlib (default)"
    )
    ap.add_argument("--threads", type=int, default=0, help="query threads (0 = all CPUs)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.dim, args.threads)), flush=True)
        return
    results = []
    for n in [int(s) for s in args.sizes.split(",")]:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--dim",
            str(args.dim),
            "--threads",
            str(args.threads),
        ]
        line = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(line.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(
            json.dumps(
                {
                    "ratio": f"{b['samples']}/{a['samples']}",
                    "samples": b["samples"] / a["samples"],
                    "time": round(b["seconds_assign"] / a["seconds_assign"], 2),
                    "assign_extra_memory": round(
                        b["assign_extra_mib"] / max(a["assign_extra_mib"], 1), 2
                    ),
                }
            )
        )


if __name__ == "__main__":
    main()
