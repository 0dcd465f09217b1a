"""The shard stream: tensors per sample, prompt markers, rank/worker split, corruption, resume."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from fgid_builder.schema import REGION_NAMES
from training.base_models import build_tiny_models
from training.config import TinyModelConfig
from training.data import (
    CorruptSample,
    FGIDStream,
    SampleTransform,
    expand_shards,
    facial_prompt,
    iter_shard,
    peek_id_dim,
    tokenize_with_markers,
)

MARKER = "<|facial|>"


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_tiny_models(TinyModelConfig(), 64).tokenizer
    tok.add_tokens([MARKER], special_tokens=True)
    return tok


def make_transform(tokenizer, **kw) -> SampleTransform:
    args = dict(
        tokenizer=tokenizer,
        resolution=64,
        latent_size=8,
        clip_size=32,
        caption_drop=0.0,
        image_drop=0.0,
        both_drop=0.0,
    )
    args.update(kw)
    return SampleTransform(**args)


def all_keys(stream: FGIDStream, n: int) -> list[str]:
    out: list[str] = []
    for batch in stream:
        out += batch["key"]
        if len(out) >= n:
            return out[:n]
    return out


def test_expand_shards_globs_and_braces(fgid_shards: list[Path]) -> None:
    folder = fgid_shards[0].parent
    assert expand_shards(str(folder / "*.tar")) == [str(p) for p in fgid_shards]
    assert expand_shards(str(folder / "{000000..000001}.tar")) == [str(p) for p in fgid_shards[:2]]
    with pytest.raises(FileNotFoundError):
        expand_shards(str(folder / "nothing-*.tar"))


def test_sample_tensors(fgid_shards: list[Path], tokenizer) -> None:
    stream = FGIDStream(
        [str(p) for p in fgid_shards],
        make_transform(tokenizer),
        batch_size=2,
        shuffle_buffer=0,
        max_epochs=1,
    )
    batch = next(iter(stream))
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    assert -1.0 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0
    assert batch["clip_image"].shape == (2, 3, 32, 32)
    assert batch["region_pixels"].shape == (2, 5, 3, 32, 32)
    assert batch["region_masks"].shape == (2, 5, 8, 8)
    assert batch["foreground_mask"].shape == (2, 1, 8, 8)
    assert batch["id_embed"].shape == (2, 128)
    assert torch.allclose(batch["id_embed"].norm(dim=1), torch.ones(2), atol=1e-4)
    assert batch["input_ids"].shape == (2, 77)
    assert batch["facial_valid"].any()
    assert peek_id_dim([str(p) for p in fgid_shards]) == 128
    # the marked token is the region word, and the marker itself is gone from the ids
    marker_id = tokenizer.convert_tokens_to_ids(MARKER)
    assert not (batch["input_ids"] == marker_id).any()
    for b in range(2):
        words = [
            tokenizer.convert_ids_to_tokens(int(batch["input_ids"][b, p]))
            for p, v in zip(batch["facial_positions"][b], batch["facial_valid"][b], strict=True)
            if v
        ]
        assert words and all(w.rstrip("</w>").rstrip("<") in REGION_NAMES for w in words), words
        # each valid region has pixels in its latent-resolution mask
        assert (batch["region_masks"][b][batch["facial_valid"][b]].flatten(1).sum(1) > 0).all()


def test_prompt_markers_and_truncation(tokenizer) -> None:
    meta = {
        "captions": {"global": "a man", "regions": {"eyes": "Brown eyes.", "nose": "Straight."}}
    }
    text = facial_prompt(meta, ["eyes", "nose"], MARKER)
    assert text == f"Caption: a man Detail: Brown eyes {MARKER}. nose {MARKER}: Straight."
    ids, pos, found = tokenize_with_markers(tokenizer, text, MARKER, 5)
    assert found.tolist() == [True, True, False, False, False]
    assert tokenizer.convert_ids_to_tokens([int(ids[pos[0]]), int(ids[pos[1]])]) == [
        "eyes</w>",
        "nose</w>",
    ]
    long = "Caption: " + "x " * 200 + f"Detail: eyes {MARKER}"
    ids, _, found = tokenize_with_markers(tokenizer, long, MARKER, 5)
    assert ids.shape == (77,) and not found.any()


def test_drop_modes_are_seeded(fgid_shards: list[Path], tokenizer) -> None:
    t = make_transform(tokenizer, caption_drop=0.3, image_drop=0.3, both_drop=0.3)
    modes = [t.drop_mode(f"k{i}", 0) for i in range(400)]
    assert modes == [t.drop_mode(f"k{i}", 0) for i in range(400)]
    assert {"none", "caption", "image", "both"} == set(modes)
    sample = next(
        iter(
            FGIDStream(
                [str(fgid_shards[0])],
                make_transform(tokenizer, both_drop=1.0),
                batch_size=1,
                shuffle_buffer=0,
                max_epochs=1,
            )
        )
    )
    assert sample["prompt"] == [""] and not sample["facial_valid"].any()
    assert not sample["id_embed"].any() and not sample["clip_image"].any()


def test_ranks_and_workers_read_disjoint_samples(fgid_shards: list[Path], tokenizer) -> None:
    urls = [str(p) for p in fgid_shards]
    total = sum(1 for u in urls for _ in iter_shard(u))
    for world in (2, 8):  # whole shards per rank, then every k-th sample (more parts than shards)
        seen = []
        for rank in range(world):
            s = FGIDStream(
                urls,
                make_transform(tokenizer),
                batch_size=1,
                rank=rank,
                world_size=world,
                shuffle_buffer=4,
                max_epochs=1,
            )
            try:
                seen.append(all_keys(s, total))
            except RuntimeError:  # a rank with no sample in the epoch says so
                seen.append([])
        flat = [k for keys in seen for k in keys]
        assert len(flat) == len(set(flat)) == total


def test_shuffle_is_seeded_and_resume_skips_exactly(fgid_shards: list[Path], tokenizer) -> None:
    urls = [str(p) for p in fgid_shards]

    def keys(start: int = 0, seed: int = 0, n: int = 24) -> list[str]:
        s = FGIDStream(
            urls,
            make_transform(tokenizer),
            batch_size=2,
            seed=seed,
            shuffle_buffer=4,
            start_batch=start,
        )
        return all_keys(s, n)

    first = keys()
    assert first == keys() and first != keys(seed=1)
    assert keys(start=5, n=14) == first[10:24]  # crosses an epoch boundary


def _corrupt_copy(src: Path, dst: Path) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        done = False
        for info in tin.getmembers():
            data = tin.extractfile(info).read()
            if not done and info.name.endswith(".jpg"):
                data, done = b"not a jpeg", True
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))


def test_corrupt_sample_and_shard_are_counted_or_fatal(
    fgid_shards: list[Path], tokenizer, tmp_path: Path
) -> None:
    """Hand-made tars without commit records (verify off): decode errors are counted."""
    bad_sample = tmp_path / "bad-sample.tar"
    _corrupt_copy(fgid_shards[0], bad_sample)
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(fgid_shards[1].read_bytes()[:3000])
    urls = [str(bad_sample), str(truncated), str(fgid_shards[2])]
    kw = dict(batch_size=1, shuffle_buffer=0, max_epochs=1, verify=False)
    s = FGIDStream(urls, make_transform(tokenizer), **kw)
    batches = list(s)
    assert s.stats["corrupt_samples"] >= 1 and s.stats["corrupt_shards"] == 1
    assert batches[-1]["stats"]["corrupt_shards"] == 1 and len(batches) >= 2
    strict = FGIDStream(urls, make_transform(tokenizer), strict=True, **kw)
    with pytest.raises(CorruptSample):
        list(strict)


def test_json_fields_are_read(fgid_shards: list[Path]) -> None:
    raw = next(iter_shard(str(fgid_shards[0])))
    meta = json.loads(raw["json"])
    assert set(meta["captions"]["regions"]) == set(REGION_NAMES)


# --- the stream trusts nothing it reads (issue 14, item 7) ---------------------------------


def _copy_shards(fgid_shards: list[Path], dst: Path) -> list[Path]:
    dst.mkdir()
    for p in fgid_shards:
        (dst / p.name).write_bytes(p.read_bytes())
        (dst / p.with_suffix(".json").name).write_bytes(p.with_suffix(".json").read_bytes())
    return sorted(dst.glob("*.tar"))


def _rewrite_member(shard: Path, suffix: str, change) -> str:
    """Replace the first member ending in `suffix` by change(bytes); returns its sample key."""
    with tarfile.open(shard) as tin:
        members = [(info, tin.extractfile(info).read()) for info in tin.getmembers()]
    key = None
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tout:
        for info, data in members:
            if key is None and info.name.endswith(suffix):
                data, key = change(data), info.name.split(".", 1)[0]
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    assert key is not None
    return key


def _reencoded_jpeg(data: bytes) -> bytes:
    from PIL import Image

    im = Image.open(io.BytesIO(data)).convert("RGB")
    im.putpixel((10, 10), (255, 0, 0))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=80)
    return out.getvalue()


def test_altered_but_decodable_shard_is_skipped_and_counted(
    fgid_shards: list[Path], tokenizer, tmp_path: Path
) -> None:
    shards = _copy_shards(fgid_shards, tmp_path / "ds")
    urls = [str(p) for p in shards]
    clean = FGIDStream(
        urls, make_transform(tokenizer), batch_size=1, shuffle_buffer=0, max_epochs=1
    )
    everything = all_keys(clean, 10_000)
    assert clean.stats["unverified_shards"] == 0
    in_first = [k["__key__"] for k in iter_shard(urls[0])]
    changed = _rewrite_member(shards[0], ".jpg", _reencoded_jpeg)  # still a valid JPEG
    # Without the check it would train silently on it:
    assert decode_image_ok(urls[0], changed)
    s = FGIDStream(urls, make_transform(tokenizer), batch_size=1, shuffle_buffer=0, max_epochs=1)
    keys = all_keys(s, 10_000)
    assert s.stats["unverified_shards"] == 1
    assert sorted(keys) == sorted(k for k in everything if k not in in_first)
    with pytest.raises(CorruptSample):
        list(FGIDStream(urls, make_transform(tokenizer), batch_size=1, max_epochs=1, strict=True))


def decode_image_ok(url: str, key: str) -> bool:
    from training.data import decode_sample

    raws = [r for r in iter_shard(url, verify=False) if r["__key__"] == key]
    return bool(raws) and decode_sample(raws[0]).image.size[0] > 0


def test_missing_or_foreign_commit_record_is_refused(
    fgid_shards: list[Path], tokenizer, tmp_path: Path
) -> None:
    from training.data import UnverifiedShard, peek_sample

    shards = _copy_shards(fgid_shards, tmp_path / "ds")
    shards[0].with_suffix(".json").unlink()
    with pytest.raises(UnverifiedShard, match="no commit record"):
        list(iter_shard(str(shards[0])))
    # a record that describes another tar (right hash, other name) does not vouch for this one
    record = json.loads(shards[2].with_suffix(".json").read_text())
    shards[1].with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(UnverifiedShard, match="another tar"):
        list(iter_shard(str(shards[1])))
    s = FGIDStream([str(p) for p in shards], make_transform(tokenizer), batch_size=1, max_epochs=1)
    assert all_keys(s, 10_000) and s.stats["unverified_shards"] == 2
    assert peek_sample([str(shards[0]), str(shards[3])]).key in {
        r["__key__"] for r in iter_shard(str(shards[3]))
    }
    assert list(iter_shard(str(shards[0]), verify=False))  # data.verify: false reads it


def _npy(values) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.asarray(values, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize(
    "embedding",
    [[1e30] * 128, [0.5] * 128, [float("nan")] + [0.0] * 127],
    ids=["1e30", "off-norm", "nan"],
)
def test_bad_identity_embedding_is_refused(fgid_shards: list[Path], embedding) -> None:
    from training.data import decode_sample

    raw = next(iter_shard(str(fgid_shards[0])))
    assert decode_sample(raw).key == raw["__key__"]
    with pytest.raises(CorruptSample, match="identity embedding"):
        decode_sample({**raw, "id.npy": _npy(embedding)})


@pytest.mark.parametrize(
    "spec", ["pipe:touch {marker}", "pipe:touch {marker} #.tar", "http://127.0.0.1:9/x.tar"]
)
def test_only_files_and_object_store_urls_are_read(
    fgid_shards: list[Path], tokenizer, tmp_path: Path, spec: str
) -> None:
    from training.data import check_shard_url

    marker = tmp_path / "ran"
    spec = spec.format(marker=marker)
    with pytest.raises(ValueError, match="refused shard URL"):
        expand_shards(spec)
    with pytest.raises(ValueError, match="refused shard URL"):
        list(iter_shard(spec, verify=False))
    with pytest.raises(ValueError, match="refused shard URL"):
        FGIDStream([spec], make_transform(tokenizer), batch_size=1)
    assert not marker.exists(), "no shell command ran"
    local = str(fgid_shards[0])
    for ok in (local, "file://" + local, "s3://bucket/shards/000000.tar", "gs://b/000001.tar"):
        assert check_shard_url(ok) == ok
    assert expand_shards("file://" + str(fgid_shards[0].parent / "*.tar")) == [
        str(p) for p in fgid_shards
    ]
