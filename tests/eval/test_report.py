"""fgid report: the page, its files, identity statistics, and rendering in headless Chromium."""

from __future__ import annotations

import html.parser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from eval.report import ReportConfig, identity_stats, overlay, region_figures, write_report
from pipelines.cli import main

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]
# Appended to a copy of the page: once everything has loaded, write how many <img> decoded.
CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var out = document.createElement("pre");
  out.id = "img-check";
  out.textContent = "IMGCHECK total=" + imgs.length + " loaded=" + ok.length +
    " failed=" + bad.map(function (i) { return i.getAttribute("src"); }).join(",") + " END";
  document.body.appendChild(out);
});
</script>"""


class _Srcs(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
        if "id" in a:
            self.ids.append(a["id"])


@pytest.fixture(scope="module")
def report(demo_dataset) -> Path:
    return write_report(demo_dataset, config=ReportConfig(progress=False))


def test_page_and_files(report, demo_dataset):
    assert report == demo_dataset / "report" / "index.html"
    page = report.read_text()
    p = _Srcs()
    p.feed(page)
    assert {"summary", "sheet", "plots", "rejects", "identity"} <= set(p.ids)
    for src in p.srcs:  # every image is a relative file beside the page
        assert not src.startswith(("/", "http:", "https:", "file:")), src
        assert (report.parent / src).is_file(), src
    for plot in (
        "faces_per_photo",
        "det_score",
        "face_size",
        "pose",
        "blur",
        "caption_length",
        "region_coverage",
        "rejects",
        "cluster_sizes",
    ):
        assert f'src="{plot}.png"' in page, plot
    assert "<script" not in page and "http" not in page  # self-contained, nothing fetched
    # the rejects: a non-image and a photo without a face, each with its reason
    assert "not_an_image (1)" in page and "no_face (1)" in page
    # contact sheet: portrait + mask overlay per sample, the captions
    sheet = [s for s in p.srcs if s.endswith("_mask.jpg")]
    assert len(sheet) >= 5 and all(s.replace("_mask", "") in p.srcs for s in sheet)
    assert "<b>eyes</b>:" in page
    # the re-encoded copy of the first photo is found as a near-duplicate
    assert re.search(r"different photos: <b>[1-9]", page)


def test_overlay_uses_label_colours():
    portrait = np.zeros((4, 4, 3), np.uint8)
    mask = np.zeros((4, 4), np.uint8)
    mask[0, 0] = 1  # skin: (204, 0, 0)
    out = overlay(portrait, mask, alpha=1.0)
    assert tuple(out[0, 0]) == (204, 0, 0) and tuple(out[1, 1]) == (0, 0, 0)


def test_palette_follows_the_label_ids(report):
    """Each face-parsing id is drawn in CelebAMask-HQ's colour of that class (l_brow 2 in the
    brow colour, not the nose colour CelebAMask-HQ lists second), and the legend says so."""
    from fgid_builder.schema import CELEBAMASK_HQ_COLORS, LABEL_COLORS, LABELS

    assert LABEL_COLORS[2] == CELEBAMASK_HQ_COLORS["l_brow"] == (0, 255, 255)
    assert LABEL_COLORS[10] == CELEBAMASK_HQ_COLORS["nose"] == (76, 153, 0)
    assert LABEL_COLORS[17] == CELEBAMASK_HQ_COLORS["hair"]
    assert len(set(LABEL_COLORS.values())) == len(LABELS)
    page = report.read_text()
    for i in (2, 4, 10, 17):
        r, g, b = LABEL_COLORS[i]
        assert f'rgb({r},{g},{b})"></i>{i} {LABELS[i]}' in page, i


def test_region_figures_only_for_regions_some_sample_has(demo_dataset):
    """The embedded parser finds no ears: no ears area or caption-length figure, while the
    presence bar still says 0; the other regions have both."""
    import json

    from fgid_builder.shards import iter_shard, shard_paths

    metas = [json.loads(m["json"]) for t in shard_paths(demo_dataset / "shards")
             for m in iter_shard(t)]  # fmt: skip
    words, present, areas = region_figures(metas)
    assert present["ears"] == 0.0 and "ears" not in areas and "ears" not in words
    for r in ("face", "eyes", "nose", "mouth"):
        assert present[r] > 0 and areas[r] and r in words
    assert max(areas["eyes"]) < 0.05 < min(areas["face"])  # hence the log scale


def test_identity_stats_clusters_and_duplicates():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=16), rng.normal(size=16)
    e = np.stack([a, a + 0.05 * rng.normal(size=16), b, b + 0.3 * rng.normal(size=16), -a])
    stats = identity_stats(
        ["k0", "k1", "k2", "k3", "k4"],
        e,
        [
            0x0F0F0F0F0F0F0F0F,
            0xF0F0F0F0F0F0F0F0,
            0x00000000FFFFFFFF,
            0xFFFFFFFF00000000,
            0x00000000FFFFFFFE,
        ],  # k4's portrait hash is 1 bit from k2's
        cluster_threshold=0.8,
        duplicate_threshold=0.99,
        sources=["s0", "s1", "s2", "s3", "s4"],
    )
    assert sorted(map(sorted, stats["clusters"])) == [["k0", "k1"], ["k2", "k3"], ["k4"]]
    # k0/k1 by embedding cosine, k2/k4 by portrait hash
    assert sorted((p[2], p[3]) for p in stats["pairs"]) == [("k0", "k1"), ("k2", "k4")]


def test_cli_report(demo_dataset, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(demo_dataset, out, ignore=shutil.ignore_patterns("report"))
    res = CliRunner().invoke(main, ["report", str(out), "--samples", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert len(list((out / "report" / "img").glob("*_mask.jpg"))) == 2
    res = CliRunner().invoke(main, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no index" in res.output


# --------------------------------------------------------------------------- Chromium


@pytest.fixture(scope="session")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    res = subprocess.run(
        ["bash", str(REPO / "scripts" / "install_chromium.sh")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if res.returncode != 0 or not res.stdout.strip():
        pytest.skip(
            f"chromium could not be installed (scripts/install_chromium.sh): "
            f"{res.stderr.strip().splitlines()[-1:] or res.returncode}"
        )
    return res.stdout.strip().splitlines()[-1]


def render_check(chromium: str, page: Path, tmp_path: Path) -> tuple[int, int, str]:
    """Open a copy of the page (same folder, so relative paths hold) with the check script;
    returns (images, images loaded, failed srcs)."""
    probe = page.with_name("_render_check.html")
    probe.write_text(page.read_text().replace("</body>", CHECK_SCRIPT + "</body>"))
    try:
        res = subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'chrome-profile'}",
                "--virtual-time-budget=10000",
                "--dump-dom",
                probe.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        probe.unlink()
    m = re.search(r"IMGCHECK total=(\d+) loaded=(\d+) failed=(.*?) END", res.stdout)
    assert m, f"no check output from chromium (rc={res.returncode}): {res.stderr[-2000:]}"
    return int(m.group(1)), int(m.group(2)), m.group(3)


def test_renders_in_chromium(chromium, report, tmp_path):
    total, loaded, failed = render_check(chromium, report, tmp_path)
    assert total >= 20 and loaded == total, failed


@pytest.mark.slow
@pytest.mark.integration
def test_report_on_a_real_demo_build(chromium, tmp_path):
    """`fgid build --demo` (Ray) then `fgid report`: the page renders with every image."""
    out = tmp_path / "demo"
    fgid = [sys.executable, "-m", "pipelines.cli"]
    subprocess.run([*fgid, "build", "--demo", str(out)], check=True, timeout=900, cwd=REPO)
    res = subprocess.run(
        [*fgid, "report", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    page = out / "report" / "index.html"
    total, loaded, failed = render_check(chromium, page, tmp_path)
    assert total >= 20 and loaded == total, failed
