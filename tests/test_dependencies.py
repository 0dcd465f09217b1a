"""Every third-party import is declared for the install that uses it (deptry).

pyproject.toml's [tool.fgid.dependency-parts] assigns each .py file of the project to a part and
each part to the extras it may use; deptry then checks the part's files with every other extra
counted as a development dependency, so an import that only another extra (or nothing)
provides fails: DEP001 (not declared at all), DEP003 (installed only as another package's
dependency), DEP004 (declared only by an extra this part's install does not include)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

pytest.importorskip("deptry", reason="deptry is a dev dependency: pip install -e '.[dev]'")

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("fgid_builder", "pipelines", "training", "eval", "scripts", "benchmarks", "tests")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _extra_closure(extras: list[str], optional: dict[str, list[str]]) -> set[str]:
    """The extras named plus those they include through a `fgid[...]` requirement."""
    todo, seen = list(extras), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in optional[name]:
            m = re.fullmatch(r"fgid\[([^\]]+)\]\s*", req)
            if m:
                todo.extend(x.strip() for x in m.group(1).split(","))
    return seen


def _assign_parts(parts: dict[str, dict]) -> dict[str, list[str]]:
    files: dict[str, list[str]] = {name: [] for name in parts}
    for d in SOURCE_DIRS:
        for path in sorted((REPO / d).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            owner = next(
                (n for n, p in parts.items() if any(fnmatch.fnmatch(rel, g) for g in p["files"])),
                None,
            )
            assert owner is not None, f"{rel} belongs to no part of [tool.fgid.dependency-parts]"
            files[owner].append(rel)
    return files


def _deptry(root: Path, files: list[str], dev_groups: set[str], ignore: str) -> list[dict]:
    """Copies `files` (repo-relative, contents possibly replaced) under `root` and runs deptry
    there with this checkout's pyproject.toml; returns its violations."""
    for rel in files:
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            shutil.copyfile(REPO / rel, dest)
    report = root / "deptry.json"
    cmd = [
        sys.executable, "-m", "deptry", str(root), "--config", str(REPO / "pyproject.toml"),
        "--no-ansi", "--exclude", r"deptry\.json", "--ignore", ignore, "--json-output", str(report),
    ]  # fmt: skip
    if dev_groups:
        cmd += ["--optional-dependencies-dev-groups", ",".join(sorted(dev_groups))]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert report.is_file(), f"deptry did not run (rc={res.returncode}): {res.stderr[-2000:]}"
    return json.loads(report.read_text())


def _rel(file: str, root: Path) -> str:
    path = Path(file)
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


HINTS = {
    "DEP001": "declare it in pyproject.toml (base or the extra of this part)",
    "DEP003": "declare it: it is installed only as another package's dependency",
    "DEP004": "only an extra this part's install lacks declares it",
    "DEP002": "declared but never imported: drop it, or add it to [tool.deptry.per_rule_ignores] "
    "DEP002 with the reason (a plugin, a command, data files)",
}


def _lines(violations: list[dict], root: Path) -> str:
    return "\n".join(
        f"{_rel(v['location']['file'], root)}:{v['location']['line']}: "
        f"{v['error']['code']} {v['module']}: {HINTS.get(v['error']['code'], v['error']['message'])}"
        for v in violations
    )


def _check_part(tmp_path: Path, part: str, files: list[str] | None = None) -> list[dict]:
    data = _pyproject()
    parts = data["tool"]["fgid"]["dependency-parts"]
    optional = data["project"]["optional-dependencies"]
    allowed = _extra_closure(parts[part]["extras"], optional)
    files = _assign_parts(parts)[part] if files is None else files
    return _deptry(tmp_path / part, files, set(optional) - allowed, ignore="DEP002")


PARTS = list(
    tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["fgid"]["dependency-parts"]
)


@pytest.mark.parametrize("part", PARTS)
def test_part_imports_only_what_its_install_declares(part: str, tmp_path: Path) -> None:
    files = _assign_parts(_pyproject()["tool"]["fgid"]["dependency-parts"])[part]
    assert files, f"part {part!r} matches no file"
    violations = _check_part(tmp_path, part)
    assert not violations, f"part {part!r}:\n{_lines(violations, tmp_path / part)}"


def test_every_declared_dependency_is_imported(tmp_path: Path) -> None:
    """No stale declaration (DEP002) over the whole project; pyproject.toml names the few
    packages that are used without an import."""
    files = [
        f
        for fs in _assign_parts(_pyproject()["tool"]["fgid"]["dependency-parts"]).values()
        for f in fs
    ]
    violations = _deptry(tmp_path / "all", files, set(), ignore="DEP001,DEP003,DEP004")
    assert not violations, _lines(violations, tmp_path / "all")


def test_check_fails_on_an_import_the_install_lacks(tmp_path: Path) -> None:
    """The check can fail: torch (only in extras) imported by a base module is flagged, and so
    is a package nobody declares."""
    root = tmp_path / "base"
    planted = root / "fgid_builder" / "align.py"
    planted.parent.mkdir(parents=True)
    planted.write_text(
        (REPO / "fgid_builder/align.py").read_text() + "\nimport torch\nimport hnswlib_x\n"
    )
    violations = _check_part(tmp_path, "base", files=["fgid_builder/align.py"])
    found = {(v["module"], v["error"]["code"]) for v in violations}
    assert ("torch", "DEP004") in found, _lines(violations, root)
    assert ("hnswlib_x", "DEP001") in found, _lines(violations, root)
