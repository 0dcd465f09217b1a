"""Where model weights live and how they are checked. Nothing is ever downloaded."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

from fgid_builder.schema import ModelFileError

MODELS_DIR_ENV = "FGID_MODELS_DIR"


def resolve_models_dir(models_dir: str | os.PathLike | None = None) -> Path | None:
    """`--models-dir` wins, then `$FGID_MODELS_DIR`; None if neither is set."""
    if models_dir:
        return Path(models_dir).expanduser()
    env = os.environ.get(MODELS_DIR_ENV)
    return Path(env).expanduser() if env else None


def require_file(path: str | os.PathLike, *, what: str, hint: str = "") -> Path:
    """Return `path` if it is a non-empty file, else a one-line ModelFileError naming it."""
    p = Path(path)
    where = hint or f"pass --models-dir DIR or set {MODELS_DIR_ENV}"
    if not p.is_file():
        raise ModelFileError(f"{what} not found: {p} ({where})")
    if p.stat().st_size == 0:
        raise ModelFileError(f"{what} is empty: {p} ({where})")
    return p


def model_path(
    relative: str, *, models_dir: str | os.PathLike | None, what: str, explicit: str | None = None
) -> Path:
    """Resolve a weight file: an explicit path, else `models_dir / relative`."""
    if explicit:
        return require_file(explicit, what=what)
    base = resolve_models_dir(models_dir)
    if base is None:
        raise ModelFileError(
            f"{what} not found: no models directory given "
            f"(expected at DIR/{relative}; pass --models-dir DIR or set {MODELS_DIR_ENV})"
        )
    return require_file(
        base / relative,
        what=what,
        hint=f"expected at {base / relative}; pass --models-dir DIR or set {MODELS_DIR_ENV}",
    )


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def dir_sha256(path: str | os.PathLike) -> str:
    """One hash over every file of a model folder (relative names and contents), sorted."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def face_recognition_models_dir() -> Path:
    """The `models/` folder of the face-recognition-models package, found without importing it
    (its __init__ imports pkg_resources, which recent setuptools no longer ships)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            "the embedded dlib models are not installed: pip install face-recognition-models"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"
