"""The files of this project that each DVC stage's command imports, for the stage's `deps`.

    python scripts/dvc_deps.py            # per stage: what dvc.yaml lacks (exit 1 if anything)
    python scripts/dvc_deps.py --list     # per stage: the deps to write (folders where whole)

A stage's command is `python -m MODULE ...` or `python SCRIPT.py ...`. From that entry the
imports are followed through this repository's files: every `import` and `from ... import` in
a file, at module level or inside a function (a lazy import is still an import of the
command), with the `__init__.py` of every package on the way. Two imports by name are resolved
as well: `python -m pipelines.cli SUBCOMMAND` (the module pipelines.cli's COMMANDS table names)
and the backends of `fgid stage NAME` / a `--detector`, `--parser`, `--embedder` or
`--captioner` option (every backend registered for that stage, whichever one params.yaml
picks: a change of that param reruns the stage anyway, and an edit of any backend reruns it
too). Sibling scripts (`import dvc_train` from scripts/) count; third-party modules do not.
tests/pipelines/test_dvc.py fails when dvc.yaml misses one of these files.
"""

from __future__ import annotations

import argparse
import ast
import functools
import shlex
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fgid_builder", "pipelines", "training", "eval")
BACKEND_FLAGS = {
    "--detector": "detect",
    "--parser": "parse",
    "--embedder": "embed",
    "--captioner": "caption",
}


@functools.cache
def _module_file(name: str, script_dir: Path | None) -> Path | None:
    """The repository file of module `name` (a package's __init__.py), or None."""
    parts = name.split(".")
    bases = [REPO] if parts[0] in PACKAGES else []
    if script_dir is not None:
        bases.append(script_dir)
    for base in bases:
        path = base.joinpath(*parts)
        if (path / "__init__.py").is_file():
            return path / "__init__.py"
        if path.with_suffix(".py").is_file():
            return path.with_suffix(".py")
    return None


def _module_name(path: Path) -> str | None:
    rel = path.relative_to(REPO).with_suffix("")
    if rel.parts[0] not in PACKAGES:
        return None
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@functools.cache
def _imported_names(path: Path) -> tuple[str, ...]:
    """Every module name an import statement of `path` names (`from a import b`: a and a.b)."""
    this = _module_name(path)
    package = (
        (this or "").split(".") if path.name == "__init__.py" else (this or "").split(".")[:-1]
    )
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.append(module)
            names.extend(f"{module}.{a.name}" for a in node.names if a.name != "*")
    return tuple(names)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def imported_files(entries: list[str], script_dir: Path | None = None) -> set[Path]:
    """The repository files that importing the modules (or script paths) `entries` can import."""
    todo: list[Path] = []
    for entry in entries:
        if entry.endswith(".py"):
            todo.append((REPO / entry).resolve())
        else:
            todo.extend(f for n in _with_parents(entry) if (f := _module_file(n, None)))
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path):
            for n in _with_parents(name):
                f = _module_file(n, script_dir)
                if f is not None and f not in seen:
                    todo.append(f)
    return seen


def _entries(cmd: str) -> tuple[list[str], Path | None]:
    """The modules / script a stage command runs, the imports by name included."""
    argv = shlex.split(cmd)
    if not argv or Path(argv[0]).name not in ("python", "python3"):
        raise ValueError(f"not a python command: {cmd!r}")
    if argv[1] == "-m":
        entries, rest, script_dir = [argv[2]], argv[3:], None
    else:
        entries, rest, script_dir = [argv[1]], argv[2:], (REPO / argv[1]).parent
    if entries[0] == "pipelines.cli" and rest:
        from pipelines.cli import COMMANDS

        entries.append(COMMANDS[rest[0]][0])
    from fgid_builder.registry import STAGES, targets

    kinds = {BACKEND_FLAGS[a] for a in rest if a in BACKEND_FLAGS}
    if entries[0] == "pipelines.cli" and rest[:1] == ["stage"] and rest[1:2]:
        kinds |= {rest[1]} & set(STAGES)
    for kind in sorted(kinds):
        entries.extend(t.split(":")[0] for t in targets(kind).values())
    return entries, script_dir


def stage_files(stage: dict) -> list[str]:
    """Repository-relative paths of the files the stage's command imports, sorted."""
    files = imported_files(*_entries(" ".join(stage["cmd"].split())))
    return sorted(f.relative_to(REPO).as_posix() for f in files)


def missing_deps(stage: dict) -> list[str]:
    """The imported files that no dep of the stage covers (the file or a folder above it)."""
    deps = [str(d).rstrip("/") for d in stage.get("deps", []) if "${" not in str(d)]
    return [f for f in stage_files(stage) if not any(f == d or f.startswith(d + "/") for d in deps)]


def compact(files: list[str]) -> list[str]:
    """`files` with each folder whose .py files are all listed replaced by the folder."""
    wanted = set(files)
    out: set[str] = set()
    for f in files:
        parts = f.split("/")
        chosen = f
        for i in range(1, len(parts)):
            folder = "/".join(parts[:i])
            if all(p.relative_to(REPO).as_posix() in wanted for p in (REPO / folder).rglob("*.py")):
                chosen = folder
                break
        out.add(chosen)
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dvc-yaml", default=str(REPO / "dvc.yaml"))
    ap.add_argument("--list", action="store_true", help="print the deps each stage needs")
    args = ap.parse_args(argv)
    stages = yaml.safe_load(Path(args.dvc_yaml).read_text())["stages"]
    bad = 0
    for name, stage in stages.items():
        if args.list:
            print(f"{name}:")
            for f in compact(stage_files(stage)):
                print(f"  - {f}")
            continue
        missing = missing_deps(stage)
        bad += len(missing)
        print(f"{name}: " + (f"missing {', '.join(missing)}" if missing else "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
