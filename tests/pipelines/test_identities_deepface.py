"""Acceptance on the shared deepface photos: identities against the labelled pairs and people,
identity-disjoint splits, the recorded threshold (slow: builds the dataset once per session)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import pytest

from fgid_builder.identities import CALIBRATED, pair_precision_recall, read_identities
from fgid_builder.splits import read_splits

pytestmark = [pytest.mark.slow, pytest.mark.integration]
FGID = [sys.executable, "-m", "pipelines.cli"]


def _fgid(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([*FGID, *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def _people(shared_faces) -> dict[str, str]:
    with open(shared_faces / "identities.csv", newline="") as f:
        return {r["file"]: r["identity"] for r in csv.DictReader(f)}


def _uri_of_key(out) -> dict[str, str]:
    from fgid_builder.index import read_index

    return {
        r["key"]: r["source_uri"]
        for r in read_index(out / "index.parquet").to_pylist()
        if r["status"] == "ok"
    }


@pytest.fixture(scope="module")
def identified(deepface_dataset, shared_faces, tmp_path_factory):
    out = tmp_path_factory.mktemp("identified") / "dataset"
    shutil.copytree(deepface_dataset, out)
    res = _fgid("identities", str(out), "--calibrate", str(shared_faces / "pairs.csv"))
    print(res.stdout)
    return out


def test_pair_precision_recall_at_the_calibrated_threshold(identified, shared_faces):
    rec = json.loads((identified / "identities.json").read_text())
    p = rec["pairs_at_threshold"]
    print(
        f"threshold {rec['threshold']}: pairs.csv precision {p['precision']:.4f} recall "
        f"{p['recall']:.4f} over {p['pairs']} pairs"
    )
    assert p["pairs"] == 280
    assert p["precision"] >= 0.98 and p["recall"] >= 0.98
    # every pair of the 61 labelled photos (identities.csv), face 0 of each
    table = read_identities(identified).to_pylist()
    uri = _uri_of_key(identified)
    ident = {uri[r["key"]]: r["identity"] for r in table if r["key"].endswith("_f0")}
    people = _people(shared_faces)
    files = sorted(people)
    pairs = [(a, b, people[a] == people[b]) for i, a in enumerate(files) for b in files[i + 1 :]]
    all_pr = pair_precision_recall(pairs, ident)
    print(
        f"all {all_pr['pairs']} labelled pairs: precision {all_pr['precision']:.4f} "
        f"recall {all_pr['recall']:.4f}"
    )
    assert all_pr["precision"] >= 0.98 and all_pr["recall"] >= 0.98


def test_recorded_dlib_threshold_is_the_calibrated_one(identified):
    rec = json.loads((identified / "identities.json").read_text())
    assert rec["embedder"].startswith("dlib")
    assert rec["calibration"]["threshold"] == pytest.approx(
        CALIBRATED["dlib"]["threshold"], abs=1e-3
    )
    assert rec["calibration"]["pair_accuracy"] == pytest.approx(CALIBRATED["dlib"]["pair_accuracy"])


def test_splits_are_identity_disjoint_by_ids_and_by_labelled_people(identified, shared_faces):
    _fgid("split", str(identified), "--fractions", "train=0.6,val=0.2,test=0.2", "--seed", "3")
    first = (identified / "splits.parquet").read_bytes()
    _fgid("split", str(identified), "--fractions", "train=0.6,val=0.2,test=0.2", "--seed", "3")
    assert (identified / "splits.parquet").read_bytes() == first
    rows = read_splits(identified).to_pylist()
    assert len(rows) == read_identities(identified).num_rows
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    by_id, by_person = {}, {}
    uri = _uri_of_key(identified)
    people = _people(shared_faces)
    for r in rows:
        by_id.setdefault(r["identity"], set()).add(r["split"])
        person = people.get(uri[r["key"]]) if r["key"].endswith("_f0") else None
        if person:
            by_person.setdefault(person, set()).add(r["split"])
    assert all(len(s) == 1 for s in by_id.values())
    assert len(by_person) == 13 and all(len(s) == 1 for s in by_person.values()), by_person


def test_report_shows_the_identity_ids(identified):
    _fgid("report", str(identified), "--no-progress")
    page = (identified / "report" / "index.html").read_text()
    rec = json.loads((identified / "identities.json").read_text())
    section = page[page.index('<section id="identity-ids">') :]
    section = section[: section.index("</section>")]
    assert f"<b>{rec['identities']}</b> identities over {rec['samples']} samples" in section
    assert section.count('class="cluster"') == min(8, rec["identities"])
    assert (identified / "report" / "images_per_identity.png").is_file()
