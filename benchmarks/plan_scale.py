"""Planning and index-merge memory at scale: the old code paths against the new, side by side.

    OMP_NUM_THREADS=1 python benchmarks/plan_scale.py [--sizes 10000 100000] [--parts 2000]

Plans N generated inputs (tiny distinct files, 1% byte-identical copies, a few empty files) from
a folder and from a Parquet manifest of their paths, and merges `--parts` index parts (250 rows
each by default, realistic columns) into one index. Every measurement runs in a fresh
subprocess, so its peak RSS (`ru_maxrss`) is its own; the driver's growth is peak minus the RSS
after imports, and "per input" divides that by N.

- old plan: the pre-manifest `make_plan` (a Python dict per input, then `Table.from_pylist`),
  reconstructed below from git's code, on `list_inputs` (every input a `Listed` object);
- new plan: `pipelines.plan.make_plan` (the listing streamed in batches into Arrow columns,
  duplicates and shards vectorised) on `iter_inputs` (a manifest read batch by batch);
- old merge: read every part, concatenate, sort, write (`write_index` of the concatenation);
- new merge: `fgid_builder.index.merge_sorted` (a k-way merge through temp runs, bounded fan-in).
Both plans and both merges are checked to give the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


# --------------------------------------------------------------------------- the old plan


def old_make_plan(listed, *, shard_size: int, threads: int = 4, base=None):
    """`make_plan` as git had it before manifests (ec7f68e), for the side-by-side figures."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    from fgid_builder.schema import Reason
    from pipelines.plan import PLAN_SCHEMA, PLANNED, REJECTED, assign_shards, hash_file, plan_path

    to_hash = [i for i, item in enumerate(listed) if item.reason is None]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        hashed = dict(
            zip(to_hash, pool.map(hash_file, [listed[i].path for i in to_hash]), strict=True)
        )
    rows = []
    first_by_sha: dict[str, str] = {}
    for order, item in enumerate(listed):
        row = {
            "order": order,
            "source_uri": item.uri,
            "path": plan_path(item, base),
            "status": REJECTED,
        }
        if item.reason is not None:
            row.update(reason=item.reason.value, detail=item.detail)
            rows.append(row)
            continue
        sha, size, reason, detail = hashed[order]
        row.update(source_sha256=sha, source_bytes=size)
        if reason is not None:
            row.update(reason=reason.value, detail=detail)
        elif size == 0:
            row.update(reason=Reason.EMPTY_FILE.value, detail="0 bytes")
        elif sha in first_by_sha:
            row.update(
                reason=Reason.DUPLICATE.value,
                detail=f"same bytes as {first_by_sha[sha]}",
                duplicate_of=sha[:16],
            )
        else:
            first_by_sha[sha] = item.uri
            row.update(status=PLANNED)
        rows.append(row)
    shard_of = assign_shards((r["order"] for r in rows if r["status"] == PLANNED), shard_size)
    for r in rows:
        if r["status"] == PLANNED:
            r["shard"] = shard_of[r["order"]]
    return pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)


# --------------------------------------------------------------------------- inputs


def make_inputs(root: Path, n: int) -> tuple[Path, Path]:
    """n tiny files in folders of 1000 (1% copies of another, 5 empty) + a manifest of them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / f"in{n}"
    if not (folder / "done").is_file():
        for i in range(n):
            sub = folder / f"d{i // 1000:04d}"
            if i % 1000 == 0:
                sub.mkdir(parents=True, exist_ok=True)
            if i < 5:
                data = b""
            elif i % 100 == 0:
                data = f"photo {i - 1}".encode()  # the bytes of the previous one
            else:
                data = f"photo {i}".encode()
            (sub / f"img{i:07d}.jpg").write_bytes(data)
        (folder / "done").write_text("")
    manifest = root / f"in{n}.parquet"
    if not manifest.is_file():
        paths = [f"in{n}/d{i // 1000:04d}/img{i:07d}.jpg" for i in range(n)]
        pq.write_table(
            pa.table({"path": paths, "caption": [f"caption {i}" for i in range(n)]}), manifest
        )
    return folder, manifest


def make_parts(root: Path, parts: int, rows: int) -> Path:
    """`parts` sorted index parts of `rows` rows each, columns filled as a build fills them."""
    import numpy as np
    import pyarrow as pa

    from fgid_builder.index import rows_table, sample_row, table_bytes

    folder = root / f"parts{parts}x{rows}"
    if (folder / "done").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    models = {
        s: {"name": f"{s}-model", "version": "1.2.3", "weights_sha256": "ab" * 32}
        for s in ("detect", "parse", "embed", "caption")
    }
    meta = {
        "key": "0" * 16 + "_f0",
        "source": {"uri": "x", "sha256": "cd" * 32, "width": 640, "height": 480},
        "face": {"index": 0, "bbox": [1.0, 2.0, 3.0, 4.0], "det_score": 0.9, "blur": 1.5,
                 "yaw": 1.0, "pitch": 2.0, "roll": 3.0, "area_ratio": 0.2},
        "regions": {r: {"present": True} for r in ("face", "ears", "eyes", "nose", "mouth")},
        "captions": {"global": "g" * 200, "facial": "f" * 300},
        "embedding": {"dim": 512},
        "models": models,
    }  # fmt: skip
    template = rows_table([sample_row(meta, shard="000000")] * rows)
    rng = np.random.default_rng(0)
    for p in range(parts):
        ids = rng.integers(0, 2**62, size=rows)
        uris = pa.array([f"photos/{p:06d}/{int(i):019d}.jpg" for i in ids])
        keys = pa.array([f"{int(i) & (2**64 - 1):016x}"[:16] + "_f0" for i in ids])
        t = template.set_column(template.schema.get_field_index("source_uri"), "source_uri", uris)
        t = t.set_column(t.schema.get_field_index("key"), "key", keys)
        t = t.set_column(t.schema.get_field_index("shard"), "shard", pa.array([f"{p:06d}"] * rows))
        from fgid_builder.index import sort_table

        (folder / f"{p:06d}.parquet").write_bytes(table_bytes(sort_table(t)))
    (folder / "done").write_text("")
    return folder


# --------------------------------------------------------------------------- children


def child(args: argparse.Namespace) -> dict:
    import hashlib

    import pipelines.plan as plan_mod
    from fgid_builder.index import merge_sorted, read_index, write_index

    _warm_up(args.what)  # lazy imports (pyarrow loads pandas on its first pa.array) and kernels
    base_rss = _rss_mb()
    t = time.perf_counter()
    out: dict = {"what": args.what, "n": args.n}
    if args.what in ("old-plan", "new-plan"):
        src = Path(args.src)
        base = plan_mod.input_base(src)
        if args.what == "old-plan":
            listed = plan_mod.list_inputs(src)
            table = old_make_plan(listed, shard_size=1000, threads=4, base=base)
        else:
            listed = plan_mod.iter_inputs(src)
            table = plan_mod.make_plan(listed, shard_size=1000, threads=4, base=base)
        data = plan_mod.plan_bytes(table)
        out["rows"] = table.num_rows
        out["sha256"] = hashlib.sha256(data).hexdigest()
    else:
        parts = sorted(Path(args.src).glob("*.parquet"))
        dest = Path(args.dest)
        if args.what == "old-merge":
            import pyarrow as pa

            table = pa.concat_tables([read_index(p) for p in parts])
            out["rows"] = write_index(dest, table)
        else:
            out["rows"] = merge_sorted(parts, dest)
        out["sha256"] = hashlib.sha256(dest.read_bytes()).hexdigest()
        dest.unlink()
    out["seconds"] = time.perf_counter() - t
    out["rss_base_mb"] = base_rss
    out["rss_peak_mb"] = _rss_mb()
    return out


def _warm_up(what: str) -> None:
    """The same code path on 3 inputs (or 2 parts), so the baseline holds its fixed costs."""
    import pipelines.plan as plan_mod
    from fgid_builder.index import merge_sorted, read_index, reject_row, write_index

    with tempfile.TemporaryDirectory() as d:
        for i in range(3):
            Path(d, f"{i}.jpg").write_bytes(b"warm %d" % i)
        if what == "old-plan":
            old_make_plan(plan_mod.list_inputs(d), shard_size=2, base=d)
        elif what == "new-plan":
            plan_mod.make_plan(plan_mod.iter_inputs(d), shard_size=2, base=d)
        else:
            parts = []
            for i in range(2):
                parts.append(Path(d, f"p{i}.parquet"))
                write_index(parts[-1], [reject_row(source_uri=f"{i}", reason="no_face")])
            if what == "old-merge":
                import pyarrow as pa

                write_index(Path(d, "o"), pa.concat_tables([read_index(p) for p in parts]))
            else:
                merge_sorted(parts, Path(d, "o"))


def run_child(what: str, n: int, src: Path, dest: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--n", str(n), "--src", str(src)]
    if dest is not None:
        cmd += ["--dest", str(dest)]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--parts", type=int, default=2000)
    ap.add_argument("--rows-per-part", type=int, default=250)
    ap.add_argument("--workdir", default=None, help="keep generated inputs here (reused)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--src", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dest", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.what = args.child
        print(json.dumps(child(args)))
        return
    tmp = tempfile.TemporaryDirectory(prefix="fgid-plan-scale-") if not args.workdir else None
    root = Path(args.workdir or tmp.name)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for n in args.sizes:
        folder, manifest = make_inputs(root, n)
        for label, src in (("folder", folder), ("manifest", manifest)):
            pair = []
            for what in ("old-plan", "new-plan"):
                if what == "old-plan" and label == "manifest":
                    r = run_child(what, n, folder)  # the old code had no manifests
                    r["input"] = "folder (no manifests before)"
                else:
                    r = run_child(what, n, src)
                    r["input"] = label
                results.append(r)
                pair.append(r)
                _print(r)
            if label == "folder":
                same = pair[0]["sha256"] == pair[1]["sha256"]
                print(f"  old and new plans of the folder identical: {same}", flush=True)
    parts = make_parts(root, args.parts, args.rows_per_part)
    merged = []
    for what in ("old-merge", "new-merge"):
        r = run_child(what, args.parts * args.rows_per_part, parts, root / f"{what}.parquet")
        r["input"] = f"{args.parts} parts"
        results.append(r)
        merged.append(r)
        _print(r)
    same = merged[0]["sha256"] == merged[1]["sha256"]
    print(f"merge outputs identical: {same}")
    print()
    print("| what | input | N | seconds | driver growth MB | bytes per input/row |")
    print("|---|---|---|---|---|---|")
    for r in results:
        growth = r["rss_peak_mb"] - r["rss_base_mb"]
        print(f"| {r['what']} | {r['input']} | {r['n']} | {r['seconds']:.1f} | {growth:.0f} | "
              f"{growth * 2**20 / max(1, r['n']):.0f} |")  # fmt: skip
    if tmp is not None:
        tmp.cleanup()


def _print(r: dict) -> None:
    growth = r["rss_peak_mb"] - r["rss_base_mb"]
    print(
        f"{r['what']:9s} {r['input']:30s} n={r['n']:>7d} {r['seconds']:6.1f} s  peak RSS "
        f"{r['rss_peak_mb']:6.0f} MB (+{growth:.0f} MB, {growth * 2**20 / max(1, r['n']):.0f} "
        f"B/input)",
        flush=True,
    )


if __name__ == "__main__":
    main()
