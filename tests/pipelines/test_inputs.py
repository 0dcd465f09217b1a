"""`fgid build` on manifests: URLs downloaded from a loopback server the test starts, local
paths, and `s3://` objects on a moto server; pass-through columns; resume after kill -9.

Everything runs against real servers (http.server, moto's standalone S3), never a mocked
client.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fgid_builder.demo import demo_photos
from fgid_builder.index import read_index
from fgid_builder.shards import iter_shard, shard_paths
from pipelines.build import PLAN, BuildConfig, run_build
from tests.http_photos import PhotoServer, Route

CAP = 300_000  # --max-input-bytes: the astronaut PNG (791 kB) is over it


def _faces(n: int) -> list[bytes]:
    """n face JPEGs: the shipped photos re-encoded at several sizes (all distinct bytes)."""
    faces = [Image.open(p).convert("RGB") for p in demo_photos()[:2]]
    out = []
    for i in range(n):
        im = faces[i % len(faces)]
        side = 320 + 24 * i
        im = im.resize((side, round(side * im.height / im.width)))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=88)
        out.append(buf.getvalue())
    return out


def _serve_inputs(server: PhotoServer, good: list[bytes]) -> dict[str, str | None]:
    """Routes for the manifest; url -> the reject reason expected (None: a photo)."""
    big = next(p for p in demo_photos() if p.name == "astronaut.png").read_bytes()
    assert len(big) > CAP
    expected: dict[str, str | None] = {}
    for i, data in enumerate(good):
        server.routes[f"/photos/{i}.jpg"] = Route(body=data)
        expected[server.url(f"/photos/{i}.jpg")] = None
    server.routes["/copy.jpg"] = Route(body=good[0])
    server.routes["/boom.jpg"] = Route(status=500, body=b"oops", headers={})
    server.routes["/stall.jpg"] = Route(body=good[1], stall=True)
    server.routes["/page.html"] = Route(
        body=b"<html>hi</html>", headers={"Content-Type": "text/html"}
    )
    server.routes["/big.png"] = Route(body=big, headers={"Content-Type": "image/png"})
    server.routes["/noai.jpg"] = Route(
        body=good[1], headers={"Content-Type": "image/jpeg", "X-Robots-Tag": "noai"}
    )
    expected.update(
        {
            server.url("/missing.jpg"): "http_404",
            server.url("/copy.jpg"): "duplicate",
            server.url("/boom.jpg"): "http_5xx",
            server.url("/stall.jpg"): "timeout",
            server.url("/page.html"): "not_an_image",
            server.url("/big.png"): "too_large",
            server.url("/noai.jpg"): "opted_out",
        }
    )
    return expected


def _manifest(path: Path, urls: list[str], column: str = "url") -> dict[str, dict[str, str]]:
    """A Parquet manifest with pass-through columns; returns uri -> its expected extra map."""
    rows = [
        {column: u, "caption": f"photo {i}", "license": "cc-by" if i % 2 else None, "rank": i}
        for i, u in enumerate(urls)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return {
        r[column]: {"caption": r["caption"], "license": r["license"] or "", "rank": str(r["rank"])}
        for r in rows
    }


ARGS = dict(fetch_timeout=1.0, fetch_retries=1, max_input_bytes=CAP, max_faces=2)
CLI_ARGS = ["--fetch-timeout", "1", "--fetch-retries", "1", "--max-input-bytes", str(CAP),
            "--max-faces", "2", "--no-progress", "--no-report"]  # fmt: skip


def _outputs(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.relative_to(out).parts[0] not in ("logs", "report")
    }


def _samples(out: Path) -> list[dict]:
    return [s for p in shard_paths(out / "shards") for s in iter_shard(p)]


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    import logging

    opts = dict(address="local", num_cpus=2, include_dashboard=False,
                logging_level=logging.WARNING, log_to_driver=False)  # fmt: skip
    try:
        ray.init(**opts)
    except Exception as e:  # noqa: BLE001 - on a saturated machine the node may start too slowly
        if "timed out during startup" not in str(e):
            raise
        ray.shutdown()
        ray.init(**opts)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def server():
    with PhotoServer() as s:
        yield s


@pytest.mark.integration
def test_url_manifest_every_row_a_sample_or_a_reason(ray_local, server, tmp_path):
    expected = _serve_inputs(server, _faces(3))
    manifest = tmp_path / "urls.parquet"
    extras = _manifest(manifest, list(expected))
    out = tmp_path / "out"
    # hashed and downloaded by Ray tasks (plan_on="cluster"), processed by the actors
    run_build(BuildConfig(input=str(manifest), out=str(out), workers=2, shard_size=2,
                          progress=False, report=False, plan_on="cluster", **ARGS))  # fmt: skip
    index = read_index(out / "index.parquet").to_pylist()
    by_uri: dict[str, list[dict]] = {}
    for r in index:
        by_uri.setdefault(r["source_uri"], []).append(r)
    assert set(by_uri) == set(expected)  # every manifest row has index rows
    for uri, reason in expected.items():
        rows = by_uri[uri]
        if reason is None:
            assert any(r["status"] == "ok" for r in rows), rows
        else:
            assert [r["reason"] for r in rows] == [reason], rows
        for r in rows:  # pass-through columns in the index, rejects included
            assert json.loads(r["extra"]) == extras[uri]
    dup = by_uri[server.url("/copy.jpg")][0]
    assert dup["duplicate_of"] == by_uri[server.url("/photos/0.jpg")][0]["source_sha256"][:16]
    samples = _samples(out)
    assert samples and len(samples) == sum(r["status"] == "ok" for r in index)
    for s in samples:  # ... and in every sample's JSON, one type (a str -> str map)
        meta = json.loads(s["json"])
        assert meta["source"]["extra"] == extras[meta["source"]["uri"]]
        assert all(isinstance(v, str) for v in meta["source"]["extra"].values())
    plan = pq.read_table(out / PLAN).to_pylist()
    assert {r["source_uri"] for r in plan} == set(expected)
    # the downloaded bytes are what the plan hashed
    assert all(r["source_sha256"] for r in plan if r["status"] == "planned")


@pytest.mark.integration
def test_a_changed_answer_for_uncommitted_work_is_changed_since_plan(ray_local, server, tmp_path):
    good = _faces(2)
    for i, data in enumerate(good):
        server.routes[f"/ch/{i}.jpg"] = Route(body=data)
    urls = [server.url(f"/ch/{i}.jpg") for i in range(2)]
    manifest = tmp_path / "m.parquet"
    _manifest(manifest, urls)
    out = tmp_path / "out"
    cfg = BuildConfig(input=str(manifest), out=str(out), workers=1, shard_size=1,
                      progress=False, report=False, **ARGS)  # fmt: skip
    run_build(cfg)
    before = {r["source_uri"]: r for r in read_index(out / "index.parquet").to_pylist()}
    plan = {r["source_uri"]: r for r in pq.read_table(out / PLAN).to_pylist()}
    # shard of urls[1] uncommitted (its commit record gone), then both answers change
    (out / "shards" / f"{plan[urls[1]]['shard']}.json").unlink()
    server.routes["/ch/0.jpg"] = Route(body=good[1])
    server.routes["/ch/1.jpg"] = Route(body=good[0])
    hits = dict(server.hits)
    run_build(cfg)
    after = {r["source_uri"]: r for r in read_index(out / "index.parquet").to_pylist()}
    assert after[urls[0]] == before[urls[0]]  # committed: its new answer is never fetched
    assert server.hits["/ch/0.jpg"] == hits["/ch/0.jpg"]
    assert after[urls[1]]["reason"] == "changed_since_plan"
    assert server.hits["/ch/1.jpg"] == hits["/ch/1.jpg"] + 1


@pytest.mark.integration
def test_local_path_manifest_gives_the_folder_build_samples(ray_local, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, data in enumerate(_faces(3)):
        (folder / f"p{i}.jpg").write_bytes(data)
    manifest = tmp_path / "photos" / "list.csv"
    manifest.write_text("path,caption\n" + "".join(f"p{i}.jpg,c{i}\n" for i in range(3)))
    common = dict(workers=2, shard_size=2, progress=False, report=False, max_faces=2)
    run_build(BuildConfig(input=str(folder), out=str(tmp_path / "a"), **common))
    run_build(BuildConfig(input=str(manifest), out=str(tmp_path / "b"), **common))
    _assert_same_samples(tmp_path / "a", tmp_path / "b", extra_b={"caption"})


def _assert_same_samples(a: Path, b: Path, extra_b: set[str]) -> None:
    """Same keys and member bytes; JSON equal but for `source.uri` and `source.extra`."""
    sa = {s["__key__"]: s for s in _samples(a)}
    sb = {s["__key__"]: s for s in _samples(b)}
    assert sa and set(sa) == set(sb)
    for key, s in sa.items():
        t = sb[key]
        for member in ("jpg", "mask.png", "id.npy"):
            assert s[member] == t[member], (key, member)
        ma, mb = json.loads(s["json"]), json.loads(t["json"])
        assert ma["source"].pop("extra") == {}
        assert set(mb["source"].pop("extra")) == extra_b
        assert Path(mb["source"].pop("uri")).name == Path(ma["source"].pop("uri")).name
        assert ma == mb


@pytest.mark.slow
@pytest.mark.integration
def test_s3_manifest_gives_the_folder_build_samples(ray_local, tmp_path, monkeypatch):
    pytest.importorskip("s3fs", reason="the s3 extra: pip install -e '.[s3]'")
    import fsspec
    from moto.server import ThreadedMotoServer

    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    srv.start()
    try:
        port = srv._server.server_port
        endpoint = f"http://127.0.0.1:{port}"
        for k, v in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,  # botocore (s3fs) reads it: workers inherit it
        }.items():
            monkeypatch.setenv(k, v)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("photos")
        folder = tmp_path / "photos"
        folder.mkdir()
        for i, data in enumerate(_faces(3)):
            (folder / f"p{i}.jpg").write_bytes(data)
            fs.pipe(f"photos/in/p{i}.jpg", data)
        buf = io.BytesIO()
        pq.write_table(pa.table({"url": [f"s3://photos/in/p{i}.jpg" for i in range(3)],
                                 "caption": ["a", "b", "c"]}), buf)  # fmt: skip
        fs.pipe("photos/manifest.parquet", buf.getvalue())
        fs.invalidate_cache()
        common = dict(workers=2, shard_size=2, progress=False, report=False, max_faces=2)
        run_build(BuildConfig(input=str(folder), out=str(tmp_path / "a"), **common))
        # in its own process: Ray's workers get the S3 endpoint from the environment
        res = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "build", "s3://photos/manifest.parquet",
             str(tmp_path / "b"), "--workers", "2", "--shard-size", "2", "--max-faces", "2",
             "--no-progress", "--no-report"],
            capture_output=True, text=True, timeout=600, check=False,
            env=dict(os.environ, RAY_ADDRESS=""),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        _assert_same_samples(tmp_path / "a", tmp_path / "b", extra_b={"caption"})
        uris = {json.loads(s["json"])["source"]["uri"] for s in _samples(tmp_path / "b")}
        assert uris <= {f"s3://photos/in/p{i}.jpg" for i in range(3)}
    finally:
        srv.stop()


@pytest.mark.slow
@pytest.mark.integration
def test_url_manifest_kill_9_then_rerun_is_identical(server, tmp_path):
    expected = _serve_inputs(server, _faces(8))
    manifest = tmp_path / "urls.jsonl"
    manifest.write_text(
        "".join(json.dumps({"url": u, "caption": f"c{i}"}) + "\n" for i, u in enumerate(expected))
    )
    env = dict(os.environ, RAY_ADDRESS="")
    cmd = [sys.executable, "-m", "pipelines.cli", "build", str(manifest)]
    args = ["--workers", "2", "--shard-size", "1", "--batch-size", "1", *CLI_ARGS]
    ref = tmp_path / "ref"
    res = subprocess.run([*cmd, str(ref), *args], capture_output=True, text=True, env=env,
                         timeout=600, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    total = len(list((ref / "shards").glob("*.json")))

    out = tmp_path / "out"
    proc = subprocess.Popen([*cmd, str(out), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)  # fmt: skip
    committed: list[str] = []
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        committed = sorted(p.stem for p in (out / "shards").glob("*.json")) if out.is_dir() else []
        if len(committed) >= total // 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 0 < len(committed) < total
    # a committed item's server answer changes: the rerun never refetches it
    plan = pq.read_table(out / PLAN).to_pylist()
    done = next(r for r in plan if r["shard"] == committed[0])
    path = "/" + done["source_uri"].split("/", 3)[3]
    server.routes[path] = Route(body=b"\xff\xd8\xff other bytes now")
    hits = server.hits[path]
    res = subprocess.run([*cmd, str(out), *args], capture_output=True, text=True, env=env,
                         timeout=600, check=False)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert server.hits[path] == hits
    assert _outputs(out) == _outputs(ref)
    keys = [s["__key__"] for s in _samples(out)]
    assert len(keys) == len(set(keys))


def _photo_folder(root: Path, photos: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in photos.items():
        (root / name).write_bytes(data)
    return root


@pytest.mark.integration
def test_changed_inputs_refused_and_append_is_deterministic(ray_local, tmp_path):
    from click.testing import CliRunner

    from pipelines.build import build_command

    faces = _faces(4)
    first = {"a.jpg": faces[0], "b.jpg": faces[1]}
    opts = ["--workers", "2", "--shard-size", "1", "--max-faces", "2", "--no-progress",
            "--no-report"]  # fmt: skip

    def build(inp: Path, out: Path, *more: str):
        return CliRunner().invoke(build_command, [str(inp), str(out), *opts, *more])

    outs = []
    for run in ("one", "two"):  # the same sequence of commands in two OUTs
        inp = _photo_folder(tmp_path / run / "in", first)
        out = tmp_path / run / "out"
        assert build(inp, out).exit_code == 0
        # 2 added (one a copy of a.jpg), then refused without --append: exit 2, one line
        (inp / "c.jpg").write_bytes(faces[2])
        (inp / "d.jpg").write_bytes(faces[0])
        res = build(inp, out)
        assert res.exit_code == 2, res.output
        line = res.output.strip().splitlines()[-1]
        assert line.startswith("fgid build: ") and "2 added, 0 removed, 0 changed bytes" in line
        res = build(inp, out, "--append")
        assert res.exit_code == 0, res.output
        outs.append(out)
    a, b = outs
    assert _outputs(a) == _outputs(b)
    plan = pq.read_table(a / PLAN).to_pylist()
    assert [(r["order"], r["source_uri"], r["shard"], r["reason"]) for r in plan] == [
        (0, "a.jpg", "000000", None),
        (1, "b.jpg", "000001", None),
        (2, "c.jpg", "000002", None),  # new inputs in new shards, after the existing ones
        (3, "d.jpg", None, "duplicate"),  # a copy of an already planned photo
    ]
    index = read_index(a / "index.parquet").to_pylist()
    assert {r["source_uri"] for r in index} == {"a.jpg", "b.jpg", "c.jpg", "d.jpg"}
    assert sorted(p.stem for p in (a / "shards").glob("*.tar")) == ["000000", "000001", "000002"]
    # a removal or an edit is refused, with --append too
    inp = tmp_path / "one" / "in"
    (inp / "b.jpg").unlink()
    (inp / "a.jpg").write_bytes(faces[3])
    for more in ((), ("--append",)):
        res = build(inp, a, *more)
        assert res.exit_code == 2, res.output
        assert "0 added, 1 removed, 1 changed bytes" in res.output.strip().splitlines()[-1]
    # the same inputs again: a plain resume, nothing refused
    (inp / "b.jpg").write_bytes(faces[1])
    (inp / "a.jpg").write_bytes(faces[0])
    assert build(inp, a).exit_code == 0
    assert _outputs(a) == _outputs(b)
