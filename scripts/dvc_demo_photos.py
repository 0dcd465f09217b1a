"""Copy the package-shipped demo face photos into a folder: the DVC pipeline's default input.

The photos are copied byte for byte under their file names, so the source uris the dataset
records (paths relative to the input folder) are the same on every machine and in every clone.

    python scripts/dvc_demo_photos.py data/demo
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code

from fgid_builder.demo import demo_photos


def materialise(dest: Path) -> list[Path]:
    """Replace DEST with a flat copy of the demo photos; returns the written paths."""
    photos = demo_photos()
    names = [p.name for p in photos]
    if len(set(names)) != len(names):
        raise SystemExit(f"two demo photos share a file name: {sorted(names)}")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    written = []
    for src in photos:
        target = dest / src.name
        target.write_bytes(src.read_bytes())
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Copy the shipped demo face photos to DEST.")
    parser.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    for path in materialise(args.dest):
        print(path.relative_to(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
