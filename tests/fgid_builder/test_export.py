"""The export of real parser masks read back the way the official ConsistentID `train.py`
(utils.MyDataset) reads it."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fgid_builder.encode import decode_sample, encode_sample
from fgid_builder.export import export_samples, official_train_args
from fgid_builder.process import ImageProcessor, parse_samples
from fgid_builder.schema import CELEBAMASK_HQ_COLORS, LABEL_COLORS, LABEL_IDS
from fgid_builder.shards import shard_stats, write_shard, write_stats
from tests.fgid_builder.backends import tiny_models as tm
from tests.official_consistentid import (
    OFFICIAL_PARTS,
    official_foreground,
    official_region_masks,
)

torch = pytest.importorskip("torch")

# The official `functions.mapping_table`, the rows its dataset uses (mask value -> body part).
OFFICIAL_KEY_LIST = set(OFFICIAL_PARTS.values())  # utils.MyDataset.__getitem__ key_list
FACE_PARTS = {"Face", "Left_Eye", "Right_Eye", "Nose", "Upper_Lip", "Lower_Lip"}
FRONTAL = ("astronaut.png", "grace_hopper.jpg")


@pytest.fixture(scope="module")
def parsed(shipped_photos, tmp_path_factory) -> dict[str, Any]:
    """Samples of the frontal shipped photos through the real parsers: the landmark parser
    (embedded stack) and facexlib's BiSeNet with random weights (real loading code), the source
    photos copied under a folder with spaces, as uris relative to it."""
    from fgid_builder.registry import create

    root = tmp_path_factory.mktemp("export_src")
    src = root / "photos"
    models = root / "models"
    tm.bisenet_pth(models)
    default = ImageProcessor.default()
    bisenet = create("parse", "bisenet", models_dir=str(models), device="cpu")
    out: dict[str, Any] = {"src": src, "landmarks": [], "bisenet": []}
    for path in shipped_photos:
        if path.name not in FRONTAL:
            continue
        uri = f"sub dir/{path.name}"
        (src / uri).parent.mkdir(parents=True, exist_ok=True)
        (src / uri).write_bytes(path.read_bytes())
        members = default.process(path.read_bytes(), uri).members
        out["landmarks"] += members
        # the same faces parsed by BiSeNet (region figures from its mask, as the build does)
        faces = parse_samples(bisenet, [decode_sample(m) for m in members])
        out["bisenet"] += [encode_sample(f) for f in faces]
    assert len(out["landmarks"]) == len(FRONTAL) == len(out["bisenet"])
    return out


def _write_dataset(out: Path, samples: list[dict[str, bytes]]) -> Path:
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True)
    parts = (samples[:1], samples[1:]) if len(samples) > 1 else (samples,)
    for shard_id, part in enumerate(parts):
        tar = write_shard(shard_dir / f"{shard_id:06d}.tar", part)
        stats = shard_stats(shard_id, tar=tar, images=len(part), reject_reasons=[])
        write_stats(shard_dir / f"{shard_id:06d}.json", stats)
    return out


@pytest.fixture()
def dataset(parsed, tmp_path: Path) -> tuple[Path, Path, list[dict[str, bytes]]]:
    """A two-shard fgid dataset of the landmark parser's samples, and the folder its uris are
    relative to."""
    samples = parsed["landmarks"]
    return _write_dataset(tmp_path / "ds", samples), parsed["src"], samples


def read_like_official_train(dest: Path) -> list[dict]:
    """What utils.MyDataset.__getitem__ touches, per item, with the official path flags."""
    flags = dict(a[2:].split("=", 1) for a in official_train_args(dest))
    data = json.load(open(flags["data_json_file"]))
    assert isinstance(data, list) and data
    items = []
    for item in data:
        text_origin = item["vqa_llva_more_face_detail"]
        global_caption = item["vqa_llva"]
        raw_image = Image.open(os.path.join(flags["data_root_path"], item["resize_IMG"]))
        raw_mask = Image.open(os.path.join(flags["parsing_root_path"], item["parsing_mask_IMG"]))
        faceid_file = item.get("id_embed_file_origin", item.get("id_embed_file_resize"))
        assert faceid_file is not None, "without an id file the official loader uses zeros"
        face_id_embed = torch.load(
            os.path.join(flags["faceid_root_path"], faceid_file), weights_only=True
        )
        mask = np.array(raw_mask)
        values = np.unique(mask)
        parts = {OFFICIAL_PARTS[int(v)] for v in values if int(v) in OFFICIAL_PARTS}
        items.append(
            {
                "item": item,
                "image": raw_image.convert("RGB"),
                "mask": mask,
                "parts": parts,
                "kept_parts": official_region_masks(mask),
                # what the official loader multiplies the loss by half the time
                "foreground": official_foreground(mask) if 0 in values else None,
                "id": face_id_embed,
                "captions": (global_caption, text_origin),
            }
        )
    return items


def test_export_reads_like_official_train(dataset, tmp_path: Path) -> None:
    """The landmark parser's real masks through `fgid export`, read as the official MyDataset
    does: the face parts it keys on, a non-empty foreground that holds the face, the subject's
    left eye (4, the one it keeps) on the image's right, and previews in the label colours."""
    out, src, samples = dataset
    dest = tmp_path / "export"
    from pipelines.export_cmd import iter_dataset

    summary = export_samples(iter_dataset(out), dest, source_root=src)
    assert summary.samples == 2 and summary.originals == 2 and summary.id_dim == 128

    by_key = {s["__key__"]: s for s in samples}
    items = read_like_official_train(dest)
    assert [it["item"]["fgid_key"] for it in items] == sorted(by_key)
    for it in items:
        item, s = it["item"], by_key[it["item"]["fgid_key"]]
        meta = json.loads(s["json"])
        assert it["image"].size == (512, 512)
        assert it["mask"].dtype == np.uint8 and it["mask"].shape == (512, 512)
        np.testing.assert_array_equal(it["mask"], np.array(Image.open(io.BytesIO(s["mask.png"]))))
        assert it["parts"] == FACE_PARTS  # no ears from 68 points
        fg = it["foreground"]
        assert fg is not None and fg.any(), "the official foreground is empty"
        assert fg[np.isin(it["mask"], [1, 2, 3, 4, 5, 10, 11, 12, 13])].mean() > 0.99
        assert not fg.all()
        # the official loader keeps label 4 as "the eye": the subject's left, the image's right
        kept = it["kept_parts"]
        assert "Left_Eye" in kept and "Right_Eye" not in kept
        eye_x = np.nonzero(kept["Left_Eye"])[1].mean()
        assert eye_x > np.nonzero(it["mask"] == LABEL_IDS["r_eye"])[1].mean()
        preview = np.array(Image.open(dest / "parsing_color_IMG" / item["parsing_color_IMG"]))
        for name in ("skin", "l_eye", "r_eye", "l_brow", "nose", "hair"):
            sel = it["mask"] == LABEL_IDS[name]
            assert sel.any(), name
            assert (preview[sel] == CELEBAMASK_HQ_COLORS[name]).all(), name
        assert isinstance(it["id"], torch.Tensor) and tuple(it["id"].shape) == (1, 128)
        assert it["id"].dtype == torch.float32
        np.testing.assert_allclose(
            it["id"][0].numpy(), np.load(io.BytesIO(s["id.npy"])), rtol=0, atol=0
        )
        assert it["captions"] == (meta["captions"]["global"], meta["captions"]["facial"])
        # the other files the layout promises, all referenced by the record
        for folder, field in (
            ("parsing_color_IMG", "parsing_color_IMG"),
            ("origin_IMG", "origin_IMG"),
        ):
            assert (dest / folder / item[field]).is_file()
        per_image = json.loads((dest / "FGID_JSON" / f"{item['fgid_key']}.json").read_text())
        assert per_image == item
        original = Image.open(dest / "origin_IMG" / item["origin_IMG"])
        assert original.size == (meta["source"]["width"], meta["source"]["height"])
        assert "exif" not in original.info


def test_export_of_bisenet_masks_keeps_its_ids(parsed, tmp_path: Path) -> None:
    """facexlib BiSeNet's argmax ids reach the export unchanged (no remapping, no left/right
    swap) and every id present is previewed in its class's colour."""
    from pipelines.export_cmd import iter_dataset

    samples = parsed["bisenet"]
    out = _write_dataset(tmp_path / "ds", samples)
    dest = tmp_path / "export"
    export_samples(iter_dataset(out), dest, source_root=parsed["src"])
    for s in samples:
        key = s["__key__"]
        mask = np.array(Image.open(io.BytesIO(s["mask.png"])))
        assert json.loads(s["json"])["models"]["parse"]["name"] == "facexlib-bisenet"
        exported = np.array(Image.open(dest / "parsing_mask_IMG" / f"{key}.png"))
        np.testing.assert_array_equal(exported, mask)
        preview = np.array(Image.open(dest / "parsing_color_IMG" / f"{key}.png"))
        for v in np.unique(mask):
            assert (preview[mask == v] == LABEL_COLORS[int(v)]).all(), int(v)


def test_export_without_sources_still_complete(dataset, tmp_path: Path) -> None:
    out, _, _ = dataset
    dest = tmp_path / "export"
    from pipelines.export_cmd import iter_dataset

    summary = export_samples(iter_dataset(out), dest, source_root=tmp_path / "nowhere")
    assert summary.samples == 2 and summary.originals == 0 and summary.originals_missing == 2
    items = read_like_official_train(dest)
    assert len(items) == 2 and all("origin_IMG" not in it["item"] for it in items)


def test_export_cli(dataset, tmp_path: Path) -> None:
    from pipelines.cli import main

    out, src, _ = dataset
    dest = tmp_path / "cli export"
    result = CliRunner().invoke(main, ["export", str(out), str(dest), "--source-root", str(src)])
    assert result.exit_code == 0, result.output
    assert '"samples": 2' in result.output and "--data_json_file=" in result.output
    assert len(json.loads((dest / "JSON_all.json").read_text())) == 2
    # deterministic: exporting again gives the same merged list and files
    before = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, ["export", str(out), str(dest), "--source-root", str(src)])
    assert result.exit_code == 0, result.output
    after = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert before == after


def test_export_cli_rejects_non_dataset(tmp_path: Path) -> None:
    from pipelines.cli import main

    result = CliRunner().invoke(main, ["export", str(tmp_path), str(tmp_path / "d")])
    assert result.exit_code != 0 and "not an fgid dataset" in result.output
