"""A real loopback HTTP server for download tests: routes set by the test, hits counted.

A route answers with a status, headers and a body, or stalls (headers sent, body never
finished) until the server stops; `answers` lets one route fail a few times and then succeed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "image/jpeg"})
    stall: bool = False  # send the headers and a few bytes, then nothing
    no_length: bool = False  # no Content-Length (the body streamed until close)
    fail_first: int = 0  # answer 500 this many times before the real answer


class PhotoServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self._stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?")[0]
                server.hits[path] += 1
                route = server.routes.get(path)
                if route is None:
                    self._send(404, b"not found", {"Content-Type": "text/plain"})
                    return
                if server.hits[path] <= route.fail_first:
                    self._send(500, b"try again", {"Content-Type": "text/plain"})
                    return
                if route.stall:
                    self.send_response(route.status)
                    for k, v in route.headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(route.body) + 1000))
                    self.end_headers()
                    self.wfile.write(route.body[:10])
                    self.wfile.flush()
                    server._stop.wait(60)
                    self.close_connection = True
                    return
                self._send(route.status, route.body, route.headers, route.no_length)

            def _send(self, status, body, headers, no_length=False):
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                if no_length:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    for i in range(0, len(body), 1 << 16):
                        self.wfile.write(body[i : i + (1 << 16)])
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # clients that hang up early
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> PhotoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        time.sleep(0.01)
