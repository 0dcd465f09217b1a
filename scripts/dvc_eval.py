"""The DVC `eval` stage: generate with the trained adapter from each input photo, then score it.

Each photo of the input folder with a detectable face becomes one identity: the photo is the
reference (`refs/{identity}.png`), `fgid generate` writes `gens/{identity}/*.png` from it, and
`fgid eval` scores the set. CPU numerics are pinned as in the train stage, so the images and the
metrics reproduce bit for bit.

    python scripts/dvc_eval.py --train data/train --photos data/demo --out data/eval \
        --metrics data/metrics/eval.json --num-images 2 --steps 10
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dvc_train  # noqa: E402  (pins the CPU numerics before torch is imported)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402

from PIL import Image  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def identity_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem).strip("_") or "identity"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Reproducible generate + eval for DVC.")
    parser.add_argument("--train", required=True, type=Path, help="the train stage's output")
    parser.add_argument("--photos", required=True, type=Path, help="reference photos folder")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--metrics", required=True, type=Path, help="summary JSON for DVC")
    parser.add_argument("--prompt", default="a portrait photo of a person")
    parser.add_argument("--num-images", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    dvc_train.pin_torch()
    from eval.generate import GenerateConfig, process_reference, run_generate
    from eval.metrics import EvalConfig, run_eval, write_metrics
    from fgid_builder.schema import ImageRejected

    if args.out.exists():
        shutil.rmtree(args.out)
    refs, gens = args.out / "refs", args.out / "gens"
    refs.mkdir(parents=True)
    gens.mkdir()
    photos = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    skipped = {}
    for photo in photos:
        try:
            process_reference(photo)
        except (ImageRejected, ValueError) as err:  # no usable face: not an identity to score
            skipped[photo.name] = str(err)
            continue
        name = identity_name(photo)
        Image.open(photo).convert("RGB").save(refs / f"{name}.png")
        run_generate(
            GenerateConfig(
                checkpoint=str(args.train),
                config=str(args.train / "config.yaml"),
                ref=str(photo),
                prompt=args.prompt,
                out=str(gens / name),
                num_images=args.num_images,
                seed=args.seed,
                steps=args.steps,
            )
        )
    result = run_eval(EvalConfig(refs=str(refs), gens=str(gens), progress=False))
    write_metrics(result, args.out / "metrics.json")
    summary = {
        name: metric.get("value", metric.get("mean")) for name, metric in result["metrics"].items()
    }
    summary.update(n_identities=len(result["identities"]), n_images=result["n_images"])
    summary["skipped_references"] = len(skipped)
    args.metrics.parent.mkdir(parents=True, exist_ok=True)
    args.metrics.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
