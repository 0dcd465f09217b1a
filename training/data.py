"""Stream FGID WebDataset shards into ConsistentID training batches.

Each process (rank) and each of its dataloader workers reads a disjoint part of the data: whole
shards when there are enough of them, otherwise every k-th sample of every shard. The order is a
pure function of (seed, epoch), so a resumed run can skip exactly the batches it already used.
A corrupt shard or sample is logged and counted (and is a crash with `strict`).

Nothing is trusted: a shard is read only from a file path or an object-store URL (never
webdataset's `pipe:`, which runs a shell command), and only after its bytes match the commit
record the builder wrote beside it (`NNNNNN.json`: the tar's size and SHA-256); a shard that has
no record or does not match is skipped and counted (`unverified_shards`). A sample whose identity
embedding is not a finite unit vector is skipped and counted (`corrupt_samples`).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import random
import re
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from fgid_builder.schema import FOREGROUND_LABELS, REGION_LABELS, REGION_NAMES, load_npy

log = logging.getLogger(__name__)

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
REQUIRED_MEMBERS = ("jpg", "mask.png", "id.npy", "json")


# Object stores fgid_builder.dataset opens; any other scheme (pipe:, http:, ...) is refused.
OBJECT_STORE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# |L2 norm - 1| above this: the identity embedding is not what the builder writes.
ID_NORM_TOLERANCE = 1e-2
# A remote shard is spooled in memory up to this size (then on local disk) while it is hashed.
_SPOOL_BYTES = 64 << 20


class CorruptSample(ValueError):
    """A sample whose members are missing or do not decode."""


class UnverifiedShard(ValueError):
    """A shard whose bytes do not match its commit record, or that has none."""


def url_scheme(url: str) -> str:
    """'' for a local path, else the URL scheme (lower case)."""
    match = _SCHEME_RE.match(url)
    return match.group(1).lower() if match else ""


def check_shard_url(url: str) -> str:
    """`url` if it is a file path, a file:// URL or an object-store URL; else a ValueError."""
    scheme = url_scheme(url)
    if scheme and scheme != "file" and scheme not in OBJECT_STORE_SCHEMES:
        raise ValueError(
            f"refused shard URL {url!r}: only file paths, file:// and object-store URLs "
            f"({', '.join(s + '://' for s in OBJECT_STORE_SCHEMES)}) are read"
            + (" (pipe: would run a shell command)" if scheme == "pipe" else "")
        )
    return url


def _local_path(url: str) -> str | None:
    scheme = url_scheme(url)
    if not scheme:
        return url
    if scheme == "file":
        return url[len("file://") :] if url.startswith("file://") else url[len("file:") :]
    return None


def expand_shards(spec: str | list[str]) -> list[str]:
    """Shard paths from globs, brace patterns (`a-{000..009}.tar`) or lists of either, sorted.

    Each is checked by `check_shard_url` before anything is opened.
    """
    import webdataset as wds

    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for item in specs:
        for part in item.split():
            check_shard_url(part)
            for url in wds.shardlists.expand_urls(part):
                check_shard_url(url)
                local = _local_path(url)
                if local is not None and any(c in local for c in "*?["):
                    urls.extend(sorted(glob.glob(local)))
                elif local is None and any(c in url for c in "*?["):  # s3://b/out/shards/*.tar
                    from fgid_builder.dataset import glob_urls

                    urls.extend(glob_urls(url))
                else:
                    urls.append(url)
    if not urls:
        raise FileNotFoundError(f"no shards match {spec!r}")
    return sorted(dict.fromkeys(urls))


def record_url(url: str) -> str:
    """The commit record the builder writes beside a shard: `NNNNNN.tar` -> `NNNNNN.json`."""
    stem, dot, ext = url.rpartition(".")
    return f"{stem}.json" if dot and "/" not in ext else f"{url}.json"


def _open_raw(url: str) -> IO[bytes]:
    check_shard_url(url)
    local = _local_path(url)
    if local is not None:
        return open(local, "rb")
    from fgid_builder.dataset import open_url  # the dataset layer's filesystems (fsspec)

    return open_url(url, "rb")


def read_commit_record(url: str) -> dict[str, Any]:
    """The shard's stats JSON; UnverifiedShard when it is missing or malformed."""
    rec = record_url(url)
    try:
        with _open_raw(rec) as f:
            stats = json.loads(f.read(1 << 24))
        tar = stats["tar"]
        expected = {"bytes": int(tar["bytes"]), "sha256": str(tar["sha256"])}
        name = str(tar["name"])
    except FileNotFoundError as exc:
        raise UnverifiedShard(f"{url}: no commit record {rec}") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UnverifiedShard(f"{url}: unreadable commit record {rec}: {exc}") from exc
    if name != url.rsplit("/", 1)[-1]:
        raise UnverifiedShard(f"{url}: its commit record names another tar ({name})")
    return {**stats, "tar": {"name": name, **expected}}


def open_shard(url: str, *, verify: bool = True) -> IO[bytes]:
    """The shard's bytes as a seekable file, checked against its commit record when `verify`.

    The tar is hashed in one pass before any sample is read: a local file through the same open
    descriptor (then rewound), a remote object while it is spooled (memory, then a temp file).
    """
    if not verify:
        return _open_raw(url)
    record = read_commit_record(url)["tar"]
    local = _local_path(url) is not None
    src = _open_raw(url)
    if local:
        f: IO[bytes] = src
    else:
        f = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)  # noqa: SIM115
    try:
        h, size = hashlib.sha256(), 0
        while chunk := src.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
            if not local:
                f.write(chunk)
            if size > record["bytes"]:
                break
        if size != record["bytes"] or h.hexdigest() != record["sha256"]:
            raise UnverifiedShard(
                f"{url}: bytes do not match its commit record ({size} bytes, sha256 "
                f"{h.hexdigest()[:12]}..; recorded {record['bytes']}, {record['sha256'][:12]}..)"
            )
        f.seek(0)
    except BaseException:
        f.close()
        src.close()
        raise
    if not local:
        src.close()
    return f


def iter_shard(url: str, *, verify: bool = True) -> Iterator[dict[str, Any]]:
    """Raw samples of one tar in file order: {"__key__", member extension: bytes}."""
    current: dict[str, Any] | None = None
    with open_shard(url, verify=verify) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
        for info in tar:
            if not info.isfile():
                continue
            name = info.name.rsplit("/", 1)[-1]
            key, dot, ext = name.partition(".")
            if not dot:
                continue
            if current is None or current["__key__"] != key:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            data = tar.extractfile(info)
            payload = data.read() if data is not None else b""
            if len(payload) != info.size:
                raise tarfile.ReadError(f"{name}: truncated ({len(payload)} of {info.size} bytes)")
            current[ext] = payload
    if current is not None:
        yield current


@dataclass
class DecodedSample:
    key: str
    image: Image.Image  # RGB
    mask: np.ndarray  # (H, W) uint8 label ids
    id_embed: np.ndarray  # (D,) float32
    meta: dict[str, Any]


def decode_sample(
    raw: dict[str, Any], id_norm_tolerance: float = ID_NORM_TOLERANCE
) -> DecodedSample:
    key = raw.get("__key__", "?")
    missing = [m for m in REQUIRED_MEMBERS if m not in raw]
    if missing:
        raise CorruptSample(f"{key}: missing member(s) {', '.join(missing)}")
    try:
        image = Image.open(io.BytesIO(raw["jpg"]))
        image.load()
        image = image.convert("RGB")
        mask = np.asarray(Image.open(io.BytesIO(raw["mask.png"])))
        id_embed = load_npy(raw["id.npy"]).astype(np.float32)
        meta = json.loads(raw["json"])
    except Exception as exc:  # any decoder error means this sample is unusable; keep the reason
        raise CorruptSample(f"{key}: {type(exc).__name__}: {exc}") from exc
    if mask.ndim != 2 or mask.shape != (image.height, image.width):
        raise CorruptSample(f"{key}: mask shape {mask.shape} != image {image.size[::-1]}")
    if id_embed.ndim != 1 or not np.isfinite(id_embed).all():
        raise CorruptSample(f"{key}: identity embedding must be a finite 1-D vector")
    with np.errstate(over="ignore", invalid="ignore"):
        norm = float(np.linalg.norm(id_embed.astype(np.float64)))
    if not abs(norm - 1.0) <= id_norm_tolerance:
        raise CorruptSample(f"{key}: identity embedding has L2 norm {norm:.6g}, not 1")
    return DecodedSample(key, image, mask, id_embed, meta)


def clip_preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """CLIPImageProcessor's steps: bicubic shortest-side resize, centre crop, normalise."""
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    arr = (np.asarray(image, dtype=np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def region_crop(image: np.ndarray, sel: np.ndarray, margin: float = 0.1) -> Image.Image:
    """The region's pixels (others black) in a square box around it, with a small margin."""
    ys, xs = np.nonzero(sel)
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 * (1 + margin) + 2
    masked = image * sel[..., None]
    h, w = sel.shape
    box = [round(cx - half), round(cy - half), round(cx + half), round(cy + half)]
    pad = max(0, -box[0], -box[1], box[2] - w, box[3] - h)
    if pad:
        masked = np.pad(masked, ((pad, pad), (pad, pad), (0, 0)))
        box = [b + pad for b in box]
    return Image.fromarray(masked[box[1] : box[3], box[0] : box[2]])


_WORD_RE = {name: re.compile(rf"\b{name}\b", re.IGNORECASE) for name in REGION_NAMES}


def _region_sentences(meta: dict[str, Any], regions: list[str], marker: str) -> list[str]:
    per_region = ((meta.get("captions") or {}).get("regions")) or {}
    out = []
    for name in regions:
        sentence = (per_region.get(name) or "").strip()
        match = _WORD_RE[name].search(sentence)
        if match:
            sentence = f"{sentence[: match.end()]} {marker}{sentence[match.end() :]}"
        else:
            sentence = f"{name} {marker}: {sentence}".rstrip(": ")
        out.append(sentence)
    return out


def _join(global_words: list[str], details: list[list[str]]) -> str:
    detail = " ".join(" ".join(words) for words in details)
    return f"Caption: {' '.join(global_words)} Detail: {detail}".strip()


def facial_prompt(
    meta: dict[str, Any], regions: list[str], marker: str, tokenizer: Any = None
) -> str:
    """'Caption: <global> Detail: <region sentences>' with the marker after each region word.

    With a tokenizer the prompt is shortened to fit its context (77 for CLIP): words come off the
    end of the global caption first (keeping 8), then off the longest region sentence, never the
    region word or its marker, so every marker survives truncation.
    """
    global_words = ((meta.get("captions") or {}).get("global") or "").split()
    details = [s.split() for s in _region_sentences(meta, regions, marker)]
    text = _join(global_words, details)
    if tokenizer is None:
        return text
    budget = tokenizer.model_max_length - 2 + len(regions)  # markers are removed later

    def length(t: str) -> int:
        return len(tokenizer(t, add_special_tokens=False).input_ids)

    while length(text) > budget:
        if len(global_words) > 8:
            global_words = global_words[: max(8, len(global_words) - 4)]
        else:
            cut = [len(d) - (d.index(marker) + 1 if marker in d else 0) for d in details]
            i = max(range(len(details)), key=lambda j: cut[j], default=None)
            if i is None or cut[i] == 0:
                if not global_words:
                    break
                global_words = global_words[:-1]
            else:
                details[i] = details[i][:-1]
        text = _join(global_words, details)
    return text


def tokenize_with_markers(
    tokenizer: Any, text: str, marker: str, max_regions: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids without the markers, plus the position of the word before each marker.

    Returns (input_ids (L,), positions (max_regions,), found (max_regions,) bool); a marker cut
    off by truncation counts as not found.
    """
    marker_id = tokenizer.convert_tokens_to_ids(marker)
    max_len = tokenizer.model_max_length
    ids = tokenizer(text, add_special_tokens=True, truncation=False, verbose=False).input_ids
    kept: list[int] = []
    positions: list[int] = []
    for tok in ids:
        if tok == marker_id:
            positions.append(len(kept) - 1)
        else:
            kept.append(tok)
    if len(kept) > max_len:
        kept = kept[: max_len - 1] + [tokenizer.eos_token_id]
    kept += [tokenizer.pad_token_id] * (max_len - len(kept))
    pos = torch.zeros(max_regions, dtype=torch.long)
    found = torch.zeros(max_regions, dtype=torch.bool)
    for i, p in enumerate(positions[:max_regions]):
        if 0 < p < max_len - 1:
            pos[i], found[i] = p, True
    return torch.tensor(kept, dtype=torch.long), pos, found


class SampleTransform:
    """Decoded sample -> the tensors one training example needs (picklable, no model inside)."""

    def __init__(
        self,
        *,
        tokenizer: Any,
        resolution: int,
        latent_size: int,
        clip_size: int,
        facial_token: str = "<|facial|>",
        max_regions: int = 5,
        caption_drop: float = 0.05,
        image_drop: float = 0.05,
        both_drop: float = 0.05,
        min_region_pixels: int = 16,
        seed: int = 0,
    ):
        self.tokenizer = tokenizer
        self.resolution = resolution
        self.latent_size = latent_size
        self.clip_size = clip_size
        self.facial_token = facial_token
        self.max_regions = max_regions
        self.drops = (caption_drop, image_drop, both_drop)
        self.min_region_pixels = min_region_pixels
        self.seed = seed

    def drop_mode(self, key: str, epoch: int) -> str:
        """'none' | 'caption' | 'image' | 'both', a pure function of (seed, epoch, key)."""
        u = random.Random(f"{self.seed}:{epoch}:{key}").random()
        c, i, b = self.drops
        if u < c:
            return "caption"
        if u < c + i:
            return "image"
        if u < c + i + b:
            return "both"
        return "none"

    def __call__(self, sample: DecodedSample, epoch: int = 0) -> dict[str, Any]:
        image = sample.image
        pixels = np.asarray(image)
        res = self.resolution
        resized = image.resize((res, res), Image.BICUBIC) if image.size != (res, res) else image
        img = torch.from_numpy(np.asarray(resized, dtype=np.float32).transpose(2, 0, 1).copy())
        img = img / 127.5 - 1.0

        present = (sample.meta.get("regions") or {}) if isinstance(sample.meta, dict) else {}
        names, crops, masks = [], [], []
        for name in REGION_NAMES:
            if len(names) == self.max_regions:
                break
            sel = np.isin(sample.mask, REGION_LABELS[name])
            if present.get(name, {}).get("present") is False or sel.sum() < self.min_region_pixels:
                continue
            names.append(name)
            crops.append(clip_preprocess(region_crop(pixels, sel), self.clip_size))
            masks.append(sel)
        fg = np.isin(sample.mask, FOREGROUND_LABELS)
        size = self.latent_size
        stack = torch.from_numpy(np.stack(masks + [fg]).astype(np.float32))[:, None]
        small = F.interpolate(stack, size=(size, size), mode="area")[:, 0]

        r = self.max_regions
        region_pixels = torch.zeros(r, 3, self.clip_size, self.clip_size)
        region_masks = torch.zeros(r, size, size)
        if names:
            region_pixels[: len(names)] = torch.stack(crops)
            region_masks[: len(names)] = small[:-1]

        mode = self.drop_mode(sample.key, epoch)
        text = (
            ""
            if mode in ("caption", "both")
            else facial_prompt(sample.meta, names, self.facial_token, self.tokenizer)
        )
        input_ids, positions, found = tokenize_with_markers(
            self.tokenizer, text, self.facial_token, r
        )
        valid = found.clone()
        valid[len(names) :] = False
        id_embed = torch.from_numpy(sample.id_embed)
        clip_image = clip_preprocess(image, self.clip_size)
        if mode in ("image", "both"):
            id_embed = torch.zeros_like(id_embed)
            clip_image = torch.zeros_like(clip_image)
        return {
            "key": sample.key,
            "pixel_values": img,
            "clip_image": clip_image,
            "region_pixels": region_pixels,
            "region_masks": region_masks,
            "facial_positions": positions,
            "facial_valid": valid,
            "foreground_mask": small[-1:].clone(),
            "id_embed": id_embed,
            "input_ids": input_ids,
            "prompt": text,
            "drop": mode,
        }


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in examples[0].items():
        values = [e[name] for e in examples]
        out[name] = torch.stack(values) if isinstance(value, torch.Tensor) else values
    return out


@dataclass(frozen=True)
class SampleFilter:
    """Which raw samples the stream keeps: one split's keys (`fgid split`: OUT/splits.parquet)
    and not on an opt-out list (`fgid erase` / OUT/optout.txt), so shards made before the list
    train without the person. Applied before decoding; picklable for dataloader workers."""

    keys: frozenset[str] | None = None  # None: every key
    optout_sha256: frozenset[str] = frozenset()
    optout_keys: frozenset[str] = frozenset()

    def keep(self, raw: dict[str, Any]) -> bool:
        key = raw.get("__key__")
        if self.keys is not None and key not in self.keys:
            return False
        if key in self.optout_keys:
            return False
        if self.optout_sha256 and "json" in raw:
            try:
                sha = (json.loads(raw["json"]).get("source") or {}).get("sha256")
            except (ValueError, AttributeError):
                return True  # a corrupt sample: decode_sample reports it
            return sha not in self.optout_sha256
        return True


def sample_filter(
    urls: list[str], *, split: str | None, splits: str | None, exclude: list[str]
) -> SampleFilter | None:
    """The filter for `data.split`/`data.splits`/`data.exclude`; the dataset folder (the
    parent of the shards' folder) gives the default splits.parquet and its own optout.txt."""
    from pathlib import Path

    from fgid_builder.optout import OPTOUT, read_lists
    from fgid_builder.splits import SPLITS, keys_in_split

    local = [_local_path(u) for u in urls]
    datasets = sorted({Path(p).resolve().parent.parent for p in local if p is not None})
    keys = None
    if split:
        path = splits or next((str(d / SPLITS) for d in datasets if (d / SPLITS).is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"data.split={split!r} needs a splits.parquet (`fgid split OUT`, or data.splits)"
            )
        keys = frozenset(keys_in_split(path, split))
    lists = list(exclude) + [str(d / OPTOUT) for d in datasets if (d / OPTOUT).is_file()]
    listed = read_lists(lists)
    if keys is None and not listed:
        return None
    return SampleFilter(keys, frozenset(listed.sha256), frozenset(listed.keys))


class FGIDStream(IterableDataset):
    """Endless batches over epochs; rank/worker split, seeded shuffle, exact resume by batch count.

    Batches are formed inside the workers and the DataLoader takes them round-robin, so global
    batch `n` is batch `n // W` of worker `n % W`: skipping `start_batch` batches is exact.
    """

    def __init__(
        self,
        urls: list[str],
        transform: SampleTransform,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 256,
        strict: bool = False,
        start_batch: int = 0,
        max_epochs: int | None = None,
        verify: bool = True,
        id_norm_tolerance: float = ID_NORM_TOLERANCE,
        sample_filter: SampleFilter | None = None,
    ):
        super().__init__()
        self.sample_filter = sample_filter
        for url in urls:
            check_shard_url(url)
        self.urls = list(urls)
        self.transform = transform
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.strict = strict
        self.start_batch = start_batch
        self.max_epochs = max_epochs
        self.verify = verify
        self.id_norm_tolerance = id_norm_tolerance
        self.stats = {
            "samples": 0,
            "corrupt_samples": 0,
            "corrupt_shards": 0,
            "unverified_shards": 0,
            "filtered": 0,  # not in the split, or on an opt-out list
        }

    def _fail(self, kind: str, message: str) -> None:
        self.stats[kind] += 1
        if self.strict:
            raise CorruptSample(message)
        log.warning(
            "skipped %s (%s so far): %s", kind.replace("_", " ")[:-1], self.stats[kind], message
        )

    def _raw_epoch(self, epoch: int, part: int, parts: int) -> Iterator[dict[str, Any]]:
        rng = random.Random(f"{self.seed}:shards:{epoch}")
        urls = self.urls[:]
        rng.shuffle(urls)
        by_shard = len(urls) >= parts
        mine = urls[part::parts] if by_shard else urls
        index = 0
        for url in mine:
            try:
                for raw in iter_shard(url, verify=self.verify):
                    if self.sample_filter is not None and not self.sample_filter.keep(raw):
                        self.stats["filtered"] += 1
                        continue
                    if not by_shard:
                        index += 1
                        if (index - 1) % parts != part:
                            continue
                    yield raw
            except UnverifiedShard as exc:
                self._fail("unverified_shards", str(exc))
            except (tarfile.TarError, OSError, EOFError) as exc:
                self._fail("corrupt_shards", f"{url}: {type(exc).__name__}: {exc}")

    def _shuffled(self, raws: Iterator[dict[str, Any]], rng: random.Random) -> Iterator[dict]:
        if self.shuffle_buffer <= 1:
            yield from raws
            return
        buf: list[dict[str, Any]] = []
        for raw in raws:
            buf.append(raw)
            if len(buf) >= self.shuffle_buffer:
                i = rng.randrange(len(buf))
                buf[i], buf[-1] = buf[-1], buf[i]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        part, parts = self.rank * workers + worker, self.world_size * workers
        # Round-robin: of the first start_batch batches, this worker produced these many.
        skip = self.start_batch // workers + (1 if worker < self.start_batch % workers else 0)
        skip_samples = skip * self.batch_size
        epoch = 0
        batch: list[dict[str, Any]] = []
        while self.max_epochs is None or epoch < self.max_epochs:
            rng = random.Random(f"{self.seed}:samples:{epoch}:{part}")
            produced = 0
            for raw in self._shuffled(self._raw_epoch(epoch, part, parts), rng):
                try:
                    sample = decode_sample(raw, self.id_norm_tolerance)
                except CorruptSample as exc:
                    self._fail("corrupt_samples", f"{raw.get('__url__')}: {exc}")
                    continue
                produced += 1
                if skip_samples:
                    skip_samples -= 1
                    continue
                self.stats["samples"] += 1
                batch.append(self.transform(sample, epoch))
                if len(batch) == self.batch_size:
                    out = collate(batch)
                    out["epoch"] = epoch
                    out["stats"] = dict(self.stats)
                    yield out
                    batch = []
            if produced == 0:
                raise RuntimeError(
                    f"rank {self.rank} worker {worker} got no readable sample from "
                    f"{len(self.urls)} shard(s) in epoch {epoch}"
                )
            epoch += 1


def make_dataloader(
    urls: list[str],
    transform: SampleTransform,
    *,
    batch_size: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    shuffle_buffer: int = 256,
    strict: bool = False,
    start_batch: int = 0,
    verify: bool = True,
    id_norm_tolerance: float = ID_NORM_TOLERANCE,
    sample_filter: SampleFilter | None = None,
) -> DataLoader:
    dataset = FGIDStream(
        urls,
        transform,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        strict=strict,
        start_batch=start_batch,
        verify=verify,
        id_norm_tolerance=id_norm_tolerance,
        sample_filter=sample_filter,
    )
    return DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        prefetch_factor=2 if num_workers > 0 else None,
    )


def peek_sample(urls: list[str], *, verify: bool = True) -> DecodedSample:
    """The first readable (and verified) sample: the model's input dim and the builder models
    come from it."""
    reasons: list[str] = []
    for url in urls:
        try:
            for raw in iter_shard(url, verify=verify):
                try:
                    return decode_sample(raw)
                except CorruptSample as exc:
                    reasons.append(str(exc))
                    continue
        except (UnverifiedShard, tarfile.TarError, OSError, EOFError) as exc:
            reasons.append(str(exc))
            continue
    first = f" (first: {reasons[0]})" if reasons else ""
    raise RuntimeError(f"no readable sample in {len(urls)} shard(s){first}")


def peek_id_dim(urls: list[str], *, verify: bool = True) -> int:
    """The identity embedding size of the first readable sample (the model's input dim)."""
    return int(peek_sample(urls, verify=verify).id_embed.shape[0])
