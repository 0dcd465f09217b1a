#!/usr/bin/env python
"""Measure the attribute describer's raw ratios on real photos and print their quantiles.

    python scripts/calibrate_captioner.py [FOLDER ...]   # default: ../shared/data/faces/deepface

Runs the embedded stack (dlib HOG + 68 landmarks -> FFHQ portrait -> landmark parser) over every
image of the folders, measures every face that passes the default gates, and prints the 33rd and
67th percentiles of each tercile measure plus the distribution of the others. The tercile cuts
are pasted into `fgid_builder/caption/attributes.py` (`TERCILES`), which names this script.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fgid_builder.caption.regions import TERCILE_MEASURES, measure_face  # noqa: E402
from fgid_builder.detect.dlib_hog import DlibHogDetector  # noqa: E402
from fgid_builder.faces import FaceGates, faces_from_detections  # noqa: E402
from fgid_builder.io import decode_image, read_input  # noqa: E402
from fgid_builder.parse.landmark_polygons import LandmarkPolygonParser  # noqa: E402
from fgid_builder.schema import ImageRejected, sha256_bytes  # noqa: E402

DEFAULT = REPO.parent / "shared" / "data" / "faces" / "deepface"
EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="*", type=Path, default=[DEFAULT])
    args = ap.parse_args(argv)

    detector, parser = DlibHogDetector(), LandmarkPolygonParser()
    gates = FaceGates()
    rows: list[dict] = []
    files = sorted(f for d in args.folders for f in d.iterdir() if f.suffix.lower() in EXTS)
    for path in files:
        try:
            data = read_input(path)
            decoded = decode_image(data)
        except ImageRejected as e:
            print(f"skip {path.name}: {e}", file=sys.stderr)
            continue
        dets = detector.detect([decoded.rgb])[0]
        source = {"uri": path.name, "sha256": sha256_bytes(data)}
        samples, _ = faces_from_detections(decoded, dets, source=source, gates=gates)
        masks = parser.parse(samples)
        for s, mask in zip(samples, masks, strict=True):
            m = measure_face(s.portrait, s.portrait_landmarks, mask)
            m["yaw"], m["pitch"] = s.face["yaw"], s.face["pitch"]
            rows.append(m)

    print(f"{len(rows)} faces from {len(files)} files")
    print("\n# tercile cuts (33rd, 67th percentile) -> attributes.TERCILES")
    for name in TERCILE_MEASURES:
        v = np.array([r[name] for r in rows if r[name] is not None], dtype=np.float64)
        q1, q2 = np.percentile(v, [100 / 3, 200 / 3])
        print(f'    "{name}": ({q1:.3f}, {q2:.3f}),  # n={len(v)}')
    print("\n# other figures: percentiles 5 / 25 / 50 / 75 / 95")
    for name in ("mouth_open", "smile", "mouth_width", "ita", "hair_delta_e", "yaw", "pitch"):
        v = np.array([r[name] for r in rows if r[name] is not None], dtype=np.float64)
        qs = np.percentile(v, [5, 25, 50, 75, 95])
        print(f"    {name:14s} n={len(v):3d} " + " ".join(f"{q:8.3f}" for q in qs))
    none_brows = sum(r["brow_thickness"] is None for r in rows)
    print(f"\nbrows without clear contrast: {none_brows} of {len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
