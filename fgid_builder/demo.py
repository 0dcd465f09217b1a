"""Face photos that ship inside installed packages, so the demo and core tests run offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

# package -> files relative to the package folder (the ones that hold real faces)
_SHIPPED: dict[str, tuple[str, ...]] = {
    "skimage": ("data/astronaut.png",),
    "matplotlib": ("mpl-data/sample_data/grace_hopper.jpg",),
    "insightface": ("data/images/t1.jpg", "data/images/Tom_Hanks_54745.png"),
}


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def demo_photos() -> list[Path]:
    """Paths of the shipped face photos that are installed here, in a fixed order."""
    found: list[Path] = []
    for package, files in _SHIPPED.items():
        root = _package_dir(package)
        if root is None:
            continue
        found.extend(root / f for f in files if (root / f).is_file())
    if not found:
        raise FileNotFoundError(
            "no package-shipped face photos found; pip install scikit-image matplotlib"
        )
    return found
