"""Planning pass: sorted listing, symlink loops as rows, list files, dedup, fixed shard cut."""

from __future__ import annotations

import os

import pytest

from fgid_builder.schema import Reason
from pipelines.plan import (
    input_base,
    list_inputs,
    make_plan,
    plan_bytes,
    plan_reject_rows,
    planned_images,
    resolve_path,
    shard_sizes,
)


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "in"
    (root / "sub" / "deeper").mkdir(parents=True)
    for i, name in enumerate(["b.jpg", "a b.JPG", "sub/ü\nname.png", "sub/deeper/c.jpeg"]):
        (root / name).write_bytes(b"img" + bytes([i]) * 10)
    (root / "sub" / "copy.jpg").write_bytes((root / "b.jpg").read_bytes())
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.txt").write_text("not listed")
    os.symlink("..", root / "sub" / "loop")  # folder symlink to an ancestor
    os.symlink("self.jpg", root / "self.jpg")  # a link to itself: ELOOP
    return root


def test_listing_is_sorted_relative_and_survives_loops(tree):
    listed = list_inputs(tree)
    uris = [item.uri for item in listed]
    assert uris == sorted(uris)
    assert "notes.txt" not in uris
    assert "sub/ü\nname.png" in uris and "a b.JPG" in uris
    bad = {item.uri: item for item in listed if item.reason is not None}
    assert set(bad) == {"self.jpg", "sub/loop"}
    assert all(item.reason is Reason.UNREADABLE for item in bad.values())
    assert all(os.path.isabs(item.path) for item in listed)


def test_plan_dedups_and_cuts_shards(tree):
    plan = make_plan(list_inputs(tree), shard_size=2, threads=2)
    rows = {r["source_uri"]: r for r in plan.to_pylist()}
    assert rows["sub/copy.jpg"]["reason"] == "duplicate"
    assert rows["sub/copy.jpg"]["duplicate_of"] == rows["b.jpg"]["source_sha256"][:16]
    assert rows["empty.jpg"]["reason"] == "empty_file"
    images = planned_images(plan)
    assert [r["source_uri"] for r in images] == ["a b.JPG", "b.jpg", "sub/deeper/c.jpeg",
                                                 "sub/ü\nname.png"]  # fmt: skip
    assert shard_sizes(plan) == {"000000": 2, "000001": 2}
    rejects = list(plan_reject_rows(plan))
    assert sorted(r["reason"] for r in rejects) == ["duplicate", "empty_file", "unreadable",
                                                    "unreadable"]  # fmt: skip
    # the plan is a pure function of the tree
    again = make_plan(list_inputs(tree), shard_size=2, threads=1)
    assert plan_bytes(plan) == plan_bytes(again)


def test_list_file(tmp_path, tree):
    lst = tmp_path / "list.txt"
    lst.write_text(f"# photos\n{tree / 'b.jpg'}\n\nin/a b.JPG\nin/missing.jpg\n")
    listed = list_inputs(lst)
    assert [i.uri for i in listed] == sorted([str(tree / "b.jpg"), "in/a b.JPG", "in/missing.jpg"])
    plan = make_plan(listed, shard_size=10)
    reasons = {r["source_uri"]: r["reason"] for r in plan.to_pylist()}
    assert reasons["in/missing.jpg"] == "unreadable" and reasons["in/a b.JPG"] is None


def test_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_inputs(tmp_path / "nope")


def test_plan_paths_are_relative_to_the_input(tmp_path, tree):
    """No absolute path in the plan: the same tree elsewhere gives the same plan bytes, and the
    paths resolve against wherever the input is now."""
    import shutil

    plan = make_plan(list_inputs(tree), shard_size=2, base=input_base(tree))
    assert not any(str(tmp_path) in r["path"] for r in plan.to_pylist())
    for r in planned_images(plan):
        assert r["path"] == r["source_uri"]
        assert open(resolve_path(r["path"], input_base(tree)), "rb").read()
    moved = tmp_path / "else" / "where"
    moved.mkdir(parents=True)
    for r in planned_images(plan):
        (moved / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tree / r["path"], moved / r["path"])
    for name in ("sub/copy.jpg", "empty.jpg"):
        shutil.copyfile(tree / name, moved / name)
    os.symlink("..", moved / "sub" / "loop")
    os.symlink("self.jpg", moved / "self.jpg")
    again = make_plan(list_inputs(moved), shard_size=2, base=input_base(moved))
    assert plan_bytes(again) == plan_bytes(plan)
    # a list file: paths relative to its folder; absolute entries stay as the user wrote them
    lst = tmp_path / "list.txt"
    lst.write_text(f"in/b.jpg\n{tree / 'a b.JPG'}\n/elsewhere/x.jpg\n")
    rows = make_plan(list_inputs(lst), shard_size=2, base=input_base(lst)).to_pylist()
    assert {r["source_uri"]: r["path"] for r in rows} == {
        "in/b.jpg": "in/b.jpg",
        str(tree / "a b.JPG"): "in/a b.JPG",
        "/elsewhere/x.jpg": "/elsewhere/x.jpg",
    }


def test_package_uris_resolve():
    pytest.importorskip("skimage")
    from pipelines.plan import package_uri

    path = resolve_path("pkg://skimage/data/astronaut.png", None)
    assert os.path.isfile(path)
    assert package_uri(path, "skimage") == "pkg://skimage/data/astronaut.png"


def test_assign_shards_is_the_plan_rule(tree):
    from pipelines.plan import assign_shards

    plan = make_plan(list_inputs(tree), shard_size=3)
    images = planned_images(plan)
    got = assign_shards([r["order"] for r in reversed(images)], 3)
    assert got == {r["order"]: r["shard"] for r in images}
    assert sorted(set(got.values())) == ["000000", "000001"]
    with pytest.raises(ValueError):
        assign_shards([1], 0)


# --------------------------------------------------------------------------- hostile listings


def _within(seconds, fn, *args, **kwargs):
    from tests.fgid_builder.test_io import _within as within

    return within(seconds, fn, *args, **kwargs)


def test_a_symlink_to_root_is_a_reject_row_not_a_walk_of_everything(tmp_path):
    import time

    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"img a")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"img outside")
    os.symlink("/", root / "sub" / "slash")
    os.symlink(outside, root / "out.jpg")
    os.symlink("a.jpg", root / "inside.jpg")  # stays in INPUT: followed
    t = time.perf_counter()
    listed = _within(30, list_inputs, root)
    assert time.perf_counter() - t < 5
    reasons = {i.uri: (i.reason and i.reason.value) for i in listed}
    assert reasons == {
        "a.jpg": None,
        "inside.jpg": None,
        "out.jpg": "outside_input",
        "sub/slash": "outside_input",
    }
    # asked to follow: the outside file is read; the walk stays bounded by --max-entries
    followed = {i.uri: i.reason for i in list_inputs(tmp_path / "in", follow_external_symlinks=True,
                                                     max_depth=0)}  # fmt: skip
    assert followed["out.jpg"] is None
    from pipelines.plan import ListingError

    with pytest.raises(ListingError, match="more than 50 entries"):
        _within(30, list_inputs, root, follow_external_symlinks=True, max_entries=50)


def test_a_fifo_in_the_folder_or_list_is_a_not_a_file_row(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"img a")
    os.mkfifo(root / "pipe.jpg")
    os.mkfifo(root / "pipe.txt")  # no image suffix: skipped like any other non-image
    plan = _within(30, make_plan, list_inputs(root), shard_size=2)
    got = {r["source_uri"]: (r["reason"], r["detail"]) for r in plan.to_pylist()}
    assert set(got) == {"a.jpg", "pipe.jpg"}
    assert got["pipe.jpg"][0] == "not_a_file" and "FIFO" in got["pipe.jpg"][1]
    # named in a list file (the listing cannot tell): the hashing never blocks on it
    lst = tmp_path / "list.txt"
    lst.write_text("in/pipe.jpg\n/dev/zero\nin/a.jpg\n")
    plan = _within(30, make_plan, list_inputs(lst), shard_size=2)
    got = {r["source_uri"]: r["reason"] for r in plan.to_pylist()}
    assert got == {"in/pipe.jpg": "not_a_file", "/dev/zero": "not_a_file", "in/a.jpg": None}


def test_a_file_swapped_for_a_fifo_after_planning_is_a_reject_for_the_worker(tmp_path):
    from fgid_builder.io import read_input
    from fgid_builder.schema import ImageRejected
    from pipelines.plan import resolve_row

    root = tmp_path / "in"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"img a")
    plan = make_plan(list_inputs(root), shard_size=2, base=input_base(root))
    (root / "a.jpg").unlink()
    os.mkfifo(root / "a.jpg")
    (row,) = planned_images(plan)
    with pytest.raises(ImageRejected) as exc:
        _within(10, read_input, resolve_row(row, input_base(root))["path"])
    assert exc.value.reason is Reason.NOT_A_FILE


def test_any_bytes_as_a_file_name(tmp_path):
    """b'caf\\xe9.jpg' (Latin-1, not UTF-8): listed, planned, stored with an escaped uri and its
    raw bytes, read back; also when a list file names it."""
    from pipelines.plan import read_plan, resolve_row, row_path, write_plan

    root = tmp_path / "in"
    root.mkdir()
    raw = os.fsencode(root) + b"/caf\xe9.jpg"
    with open(raw, "wb") as f:
        f.write(b"latin-1 name")
    with open(os.fsencode(root) + b"/100%.jpg", "wb") as f:
        f.write(b"a percent sign")
    plan = make_plan(list_inputs(root), shard_size=2, base=input_base(root))
    write_plan(tmp_path / "plan.parquet", plan)
    rows = {r["source_uri"]: r for r in read_plan(tmp_path / "plan.parquet").to_pylist()}
    assert set(rows) == {"caf%E9.jpg", "100%.jpg"}  # a UTF-8 name is kept as it is
    row = rows["caf%E9.jpg"]
    assert row["status"] == "planned" and row["path"] == "caf%E9.jpg"
    assert row["path_bytes"] == b"caf\xe9.jpg" and rows["100%.jpg"]["path_bytes"] is None
    resolved = resolve_row(row, input_base(root))
    assert resolved["path_bytes"] == raw
    assert open(row_path(resolved), "rb").read() == b"latin-1 name"
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"in/caf\xe9.jpg\nin/100%.jpg\n")
    rows = {r["source_uri"]: r for r in make_plan(list_inputs(lst), shard_size=2).to_pylist()}
    assert rows["in/caf%E9.jpg"]["status"] == "planned"
    assert rows["in/caf%E9.jpg"]["source_sha256"] == row["source_sha256"]


def _unescape(uri: str) -> bytes:
    """The inverse of escape_name for a name that was not UTF-8: %XX -> the byte."""
    out, i = bytearray(), 0
    while i < len(uri):
        if uri[i] == "%":
            out.append(int(uri[i + 1 : i + 3], 16))
            i += 3
        else:
            out += uri[i].encode()
            i += 1
    return bytes(out)


def test_escaped_names_are_lossless():
    from pipelines.plan import escape_name

    for raw in (b"caf\xe9%41.jpg", b"\xff\xfe%", b"\xc3(\xe9"):
        esc = escape_name(os.fsdecode(raw))
        esc.encode("utf-8")  # always valid text
        assert _unescape(esc) == raw
    for name in ("ü.jpg", "%E9", "100%.jpg"):  # UTF-8 names are kept as they are
        assert escape_name(name) == name


def test_image_suffixes_pillow_cannot_decode_are_listed(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    for name in ("a.heic", "b.avif", "c.HEIF", "d.jxl"):
        (root / name).write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(40) + name.encode())
    assert [i.uri for i in list_inputs(root)] == ["a.heic", "b.avif", "c.HEIF", "d.jxl"]


def test_append_extends_the_plan_after_its_last_shard(tmp_path):
    from pipelines.plan import compare_inputs

    root = tmp_path / "in"
    root.mkdir()
    for name, data in {"a.jpg": b"aa", "b.jpg": b"bb", "c.jpg": b"cc"}.items():
        (root / name).write_bytes(data)
    plan = make_plan(list_inputs(root), shard_size=2, base=input_base(root))
    assert not compare_inputs(plan, list_inputs(root), base=input_base(root))
    (root / "d.jpg").write_bytes(b"dd")
    (root / "e.jpg").write_bytes(b"aa")  # the bytes of a.jpg
    changes = compare_inputs(plan, list_inputs(root), base=input_base(root))
    assert [i.uri for i in changes.added] == ["d.jpg", "e.jpg"] and not changes.removed
    assert changes.summary().startswith("2 added, 0 removed, 0 changed bytes")
    longer = make_plan(changes.added, shard_size=2, base=input_base(root), after=plan)
    assert longer.slice(0, plan.num_rows).equals(plan)  # the existing rows untouched
    rows = longer.to_pylist()[plan.num_rows :]
    assert [(r["order"], r["source_uri"], r["shard"], r["reason"]) for r in rows] == [
        (3, "d.jpg", "000002", None),  # after shard 000001 (which held only c.jpg)
        (4, "e.jpg", None, "duplicate"),
    ]
    (root / "b.jpg").write_bytes(b"BB")  # same size, other bytes
    (root / "c.jpg").unlink()
    changes = compare_inputs(plan, list_inputs(root), base=input_base(root))
    assert changes.changed == ["b.jpg"] and changes.removed == ["c.jpg"]
