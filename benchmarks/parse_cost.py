"""What the embedded parser's person/background cut adds per face, against the whole per-image time.

    OMP_NUM_THREADS=1 python benchmarks/parse_cost.py [--photos ../shared/data/faces/deepface]
                                                     [--limit N] [--repeat 3]

One process, one core. For each photo (largest face): the whole sequential per-image time of
the embedded stack (`ImageProcessor.process`: decode, detect, align, parse, embed, caption,
encode), then, interleaved on the same portrait, the landmark polygons alone (the parser before
the cut, `landmark_label_map`) and the parser with the cut (`person_label_map`). Prints the
medians, the added cost per face and its share of the per-image time without the cut (the whole
time minus the added cost; target <= 25%).
Measured side by side in one run, so machine load shifts all three alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "faces" / "deepface"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--limit", type=int, default=0, help="first N photos only (0: all)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs of each parser per face")
    args = ap.parse_args(argv)
    if not args.photos.is_dir():
        print(f"no photos at {args.photos}", file=sys.stderr)
        return 2

    from fgid_builder.parse.landmark_polygons import landmark_label_map, person_label_map
    from fgid_builder.process import ImageProcessor

    proc = ImageProcessor.default()
    files = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if args.limit:
        files = files[: args.limit]
    whole, polygons, cut = [], [], []
    warm = proc.process(files[0].read_bytes(), files[0].name)  # models loaded, caches warm
    assert warm.samples
    for i, p in enumerate(files, 1):
        data = p.read_bytes()
        t0 = time.perf_counter()
        res = proc.process(data, p.name)
        whole.append(time.perf_counter() - t0)
        if not res.samples:
            continue
        s = res.samples[0]
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            landmark_label_map(s.portrait_landmarks)
            t1 = time.perf_counter()
            person_label_map(s.portrait, s.portrait_landmarks)
            t2 = time.perf_counter()
            polygons.append(t1 - t0)
            cut.append(t2 - t1)
        print(f"\r{i}/{len(files)} photos", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    med = {k: 1e3 * statistics.median(v) for k, v in
           (("whole", whole), ("polygons", polygons), ("cut", cut))}  # fmt: skip
    added = med["cut"] - med["polygons"]
    print(f"photos: {len(files)}, faces timed: {len(cut) // args.repeat} x {args.repeat}")
    before = med["whole"] - added
    print(f"whole per-image time (embedded stack, sequential, with the cut): {med['whole']:.1f} "
          f"ms (median); without the cut: {before:.1f} ms")  # fmt: skip
    print(f"parser before the cut (polygons only): {med['polygons']:.1f} ms per face")
    print(f"parser with the person/background cut: {med['cut']:.1f} ms per face")
    print(f"added per face: {added:.1f} ms = {added / before:.0%} of the per-image time without "
          f"the cut (target <= 25%)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
