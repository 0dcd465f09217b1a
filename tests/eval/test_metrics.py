"""fgid eval: the layout rules, every metric with tiny real-format models, nulls with reasons,
the CLI, and the real-signal check on the shared deepface photos."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from eval.metrics import (
    EvalConfig,
    FaceAnalyzer,
    load_eval_set,
    region_crop,
    run_eval,
    write_metrics,
)
from pipelines.cli import main
from tests.eval.tiny_models import make_random_inception, make_tiny_clip, make_tiny_dinov2


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "clip": make_tiny_clip(root / "clip"),
        "dino": make_tiny_dinov2(root / "dino"),
        "inception": make_random_inception(root / "pt_inception-random.pth"),
    }


@pytest.fixture(scope="module")
def eval_dirs(tmp_path_factory, shipped_photos) -> tuple[Path, Path]:
    """Two identities: the reference and its mirrored / shifted copies as 'generated' images."""
    from PIL import Image

    root = tmp_path_factory.mktemp("evalset")
    refs, gens = root / "refs", root / "gens"
    refs.mkdir()
    names = {"astronaut": "astronaut.png", "hopper": "grace_hopper.jpg"}
    by_name = {p.name: p for p in shipped_photos}
    for ident, file in names.items():
        im = Image.open(by_name[file]).convert("RGB")
        im.save(refs / f"{ident}.png")
        d = gens / ident
        d.mkdir(parents=True)
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(d / "0.png")
        im.resize((im.width * 3 // 4, im.height * 3 // 4)).save(d / "1.jpg")
        with open(d / "prompts.jsonl", "w") as f:
            f.write(json.dumps({"file": "0.png", "prompt": f"a photo of {ident}"}) + "\n")
            f.write(json.dumps({"file": "1.jpg", "prompt": "a portrait, studio light"}) + "\n")
    (gens / "nobody").mkdir()  # no reference: skipped with a reason
    return refs, gens


def test_layout_rules(eval_dirs, tmp_path):
    identities, skipped = load_eval_set(*eval_dirs)
    assert [i.name for i in identities] == ["astronaut", "hopper"]
    assert [i.name for i in identities[0].gens] == ["0.png", "1.jpg"]
    assert identities[0].prompts["0.png"] == "a photo of astronaut"
    assert skipped == [
        {"identity": "nobody", "reason": f"no reference image nobody.* in {eval_dirs[0]}"}
    ]
    bad = tmp_path / "bad"
    shutil.copytree(eval_dirs[1], bad)
    (bad / "hopper" / "prompts.jsonl").write_text('{"file": "0.png"}\n')
    with pytest.raises(ValueError, match="prompts.jsonl:1"):
        load_eval_set(eval_dirs[0], bad)


def test_region_crop_keeps_only_the_region():
    portrait = np.full((64, 64, 3), 200, np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:30, 10:40] = 4  # l_eye: the "eyes" region
    crop = region_crop(portrait, mask, "eyes")
    assert crop.shape[0] == crop.shape[1] >= 30
    assert (crop == 200).any() and (crop == 128).any()
    assert region_crop(portrait, mask, "nose") is None


def test_every_metric_with_tiny_models(eval_dirs, tiny_models, tmp_path):
    cfg = EvalConfig(
        refs=str(eval_dirs[0]),
        gens=str(eval_dirs[1]),
        out=str(tmp_path / "metrics.json"),
        clip=str(tiny_models["clip"]),
        dino=str(tiny_models["dino"]),
        inception=str(tiny_models["inception"]),
        progress=False,
    )
    result = run_eval(cfg)
    m = result["metrics"]
    for name in ("facesim", "fgis", "clip_t", "clip_i", "dino"):
        assert m[name]["reason"] is None, (name, m[name]["reason"])
        assert -1.0 <= m[name]["mean"] <= 1.0
        assert set(m[name]["per_identity"]) == {"astronaut", "hopper"}
    # a mirrored / resized copy of the same photo is the same person for dlib
    assert m["facesim"]["mean"] > 0.9 and m["facesim"]["no_face"] == 0
    assert m["fgis"]["feature_model"] == "dino"
    assert m["fgis"]["per_region"]["eyes"]["reason"] is None
    assert m["fgis"]["per_region"]["ears"]["mean"] is None  # the landmark parser has no ears
    assert m["fid"]["value"] is not None and m["fid"]["value"] >= 0
    assert set(result["models"]) == {"detect", "parse", "embed", "clip", "dino", "inception"}
    assert result["skipped"][0]["identity"] == "nobody"

    paths = write_metrics(result, cfg.out)
    assert (
        json.loads(Path(cfg.out).read_text())["metrics"]["facesim"]["mean"] == m["facesim"]["mean"]
    )
    per_id = list(csv.DictReader(open(paths[1])))
    assert [r["identity"] for r in per_id] == ["astronaut", "hopper", "__mean__"]
    assert float(per_id[-1]["facesim"]) == pytest.approx(m["facesim"]["mean"], abs=1e-6)
    images = list(csv.DictReader(open(paths[2])))
    assert len(images) == 4 and images[0]["prompt"] == "a photo of astronaut"
    assert all(r["clip_t"] and r["dino"] and r["fgis_eyes"] for r in images)


def test_unconfigured_metrics_are_null_with_reason(eval_dirs, tmp_path):
    cfg = EvalConfig(
        refs=str(eval_dirs[0]), gens=str(eval_dirs[1]), embedder=None, parser=None, progress=False
    )
    m = run_eval(cfg)["metrics"]
    for name in ("facesim", "fgis", "clip_t", "clip_i", "dino"):
        assert m[name]["mean"] is None and m[name]["reason"], name
    assert m["fid"]["value"] is None and "--inception" in m["fid"]["reason"]
    assert "--clip" in m["clip_i"]["reason"] and "--dino" in m["dino"]["reason"]


def test_models_dir_is_searched(eval_dirs, tiny_models, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(tiny_models["clip"], models / "clip")
    cfg = EvalConfig(refs=str(eval_dirs[0]), gens=str(eval_dirs[1]), models_dir=str(models))
    assert cfg.clip == str(models / "clip") and cfg.dino is None


def test_cli(eval_dirs, tiny_models, tmp_path):
    out = tmp_path / "m" / "metrics.json"
    args = [
        "eval",
        "--refs",
        str(eval_dirs[0]),
        "--gens",
        str(eval_dirs[1]),
        "--out",
        str(out),
        "--embedder",
        "none",
        "--parser",
        "none",
        "--clip",
        str(tiny_models["clip"]),
        "--no-progress",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "facesim  null" in res.output and "fgis     null" in res.output
    data = json.loads(out.read_text())
    assert data["metrics"]["clip_i"]["mean"] is not None
    assert (tmp_path / "m" / "metrics.csv").is_file() and (
        tmp_path / "m" / "metrics_images.csv"
    ).is_file()
    # a configured model that is missing is an error naming it (exit 2)
    bad = [
        "eval",
        "--refs",
        str(eval_dirs[0]),
        "--gens",
        str(eval_dirs[1]),
        "--out",
        str(out),
        "--dino",
        str(tmp_path),
        "--no-progress",
    ]
    res = CliRunner().invoke(main, bad)
    assert res.exit_code == 2 and "DINO model folder not found" in res.output


# --------------------------------------------------------------------------- real signal


def _deepface_layout(root: Path, faces: Path, *, shuffled: bool) -> tuple[Path, Path]:
    by: dict[str, list[str]] = {}
    for r in csv.DictReader(open(faces / "identities.csv")):
        by.setdefault(r["identity"], []).append(r["file"])
    names = sorted(by)
    refs, gens = root / "refs", root / ("gens_shuffled" if shuffled else "gens")
    refs.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        first = by[name][0]
        link = refs / f"{name}{Path(first).suffix}"
        if not link.exists():
            os.symlink(faces / first, link)
        # shuffled: person i gets the other photos of person i+1 (a derangement)
        owner = names[(i + 1) % len(names)] if shuffled else name
        (gens / name).mkdir(parents=True)
        for f in by[owner][1:]:
            os.symlink(faces / f, gens / name / f)
    return refs, gens


def test_facesim_separates_people_on_real_photos(shared_faces, tmp_path):
    """REFS = one photo per person, GENS = that person's other photos: FaceSim must beat the
    same run with GENS shuffled across people by >= 0.1 on average, and for every person."""
    refs, gens = _deepface_layout(tmp_path, shared_faces, shuffled=False)
    _, gens_shuffled = _deepface_layout(tmp_path, shared_faces, shuffled=True)
    faces = FaceAnalyzer.create(detector="dlib", parser=None, embedder="dlib")  # shared cache
    runs = {}
    for label, g in (("same", gens), ("shuffled", gens_shuffled)):
        cfg = EvalConfig(refs=str(refs), gens=str(g), parser=None, progress=False)
        runs[label] = run_eval(cfg, faces=faces)["metrics"]["facesim"]
    same, shuf = runs["same"], runs["shuffled"]
    assert same["no_face"] == 0 and len(same["per_identity"]) == 13
    assert same["mean"] - shuf["mean"] >= 0.1, (same["mean"], shuf["mean"])
    for person, value in same["per_identity"].items():
        assert value > shuf["per_identity"][person], person
