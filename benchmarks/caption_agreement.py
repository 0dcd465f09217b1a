"""How well the embedded describer's person attributes agree with the photos and across photos.

    OMP_NUM_THREADS=1 python benchmarks/caption_agreement.py [--photos ../shared/data/faces/deepface]
                                                            [--labels tests/data/hair_labels.csv]

Runs the embedded stack in process (dlib detector + 68 points, landmark parser, attribute
describer) on the deepface photos, the largest face of each, and prints:
1. hair colour against `tests/data/hair_labels.csv` (made by looking at each photo: dark = black
   or dark brown, brown, blond, grey, red; `a|b` where either is right; `none` = bald on top,
   where no hair colour must be named): the share of labelled photos whose named colour is one of
   the accepted groups (an unnamed colour counts wrong unless the label is `none`);
2. per-person agreement of skin tone and face shape over `identities.csv` (13 people, 2-8
   photos each): for each person the share of their photos that give the person's most common
   word, averaged over people (1.0 = every person always gets one word).

The words are read from the caption text ("The face is SHAPE with ..., and the skin tone
appears TONE." and "... with HAIR hair ..."), so the same script measures any version of the
describer: run it with PYTHONPATH pointing at another checkout to get that version's figures.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "faces" / "deepface"
DEFAULT_LABELS = REPO / "tests" / "data" / "hair_labels.csv"

HAIR_GROUPS = {
    "black": "dark",
    "dark brown": "dark",
    "brown": "brown",
    "light brown": "brown",
    "dark blond": "blond",
    "blond": "blond",
    "platinum blond": "blond",
    "grey": "grey",
    "very light (grey, white or platinum)": "grey",
    "red": "red",
    "auburn": "red",
}
_FACE_RE = re.compile(r"The face is (\w+)")
_SKIN_RE = re.compile(r"skin tone appears ([\w ]+?)\.")
_HAIR_RE = re.compile(r"with (?:[\w ]+ skin and )?([\w ,()]+?) hair")


def caption_words(captions) -> dict[str, str | None]:
    face = captions.regions["face"]
    shape = _FACE_RE.search(face)
    skin = _SKIN_RE.search(face)
    hair = _HAIR_RE.search(captions.global_)
    return {
        "shape": shape.group(1) if shape else None,
        "skin": skin.group(1) if skin else None,
        "hair": hair.group(1) if hair else None,
    }


def run(photos: Path) -> dict[str, dict[str, str | None]]:
    from fgid_builder.process import ImageProcessor

    proc = ImageProcessor.default()
    out = {}
    files = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for i, p in enumerate(files, 1):
        res = proc.process(p.read_bytes(), uri=p.name)
        if res.samples:
            s = min(res.samples, key=lambda s: s.face["index"])
            out[p.name] = caption_words(s.captions)
        print(f"\r{i}/{len(files)} photos", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return out


def hair_agreement(words: dict, labels: Path) -> tuple[int, int, list[str]]:
    ok = n = 0
    wrong = []
    with open(labels) as f:
        for row in csv.DictReader(f):
            if row["file"] not in words:
                continue
            accepted = set(row["hair"].split("|"))
            named = words[row["file"]]["hair"]
            group = "none" if named is None else HAIR_GROUPS.get(named, named)
            n += 1
            if group in accepted:
                ok += 1
            else:
                wrong.append(f"{row['file']}: said {named!r}, labelled {row['hair']}")
    return ok, n, wrong


def person_agreement(words: dict, identities: Path, attr: str) -> tuple[float, list[str]]:
    people: dict[str, list[str]] = defaultdict(list)
    with open(identities) as f:
        for row in csv.DictReader(f):
            if row["file"] in words:
                people[row["identity"]].append(str(words[row["file"]][attr]))
    shares, lines = [], []
    for person, values in sorted(people.items()):
        top, count = Counter(values).most_common(1)[0]
        shares.append(count / len(values))
        lines.append(f"    {person}: {count}/{len(values)} '{top}'  {dict(Counter(values))}")
    return sum(shares) / len(shares), lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    ap.add_argument("--labels", type=Path, default=DEFAULT_LABELS)
    ap.add_argument("-v", "--verbose", action="store_true", help="per-photo / per-person lines")
    args = ap.parse_args(argv)
    if not args.photos.is_dir():
        print(f"no photos at {args.photos}", file=sys.stderr)
        return 2
    words = run(args.photos)
    ok, n, wrong = hair_agreement(words, args.labels)
    print(f"hair colour: {ok}/{n} = {ok / max(n, 1):.2f} agree with the labels")
    if args.verbose:
        print("\n".join(f"    {w}" for w in wrong))
    for attr in ("skin", "shape"):
        share, lines = person_agreement(words, args.photos / "identities.csv", attr)
        print(f"{attr}: per-person agreement {share:.2f} (mean over people)")
        if args.verbose:
            print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
