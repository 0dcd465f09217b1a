"""Reading an input's bytes wherever it lives: a local file, an `http(s)://` URL, or any URL that
fsspec serves (`s3://`, `gs://`, `memory://`, ...).

Downloads are polite and bounded: a timeout per attempt (connect, each read, and the whole body),
a few retries with exponential backoff on timeouts, dropped connections, 5xx and 429, a size cap
checked on `Content-Length` and again while streaming, a content check (a `Content-Type` that
names no image is `not_an_image`), the `X-Robots-Tag: noai` / `noimageai` opt-out honoured by
default (as img2dataset does), and at most `per_host` requests in flight per host from one
`Fetcher` (one per worker process; the whole cluster makes at most workers x `per_host`).

Every failure is an `ImageRejected` with a reason code (`http_404`, `http_4xx`, `http_5xx`,
`http_error`, `timeout`, `too_large`, `opted_out`, `not_an_image`, `unreadable`), never a crash.
The bytes returned are what the plan hashes, so a resumed run can tell when a server's answer
changed (`changed_since_plan`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fgid_builder.io import DEFAULT_MAX_INPUT_BYTES, DEFAULT_READ_TIMEOUT, read_input
from fgid_builder.schema import ImageRejected, Reason

DEFAULT_MAX_BYTES = DEFAULT_MAX_INPUT_BYTES
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRIES = 2
DEFAULT_PER_HOST = 4
USER_AGENT = "fgid/0.1 (face dataset builder; honours X-Robots-Tag noai)"
# X-Robots-Tag directives that opt an image out of AI training (img2dataset's defaults)
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai"})
# Content types that are taken as possibly an image (the decoder decides): image/*, and
# servers that do not say what they send
_NEUTRAL_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_CHUNK = 1 << 16


def is_http_url(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def is_url(uri: str) -> bool:
    """`scheme://...` (not a Windows drive, not our own `pkg://`)."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.isidentifier() and scheme != "pkg"


@dataclass(frozen=True)
class FetchPolicy:
    """How inputs are read; small and picklable (shipped to the workers)."""

    timeout: float = DEFAULT_TIMEOUT  # seconds per attempt: connect, each read, and the body
    retries: int = DEFAULT_RETRIES  # extra attempts after a timeout, dropped connection, 5xx, 429
    backoff: float = 0.5  # seconds before the first retry, doubled each time
    max_bytes: int = DEFAULT_MAX_BYTES  # an input over this is `too_large`, never read whole
    read_timeout: float = DEFAULT_READ_TIMEOUT  # seconds reading one local file may take
    honour_robots: bool = True  # X-Robots-Tag noai/noimageai -> `opted_out`
    per_host: int = DEFAULT_PER_HOST  # requests in flight per host from one Fetcher
    user_agent: str = USER_AGENT

    def __post_init__(self) -> None:
        if self.timeout <= 0 or self.retries < 0 or self.backoff < 0:
            raise ValueError("timeout must be > 0, retries and backoff >= 0")
        if self.max_bytes < 1 or self.per_host < 1:
            raise ValueError("max_bytes and per_host must be >= 1")


def opted_out(header: str | None, user_agent: str = USER_AGENT) -> bool:
    """Whether an `X-Robots-Tag` value forbids AI use: `noai`/`noimageai`, alone or after a
    `bot-name:` prefix naming us (our user agent's first word) or nobody in particular."""
    if not header:
        return False
    ours = user_agent.split("/", 1)[0].split()[0].lower()
    for part in header.split(","):
        token = part.strip().lower()
        if ":" in token:
            agent, _, token = token.partition(":")
            if agent.strip() not in (ours, "*", "all"):
                continue
        if any(d.strip() in OPT_OUT_DIRECTIVES for d in token.split()):
            return True
    return False


class _Retry(Exception):
    """A failure worth another attempt; carries the reject used when none is left."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class Fetcher:
    """Reads inputs under one `FetchPolicy`; thread-safe (one connection pool, one per-host
    limit), created lazily in each worker (it holds sockets, so it is not shipped)."""

    def __init__(self, policy: FetchPolicy | None = None):
        self.policy = policy or FetchPolicy()
        self._lock = threading.Lock()
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._pool: Any = None

    # ----------------------------------------------------------------- any input

    def read(self, path: str) -> bytes:
        """The bytes of `path`: a local file, an http(s) URL, or an fsspec URL."""
        if is_http_url(path):
            return self.fetch(path)
        if is_url(path):
            return self.read_fsspec(path)
        return self.read_local(path)

    def read_local(self, path: str) -> bytes:
        """A regular local file (fgid_builder.io.read_input: FIFOs, devices and sockets never
        opened blocking, `max_bytes`, `read_timeout`)."""
        return read_input(path, max_bytes=self.policy.max_bytes, timeout=self.policy.read_timeout)

    def read_fsspec(self, url: str) -> bytes:
        """An object or file behind an fsspec URL (s3://, gs://, memory://, file://...)."""
        from fgid_builder.dataset import url_to_fs  # the endpoint and cache options of OUT's

        try:
            fs, fpath = url_to_fs(url)
            info = fs.info(fpath)
            if info.get("type") not in (None, "file"):
                raise ImageRejected(Reason.NOT_A_FILE, f"not a file ({info.get('type')})")
            size = info.get("size")
            if size is not None and size > self.policy.max_bytes:
                raise ImageRejected(Reason.TOO_LARGE, self._over(size))
            with fs.open(fpath, "rb") as f:
                data = f.read(self.policy.max_bytes + 1)
        except ImageRejected:
            raise
        except FileNotFoundError as e:
            raise ImageRejected(Reason.UNREADABLE, f"not found: {url}") from e
        except Exception as e:  # noqa: BLE001 - any filesystem error is this input's reject
            raise ImageRejected(Reason.UNREADABLE, f"{type(e).__name__}: {e}") from e
        if len(data) > self.policy.max_bytes:
            raise ImageRejected(Reason.TOO_LARGE, self._over(len(data)))
        return data

    # ----------------------------------------------------------------- http(s)

    def fetch(self, url: str) -> bytes:
        """Download `url` under the policy; an `ImageRejected` with the reason otherwise."""
        host = urlsplit(url).netloc.lower()
        attempts = self.policy.retries + 1
        for attempt in range(attempts):
            try:
                with self._host_slot(host):
                    return self._fetch_once(url)
            except _Retry as e:
                if attempt + 1 == attempts:
                    tries = f" (after {attempts} attempts)" if attempts > 1 else ""
                    raise ImageRejected(e.reason, e.detail + tries) from None
                time.sleep(self.policy.backoff * (2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _host_slot(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            sem = self._hosts.get(host)
            if sem is None:
                sem = self._hosts[host] = threading.BoundedSemaphore(self.policy.per_host)
            return sem

    def _pool_manager(self) -> Any:
        import urllib3

        with self._lock:
            if self._pool is None:
                self._pool = urllib3.PoolManager(
                    num_pools=64,
                    maxsize=self.policy.per_host,
                    headers={"User-Agent": self.policy.user_agent, "Accept": "image/*,*/*;q=0.5"},
                )
            return self._pool

    def _fetch_once(self, url: str) -> bytes:
        import urllib3
        from urllib3.exceptions import (
            MaxRetryError,
            NewConnectionError,
            ProtocolError,
            ReadTimeoutError,
            TimeoutError,
        )

        p = self.policy
        start = time.monotonic()
        try:
            resp = self._pool_manager().request(
                "GET",
                url,
                preload_content=False,
                timeout=urllib3.Timeout(connect=p.timeout, read=p.timeout),
                retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5),
            )
        except NewConnectionError as e:
            raise _Retry(Reason.HTTP_ERROR, f"connection failed: {_short(e)}") from e
        except (TimeoutError, ReadTimeoutError) as e:
            raise _Retry(Reason.TIMEOUT, f"no answer within {p.timeout:g} s") from e
        except MaxRetryError as e:
            inner = e.reason
            # (NewConnectionError subclasses ConnectTimeoutError: test it first)
            if isinstance(inner, NewConnectionError | ProtocolError):
                raise _Retry(Reason.HTTP_ERROR, f"connection failed: {_short(inner)}") from e
            if isinstance(inner, TimeoutError | ReadTimeoutError):
                raise _Retry(Reason.TIMEOUT, f"no answer within {p.timeout:g} s") from e
            raise ImageRejected(Reason.HTTP_ERROR, _short(inner or e)) from e
        except (ProtocolError, OSError) as e:
            raise _Retry(Reason.HTTP_ERROR, f"connection failed: {_short(e)}") from e
        except Exception as e:  # noqa: BLE001 - a malformed URL or answer is this input's reject
            raise ImageRejected(Reason.HTTP_ERROR, _short(e)) from e
        done = False
        try:
            data = self._body(resp, start)
            done = True
            return data
        finally:
            if not done:  # an unread body must not reach the next request on this connection
                resp.close()
            resp.release_conn()

    def _body(self, resp: Any, start: float) -> bytes:
        from urllib3.exceptions import ProtocolError, ReadTimeoutError, TimeoutError

        p = self.policy
        status = int(resp.status)
        if status == 404 or status == 410:
            raise ImageRejected(Reason.HTTP_404, f"HTTP {status}")
        if status == 429 or status >= 500:
            reason = Reason.HTTP_5XX if status >= 500 else Reason.HTTP_4XX
            raise _Retry(reason, f"HTTP {status}")
        if status >= 400:
            raise ImageRejected(Reason.HTTP_4XX, f"HTTP {status}")
        if status != 200:
            raise ImageRejected(Reason.HTTP_ERROR, f"HTTP {status} (expected 200)")
        if p.honour_robots and opted_out(resp.headers.get("X-Robots-Tag"), p.user_agent):
            raise ImageRejected(
                Reason.OPTED_OUT, f"X-Robots-Tag: {resp.headers.get('X-Robots-Tag')}"
            )
        ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if not ctype.startswith("image/") and ctype not in _NEUTRAL_TYPES:
            raise ImageRejected(Reason.NOT_AN_IMAGE, f"Content-Type: {ctype}")
        length = resp.headers.get("Content-Length")
        if length and length.strip().isdigit() and int(length) > p.max_bytes:
            raise ImageRejected(Reason.TOO_LARGE, self._over(int(length)))
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in resp.stream(_CHUNK, decode_content=True):
                size += len(chunk)
                if size > p.max_bytes:
                    raise ImageRejected(Reason.TOO_LARGE, self._over(size, streamed=True))
                if time.monotonic() - start > p.timeout:
                    raise _Retry(Reason.TIMEOUT, f"body not complete within {p.timeout:g} s")
                chunks.append(chunk)
        except (TimeoutError, ReadTimeoutError) as e:
            raise _Retry(Reason.TIMEOUT, f"body stalled for {p.timeout:g} s") from e
        except ProtocolError as e:
            raise _Retry(Reason.HTTP_ERROR, f"connection dropped: {_short(e)}") from e
        if time.monotonic() - start > p.timeout:
            raise _Retry(Reason.TIMEOUT, f"body not complete within {p.timeout:g} s")
        data = b"".join(chunks)
        if length and length.strip().isdigit() and len(data) != int(length):
            raise _Retry(Reason.HTTP_ERROR, f"{len(data)} bytes of a {length}-byte answer")
        return data

    def _over(self, size: int, streamed: bool = False) -> str:
        more = "more than " if streamed else ""
        return f"{more}{size} bytes, over the {self.policy.max_bytes}-byte cap"


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
