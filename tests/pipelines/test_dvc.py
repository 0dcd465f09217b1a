"""dvc.yaml + params.yaml: the stage chain is wired right (fast), and `dvc repro` in a fresh clone
reproduces the committed dvc.lock bit for bit, reruns nothing the second time, and a caption
param reruns caption and nothing before it (slow: minutes)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DATASET_STAGES = ("ingest", "detect", "parse", "embed", "caption", "shard")


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def _param(params: dict, dotted: str):
    value = params
    for part in dotted.split("."):
        value = value[part]
    return value


def _outs(stage: dict) -> list[str]:
    out = []
    for kind in ("outs", "metrics", "plots"):
        for item in stage.get(kind, []):
            out.append(item if isinstance(item, str) else next(iter(item)))
    return out


def test_every_interpolated_param_exists() -> None:
    params, dvc = _load("params.yaml"), _load("dvc.yaml")
    text = (REPO / "dvc.yaml").read_text()
    for ref in re.findall(r"\$\{([^}]+)\}", text):
        _param(params, ref)  # KeyError names the missing param
    for name, stage in dvc["stages"].items():
        for p in stage.get("params", []):
            assert isinstance(p, str) and p in params, f"{name}: param {p!r} not in params.yaml"


def test_stages_chain_through_their_outputs() -> None:
    stages = _load("dvc.yaml")["stages"]
    params = _load("params.yaml")
    produced = {o: name for name, st in stages.items() for o in _outs(st)}
    order = ["demo_photos", *DATASET_STAGES, "train"]
    assert [s for s in stages if s in order] == order
    for prev, cur in zip(order, order[1:], strict=False):
        deps = [d.replace("${input}", params["input"]) for d in stages[cur]["deps"]]
        assert any(produced.get(d) == prev for d in deps), f"{cur} does not read {prev}'s output"
    for name, st in stages.items():
        for kind in ("metrics", "plots"):
            for item in st.get(kind, []):
                (path, opts), = item.items()  # fmt: skip
                assert opts.get("cache") is False, f"{name}: {path} should live in git"


def test_stage_commands_use_real_options() -> None:
    """Every option a `fgid stage` command line in dvc.yaml passes exists on that command."""
    from pipelines.stages import stage_command

    for name, st in _load("dvc.yaml")["stages"].items():
        argv = shlex.split(st["cmd"])
        if argv[:4] != ["python", "-m", "pipelines.cli", "stage"]:
            continue
        command = stage_command.commands[argv[4]]
        known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        used = {a for a in argv[5:] if a.startswith("--")}
        assert used <= known, f"{name}: unknown options {used - known}"
        assert argv[4] == name


def _dvc_deps():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dvc_deps", REPO / "scripts" / "dvc_deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_stage_depends_on_the_files_its_command_imports() -> None:
    """dvc.yaml's deps cover every project file each command imports (scripts/dvc_deps.py):
    an edit of any of them reruns the stage, so `dvc repro` never reuses a stale output."""
    dvc_deps = _dvc_deps()
    stages = _load("dvc.yaml")["stages"]
    missing = {name: dvc_deps.missing_deps(st) for name, st in stages.items()}
    assert not any(missing.values()), {k: v for k, v in missing.items() if v}
    # the files the issue found missing from parse and caption
    for name in ("parse", "caption"):
        files = dvc_deps.stage_files(stages[name])
        assert "fgid_builder/detect/dlib_hog.py" in files
        assert "fgid_builder/embed/dlib_resnet.py" in files
    # imports by name: the backends registered for the stage, `fgid SUBCOMMAND`'s module
    assert "fgid_builder/caption/mllm.py" in dvc_deps.stage_files(stages["caption"])
    assert "pipelines/eval_cmds.py" in dvc_deps.stage_files(stages["report"])
    assert "scripts/dvc_train.py" in dvc_deps.stage_files(stages["eval"])  # a sibling script


def test_a_missing_dep_is_found() -> None:
    dvc_deps = _dvc_deps()
    stage = dict(_load("dvc.yaml")["stages"]["parse"])
    stage["deps"] = [d for d in stage["deps"] if not d.startswith("fgid_builder/detect")]
    assert "fgid_builder/detect/dlib_hog.py" in dvc_deps.missing_deps(stage)


def test_dvc_outputs_are_git_ignored() -> None:
    stages = _load("dvc.yaml")["stages"]
    outs = [
        o if isinstance(o, str) else next(iter(o))
        for st in stages.values()
        for o in st.get("outs", [])
    ]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *outs], cwd=REPO, capture_output=True, text=True
    )
    assert sorted(result.stdout.split()) == sorted(outs)


def test_dvc_metrics_and_plots_render(tmp_path: Path) -> None:
    """From the committed metrics and plot data alone (no pipeline run needed)."""
    import json

    if shutil.which("dvc") is None:
        pytest.skip("dvc is not installed (pip install 'fgid[dvc]')")
    result = subprocess.run(
        ["dvc", "metrics", "show", "--json"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    files = next(iter(shown.values()))["data"]
    for stage in DATASET_STAGES:
        m = files[f"data/metrics/{stage}.json"]["data"]
        assert {"inputs", "images", "rejects", "ok_rate"} <= set(m)
    assert "loss_last" in files["data/metrics/train.json"]["data"]
    _run(["dvc", "plots", "show", "--out", str(tmp_path / "plots")], REPO)
    html = (tmp_path / "plots" / "index.html").read_text()
    for title in ("Detection score per face", "Facial caption length", "Training loss"):
        assert title in html


# --------------------------------------------------------------------------- slow: dvc repro


def _run(args: list[str], cwd: Path, timeout: int = 900) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _ran(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


@pytest.mark.slow
@pytest.mark.integration
def test_dvc_repro_reproduces_committed_lock(tmp_path: Path) -> None:
    if shutil.which("dvc") is None:
        pytest.skip("dvc is not installed (pip install 'fgid[dvc]')")
    if subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "dvc.lock"], cwd=REPO).returncode:
        pytest.skip("dvc.lock has uncommitted changes; commit it first")
    clone = tmp_path / "clone"
    _run(["git", "clone", "--quiet", str(REPO), str(clone)], tmp_path)

    first = _run(["dvc", "repro"], clone)
    # every stage with cached outputs runs (those with only git-tracked outputs may be current)
    assert {"demo_photos", *DATASET_STAGES, "report", "train"} <= _ran(first)
    diff = subprocess.run(
        ["git", "diff", "--stat", "--exit-code", "--", "dvc.lock", "data"],
        cwd=clone,
        capture_output=True,
        text=True,
    )
    assert diff.returncode == 0, f"not reproduced bit for bit:\n{diff.stdout}"

    second = _run(["dvc", "repro"], clone)
    assert _ran(second) == set() and "up to date" in second

    params = clone / "params.yaml"
    text = params.read_text()
    new = re.sub(r"(\ncaption:\n(?:  .*\n)*?  batch_size: )\d+", r"\g<1>1", text)
    assert new != text
    params.write_text(new)
    third = _run(["dvc", "repro"], clone)
    ran = _ran(third)
    assert "caption" in ran
    upstream = {"demo_photos", "ingest", "detect", "parse", "embed"}
    assert not ran & upstream, f"a caption param reran {ran & upstream}"
    # the captions do not depend on the batch size: what follows is checked and skipped
    assert ran == {"caption"}, ran
    assert "Stage 'shard' didn't change, skipping" in third


@pytest.mark.slow
@pytest.mark.integration
def test_dvc_repro_after_an_opt_out_reruns_the_shard_stage_only_and_matches_a_fresh_clone(
    tmp_path: Path,
) -> None:
    """A person added to the pipeline's opt-out list (`optout.txt`, a dependency of `shard`):
    `dvc repro shard` reruns `shard` and nothing upstream, the person's samples are gone, and
    a fresh clone whose list holds them from the start reproduces the same bytes. (Up to the
    `shard` stage: what follows reads its outputs, `dvc status` shows them changed.)"""
    import hashlib

    from fgid_builder.index import read_index

    if shutil.which("dvc") is None:
        pytest.skip("dvc is not installed (pip install 'fgid[dvc]')")
    upstream = {"demo_photos", "ingest", "detect", "parse", "embed", "caption"}

    def clone(name: str) -> Path:
        path = tmp_path / name
        _run(["git", "clone", "--quiet", str(REPO), str(path)], tmp_path)
        return path

    def files(dataset: Path) -> dict[str, str]:
        return {
            p.relative_to(dataset).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(dataset.rglob("*"))
            if p.is_file()
        }

    def changed(repo: Path) -> set[str]:
        import json

        out = subprocess.run(
            ["dvc", "status", "--json"], cwd=repo, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        return set(json.loads(out.stdout or "{}"))

    a = clone("a")
    _run(["dvc", "repro", "shard"], a)
    before = files(a / "data" / "dataset")
    rows = read_index(a / "data" / "dataset" / "index.parquet").to_pylist()
    # the person: every face of the astronaut photo (one `sha256` line, as `fgid erase` writes)
    sha = hashlib.sha256((a / "data" / "demo" / "astronaut.png").read_bytes()).hexdigest()
    theirs = {r["key"] for r in rows if r["status"] == "ok" and r["source_sha256"] == sha}
    assert theirs, "the astronaut photo has no sample to opt out"
    line = f"sha256 {sha}  # opted out by a test\n"

    status_before = changed(a)
    assert not status_before & (upstream | {"shard"}), status_before
    with open(a / "optout.txt", "a") as f:
        f.write(line)
    status_after = changed(a)
    assert status_after - status_before == {"shard"} and not status_after & upstream
    log = _run(["dvc", "repro", "shard"], a)
    assert _ran(log) == {"shard"}, _ran(log)
    for stage in upstream - {"demo_photos"}:  # (demo_photos has no deps on the list either)
        assert f"Stage '{stage}' didn't change, skipping" in log
    after = files(a / "data" / "dataset")
    assert after != before
    rows = read_index(a / "data" / "dataset" / "index.parquet").to_pylist()
    kept = {r["key"] for r in rows if r["status"] == "ok"}
    assert not kept & theirs and kept  # the person is out, the others stay
    assert {r["reason"] for r in rows if r["source_sha256"] == sha} == {"opted_out"}

    b = clone("b")  # a fresh clone: its own empty cache, the list edited before any run
    with open(b / "optout.txt", "a") as f:
        f.write(line)
    _run(["dvc", "repro", "shard"], b)
    assert files(b / "data" / "dataset") == after
    lock_a = yaml.safe_load((a / "dvc.lock").read_text())["stages"]["shard"]
    lock_b = yaml.safe_load((b / "dvc.lock").read_text())["stages"]["shard"]
    assert lock_a["outs"] == lock_b["outs"]
