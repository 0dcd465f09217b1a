"""Export fgid shards to the folder + JSON layout the official ConsistentID `train.py` reads.

Layout written under DEST (all names derive from the sample key, never from a source file name):

    resize_IMG/{key}.jpg            the 512 portrait            -> --data_root_path
    parsing_mask_IMG/{key}.png      label map, CelebAMask-HQ ids -> --parsing_root_path
    parsing_color_IMG/{key}.png     colour preview of the mask
    all_faceID/{key}_faceid.bin     (1, D) float32 tensor       -> --faceid_root_path
    origin_IMG/{key}.jpg            the upright source photo, re-encoded without EXIF
                                    (only when the source is readable, see `source_root`)
    FGID_JSON/{key}.json            one record per sample
    JSON_all.json                   the merged list              -> --data_json_file

The official loader calls `torch.load` on the identity file, so that one file is written with
`torch.save` of a bare tensor (it loads with `weights_only=True`); everything else is
image/JSON. The official dataset maps mask values with its own table, which agrees with the
face-parsing.PyTorch ids for every region it uses (1 face, 4/5 eyes, 7/8 ears, 10 nose, 12/13
lips); of each left/right pair it keeps the first id, 4 or 7: the subject's left, which is what
fgid's masks hold there. Its foreground is label 0's filled outer contour inverted, so a mask
must separate the person from the background (the embedded parser's cut does) for that
foreground not to be empty. Colour previews draw each id in CelebAMask-HQ's colour of its class
(`schema.LABEL_COLORS`).
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fgid_builder.schema import LABEL_COLORS, load_npy

log = logging.getLogger(__name__)

OFFICIAL_ID_DIM = 512  # insightface buffalo_l, what the official model's MLP expects


@dataclass
class ExportSummary:
    samples: int = 0
    originals: int = 0
    originals_missing: int = 0
    id_dim: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def color_mask(mask: np.ndarray) -> np.ndarray:
    """RGB preview of a label map in the CelebAMask-HQ palette."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for i, rgb in LABEL_COLORS.items():
        lut[i] = rgb
    return lut[mask]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _tensor_file_bytes(vec: np.ndarray) -> bytes:
    try:
        import torch
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "the official layout's id_embed_file_* are torch tensor files: "
            "pip install 'fgid[export]'"
        ) from e

    buf = io.BytesIO()
    torch.save(torch.from_numpy(np.ascontiguousarray(vec, dtype=np.float32)).reshape(1, -1), buf)
    return buf.getvalue()


def _original_bytes(meta: dict[str, Any], source_root: Path | None) -> bytes | None:
    """The source photo, upright and re-encoded (no EXIF), if it can be found and still matches."""
    from fgid_builder.io import decode_image
    from fgid_builder.schema import sha256_bytes

    uri = meta["source"]["uri"]
    candidates = [Path(uri)]
    if source_root is not None:
        candidates.insert(0, source_root / uri)
    for cand in candidates:
        try:
            data = cand.read_bytes()
        except OSError:
            continue
        if sha256_bytes(data) != meta["source"]["sha256"]:
            log.warning("source %s changed since the build; original not exported", cand)
            return None
        buf = io.BytesIO()
        Image.fromarray(decode_image(data).rgb).save(buf, format="JPEG", quality=95)
        return buf.getvalue()
    return None


def export_samples(
    samples: Iterable[dict[str, bytes]],
    dest: str | os.PathLike,
    *,
    source_root: str | os.PathLike | None = None,
    originals: bool = True,
) -> ExportSummary:
    """Write samples (WebDataset member dicts: `__key__`, jpg, mask.png, id.npy, json) to DEST."""
    dest = Path(dest)
    dirs = {
        name: dest / name
        for name in (
            "resize_IMG",
            "parsing_mask_IMG",
            "parsing_color_IMG",
            "all_faceID",
            "FGID_JSON",
            "origin_IMG",
        )
    }
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    root = Path(source_root) if source_root else None
    summary = ExportSummary()
    records: list[dict[str, Any]] = []
    for members in samples:
        key = members["__key__"]
        meta = json.loads(members["json"])
        mask = np.array(Image.open(io.BytesIO(members["mask.png"])))
        emb = load_npy(members["id.npy"]).astype(np.float32)
        summary.id_dim = int(emb.shape[0])
        _atomic_write(dirs["resize_IMG"] / f"{key}.jpg", members["jpg"])
        _atomic_write(dirs["parsing_mask_IMG"] / f"{key}.png", members["mask.png"])
        _atomic_write(dirs["parsing_color_IMG"] / f"{key}.png", _png_bytes(color_mask(mask)))
        _atomic_write(dirs["all_faceID"] / f"{key}_faceid.bin", _tensor_file_bytes(emb))
        captions = meta.get("captions") or {}
        record: dict[str, Any] = {
            "resize_IMG": f"{key}.jpg",
            "parsing_color_IMG": f"{key}.png",
            "parsing_mask_IMG": f"{key}.png",
            "vqa_llva": captions.get("global", ""),
            "vqa_llva_more_face_detail": captions.get("facial", ""),
            "id_embed_file_resize": f"{key}_faceid.bin",
            "fgid_key": key,
        }
        if originals:
            data = _original_bytes(meta, root)
            if data is None:
                summary.originals_missing += 1
            else:
                _atomic_write(dirs["origin_IMG"] / f"{key}.jpg", data)
                record["origin_IMG"] = f"{key}.jpg"
                summary.originals += 1
        _atomic_write(
            dirs["FGID_JSON"] / f"{key}.json", json.dumps(record, sort_keys=True).encode()
        )
        records.append(record)
        summary.samples += 1
    records.sort(key=lambda r: r["fgid_key"])
    _atomic_write(dest / "JSON_all.json", json.dumps(records, sort_keys=True, indent=1).encode())
    if summary.id_dim is not None and summary.id_dim != OFFICIAL_ID_DIM:
        log.warning(
            "identity embeddings are %d-d; the official ConsistentID model expects %d-d "
            "(insightface ArcFace): build with --embedder arcface for the official train.py",
            summary.id_dim,
            OFFICIAL_ID_DIM,
        )
    return summary


def official_train_args(dest: str | os.PathLike) -> list[str]:
    """The flags that point the official train.py at an export."""
    dest = Path(dest)
    return [
        f"--data_json_file={dest / 'JSON_all.json'}",
        f"--data_root_path={dest / 'resize_IMG'}",
        f"--parsing_root_path={dest / 'parsing_mask_IMG'}",
        f"--faceid_root_path={dest / 'all_faceID'}",
    ]
