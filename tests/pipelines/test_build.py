"""`fgid build`: config <-> CLI, pool planning, and the whole pipeline on Ray.

The default suite runs the pipeline end to end on one shared local Ray instance (awkward inputs,
1 vs 2 workers, resume after a simulated crash, plain-webdataset reading, --strict). The
separate-process checks (kill -9, --address on a `ray start --head` cluster, the deepface
acceptance) are in test_build_acceptance.py and marked slow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fgid_builder.index import read_index
from fgid_builder.shards import iter_shard, shard_paths, temp_path_for
from pipelines.build import (
    INDEX,
    PARTS,
    SHARDS,
    BuildConfig,
    BuildError,
    build_command,
    run_build,
)
from pipelines.ray_stages import STAGE_NAMES, plan_pools
from tests.pipelines.inputs import make_bad_inputs
from tests.sample_checks import check_sample_json

# --------------------------------------------------------------------------- fast, no Ray


def _resource_params() -> set[str]:
    """The per-stage flags `pipelines.options.click_options` adds."""
    import click

    from pipelines.options import click_options

    return {p.name for p in click_options(click.command()(lambda **kw: None)).params}


def test_cli_options_map_one_to_one_to_config():
    params = {p.name for p in build_command.params}
    fields = {f.name for f in dataclasses.fields(BuildConfig)}
    # the per-stage flags all land in BuildConfig.resources; `exclusions` is derived from
    # --exclude by run_build (no flag of its own)
    assert params == (fields - {"resources", "exclusions"}) | _resource_params()


@pytest.fixture
def captured(monkeypatch):
    """Run `fgid build` up to the config: the run (`run_build_watched`, which would fork the
    build into a child) records it and returns an empty summary."""
    from pipelines import build

    seen: dict[str, BuildConfig] = {}

    def fake_run_build(cfg):
        seen["cfg"] = cfg
        return build.BuildSummary()

    monkeypatch.setattr(build, "run_build_watched", fake_run_build)
    return seen


def test_stage_config_yaml_and_flags_reach_the_config(tmp_path, captured):
    yml = tmp_path / "stages.yaml"
    yml.write_text(
        "detect: {batch_size: 8, options: {upsample: 1}}\n"
        "caption: {concurrency: 2, num_gpus: 1, options: {model: tiny-llava, max_new_tokens: 8}}\n"
    )
    args = ["in", str(tmp_path / "out"), "--stage-config", str(yml),
            "--captioner-option", "max_new_tokens=4", "--captioner-option", "do_sample=false",
            "--embedder-batch-size", "16", "--concurrency", "encode=2", "--parser-gpus", "0.5"]  # fmt: skip
    res = CliRunner().invoke(build_command, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    cfg = captured["cfg"]
    r = cfg.resources
    assert cfg.backend_options() == {
        "detect": {"upsample": 1},
        "parse": {},
        "embed": {},
        "caption": {"model": "tiny-llava", "max_new_tokens": 4, "do_sample": False},
    }
    assert r["detect"].batch_size == 8 and r["embed"].batch_size == 16
    assert r.concurrency_map() == {"caption": 2, "encode": 2}
    assert r.gpus_map() == {"parse": 0.5, "caption": 1.0}
    # options change the bytes: recorded with the output settings; resources do not
    settings = cfg.output_settings()
    assert settings["backend_options"]["caption"]["model"] == "tiny-llava"
    assert "batch_size" not in json.dumps(settings) and "concurrency" not in json.dumps(settings)
    # per-stage batch sizes and GPUs become their own pools
    pools = plan_pools(
        workers=2,
        fuse=True,
        concurrency=r.concurrency_map(),
        gpus=r.gpus_map(),
        batch_sizes={s: x.batch_size for s, x in r.stages.items() if x.batch_size},
    )
    assert [p.stages for p in pools] == [("detect",), ("parse",), ("embed",), ("caption",),
                                         ("encode",)]  # fmt: skip
    assert pools[0].batch_size == 8 and pools[1].num_gpus == 0.5 and pools[3].concurrency == 2


def test_stage_settings_errors_exit_2(tmp_path, captured):
    bad = tmp_path / "bad.yaml"
    bad.write_text("decode: {batch_size: 2}\n")
    runner = CliRunner()
    res = runner.invoke(build_command, ["in", "out", "--stage-config", str(bad)])
    assert res.exit_code == 2 and "unknown stage" in res.output
    res = runner.invoke(build_command, ["in", "out", "--gpus", "embed=1", "--embedder-gpus", "0.5"])
    assert res.exit_code == 2 and "contradicts" in res.output
    res = runner.invoke(build_command, ["in", "out", "--detector-option", "noequals"])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output


def test_backend_options_reach_the_backend(tmp_path):
    """Driver-side check and actor-side construction both pass the options."""
    from pipelines.build import check_models
    from pipelines.ray_stages import StageSettings, backend_targets, create_backend

    cfg = BuildConfig(input="x", out=str(tmp_path), resources=_resources(upsample=2))
    assert "upsample=2" in check_models(cfg)["detect"]["version"]
    settings = StageSettings(
        backends=backend_targets(cfg.backends()), options={"detect": {"upsample": 2}}
    )
    assert create_backend(settings, "detect").upsample == 2
    with pytest.raises(BuildError, match="--detector-option upsample=9"):
        check_models(BuildConfig(input="x", out=str(tmp_path), resources=_resources(upsample=9)))
    with pytest.raises(BuildError, match="--detector-option nope=1"):
        check_models(BuildConfig(input="x", out=str(tmp_path), resources=_resources(nope=1)))


def _resources(**detect_options):
    from fgid_builder.stage_resources import StageResources

    return StageResources.from_dict({"detect": {"options": detect_options}})


def test_config_validation(tmp_path):
    with pytest.raises(BuildError):
        BuildConfig(input=None, out=str(tmp_path))
    with pytest.raises(BuildError, match="unknown detect backend"):
        BuildConfig(input="x", out=str(tmp_path), detector="nope")
    with pytest.raises(BuildError, match="unknown stage"):
        BuildConfig(input="x", out=str(tmp_path), concurrency={"decode": 2})


def test_plan_pools():
    fused = plan_pools(workers=2, fuse=True)
    assert [p.stages for p in fused] == [STAGE_NAMES] and fused[0].concurrency == 2
    assert fused[0].num_cpus == 1.0
    split = plan_pools(workers=2, fuse=False, concurrency={"embed": 2})
    assert [p.stages for p in split] == [(s,) for s in STAGE_NAMES]
    assert sum(p.num_cpus * p.concurrency for p in split) <= 2.0 + 1e-9
    gpu = plan_pools(workers=4, fuse=True, gpus={"embed": 1})
    assert [p.stages for p in gpu] == [("detect", "parse"), ("embed",), ("caption", "encode")]
    assert gpu[1].num_gpus == 1 and gpu[1].num_cpus == 0


# --------------------------------------------------------------------------- on Ray


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    import logging

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    root = tmp_path_factory.mktemp("bad") / "in"
    return root, make_bad_inputs(root)


def _output_bytes(out: Path) -> dict[str, bytes]:
    """Every deterministic output file (all but OUT/logs/ and the QA report OUT/report/)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.relative_to(out).parts[0] not in ("logs", "report")
    }


def _cfg(inp: Path, out: Path, **kw) -> BuildConfig:
    opts = {"workers": 2, "shard_size": 4, "max_faces": 2, "progress": False, "report": False}
    opts.update(kw)
    return BuildConfig(input=str(inp), out=str(out), **opts)


@pytest.fixture(scope="module")
def built(ray_local, bad_inputs, tmp_path_factory) -> Path:
    inp, _ = bad_inputs
    out = tmp_path_factory.mktemp("built") / "out"
    summary = run_build(_cfg(inp, out, workers=2, report=True))
    assert summary.report_error is None and summary.report
    return out


@pytest.mark.integration
def test_build_writes_the_qa_report(built):
    page = (built / "report" / "index.html").read_text()
    assert "rejects" in page.lower() and list((built / "report" / "img").glob("*.jpg"))
    summary = json.loads((built / "logs" / "summary.json").read_text())
    assert summary["report"] == str(built / "report" / "index.html")


@pytest.mark.integration
def test_every_input_has_rows_with_its_reason(built, bad_inputs):
    _, expected = bad_inputs
    rows = read_index(built / INDEX).to_pylist()
    by_uri: dict[str, list[dict]] = {}
    for r in rows:
        by_uri.setdefault(r["source_uri"], []).append(r)
    assert set(by_uri) == set(expected)
    for uri, reason in expected.items():
        got = by_uri[uri]
        if reason is None:
            assert any(r["status"] == "ok" for r in got), (uri, got)
        elif reason == "too_many_faces":  # the 2 largest faces kept, the others recorded
            assert sum(r["status"] == "ok" for r in got) == 2, got
            assert {r["reason"] for r in got if r["status"] != "ok"} >= {"too_many_faces"}
        else:
            assert [r["reason"] for r in got] == [reason], (uri, got)
    keys = [r["key"] for r in rows if r["status"] == "ok"]
    assert len(keys) == len(set(keys))
    # the copy names the key prefix of the photo it duplicates
    dup = by_uri["zz copy of astronaut.jpg"][0]
    assert dup["duplicate_of"] == by_uri["good/astronaut.jpg"][0]["key"].split("_")[0]
    # EXIF-rotated: the face is found in the upright frame (portrait taller than wide)
    rot = by_uri["exif_rotated.jpg"][0]
    assert (rot["width"], rot["height"]) == (450, 527)


@pytest.mark.integration
def test_shards_committed_and_consistent(built):
    stats = sorted((built / SHARDS).glob("*.json"))
    tars = shard_paths(built / SHARDS)
    assert [p.stem for p in stats] == [p.stem for p in tars] and tars
    index = read_index(built / INDEX)
    n_ok = sum(s == "ok" for s in index.column("status").to_pylist())
    keys = []
    for p in stats:
        st = json.loads(p.read_text())
        keys += st["keys"]
        assert (built / st["index_part"]["name"]).is_file()
    assert len(keys) == n_ok == len(set(keys))
    assert not [p for p in built.rglob(".*") if p.is_file()], "temporary files left"


@pytest.mark.integration
def test_plain_webdataset_gives_every_field(built):
    wds = pytest.importorskip("webdataset")
    urls = [str(p) for p in shard_paths(built / SHARDS)]
    n = 0
    for s in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
        n += 1
        assert s["jpg"].shape == (512, 512, 3)
        assert s["mask.png"].ndim in (2, 3)
        emb = s["id.npy"]
        assert emb.dtype == np.float32 and abs(float(np.linalg.norm(emb)) - 1) < 1e-3
        meta = s["json"]
        check_sample_json(meta)  # the published JSON Schema; captions describe only
        assert meta["key"] == s["__key__"]
        assert set(meta["captions"]["regions"]) == {"face", "ears", "eyes", "nose", "mouth"}
        assert meta["embedding"]["dim"] == emb.shape[0]
        assert set(meta["models"]) == {"detect", "parse", "embed", "caption"}
    assert n == sum(len(list(iter_shard(p))) for p in urls) > 0


@pytest.mark.integration
def test_one_worker_gives_the_same_bytes(built, bad_inputs, tmp_path):
    inp, _ = bad_inputs
    out = tmp_path / "out1"
    run_build(_cfg(inp, out, workers=1, batch_size=3))
    assert _output_bytes(out) == _output_bytes(built)


@pytest.mark.integration
def test_one_pool_per_stage_gives_the_same_bytes(built, bad_inputs, tmp_path):
    """--no-fuse: five actor pools, faces carried between them through the object store."""
    inp, _ = bad_inputs
    out = tmp_path / "out"
    run_build(_cfg(inp, out, workers=2, fuse=False, concurrency={"embed": 2}))
    assert _output_bytes(out) == _output_bytes(built)


@pytest.mark.integration
def test_detector_option_changes_the_build(ray_local, tmp_path):
    """`--detector-option upsample=1` reaches the dlib detector inside the Ray actors: recorded
    in build.json and in every sample's model version; another option, another OUT."""
    from tests.pipelines.inputs import _photos

    inp = tmp_path / "in"
    inp.mkdir()
    _photos()["astronaut.png"].save(inp / "astronaut.png")
    out = tmp_path / "out"
    args = [str(inp), str(out), "--workers", "1", "--no-progress", "--no-report",
            "--detector-option", "upsample=1", "--detector-batch-size", "2"]  # fmt: skip
    res = CliRunner().invoke(build_command, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    settings = json.loads((out / "build.json").read_text())
    assert settings["backend_options"]["detect"] == {"upsample": 1}
    metas = [s["json"] for p in shard_paths(out / SHARDS) for s in iter_shard(p)]
    assert metas and all(
        "upsample=1" in json.loads(m)["models"]["detect"]["version"] for m in metas
    )
    other = CliRunner().invoke(build_command, args[:-4])  # same OUT, no option: refused
    assert other.exit_code == 2 and "backend_options" in other.output


@pytest.mark.integration
def test_resume_after_a_crash_redoes_only_uncommitted_work(built, bad_inputs, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(built, out, symlinks=True)
    want = _output_bytes(built)
    # a crash after shard 000001's tar but before its stats; a half-written temp file; no index
    (out / SHARDS / "000001.json").unlink()
    (out / PARTS / "000001.parquet").unlink()
    temp_path_for(out / SHARDS / "000002.tar").write_bytes(b"half a tar")
    (out / INDEX).unlink()
    # the same settings again: only shard 1 is redone, from the saved plan
    summary = run_build(_cfg(bad_inputs[0], out))
    assert summary.shards_written == 1 and summary.shards_skipped == summary.shards_total - 1
    assert _output_bytes(out) == want


@pytest.mark.integration
def test_fixed_costs_overlap_and_a_finished_out_needs_no_ray(built, bad_inputs, tmp_path):
    """A new plan is hashed while Ray starts, and Ray stops while the index and report are
    written (both timed in the summary); resuming a finished OUT starts no Ray at all."""
    import shutil

    first = json.loads((built / "logs" / "summary.json").read_text())
    assert first["planned_while_ray_started"] and first["workers"] == 2
    assert first["seconds_plan"] > 0 and first["seconds_report"] > 0
    out = tmp_path / "out"
    shutil.copytree(built, out, symlinks=True)
    again = run_build(_cfg(bad_inputs[0], out))
    assert again.shards_skipped == again.shards_total and again.images_read == 0
    assert again.workers == 0 and again.seconds_ray_start == again.seconds_ray_stop == 0
    assert _output_bytes(out) == _output_bytes(built)


@pytest.mark.integration
def test_cli_exit_codes(built, bad_inputs, tmp_path):
    """A finished OUT is resumed without Ray: exit 0; --strict with rejects: exit 1; settings
    that differ from OUT's: exit 2 with a one-line message."""
    inp, _ = bad_inputs
    runner = CliRunner()
    args = [str(inp), str(built), "--workers", "2", "--shard-size", "4", "--max-faces", "2",
            "--no-report", "--no-progress"]  # fmt: skip
    ok = runner.invoke(build_command, args)
    assert ok.exit_code == 0, ok.output
    assert "rejects:" in ok.output and "duplicate 1" in ok.output
    strict = runner.invoke(build_command, [*args, "--strict"])
    assert strict.exit_code == 1
    other = runner.invoke(build_command, [*args[:-1], "--min-face", "80"])
    assert other.exit_code == 2 and "other settings" in other.output


def test_missing_weights_exit_2_before_ray_starts(tmp_path):
    inp = tmp_path / "in"
    inp.mkdir()
    models = tmp_path / "models"
    models.mkdir()
    args = [str(inp), str(tmp_path / "out"), "--embedder", "arcface", "--models-dir", str(models)]
    res = CliRunner().invoke(build_command, args)
    assert res.exit_code == 2, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("fgid build: ") and str(models) in last


def test_nothing_to_process_needs_no_ray(tmp_path):
    """Only rejects (or nothing) in INPUT: no Ray at all, an index of the reject rows."""
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "empty.jpg").write_bytes(b"")
    summary = run_build(BuildConfig(input=str(inp), out=str(tmp_path / "out"), progress=False))
    assert summary.shards_total == 0 and summary.rejects == {"empty_file": 1}
    assert summary.workers == 0 and summary.seconds_ray_start == 0
    assert not summary.planned_while_ray_started
    rows = read_index(tmp_path / "out" / INDEX).to_pylist()
    assert [(r["source_uri"], r["reason"]) for r in rows] == [("empty.jpg", "empty_file")]


def test_a_failing_report_keeps_the_dataset(tmp_path, monkeypatch):
    """The report fails: the index is there, the error printed and logged; exit 0, or 1 with
    --strict (the only thing --strict has to complain about here)."""
    import eval.report

    def broken(out_dir, *, config=None):
        raise RuntimeError("no plots today")

    monkeypatch.setattr(eval.report, "write_report", broken)
    inp = tmp_path / "in"
    inp.mkdir()
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(build_command, [str(inp), str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "QA report failed: RuntimeError: no plots today" in res.output
    assert (out / INDEX).is_file() and "no plots today" in (
        out / "logs" / "report_error.txt"
    ).read_text()
    strict = runner.invoke(build_command, [str(inp), str(out), "--no-progress", "--strict"])
    assert strict.exit_code == 1 and "the QA report failed" in strict.output
    monkeypatch.undo()
    fine = runner.invoke(build_command, [str(inp), str(out), "--no-progress", "--strict"])
    assert fine.exit_code == 0, fine.output
    assert (out / "report" / "index.html").is_file()
    assert not (out / "logs" / "report_error.txt").exists()


def test_demo_inputs_are_package_uris():
    from pipelines.build import _demo_listing
    from pipelines.plan import resolve_path

    listed = _demo_listing()
    uris = [item.uri for item in listed]
    assert uris == sorted(uris) and all(u.startswith("pkg://") for u in uris)
    pytest.importorskip("skimage")
    assert "pkg://skimage/data/astronaut.png" in uris
    for item in listed:
        assert resolve_path(item.uri, None) == item.path


@pytest.mark.integration
def test_same_photos_elsewhere_give_the_same_bytes(ray_local, tmp_path):
    """Inputs and models in two different absolute locations: byte-identical shards, index,
    plan and build.json, none of which names either location."""
    from tests.pipelines.inputs import _photos

    photos = _photos()
    outs = []
    for where in ("a/deep/er", "b"):
        root = tmp_path / where
        inp = root / "photos"
        (inp / "sub").mkdir(parents=True)
        photos["astronaut.png"].save(inp / "astronaut.png")
        photos["grace_hopper.jpg"].save(inp / "sub" / "grace.png")
        (root / "models").mkdir()
        out = root / "out"
        run_build(_cfg(inp, out, workers=1, shard_size=1, models_dir=str(root / "models")))
        outs.append(out)
    a, b = (_output_bytes(o) for o in outs)
    assert {"build.json", "plan.parquet", "index.parquet"} <= set(a)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], f"{name} depends on where the inputs are"
        assert str(tmp_path).encode() not in a[name], f"{name} records an absolute path"
    settings = json.loads(a["build.json"])
    assert settings["input"] == "folder" and "models_dir" not in settings
    run = json.loads((outs[1] / "logs" / "run.json").read_text())
    assert run["input"] == str(tmp_path / "b" / "photos")


def test_detect_stage_prefers_the_row_bytes(tmp_path):
    """DetectStage decodes `data` when a row carries it (the staged path), else reads `path`;
    either way against the planned hash."""
    import io

    from fgid_builder.schema import sha256_bytes
    from pipelines.ray_stages import DetectStage, StageSettings, backend_targets
    from tests.pipelines.inputs import _photos

    buf = io.BytesIO()
    _photos()["astronaut.png"].save(buf, format="PNG")
    data = buf.getvalue()
    stage = DetectStage(StageSettings(backends=backend_targets({"detect": "dlib"})))
    row = {"order": 0, "shard": "000000", "source_uri": "a.png", "path": str(tmp_path / "none"),
           "source_sha256": sha256_bytes(data), "source_bytes": len(data)}  # fmt: skip
    from_bytes = stage.process([dict(row, data=data)])
    assert from_bytes[0]["status"] == "ok"
    (tmp_path / "a.png").write_bytes(data)
    from_file = stage.process([dict(row, path=str(tmp_path / "a.png"))])
    assert [r["sample"].key for r in from_file] == [r["sample"].key for r in from_bytes]
    bad = stage.process([dict(row, data=data + b"x")])
    assert bad[0]["status"] == "rejected" and "do not match their hash" in bad[0]["index_row"]


def test_an_unreachable_object_store_out_is_one_line_not_a_local_folder(
    tmp_path: Path, monkeypatch
) -> None:
    """`fgid build` writes an `s3://` OUT through the object store (never a local folder named
    `s3:`); a store it cannot use (here: no credentials anywhere) is one line and exit 3.
    (Building into a real S3 server: tests/pipelines/test_s3.py.)"""
    s3fs = pytest.importorskip("s3fs")
    monkeypatch.chdir(tmp_path)
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    (tmp_path / "photos").mkdir()
    # fsspec caches filesystems: none made with other credentials here, none left behind
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        res = CliRunner().invoke(build_command, [str(tmp_path / "photos"), "s3://bucket/out"])
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert res.exit_code == 3, res.output
    assert "the run failed" in res.output and len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]
