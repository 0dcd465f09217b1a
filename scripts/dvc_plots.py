"""Plot data for `dvc plots` from a dataset's Parquet index: one row per written face.

    python scripts/dvc_plots.py data/dataset/index.parquet data/plots
writes det_scores.json ({key, det_score}) and caption_lengths.json ({key, global_chars,
facial_chars}), sorted by key so the files are reproducible.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code

from fgid_builder.index import read_index


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="dvc plots data from an fgid index.")
    parser.add_argument("index", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    rows = sorted(
        (r for r in read_index(args.index).to_pylist() if r["status"] == "ok"),
        key=lambda r: r["key"],
    )
    args.out.mkdir(parents=True, exist_ok=True)
    _write(
        args.out / "det_scores.json", [{"key": r["key"], "det_score": r["det_score"]} for r in rows]
    )
    _write(
        args.out / "caption_lengths.json",
        [
            {
                "key": r["key"],
                "global_chars": r["caption_global_chars"],
                "facial_chars": r["caption_facial_chars"],
            }
            for r in rows
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
