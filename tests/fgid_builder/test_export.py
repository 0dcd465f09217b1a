"""The export read back the way the official ConsistentID `train.py` (utils.MyDataset) reads it."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fgid_builder.export import export_samples, official_train_args
from fgid_builder.schema import dumps_json, make_key, npy_bytes, sha256_bytes
from fgid_builder.shards import shard_stats, write_shard, write_stats

torch = pytest.importorskip("torch")

# The official `functions.mapping_table`, the rows its dataset uses (mask value -> body part).
OFFICIAL_PARTS = {
    1: "Face",
    4: "Left_Eye",
    5: "Right_Eye",
    7: "Left_Ear",
    8: "Right_Ear",
    10: "Nose",
    12: "Upper_Lip",
    13: "Lower_Lip",
}
OFFICIAL_KEY_LIST = set(OFFICIAL_PARTS.values())  # utils.MyDataset.__getitem__ key_list


def _mask() -> np.ndarray:
    """A label map with every region the official loader looks for, at plausible places."""
    m = np.zeros((512, 512), np.uint8)
    m[96:448, 112:400] = 1  # skin
    m[200:230, 170:230] = 4
    m[200:230, 282:342] = 5
    m[200:300, 96:112] = 7
    m[200:300, 400:416] = 8
    m[230:320, 236:276] = 10
    m[340:360, 206:306] = 12
    m[360:380, 206:306] = 13
    m[180:196, 170:230] = 2
    m[448:512, 180:332] = 14
    return m


def _sample(seed: int, source: bytes, uri: str, dim: int = 128) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    portrait = rng.integers(0, 255, (512, 512, 3), dtype=np.uint8)
    jpg = io.BytesIO()
    Image.fromarray(portrait).save(jpg, format="JPEG", quality=90)
    png = io.BytesIO()
    Image.fromarray(_mask()).save(png, format="PNG")
    emb = rng.standard_normal(dim).astype(np.float32)
    emb /= np.linalg.norm(emb)
    sha = sha256_bytes(source)
    key = make_key(sha, 0)
    meta = {
        "key": key,
        "source": {"uri": uri, "sha256": sha, "width": 96, "height": 80},
        "captions": {
            "global": f"A person number {seed} in a photo.",
            "facial": "The face is oval, the ears are not measured, the eyes are wide, "
            "the nose is straight, the mouth is closed.",
            "regions": {r: f"{r} sentence" for r in ("face", "ears", "eyes", "nose", "mouth")},
        },
    }
    return {
        "__key__": key,
        "jpg": jpg.getvalue(),
        "mask.png": png.getvalue(),
        "id.npy": npy_bytes(emb),
        "json": dumps_json(meta),
    }


def _source_photo(path: Path, seed: int) -> bytes:
    rng = np.random.default_rng(100 + seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)).save(buf, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, Path, list[dict[str, bytes]]]:
    """A two-shard fgid dataset with three samples, and the folder its uris are relative to."""
    src = tmp_path / "photos"
    samples = []
    for i in range(3):
        uri = f"sub dir/photo {i}.png"
        samples.append(_sample(i, _source_photo(src / uri, i), uri))
    out = tmp_path / "ds"
    shard_dir = out / "shards"
    shard_dir.mkdir(parents=True)
    for shard_id, part in enumerate((samples[:2], samples[2:])):
        tar = write_shard(shard_dir / f"{shard_id:06d}.tar", part)
        stats = shard_stats(shard_id, tar=tar, images=len(part), reject_reasons=[])
        write_stats(shard_dir / f"{shard_id:06d}.json", stats)
    return out, src, samples


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
        values = np.unique(np.array(raw_mask))
        parts = {OFFICIAL_PARTS[int(v)] for v in values if int(v) in OFFICIAL_PARTS}
        items.append(
            {
                "item": item,
                "image": raw_image.convert("RGB"),
                "mask": np.array(raw_mask),
                "parts": parts,
                "id": face_id_embed,
                "captions": (global_caption, text_origin),
            }
        )
    return items


def test_export_reads_like_official_train(dataset, tmp_path: Path) -> None:
    out, src, samples = dataset
    dest = tmp_path / "export"
    from pipelines.export_cmd import iter_dataset

    summary = export_samples(iter_dataset(out), dest, source_root=src)
    assert summary.samples == 3 and summary.originals == 3 and summary.id_dim == 128

    by_key = {s["__key__"]: s for s in samples}
    items = read_like_official_train(dest)
    assert [it["item"]["fgid_key"] for it in items] == sorted(by_key)
    for it in items:
        item, s = it["item"], by_key[it["item"]["fgid_key"]]
        meta = json.loads(s["json"])
        assert it["image"].size == (512, 512)
        assert it["mask"].dtype == np.uint8 and it["mask"].shape == (512, 512)
        np.testing.assert_array_equal(it["mask"], _mask())
        assert it["parts"] == OFFICIAL_KEY_LIST  # 1 face, 4/5 eyes, 7/8 ears, 10 nose, 12/13 lips
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
        assert original.size == (96, 80) and "exif" not in original.info


def test_export_without_sources_still_complete(dataset, tmp_path: Path) -> None:
    out, _, _ = dataset
    dest = tmp_path / "export"
    from pipelines.export_cmd import iter_dataset

    summary = export_samples(iter_dataset(out), dest, source_root=tmp_path / "nowhere")
    assert summary.samples == 3 and summary.originals == 0 and summary.originals_missing == 3
    items = read_like_official_train(dest)
    assert len(items) == 3 and all("origin_IMG" not in it["item"] for it in items)


def test_export_cli(dataset, tmp_path: Path) -> None:
    from pipelines.cli import main

    out, src, _ = dataset
    dest = tmp_path / "cli export"
    result = CliRunner().invoke(main, ["export", str(out), str(dest), "--source-root", str(src)])
    assert result.exit_code == 0, result.output
    assert '"samples": 3' in result.output and "--data_json_file=" in result.output
    assert len(json.loads((dest / "JSON_all.json").read_text())) == 3
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
