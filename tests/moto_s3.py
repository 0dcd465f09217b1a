"""A real S3-compatible server for tests: moto's standalone server on a free loopback port,
with the standard AWS_* variables pointing the credential chain and endpoint at it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


@contextmanager
def moto_bucket(bucket: str) -> Iterator:
    """Start the server, create `bucket`, yield its fsspec filesystem; stop the server after."""
    pytest.importorskip("s3fs")
    from moto.server import ThreadedMotoServer

    from fgid_builder.dataset import url_to_fs

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
            mp.setenv("AWS_ACCESS_KEY_ID", "test")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "test")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            fs, _ = url_to_fs(f"s3://{bucket}")
            fs.mkdir(bucket)
            yield fs
    finally:
        server.stop()
