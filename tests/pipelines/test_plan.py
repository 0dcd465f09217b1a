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
