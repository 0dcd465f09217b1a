"""The visual QA report of a built dataset: `OUT/report/index.html`, opened from disk.

Everything the page shows lies beside it: PNG plots in `OUT/report/` and JPEG thumbnails in
`OUT/report/img/`, linked by relative paths (no server, no network, no script). Sections:

- summary: photos, samples, rejects, shards, models;
- contact sheet: the first `max_samples` samples by key: portrait, the mask over it in the
  label colours (schema.LABEL_COLORS: CelebAMask-HQ's colour of each face-parsing class; the
  legend lists them by id), global + per-region captions, quality figures;
- histograms: faces per photo, detection score, face size, yaw/pitch/roll, blur, caption
  lengths, region coverage (area and caption-length figures only for the regions some sample
  has; areas on a log scale so eyes, nose and mouth show beside the face);
- rejects by reason, with example inputs (a thumbnail when the input was planned as a
  regular file, is one still, and still has the planned size and SHA-256; the detector's box
  drawn for face-level rejects); no other input is ever opened, so a FIFO, a device or a
  file over `--max-input-bytes` named by the input cannot stall or exhaust the report;
- identity statistics over the first `max_identity` samples: agglomerative clustering (average
  linkage, cosine distance) at a per-embedder threshold, cluster sizes, the largest clusters,
  near-duplicate pairs (embedding cosine above a threshold, or a 64-bit difference hash of the
  portrait within 4 bits).

Reads `OUT/index.parquet` (one row per sample and per reject), `OUT/plan.parquet` (where the
planned inputs are) and the committed shards under `OUT/shards/`.
"""

from __future__ import annotations

import html
import io
import json
import logging
import os
import shutil
import string
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from fgid_builder.schema import LABEL_COLORS, LABELS, REGION_NAMES

log = logging.getLogger("fgid.report")

REPORT_DIR = "report"
TEMPLATE = Path(__file__).with_name("report_template.html")
THUMB = 192
SMALL = 96
OVERLAY_ALPHA = 0.45
# (cluster cosine threshold, near-duplicate cosine threshold) by embedder name prefix.
# dlib: on the 280 deepface pairs, same-person cosines are >= 0.925 and different-person ones
# <= 0.924 (99.3% of pairs right at 0.925).
EMBEDDER_THRESHOLDS: dict[str, tuple[float, float]] = {
    "dlib": (0.925, 0.99),
    "insightface": (0.40, 0.85),
}
DEFAULT_THRESHOLDS = (0.5, 0.95)
DHASH_BITS = 4  # portraits whose 64-bit dHash differ in at most this many bits are duplicates


@dataclass
class ReportConfig:
    """Options of `fgid report` (`fgid report --help`)."""

    max_samples: int = 48
    reject_examples: int = 6
    max_identity: int = 5000
    cluster_threshold: float | None = None
    duplicate_threshold: float | None = None
    max_clusters_shown: int = 8
    max_pairs_shown: int = 12
    progress: bool = True

    def __post_init__(self) -> None:
        if self.max_samples < 0 or self.reject_examples < 0 or self.max_identity < 0:
            raise ValueError("counts must be >= 0")
        for t in (self.cluster_threshold, self.duplicate_threshold):
            if t is not None and not -1.0 <= t <= 1.0:
                raise ValueError("thresholds are cosines in [-1, 1]")


@dataclass
class _Collected:
    """What one pass over the shards keeps."""

    metas: list[dict[str, Any]] = field(default_factory=list)  # every sample's JSON
    sheet: list[dict[str, Any]] = field(default_factory=list)  # contact sheet entries
    keys: list[str] = field(default_factory=list)  # identity subset, in key order
    embeddings: list[np.ndarray] = field(default_factory=list)
    small: dict[str, np.ndarray] = field(default_factory=dict)  # key -> small thumbnail
    dhash: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------- images


def overlay(portrait: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The label map over the portrait in the label colours; background left as is."""
    palette = np.zeros((256, 3), dtype=np.float32)
    for i, c in LABEL_COLORS.items():
        palette[i] = c
    colour = palette[mask]
    fg = (mask > 0)[..., None]
    out = portrait.astype(np.float32)
    out = np.where(fg, (1 - alpha) * out + alpha * colour, out)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def dhash(img: Image.Image) -> int:
    """64-bit difference hash of a grey 9x8 reduction."""
    a = np.asarray(img.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (a[:, 1:] > a[:, :-1]).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def _save_jpg(path: Path, rgb: np.ndarray | Image.Image, size: int) -> None:
    im = rgb if isinstance(rgb, Image.Image) else Image.fromarray(rgb)
    im = im.convert("RGB")
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    im.save(path, format="JPEG", quality=85)


# --------------------------------------------------------------------------- reading


def _read_index(out: Path) -> list[dict[str, Any]]:
    from fgid_builder.index import read_index

    path = out / "index.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no index at {path}: is {out} an fgid build output?")
    return read_index(path).to_pylist()


_KEPT = ("key", "source", "captions", "regions", "models", "_shard")


def _collect(out: Path, img_dir: Path, cfg: ReportConfig) -> _Collected:
    from fgid_builder.schema import load_npy
    from fgid_builder.shards import iter_shard, shard_paths

    got = _Collected()
    paths = shard_paths(out / "shards")
    bar = tqdm(paths, desc="report: shards", unit="shard", disable=not cfg.progress, leave=False)
    for path in bar:
        for members in iter_shard(path):
            key = members["__key__"]
            meta = json.loads(members["json"])
            meta["_shard"] = path.stem
            want_sheet = len(got.sheet) < cfg.max_samples
            # What the distributions need; landmarks and the affine stay out (memory).
            got.metas.append({k: meta.get(k) for k in _KEPT} | {"face": None})
            want_id = len(got.keys) < cfg.max_identity and "id.npy" in members
            if not (want_sheet or want_id):
                continue
            im = Image.open(io.BytesIO(members["jpg"]))
            if want_id:
                small = im.copy()
                small.draft("RGB", (SMALL * 2, SMALL * 2))
                small = small.convert("RGB")
                small.thumbnail((SMALL, SMALL))
                got.keys.append(key)
                got.embeddings.append(load_npy(members["id.npy"]).astype(np.float64))
                got.small[key] = np.asarray(small)
                got.dhash.append(dhash(small))
            if want_sheet:
                portrait = np.asarray(im.convert("RGB"))
                mask = np.asarray(Image.open(io.BytesIO(members["mask.png"])))
                _save_jpg(img_dir / f"{key}.jpg", portrait, THUMB)
                _save_jpg(img_dir / f"{key}_mask.jpg", overlay(portrait, mask), THUMB)
                got.sheet.append(meta)
    # The sheet and the identity subset are "first by key" whatever the shard order.
    got.metas.sort(key=lambda m: m["key"])
    return got


# --------------------------------------------------------------------------- identity


def _thresholds(metas: list[dict[str, Any]], cfg: ReportConfig) -> tuple[float, float, str]:
    names = Counter(((m.get("models") or {}).get("embed") or {}).get("name", "") for m in metas)
    name = names.most_common(1)[0][0] if names else ""
    base = next((v for k, v in EMBEDDER_THRESHOLDS.items() if name.startswith(k)), None)
    base = base or DEFAULT_THRESHOLDS
    cluster = cfg.cluster_threshold if cfg.cluster_threshold is not None else base[0]
    dup = cfg.duplicate_threshold if cfg.duplicate_threshold is not None else base[1]
    return cluster, dup, name or "unknown"


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64."""
    bits = np.unpackbits(np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8))
    return bits.reshape(-1, 64).sum(axis=1).astype(np.int64)


def identity_stats(
    keys: list[str],
    embeddings: np.ndarray,
    hashes: list[int],
    *,
    cluster_threshold: float,
    duplicate_threshold: float,
    sources: list[str] | None = None,
) -> dict[str, Any]:
    """Clusters (average linkage, cosine distance cut at 1 - threshold) and near-duplicates.

    Near-duplicates are pairs of samples from different source photos whose embeddings have a
    cosine >= `duplicate_threshold`, or whose portrait dHashes differ in <= DHASH_BITS bits."""
    n = len(keys)
    out: dict[str, Any] = {"n": n, "clusters": [], "pairs": [], "labels": []}
    if n == 0:
        return out
    e = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    if n == 1:
        labels = np.array([1])
    else:
        from scipy.cluster.hierarchy import fcluster, linkage
        from scipy.spatial.distance import pdist

        dist = np.clip(pdist(e, metric="cosine"), 0.0, 2.0)
        z = linkage(dist, method="average")
        labels = fcluster(z, t=1.0 - cluster_threshold, criterion="distance")
    groups: dict[int, list[int]] = defaultdict(list)
    for i, lab in enumerate(labels):
        groups[int(lab)].append(i)
    clusters = sorted(groups.values(), key=lambda g: (-len(g), keys[g[0]]))
    out["clusters"] = [[keys[i] for i in g] for g in clusters]
    out["labels"] = labels.tolist()

    sources = sources or keys
    h = np.array(hashes, dtype=np.uint64)
    pairs = []
    for start in range(0, n, 1024):  # blocks keep the memory at 1024 x n
        sims = e[start : start + 1024] @ e.T
        for bi, i in enumerate(range(start, min(start + 1024, n))):
            js = np.nonzero(sims[bi, i + 1 :] >= duplicate_threshold)[0] + i + 1
            ham = _popcount(h[i + 1 :] ^ h[i])
            js = np.union1d(js, np.nonzero(ham <= DHASH_BITS)[0] + i + 1)
            for j in js:
                if sources[i] != sources[int(j)]:
                    pairs.append((float(sims[bi, j]), int(ham[j - i - 1]), keys[i], keys[int(j)]))
    pairs.sort(key=lambda p: (-p[0], p[1], p[2], p[3]))
    out["pairs"] = pairs
    return out


# --------------------------------------------------------------------------- html


def _e(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return _e(v)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _legend() -> str:
    items = []
    for i, name in LABELS.items():
        if i == 0:
            continue
        r, g, b = LABEL_COLORS[i]
        items.append(
            f'<span class="sw"><i style="background:rgb({r},{g},{b})"></i>{i} {_e(name)}</span>'
        )
    return '<div class="legend">' + "".join(items) + "</div>"


def _card(meta: dict[str, Any]) -> str:
    key = meta["key"]
    face = meta.get("face") or {}
    caps = meta.get("captions") or {}
    regions = caps.get("regions") or {}
    region_html = "".join(
        f"<li><b>{_e(r)}</b>: {_e(regions[r])}</li>" for r in REGION_NAMES if regions.get(r)
    )
    figures = (
        f"score {_fmt(face.get('det_score'))} · size {_fmt(face.get('size'), 0)}px · "
        f"yaw {_fmt(face.get('yaw'), 0)} pitch {_fmt(face.get('pitch'), 0)} "
        f"roll {_fmt(face.get('roll'), 0)} · blur {_fmt(face.get('blur'), 0)}"
    )
    src = (meta.get("source") or {}).get("uri", "")
    return (
        '<div class="card">'
        f'<div class="pair"><img src="img/{_e(key)}.jpg" alt="portrait {_e(key)}">'
        f'<img src="img/{_e(key)}_mask.jpg" alt="mask {_e(key)}"></div>'
        f'<div class="key">{_e(key)} <span class="src" title="{_e(src)}">'
        f"{_e(os.path.basename(src))}</span></div>"
        f'<div class="fig">{figures}</div>'
        f'<p class="cap">{_e(caps.get("global", ""))}</p>'
        f'<ul class="regions">{region_html}</ul></div>'
    )


def _input_base(out: Path) -> str | None:
    """Where the build read its inputs (`OUT/logs/run.json`): uris are relative to it."""
    try:
        return json.loads((out / "logs" / "run.json").read_text()).get("input_base")
    except (OSError, ValueError):
        return None


def _planned_paths(out: Path) -> dict[str, str]:
    """source uri -> the path the build planned to read it from (OUT/plan.parquet), only for
    inputs the planner read as regular files (those with a SHA-256)."""
    import pyarrow.parquet as pq

    path = out / "plan.parquet"
    if not path.is_file():
        return {}
    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError):
        return {}
    # `path_bytes`: the raw bytes of a path that is not UTF-8 (pipelines.plan.row_path's rule)
    return {
        r["source_uri"]: os.fsdecode(r["path_bytes"]) if r.get("path_bytes") else r["path"]
        for r in rows
        if r["source_sha256"]
    }


def _reject_thumb(
    row: dict[str, Any], img_dir: Path, name: str, base: str | None, planned: dict[str, str]
) -> str | None:
    """A thumbnail of a rejected input (box drawn for a face reject), if it can be read: only
    an input the plan read as a regular file, read again safely (regular file, at most its
    planned size) and shown only when its bytes still have the planned SHA-256."""
    from fgid_builder.dataset import resolve_input as resolve_path
    from fgid_builder.io import decode_image, read_input
    from fgid_builder.schema import ImageRejected, sha256_bytes

    uri = row.get("source_uri") or ""
    sha, size = row.get("source_sha256"), row.get("source_bytes")
    if uri not in planned or not sha or not size:
        return None
    try:
        data = read_input(resolve_path(planned[uri], base), max_bytes=int(size))
        if sha256_bytes(data) != sha:
            return None
        rgb = decode_image(data).rgb
    except (OSError, ValueError, ImageRejected):
        return None
    im = Image.fromarray(rgb)
    bbox = row.get("bbox")
    if bbox:
        width = max(2, int(round(max(im.size) / 150)))
        ImageDraw.Draw(im).rectangle([float(v) for v in bbox], outline=(255, 40, 40), width=width)
    _save_jpg(img_dir / name, im, THUMB)
    return f"img/{name}"


# --------------------------------------------------------------------------- main


def write_report(out_dir: str | os.PathLike, *, config: ReportConfig | None = None) -> Path:
    """Write `OUT/report/index.html` (+ PNG plots and thumbnails beside it); returns its path.

    Called by `fgid report OUT` and at the end of `fgid build`. The report folder is rebuilt
    from scratch each time."""
    cfg = config or ReportConfig()
    out = Path(out_dir)
    rows = _read_index(out)
    report = out / REPORT_DIR
    if report.exists():
        shutil.rmtree(report)
    img_dir = report / "img"
    img_dir.mkdir(parents=True)

    got = _collect(out, img_dir, cfg)
    sections = [
        _summary_section(out, rows, got),
        _sheet_section(got, cfg),
        _plots_section(report, rows, got),
        _rejects_section(rows, img_dir, cfg),
        _identity_section(report, got, cfg),
        _identity_ids_section(report, out, got, cfg),
    ]
    page = string.Template(TEMPLATE.read_text()).substitute(
        title=_e(f"fgid report: {out.resolve().name}"),
        body="\n".join(sections),
    )
    path = report / "index.html"
    path.write_text(page, encoding="utf-8")
    log.info("wrote %s", path)
    return path


def _summary_section(out: Path, rows: list[dict[str, Any]], got: _Collected) -> str:
    ok = [r for r in rows if r["status"] == "ok"]
    rejected = [r for r in rows if r["status"] != "ok"]
    photos = {r["source_uri"] for r in rows}
    models: dict[str, str] = {}
    for m in got.metas[:1]:
        for stage, info in (m.get("models") or {}).items():
            models[stage] = f"{info.get('name')} {info.get('version', '')}"
    n_shards = len(list((out / "shards").glob("*.tar"))) if (out / "shards").is_dir() else 0
    stats = [
        ["input photos", str(len(photos))],
        ["samples (faces)", str(len(ok))],
        ["samples read from shards", str(len(got.metas))],
        ["rejected rows", str(len(rejected))],
        ["shards", str(n_shards)],
    ] + [[f"model: {_e(s)}", _e(v)] for s, v in sorted(models.items())]
    return '<section id="summary"><h2>Summary</h2>' + _table(["", ""], stats) + "</section>"


def _sheet_section(got: _Collected, cfg: ReportConfig) -> str:
    cards = "".join(_card(m) for m in got.sheet)
    return (
        '<section id="sheet"><h2>Contact sheet</h2>'
        f"<p>The first {len(got.sheet)} samples by key (of {len(got.metas)}): the aligned "
        "portrait, the parsing mask over it, the global caption and the per-region captions."
        f'</p>{_legend()}<div class="grid">{cards}</div></section>'
    )


def _plots_section(report: Path, rows: list[dict[str, Any]], got: _Collected) -> str:
    from eval import plots

    ok = [r for r in rows if r["status"] == "ok"]
    per_photo: Counter[str] = Counter()
    for r in rows:
        per_photo[r["source_uri"]] += 0
        if r["status"] == "ok":
            per_photo[r["source_uri"]] += 1
    col = defaultdict(list)
    for r in ok:
        for c in ("det_score", "face_size", "yaw", "pitch", "roll", "blur"):
            col[c].append(r.get(c))
    caption_words, present, areas = region_figures(got.metas)
    made = [
        plots.histogram(
            report / "faces_per_photo.png",
            list(per_photo.values()),
            title="samples per input photo",
            xlabel="faces kept",
            bins=np.arange(-0.5, max(per_photo.values(), default=0) + 1.5),
        ),
        plots.histogram(
            report / "det_score.png", col["det_score"], title="detection score", xlabel="score"
        ),
        plots.histogram(
            report / "face_size.png",
            col["face_size"],
            title="face size",
            xlabel="shorter box side (px, source)",
        ),
        plots.histograms(
            report / "pose.png",
            {k: col[k] for k in ("yaw", "pitch", "roll")},
            title="head pose",
            xlabel="degrees",
        ),
        plots.histogram(
            report / "blur.png",
            col["blur"],
            title="sharpness",
            xlabel="Laplacian variance (higher = sharper)",
        ),
        plots.histograms(
            report / "caption_length.png",
            {"global": caption_words["global"], "facial": caption_words["facial"]},
            title="caption length",
            xlabel="words",
        ),
        plots.counts_bar(
            report / "region_caption_length.png",
            {r: float(np.mean(caption_words[r])) for r in REGION_NAMES if r in caption_words},
            title="mean region caption length (regions with a caption)",
            ylabel="words",
        ),
        plots.region_coverage(report / "region_coverage.png", present, areas),
    ]
    imgs = "".join(f'<img class="plot" src="{p.name}" alt="{_e(p.stem)}">' for p in made)
    return f'<section id="plots"><h2>Distributions</h2><div class="plots">{imgs}</div></section>'


def region_figures(
    metas: list[dict[str, Any]],
) -> tuple[dict[str, list[int]], dict[str, float], dict[str, list[float]]]:
    """(caption words per caption kind, fraction of samples with each region, region areas
    when present). Caption lengths and areas hold only the regions some sample has: a region no
    sample has (the embedded parser's ears) gets no length or area figure."""
    words: dict[str, list[int]] = {"global": [], "facial": []}
    words.update({reg: [] for reg in REGION_NAMES})
    present: Counter[str] = Counter()
    areas: dict[str, list[float]] = {}
    for m in metas:
        caps = m.get("captions") or {}
        words["global"].append(len((caps.get("global") or "").split()))
        words["facial"].append(len((caps.get("facial") or "").split()))
        for reg in REGION_NAMES:
            words[reg].append(len(((caps.get("regions") or {}).get(reg) or "").split()))
            info = (m.get("regions") or {}).get(reg) or {}
            if info.get("present"):
                present[reg] += 1
                areas.setdefault(reg, []).append(float(info.get("area") or 0.0))
    for reg in REGION_NAMES:
        if not any(words[reg]):
            del words[reg]
    n = max(len(metas), 1)
    return words, {r: present[r] / n for r in REGION_NAMES}, areas


def _rejects_section(rows: list[dict[str, Any]], img_dir: Path, cfg: ReportConfig) -> str:
    from eval import plots

    base = _input_base(img_dir.parent.parent)
    planned = _planned_paths(img_dir.parent.parent)
    rejected = [r for r in rows if r["status"] != "ok"]
    by_reason: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rejected:
        by_reason[r.get("reason") or "unknown"].append(r)
    counts = {k: len(v) for k, v in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0]))}
    plot = plots.counts_bar(
        img_dir.parent / "rejects.png", counts, title="rejects by reason", ylabel="rows"
    )
    parts = [
        '<section id="rejects"><h2>Rejects by reason</h2>',
        f'<img class="plot" src="{plot.name}" alt="rejects by reason">',
    ]
    if not rejected:
        parts.append("<p>No rejects.</p>")
    for reason, items in by_reason.items():
        parts.append(f'<h3>{_e(reason)} ({len(items)})</h3><div class="rejects">')
        for n, r in enumerate(items[: cfg.reject_examples]):
            face = "" if r.get("face_index") is None else f"_f{r['face_index']}"
            thumb = _reject_thumb(r, img_dir, f"reject_{reason}_{n}{face}.jpg", base, planned)
            img = (
                f'<img src="{thumb}" alt="{_e(reason)} example">'
                if thumb
                else ('<div class="noimg">not viewable</div>')
            )
            where = os.path.basename(r.get("source_uri") or "")
            idx = "" if r.get("face_index") is None else f" · face {r['face_index']}"
            parts.append(
                f'<div class="rej">{img}<div class="key">{_e(where)}{idx}</div>'
                f'<div class="fig">{_e(r.get("detail") or "")}</div></div>'
            )
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def _identity_section(report: Path, got: _Collected, cfg: ReportConfig) -> str:
    from eval import plots

    cluster_t, dup_t, embedder = _thresholds(got.metas, cfg)
    if not got.keys:
        return '<section id="identity"><h2>Identities</h2><p>No embeddings.</p></section>'
    src_by_key = {m["key"]: (m.get("source") or {}).get("sha256", m["key"]) for m in got.metas}
    stats = identity_stats(
        got.keys,
        np.stack(got.embeddings),
        got.dhash,
        cluster_threshold=cluster_t,
        duplicate_threshold=dup_t,
        sources=[src_by_key.get(k, k) for k in got.keys],
    )
    sizes = [len(c) for c in stats["clusters"]]
    size_counts = Counter(sizes)
    plot = plots.counts_bar(
        report / "cluster_sizes.png",
        {str(s): size_counts[s] for s in sorted(size_counts)},
        title="identity cluster sizes",
        ylabel="clusters",
    )
    e = np.stack(got.embeddings)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    sims = (e @ e.T)[np.triu_indices(len(e), 1)] if len(e) > 1 else np.zeros(0)
    if sims.size > 200_000:
        sims = np.random.default_rng(0).choice(sims, 200_000, replace=False)
    sim_plot = plots.histogram(
        report / "pair_similarity.png",
        sims.tolist(),
        title="pairwise embedding cosine",
        xlabel="cosine",
        bins=50,
    )

    def thumb(key: str) -> str:
        name = f"id_{key}.jpg"
        if not (report / "img" / name).exists():
            _save_jpg(report / "img" / name, got.small[key], SMALL)
        return f'<img class="small" src="img/{name}" alt="{_e(key)}" title="{_e(key)}">'

    parts = [
        '<section id="identity"><h2>Identities</h2>',
        f"<p>{stats['n']} samples (first by key) embedded with <b>{_e(embedder)}</b>; "
        f"average-linkage clusters at cosine ≥ {cluster_t:g}: <b>{len(sizes)}</b> clusters, "
        f"{size_counts.get(1, 0)} singletons, largest {max(sizes)}. Near-duplicates: "
        f"cosine ≥ {dup_t:g} or portrait dHash within {DHASH_BITS} bits, different photos: "
        f"<b>{len(stats['pairs'])}</b> pairs.</p>",
        f'<div class="plots"><img class="plot" src="{plot.name}" alt="cluster sizes">'
        f'<img class="plot" src="{sim_plot.name}" alt="pairwise similarity"></div>',
        "<h3>Largest clusters</h3>",
    ]
    for c in [c for c in stats["clusters"] if len(c) > 1][: cfg.max_clusters_shown]:
        parts.append(
            f'<div class="cluster"><span class="n">{len(c)}</span>'
            + "".join(thumb(k) for k in c[:12])
            + "</div>"
        )
    if not any(len(c) > 1 for c in stats["clusters"]):
        parts.append("<p>Every sample is its own cluster.</p>")
    parts.append("<h3>Near-duplicates</h3>")
    if not stats["pairs"]:
        parts.append("<p>None found.</p>")
    for cos, ham, a, b in stats["pairs"][: cfg.max_pairs_shown]:
        parts.append(
            f'<div class="cluster">{thumb(a)}{thumb(b)}<span class="fig">cosine {cos:.3f} · '
            f"dHash distance {ham} · {_e(a)} / {_e(b)}</span></div>"
        )
    parts.append("</section>")
    return "".join(parts)


def _identity_ids_section(report: Path, out: Path, got: _Collected, cfg: ReportConfig) -> str:
    """Who is in the dataset, from `OUT/identities.parquet` (`fgid identities OUT`)."""
    from eval import plots
    from fgid_builder.identities import (
        IDENTITIES,
        IDENTITIES_JSON,
        identity_summary,
        read_identities,
    )

    head = '<section id="identity-ids"><h2>Identity ids</h2>'
    if not (out / IDENTITIES).is_file():
        return head + "<p>No identity ids yet: <code>fgid identities OUT</code>.</p></section>"
    table = read_identities(out)
    summary = identity_summary(table, largest=cfg.max_clusters_shown)
    meta = {}
    if (out / IDENTITIES_JSON).is_file():
        meta = json.loads((out / IDENTITIES_JSON).read_text())
    per = {k: int(v) for k, v in summary["images_per_identity"].items()}
    plot = plots.counts_bar(
        report / "images_per_identity.png",
        {k: per[k] for k in sorted(per, key=int)},
        title="samples per identity",
        ylabel="identities",
    )
    members: dict[str, list[str]] = defaultdict(list)
    for k, i in zip(
        table.column("key").to_pylist(), table.column("identity").to_pylist(), strict=True
    ):
        members[i].append(k)
    threshold = meta.get("threshold")
    parts = [
        head,
        f"<p><b>{summary['identities']}</b> identities over {summary['samples']} samples "
        f"({summary['singletons']} with one sample)"
        + (
            f", same-person cosine ≥ {threshold:g} ({_e(meta.get('threshold_from', ''))})"
            if threshold is not None
            else ""
        )
        + ".</p>",
        f'<div class="plots"><img class="plot" src="{plot.name}" alt="samples per identity">'
        "</div><h3>Largest identities</h3>",
    ]
    for entry in summary["largest"]:
        keys = sorted(members[entry["identity"]])
        thumbs = []
        for k in keys[:12]:
            if k in got.small:
                name = f"id_{k}.jpg"
                if not (report / "img" / name).exists():
                    _save_jpg(report / "img" / name, got.small[k], SMALL)
                thumbs.append(f'<img class="small" src="img/{name}" alt="{_e(k)}" title="{_e(k)}">')
        parts.append(
            f'<div class="cluster"><span class="n">{entry["samples"]}</span>{"".join(thumbs)}'
            f'<span class="fig">{_e(entry["identity"])}</span></div>'
        )
    parts.append("</section>")
    return "".join(parts)
