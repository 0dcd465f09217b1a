"""The report's PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # numeric-looking labels

_COLOR = "#3b6ea8"
_PNG_META = {"Software": None}  # no matplotlib version in the file: same data, same bytes


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata=_PNG_META)
    plt.close(fig)
    return path


def _clean(values: Sequence[float | None]) -> np.ndarray:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    return a[np.isfinite(a)]


def histogram(
    path: Path,
    values: Sequence[float | None],
    *,
    title: str,
    xlabel: str,
    bins: int | Sequence[float] = 30,
) -> Path:
    """One histogram; an empty series still gives a (labelled) plot."""
    a = _clean(values)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if a.size:
        ax.hist(a, bins=bins, color=_COLOR, edgecolor="white")
        ax.axvline(float(np.median(a)), color="#c0392b", lw=1, ls="--", label="median")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=f"{title} (n={a.size})", xlabel=xlabel, ylabel="count")
    return _save(fig, path)


def histograms(
    path: Path, series: Mapping[str, Sequence[float | None]], *, title: str, xlabel: str
) -> Path:
    """Side-by-side histograms sharing a title (yaw / pitch / roll, caption lengths)."""
    fig, axes = plt.subplots(1, len(series), figsize=(3.4 * len(series), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], series.items(), strict=True):
        a = _clean(values)
        if a.size:
            ax.hist(a, bins=30, color=_COLOR, edgecolor="white")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set(title=f"{name} (n={a.size})", xlabel=xlabel)
    axes[0][0].set_ylabel("count")
    fig.suptitle(title)
    return _save(fig, path)


def counts_bar(path: Path, counts: Mapping[str, float], *, title: str, ylabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(counts) + 2), 3.2))
    names = list(counts)
    if names:
        ax.bar(names, [counts[n] for n in names], color=_COLOR)
        for i, n in enumerate(names):
            v = counts[n]
            ax.text(
                i,
                v,
                f"{v:g}" if isinstance(v, int) else f"{v:.2f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.tick_params(axis="x", rotation=30)
    else:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
    ax.set(title=title, ylabel=ylabel)
    return _save(fig, path)


def region_coverage(
    path: Path, present: Mapping[str, float], areas: Mapping[str, Sequence[float]]
) -> Path:
    """Left: fraction of samples where each region is present; right: its area when present, on
    a log scale (eyes, nose and mouth cover 0.5-3% of the portrait, the face ~30%), for the
    regions some sample has (`areas` holds only those)."""
    names = list(present)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.2))
    a1.bar(names, [present[n] for n in names], color=_COLOR)
    a1.set(title="region present (fraction of samples)", ylim=(0, 1.05))
    shown = [n for n in areas if _clean(areas[n]).size]
    if shown:
        a2.boxplot([_clean(areas[n]) * 100 for n in shown], showfliers=True)
        a2.set_xticks(range(1, len(shown) + 1), shown)
        a2.set_yscale("log")
    else:
        a2.text(0.5, 0.5, "no region in any sample", ha="center", va="center",
                transform=a2.transAxes)  # fmt: skip
    a2.set(title="region area when present", ylabel="% of portrait (log)")
    return _save(fig, path)
