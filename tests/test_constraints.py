"""scripts/constraints.txt (the versions scripts/venv.sh installs) satisfies pyproject.toml:
every requirement of the base install and of every extra is pinned there, to a version its
specifier admits, so a changed requirement cannot leave the README's commands and CI installing
something pyproject.toml refuses (pip would stop with a conflict) or resolving it afresh."""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    out = {}
    for line in (REPO / "scripts" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not NAME==VERSION"
            out[canonicalize_name(name)] = version
    return out


def requirements() -> list[Requirement]:
    """The base requirements and those of every extra `.[dev]` includes (those the scripts
    install; an extra outside it, such as vllm on a GPU host, resolves on its own)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    todo, seen = ["dev"], set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in map(Requirement, optional[extra]):
            if canonicalize_name(req.name) == "fgid":
                todo += sorted(req.extras)
            else:
                reqs.append(req)
    return reqs


def test_every_requirement_is_pinned_to_an_admitted_version() -> None:
    pinned, env = pins(), default_environment()
    problems = []
    for req in requirements():
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue  # not for this Python (e.g. tomli on 3.10)
        version = pinned.get(canonicalize_name(req.name))
        if version is None:
            problems.append(f"{req.name}: not in scripts/constraints.txt")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} does not satisfy {req}")
    assert not problems, "; ".join(problems)


def test_the_check_catches_a_refused_pin() -> None:
    req = Requirement("torch>=99")
    assert not req.specifier.contains(pins()["torch"], prereleases=True)
