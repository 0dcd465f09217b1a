"""fgid_builder.fetch against a real loopback HTTP server (tests/http_photos.py)."""

from __future__ import annotations

import threading
import time

import pytest

from fgid_builder.fetch import Fetcher, FetchPolicy, is_url, opted_out
from fgid_builder.schema import ImageRejected, Reason
from tests.http_photos import PhotoServer, Route

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40


@pytest.fixture
def server():
    with PhotoServer() as s:
        yield s


def _reason(fetcher: Fetcher, url: str) -> tuple[Reason, str]:
    with pytest.raises(ImageRejected) as e:
        fetcher.fetch(url)
    return e.value.reason, e.value.detail


def test_good_download_is_the_served_bytes(server):
    server.routes["/a.jpg"] = Route(body=JPEG)
    server.routes["/b"] = Route(body=JPEG, headers={"Content-Type": "application/octet-stream"})
    server.routes["/c"] = Route(body=JPEG, headers={}, no_length=True)
    f = Fetcher(FetchPolicy(timeout=2))
    assert f.fetch(server.url("/a.jpg")) == JPEG
    assert f.read(server.url("/b")) == JPEG
    assert f.fetch(server.url("/c")) == JPEG


def test_every_failure_is_a_reason(server):
    server.routes["/gone"] = Route(status=410, body=b"gone", headers={"Content-Type": "text/plain"})
    server.routes["/forbidden"] = Route(status=403, body=b"no", headers={})
    server.routes["/boom"] = Route(status=500, body=b"boom", headers={})
    server.routes["/page.html"] = Route(
        body=b"<html></html>", headers={"Content-Type": "text/html"}
    )
    server.routes["/noai.jpg"] = Route(
        body=JPEG, headers={"Content-Type": "image/jpeg", "X-Robots-Tag": "noindex, noai"}
    )
    f = Fetcher(FetchPolicy(timeout=2, retries=1, backoff=0.01))
    assert _reason(f, server.url("/missing.jpg"))[0] == Reason.HTTP_404
    assert _reason(f, server.url("/gone"))[0] == Reason.HTTP_404
    assert _reason(f, server.url("/forbidden"))[0] == Reason.HTTP_4XX
    reason, detail = _reason(f, server.url("/boom"))
    assert reason == Reason.HTTP_5XX and "after 2 attempts" in detail
    assert server.hits["/boom"] == 2  # one retry, then the reject
    assert server.hits["/forbidden"] == 1  # a 4xx is not retried
    assert _reason(f, server.url("/page.html"))[0] == Reason.NOT_AN_IMAGE
    assert _reason(f, server.url("/noai.jpg"))[0] == Reason.OPTED_OUT
    # the opt-out is honoured by default; a policy can turn it off
    assert Fetcher(FetchPolicy(honour_robots=False)).fetch(server.url("/noai.jpg")) == JPEG


def test_retries_with_backoff_then_success(server):
    server.routes["/flaky.jpg"] = Route(body=JPEG, fail_first=2)
    f = Fetcher(FetchPolicy(timeout=2, retries=2, backoff=0.05))
    t = time.monotonic()
    assert f.fetch(server.url("/flaky.jpg")) == JPEG
    assert time.monotonic() - t >= 0.05 + 0.1  # backoff 0.05, then 0.1
    assert server.hits["/flaky.jpg"] == 3


def test_size_cap_on_length_and_while_streaming(server):
    server.routes["/big.jpg"] = Route(body=JPEG * 10)
    server.routes["/big-stream.jpg"] = Route(body=JPEG * 10, no_length=True)
    f = Fetcher(FetchPolicy(timeout=2, max_bytes=len(JPEG) * 2))
    assert _reason(f, server.url("/big.jpg"))[0] == Reason.TOO_LARGE
    reason, detail = _reason(f, server.url("/big-stream.jpg"))
    assert reason == Reason.TOO_LARGE and "more than" in detail


def test_a_stalled_answer_times_out(server):
    server.routes["/stall.jpg"] = Route(body=JPEG, stall=True)
    f = Fetcher(FetchPolicy(timeout=0.5, retries=1, backoff=0.01))
    t = time.monotonic()
    reason, detail = _reason(f, server.url("/stall.jpg"))
    assert reason == Reason.TIMEOUT, detail
    assert time.monotonic() - t < 5
    assert server.hits["/stall.jpg"] == 2


def test_refused_connection_is_http_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = Fetcher(FetchPolicy(timeout=1, retries=0))
    assert _reason(f, f"http://127.0.0.1:{port}/x.jpg")[0] == Reason.HTTP_ERROR


def test_per_host_concurrency_limit(server):
    active = 0
    peak = 0
    lock = threading.Lock()
    server.routes["/slow.jpg"] = Route(body=JPEG)
    handler = server.httpd.RequestHandlerClass
    original = handler.do_GET

    def counting(self):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.1)
        try:
            original(self)
        finally:
            with lock:
                active -= 1

    handler.do_GET = counting
    f = Fetcher(FetchPolicy(timeout=5, per_host=2))
    threads = [threading.Thread(target=f.fetch, args=(server.url("/slow.jpg"),)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert server.hits["/slow.jpg"] == 8
    assert peak == 2


def test_opt_out_header_forms():
    assert opted_out("noai")
    assert opted_out("noindex, noimageai")
    assert opted_out("fgid: noai")
    assert opted_out("all: noai")
    assert not opted_out("otherbot: noai")
    assert not opted_out("noindex, nofollow")
    assert not opted_out(None)


def test_local_and_fsspec_reads(tmp_path):
    import fsspec

    p = tmp_path / "a.jpg"
    p.write_bytes(JPEG)
    f = Fetcher(FetchPolicy(max_bytes=len(JPEG)))
    assert f.read(str(p)) == JPEG
    assert f.read(p.as_uri()) == JPEG  # file:// through fsspec
    with fsspec.open("memory://bucket/b.jpg", "wb") as out:
        out.write(JPEG + b"x")
    with pytest.raises(ImageRejected) as e:
        f.read("memory://bucket/b.jpg")
    assert e.value.reason == Reason.TOO_LARGE
    with pytest.raises(ImageRejected) as e:
        f.read("memory://bucket/none.jpg")
    assert e.value.reason == Reason.UNREADABLE
    with pytest.raises(ImageRejected) as e:
        f.read(str(tmp_path))
    assert e.value.reason == Reason.NOT_A_FILE
    with pytest.raises(ImageRejected) as e:
        f.read("memory://bucket")
    assert e.value.reason == Reason.NOT_A_FILE
    assert is_url("s3://b/k") and not is_url("pkg://skimage/x.png") and not is_url("/x/y")
