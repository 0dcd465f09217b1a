"""Does a generator keep identity? Scores generated portraits against one reference per person.

Layout read (`load_eval_set`): REFS holds `{identity}.jpg|jpeg|png|webp`; GENS holds
`{identity}/*.jpg|jpeg|png|webp` and optionally `{identity}/prompts.jsonl` with lines
`{"file": "<name in that folder>", "prompt": "..."}`. An identity found on one side only is
listed under `skipped` and not scored.

What is computed (every similarity is a cosine in [-1, 1], never rescaled):

- **facesim**: identity cosine between the reference's face and each generated face. Each image
  goes through the builder's own chain: decode (EXIF upright) -> detect backend -> the largest
  face -> FFHQ alignment to the 512 portrait -> embed backend. A generated image without a
  detected face scores 0 (so a generator that loses the face is not rewarded) and is counted in
  `no_face`; a reference without a face makes the identity null with the reason.
- **fgis**: fine-grained identity similarity, per facial region. The parse backend labels both
  aligned portraits; for each region of `schema.REGION_NAMES` (face = skin, ears, eyes, nose,
  mouth) present in both, the region's pixels are cut out: the mask's bounding box grown by 15%
  (at least 8 px) to a square, pixels outside the region's labels set to grey (128); the two
  crops are encoded by the image feature model (DINO's CLS token when `--dino` is given, else
  CLIP's image embedding) and compared by cosine. An image's FGIS is the mean over its regions;
  `per_region` has each region on its own. Regions missing on either side are left out (the
  landmark parser never labels ears, for instance).
- **clip_t**: CLIP cosine between a generated image and its prompt (prompts.jsonl); images
  without a prompt are left out.
- **clip_i**: CLIP image-embedding cosine between a generated image and the reference (whole
  images).
- **dino**: cosine of DINO CLS tokens (last hidden state, token 0) between a generated image and
  the reference (whole images), as DreamBooth's DINO score.
- **fid**: Fréchet Inception Distance between all references and all generated images (a set
  statistic, so there is no per-identity value), Inception pool3 features (see eval/fid.py).

Aggregation: an identity's value is the mean over its generated images; `mean` is the mean over
identities (each person weighs the same), `mean_images` the mean over all images. A metric whose
model is not configured is `null` with `reason`; a configured model that is missing is an error.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fgid_builder.models import dir_sha256, resolve_models_dir
from fgid_builder.schema import REGION_LABELS, REGION_NAMES, FaceSample, ModelFileError, ModelInfo

log = logging.getLogger("fgid.eval")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
PROMPTS_FILE = "prompts.jsonl"
METRICS = ("facesim", "fgis", "clip_t", "clip_i", "dino", "fid")
# Where `--models-dir` is searched for models not given explicitly.
DEFAULT_MODEL_PATHS = {
    "clip": "clip",
    "dino": "dino",
    "inception": "inception/pt_inception-2015-12-05-6726825d.pth",
}
REGION_MARGIN = 0.15
REGION_FILL = 128


# --------------------------------------------------------------------------- the eval set


@dataclass
class Identity:
    name: str
    ref: Path
    gens: list[Path]
    prompts: dict[str, str] = field(default_factory=dict)  # gen file name -> prompt


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_prompts(path: Path) -> dict[str, str]:
    """`{"file", "prompt"}` lines -> {file name: prompt}; a bad line is an error with its number."""
    prompts: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            prompts[Path(rec["file"]).name] = str(rec["prompt"])
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f'{path}:{n}: expected {{"file", "prompt"}} ({e})') from None
    return prompts


def load_eval_set(
    refs: str | os.PathLike, gens: str | os.PathLike
) -> tuple[list[Identity], list[dict]]:
    """The identities present on both sides, sorted by name, and those skipped (with why)."""
    refs, gens = Path(refs), Path(gens)
    for p, what in ((refs, "REFS"), (gens, "GENS")):
        if not p.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {p}")
    ref_by_name: dict[str, Path] = {}
    for p in _images_in(refs):
        if p.stem in ref_by_name:
            raise ValueError(f"two reference images for identity {p.stem!r} in {refs}")
        ref_by_name[p.stem] = p
    gen_dirs = {d.name: d for d in sorted(gens.iterdir()) if d.is_dir()}
    identities, skipped = [], []
    for name in sorted(set(ref_by_name) | set(gen_dirs)):
        if name not in gen_dirs:
            skipped.append({"identity": name, "reason": f"no folder {gens / name}"})
            continue
        if name not in ref_by_name:
            skipped.append({"identity": name, "reason": f"no reference image {name}.* in {refs}"})
            continue
        images = _images_in(gen_dirs[name])
        if not images:
            skipped.append({"identity": name, "reason": f"no images in {gen_dirs[name]}"})
            continue
        prompts_path = gen_dirs[name] / PROMPTS_FILE
        prompts = read_prompts(prompts_path) if prompts_path.is_file() else {}
        identities.append(Identity(name, ref_by_name[name], images, prompts))
    if not identities:
        raise ValueError(f"no identity has both a reference in {refs} and images in {gens}")
    return identities, skipped


def load_rgb(path: Path) -> np.ndarray:
    """Upright RGB uint8 pixels (the builder's decoder: EXIF, modes, size limits)."""
    from fgid_builder.io import decode_image

    return decode_image(path.read_bytes(), min_side=16).rgb


# --------------------------------------------------------------------------- faces


@dataclass
class FaceResult:
    """One image's face: the aligned sample (portrait, mask, embedding) or why there is none."""

    sample: FaceSample | None
    reason: str | None = None


class FaceAnalyzer:
    """decode -> detect -> largest face -> align -> parse / embed, with a per-file cache."""

    def __init__(self, *, detector: Any, parser: Any | None, embedder: Any | None):
        self.detector = detector
        self.parser = parser
        self.embedder = embedder
        self._cache: dict[str, FaceResult] = {}

    @classmethod
    def create(
        cls,
        *,
        detector: str,
        parser: str | None,
        embedder: str | None,
        models_dir: str | None = None,
    ) -> FaceAnalyzer:
        from fgid_builder.registry import create

        return cls(
            detector=create("detect", detector, models_dir=models_dir),
            parser=None if parser is None else create("parse", parser, models_dir=models_dir),
            embedder=None if embedder is None else create("embed", embedder, models_dir=models_dir),
        )

    def model_infos(self) -> dict[str, dict[str, Any]]:
        out = {"detect": self.detector.model_info().to_json()}
        if self.parser is not None:
            out["parse"] = self.parser.model_info().to_json()
        if self.embedder is not None:
            out["embed"] = self.embedder.model_info().to_json()
        return out

    def analyze(self, path: Path) -> FaceResult:
        key = str(Path(path).resolve())
        if key not in self._cache:
            self._cache[key] = self._analyze(Path(path))
        return self._cache[key]

    def _analyze(self, path: Path) -> FaceResult:
        from fgid_builder.faces import build_sample, sort_faces
        from fgid_builder.io import decode_image
        from fgid_builder.schema import ImageRejected, sha256_bytes

        data = path.read_bytes()
        try:
            decoded = decode_image(data, min_side=16)
        except ImageRejected as e:
            return FaceResult(None, f"{e.reason.value}: {e.detail}")
        detections = self.detector.detect([decoded.rgb])[0]
        if not detections:
            return FaceResult(None, "no face detected")
        source = {
            "uri": str(path),
            "sha256": sha256_bytes(data),
            "width": decoded.width,
            "height": decoded.height,
        }
        sample = build_sample(decoded, sort_faces(detections)[0], index=0, source=source)
        if self.parser is not None:
            sample.mask = np.asarray(self.parser.parse([sample])[0], dtype=np.uint8)
        if self.embedder is not None:
            v = np.asarray(self.embedder.embed([sample])[0], dtype=np.float64)
            sample.embedding = v / max(np.linalg.norm(v), 1e-12)
        return FaceResult(sample)


def region_crop(portrait: np.ndarray, mask: np.ndarray, region: str) -> np.ndarray | None:
    """The FGIS crop of one region (see the module docstring), or None when it is absent."""
    sel = np.isin(mask, REGION_LABELS[region])
    if not sel.any():
        return None
    ys, xs = np.nonzero(sel)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    side = max(x1 - x0, y1 - y0)
    side = int(math.ceil(side + max(2 * REGION_MARGIN * side, 16)))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    h, w = mask.shape
    left, top = int(round(cx - side / 2)), int(round(cy - side / 2))
    out = np.full((side, side, 3), REGION_FILL, dtype=np.uint8)
    sx0, sy0 = max(left, 0), max(top, 0)
    sx1, sy1 = min(left + side, w), min(top + side, h)
    patch = np.where(sel[sy0:sy1, sx0:sx1, None], portrait[sy0:sy1, sx0:sx1], REGION_FILL)
    out[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = patch
    return out


# --------------------------------------------------------------------------- image models


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _require_dir(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not (p / "config.json").is_file():
        raise ModelFileError(
            f"{what} not found: {p} (expected a transformers save_pretrained folder with "
            "config.json, weights and the processor files)"
        )
    return p


def _batched(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _pil(images: Sequence[np.ndarray]) -> list[Any]:
    from PIL import Image

    return [Image.fromarray(np.asarray(im, dtype=np.uint8)) for im in images]


def _unit(x: Any) -> np.ndarray:
    a = x.detach().float().cpu().numpy().astype(np.float64)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)


def _pooled(out: Any) -> Any:
    """transformers 4.x returns a tensor from get_*_features, 5.x an output with pooler_output."""
    return out if hasattr(out, "detach") else out.pooler_output


class _LocalImageEncoder:
    """A transformers model + processor from a local folder, loaded on first use.

    Subclasses name the folder (`kind`), how to load the pair (`_load_pair`) and how a batch of
    pixel values becomes one row per image (`_embed_pixels`); rows come back unit-norm.
    """

    kind = "model"

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", batch_size: int = 16):
        self.path = _require_dir(path, f"{self.kind.upper()} model folder")
        self.device = _device(device)
        self.batch_size = batch_size
        self._model: Any = None
        self._processor: Any = None

    def _load_pair(self) -> tuple[Any, Any]:
        raise NotImplementedError

    def _embed_pixels(self, pixel_values: Any) -> Any:
        raise NotImplementedError

    def _load(self) -> None:
        if self._model is None:
            model, self._processor = self._load_pair()
            self._model = model.to(self.device).eval()

    def model_info(self) -> ModelInfo:
        return ModelInfo(
            name=f"{self.kind}:{self.path.name}",
            version="transformers",
            weights_sha256=dir_sha256(self.path),
        )

    def images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        self._load()
        rows = []
        for batch in _batched(images, self.batch_size):
            px = self._processor(images=_pil(batch), return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                rows.append(_unit(self._embed_pixels(px.to(self.device))))
        return np.concatenate(rows) if rows else np.zeros((0, 0))


class ClipEncoder(_LocalImageEncoder):
    """CLIPModel + CLIPProcessor from a local folder; unit-norm image/text embeddings."""

    kind = "clip"

    def _load_pair(self) -> tuple[Any, Any]:
        from transformers import CLIPModel, CLIPProcessor

        return CLIPModel.from_pretrained(str(self.path)), CLIPProcessor.from_pretrained(
            str(self.path)
        )

    def _embed_pixels(self, pixel_values: Any) -> Any:
        return _pooled(self._model.get_image_features(pixel_values=pixel_values))

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        self._load()
        rows = []
        max_len = getattr(self._model.config.text_config, "max_position_embeddings", 77)
        for batch in _batched(texts, self.batch_size):
            tok = self._processor(
                text=list(batch),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_len,
            )
            with torch.inference_mode():
                out = self._model.get_text_features(
                    input_ids=tok["input_ids"].to(self.device),
                    attention_mask=tok["attention_mask"].to(self.device),
                )
            rows.append(_unit(_pooled(out)))
        return np.concatenate(rows) if rows else np.zeros((0, 0))


class DinoEncoder(_LocalImageEncoder):
    """A DINO / DINOv2 ViT (AutoModel + AutoImageProcessor) from a local folder; CLS tokens."""

    kind = "dino"

    def _load_pair(self) -> tuple[Any, Any]:
        from transformers import AutoImageProcessor, AutoModel

        return AutoModel.from_pretrained(str(self.path)), AutoImageProcessor.from_pretrained(
            str(self.path)
        )

    def _embed_pixels(self, pixel_values: Any) -> Any:
        return self._model(pixel_values=pixel_values).last_hidden_state[:, 0]


# --------------------------------------------------------------------------- config + run


@dataclass
class EvalConfig:
    """Every `fgid eval` option, one field each (`fgid eval --help` is the reference)."""

    refs: str
    gens: str
    out: str = "metrics.json"
    csv: str | None = None  # default: OUT with .csv (per identity) and _images.csv (per image)
    detector: str = "dlib"
    embedder: str | None = "dlib"  # None: no facesim
    parser: str | None = "landmarks"  # None: no fgis
    clip: str | None = None
    dino: str | None = None
    inception: str | None = None
    models_dir: str | None = None
    fgis_model: str = "auto"  # auto (dino, else clip) | dino | clip
    device: str = "auto"
    batch_size: int = 16
    progress: bool = True

    def __post_init__(self) -> None:
        if self.fgis_model not in ("auto", "dino", "clip"):
            raise ValueError("fgis_model must be auto, dino or clip")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        base = resolve_models_dir(self.models_dir)
        if base is not None:  # models not given explicitly are looked up in --models-dir
            for name, rel in DEFAULT_MODEL_PATHS.items():
                if getattr(self, name) is None and (base / rel).exists():
                    setattr(self, name, str(base / rel))


def _null(reason: str) -> dict[str, Any]:
    return {"mean": None, "mean_images": None, "per_identity": None, "n": 0, "reason": reason}


def _aggregate(per_image: dict[str, list[float]]) -> dict[str, Any]:
    """{identity: [values]} -> mean over identities, mean over images, per identity."""
    per_identity = {k: float(np.mean(v)) for k, v in per_image.items() if v}
    flat = [x for v in per_image.values() for x in v]
    if not per_identity:
        return _null("no image could be scored")
    return {
        "mean": float(np.mean(list(per_identity.values()))),
        "mean_images": float(np.mean(flat)),
        "std_images": float(np.std(flat)),
        "per_identity": dict(sorted(per_identity.items())),
        "n": len(flat),
        "reason": None,
    }


def _bar(items: Sequence[Any], desc: str, enabled: bool) -> Any:
    return tqdm(items, desc=desc, unit="img", disable=not enabled, leave=False)


def run_eval(cfg: EvalConfig, *, faces: FaceAnalyzer | None = None) -> dict[str, Any]:
    """Compute every configured metric; returns the metrics.json record (see module docstring).

    `faces` lets a caller share a FaceAnalyzer (and its per-file cache) between runs."""
    identities, skipped = load_eval_set(cfg.refs, cfg.gens)
    for s in skipped:
        log.warning("skipping identity %s: %s", s["identity"], s["reason"])
    rows: list[dict[str, Any]] = [
        {"identity": ident.name, "file": g.name, "path": g}
        for ident in identities
        for g in ident.gens
    ]
    models: dict[str, Any] = {}
    metrics: dict[str, Any] = {}

    # Faces: facesim + fgis share detection and alignment.
    need_faces = cfg.embedder is not None or cfg.parser is not None
    if need_faces and faces is None:
        faces = FaceAnalyzer.create(
            detector=cfg.detector,
            parser=cfg.parser,
            embedder=cfg.embedder,
            models_dir=cfg.models_dir,
        )
    ref_faces: dict[str, FaceResult] = {}
    if faces is not None and need_faces:
        models.update(faces.model_infos())
        paths = [i.ref for i in identities] + [r["path"] for r in rows]
        results = {p: faces.analyze(p) for p in _bar(paths, "faces", cfg.progress)}
        ref_faces = {i.name: results[i.ref] for i in identities}
        for r in rows:
            res = results[r["path"]]
            r["face"] = res
            r["face_detected"] = res.sample is not None
    metrics["facesim"] = _facesim(cfg, identities, rows, ref_faces, faces)

    # Image feature models.
    clip = ClipEncoder(cfg.clip, device=cfg.device, batch_size=cfg.batch_size) if cfg.clip else None
    dino = DinoEncoder(cfg.dino, device=cfg.device, batch_size=cfg.batch_size) if cfg.dino else None
    if clip is not None:
        models["clip"] = clip.model_info().to_json()
    if dino is not None:
        models["dino"] = dino.model_info().to_json()
    pixels: dict[Path, np.ndarray] = {}

    def rgb(p: Path) -> np.ndarray:
        if p not in pixels:
            pixels[p] = load_rgb(p)
        return pixels[p]

    metrics["fgis"] = _fgis(cfg, identities, rows, ref_faces, clip, dino)
    for name, encoder in (("clip_i", clip), ("dino", dino)):
        metrics[name] = _image_similarity(name, cfg, identities, rows, encoder, rgb)
    metrics["clip_t"] = _clip_t(cfg, identities, rows, clip, rgb)
    fid, inception_info = _fid(cfg, identities, rows, rgb)
    metrics["fid"] = fid
    if inception_info is not None:
        models["inception"] = inception_info
    pixels.clear()

    return {
        "refs": str(cfg.refs),
        "gens": str(cfg.gens),
        "identities": [i.name for i in identities],
        "n_identities": len(identities),
        "n_images": len(rows),
        "skipped": skipped,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)},
        "models": models,
        "metrics": metrics,
        "images": [{k: v for k, v in r.items() if k not in ("path", "face")} for r in rows],
    }


def _facesim(cfg, identities, rows, ref_faces, faces) -> dict[str, Any]:
    if cfg.embedder is None or faces is None:
        return _null("no embed backend configured (--embedder NAME)")
    per: dict[str, list[float]] = {}
    reasons: dict[str, str] = {}
    no_face = 0
    for ident in identities:
        ref = ref_faces[ident.name]
        if ref.sample is None:
            reasons[ident.name] = f"reference {ident.ref.name}: {ref.reason}"
            continue
        per[ident.name] = []
    for r in rows:
        if r["identity"] not in per:
            r["facesim"] = None
            continue
        res: FaceResult = r["face"]
        if res.sample is None:
            no_face += 1
            value = 0.0
        else:
            ref = ref_faces[r["identity"]].sample
            value = float(np.dot(ref.embedding, res.sample.embedding))
        r["facesim"] = value
        per[r["identity"]].append(value)
    out = _aggregate(per)
    out["no_face"] = no_face
    out["detection_rate"] = 1.0 - no_face / max(len(rows), 1)
    out["identities_without_reference_face"] = reasons
    return out


def _fgis(cfg, identities, rows, ref_faces, clip, dino) -> dict[str, Any]:
    if cfg.parser is None:
        return _null("no parse backend configured (--parser NAME)")
    want = cfg.fgis_model
    encoder = (dino if want in ("auto", "dino") else None) or (
        clip if want in ("auto", "clip") else None
    )
    if encoder is None:
        need = {"auto": "--dino DIR or --clip DIR", "dino": "--dino DIR", "clip": "--clip DIR"}[
            want
        ]
        return _null(f"no image feature model for the region crops ({need})")
    ref_crops: dict[str, dict[str, np.ndarray]] = {}
    for ident in identities:
        s = ref_faces[ident.name].sample
        if s is not None and s.mask is not None:
            ref_crops[ident.name] = {
                reg: c
                for reg in REGION_NAMES
                if (c := region_crop(s.portrait, s.mask, reg)) is not None
            }
    per_region: dict[str, dict[str, list[float]]] = {reg: {} for reg in REGION_NAMES}
    per_image: dict[str, list[float]] = {i.name: [] for i in identities if i.name in ref_crops}
    for r in _bar(rows, "fgis", cfg.progress):
        r["fgis"] = None
        refc = ref_crops.get(r["identity"])
        res: FaceResult | None = r.get("face")
        if refc is None or res is None or res.sample is None or res.sample.mask is None:
            continue
        pairs = []
        for reg, ref_crop in refc.items():
            crop = region_crop(res.sample.portrait, res.sample.mask, reg)
            if crop is not None:
                pairs.append((reg, ref_crop, crop))
        if not pairs:
            continue
        feats = encoder.images([p[1] for p in pairs] + [p[2] for p in pairs])
        k = len(pairs)
        sims = (feats[:k] * feats[k:]).sum(axis=1)
        for (reg, _, _), s in zip(pairs, sims, strict=True):
            r[f"fgis_{reg}"] = float(s)
            per_region[reg].setdefault(r["identity"], []).append(float(s))
        r["fgis"] = float(np.mean(sims))
        per_image[r["identity"]].append(r["fgis"])
    out = _aggregate(per_image)
    out["feature_model"] = "dino" if encoder is dino else "clip"
    out["per_region"] = {
        reg: _aggregate(v) if v else _null("region absent in the parses")
        for reg, v in per_region.items()
    }
    return out


def _image_similarity(name, cfg, identities, rows, encoder, rgb) -> dict[str, Any]:
    if encoder is None:
        flag = "--clip DIR" if name == "clip_i" else "--dino DIR"
        return _null(
            f"model not configured ({flag} or --models-dir with {DEFAULT_MODEL_PATHS['clip' if name == 'clip_i' else 'dino']}/)"
        )
    refs = encoder.images([rgb(i.ref) for i in identities])
    ref_by = {i.name: refs[n] for n, i in enumerate(identities)}
    per: dict[str, list[float]] = {i.name: [] for i in identities}
    for chunk in _batched(rows, cfg.batch_size * 4):
        feats = encoder.images([rgb(r["path"]) for r in chunk])
        for r, f in zip(chunk, feats, strict=True):
            r[name] = float(np.dot(f, ref_by[r["identity"]]))
            per[r["identity"]].append(r[name])
    return _aggregate(per)


def _clip_t(cfg, identities, rows, clip, rgb) -> dict[str, Any]:
    if clip is None:
        return _null("model not configured (--clip DIR or --models-dir with clip/)")
    prompts = {i.name: i.prompts for i in identities}
    todo = [r for r in rows if r["file"] in prompts[r["identity"]]]
    for r in rows:
        r["prompt"] = prompts[r["identity"]].get(r["file"])
        r["clip_t"] = None
    if not todo:
        return _null(f'no prompts ({{identity}}/{PROMPTS_FILE} with {{"file", "prompt"}} lines)')
    per: dict[str, list[float]] = {}
    for chunk in _batched(todo, cfg.batch_size * 4):
        img = clip.images([rgb(r["path"]) for r in chunk])
        txt = clip.texts([r["prompt"] for r in chunk])
        for r, s in zip(chunk, (img * txt).sum(axis=1), strict=True):
            r["clip_t"] = float(s)
            per.setdefault(r["identity"], []).append(float(s))
    out = _aggregate(per)
    out["without_prompt"] = len(rows) - len(todo)
    return out


def _fid(cfg, identities, rows, rgb) -> tuple[dict[str, Any], dict | None]:
    if cfg.inception is None:
        return {
            "value": None,
            "reason": "no Inception weights configured (--inception FILE or "
            f"--models-dir with {DEFAULT_MODEL_PATHS['inception']})",
        }, None
    from eval.fid import fid_from_features, inception_features, load_inception

    model, info = load_inception(cfg.inception)
    ref_paths = [i.ref for i in identities]
    gen_paths = [r["path"] for r in rows]
    if len(ref_paths) < 2 or len(gen_paths) < 2:
        return {
            "value": None,
            "reason": "FID needs at least 2 references and 2 generated images",
            "n_refs": len(ref_paths),
            "n_gens": len(gen_paths),
        }, info.to_json()
    ref_f = inception_features(model, (rgb(p) for p in ref_paths), batch_size=cfg.batch_size)
    gen_f = inception_features(
        model, (rgb(p) for p in _bar(gen_paths, "fid", cfg.progress)), batch_size=cfg.batch_size
    )
    return {
        "value": fid_from_features(ref_f, gen_f),
        "n_refs": len(ref_paths),
        "n_gens": len(gen_paths),
        "per_identity": None,
        "reason": None,
        "note": "a set statistic: all references vs all generated images",
    }, info.to_json()


# --------------------------------------------------------------------------- writing


def _scalar(m: dict[str, Any]) -> Any:
    return m.get("value") if "value" in m else m.get("mean")


def write_metrics(
    result: dict[str, Any], out: str | os.PathLike, csv_path: str | None = None
) -> list[Path]:
    """metrics.json, a per-identity CSV (plus a `__mean__` row) and a per-image CSV."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=False, default=str) + "\n")
    per_id_csv = Path(csv_path) if csv_path else out.with_suffix(".csv")
    images_csv = per_id_csv.with_name(per_id_csv.stem + "_images.csv")
    m = result["metrics"]
    names = [n for n in METRICS if n != "fid"]
    with open(per_id_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["identity", "n_images", *names, "fid"])
        counts: dict[str, int] = {}
        for r in result["images"]:
            counts[r["identity"]] = counts.get(r["identity"], 0) + 1
        for ident in result["identities"]:
            w.writerow(
                [ident, counts.get(ident, 0)]
                + [_fmt((m[n].get("per_identity") or {}).get(ident)) for n in names]
                + [""]
            )
        w.writerow(
            ["__mean__", result["n_images"]]
            + [_fmt(_scalar(m[n])) for n in names]
            + [_fmt(_scalar(m["fid"]))]
        )
    cols = [
        "identity",
        "file",
        "face_detected",
        "facesim",
        "fgis",
        *[f"fgis_{r}" for r in REGION_NAMES],
        "clip_t",
        "clip_i",
        "dino",
        "prompt",
    ]
    with open(images_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in result["images"]:
            w.writerow([_fmt(r.get(c)) for c in cols])
    return [out, per_id_csv, images_csv]


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6f}"
    return str(v)


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One line per metric for the terminal."""
    lines = [f"{result['n_identities']} identities, {result['n_images']} generated images"]
    for name in METRICS:
        m = result["metrics"][name]
        v = _scalar(m)
        lines.append(f"  {name:8s} " + (f"{v:.4f}" if v is not None else f"null ({m['reason']})"))
    return lines
