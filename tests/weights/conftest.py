"""A local HTTP server for the download tests, and a guard that keeps every test here off the
internet: connections and name lookups other than the loopback address fail."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

_LOCAL = ("127.0.0.1", "localhost", "::1")
OFFLINE = "tests stay off the internet"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    lookup, connect = socket.getaddrinfo, socket.socket.connect

    def local_lookup(host, *args, **kwargs):
        if host not in _LOCAL:
            raise socket.gaierror(f"lookup of {host}: {OFFLINE}")
        return lookup(host, *args, **kwargs)

    def local_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOCAL:
            raise OSError(f"connection to {address[0]}: {OFFLINE}")
        return connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", local_lookup)
    monkeypatch.setattr(socket.socket, "connect", local_connect)


class _Handler(BaseHTTPRequestHandler):
    """GET of ``server.files[path]``, honouring ``Range: bytes=N-`` unless told not to, and
    cutting a response short once when ``server.cut_after[path]`` says so."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        body = server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start, asked = 0, self.headers.get("Range")
        if asked and not server.ignore_range:
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        cut = server.cut_after.pop(self.path, None)
        self.wfile.write(payload if cut is None else payload[:cut])
        self.close_connection = cut is not None

    def log_message(self, *args):  # keep the test output clean
        pass


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.ignore_range = False

    def serve(self, path: str, body: bytes) -> str:
        """Serve ``body`` at ``path``; returns its URL."""
        self.files[path] = body
        return f"http://127.0.0.1:{self.server_port}{path}"


@pytest.fixture
def server():
    httpd = LocalServer()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()
