"""A real HTTP file server on 127.0.0.1 with injectable faults, for fetch tests and the fetch benchmark.

Routes map a path to a body (bytes or a file on disk, served with sendfile) plus faults: scripted error answers
before success, a connection dropped mid-body, Range ignored, a slow trickle, redirects. Every request is recorded
(path, headers) so tests can check what the client sent.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Route:
    """What one path serves. `script`: (status, headers, body) answers given first, one per request."""

    body: bytes | None = None
    file: Path | None = None
    content_type: str = "application/octet-stream"
    etag: str | None = None
    last_modified: float | None = None
    script: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    drop_after: int | None = None  # close the connection after this many body bytes ...
    drop_times: int = 1  # ... on this many requests
    ignore_range: bool = False
    send_length: bool = True
    trickle: tuple[int, float] | None = None  # (bytes per write, seconds between writes)
    redirect: str | None = None
    redirect_status: int = 302
    extra_headers: dict[str, str] = field(default_factory=dict)

    def size(self) -> int:
        return len(self.body) if self.body is not None else self.file.stat().st_size  # type: ignore[union-attr]


@dataclass
class Seen:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    status: int = 0


class _Handler(BaseHTTPRequestHandler):
    server: FaultServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        seen = Seen(self.path, {k.lower(): v for k, v in self.headers.items()})
        self.server.requests.append(seen)
        route = self.server.routes.get(path)
        if route is None:
            return self._simple(seen, 404, {}, b"<html><title>404 Not Found</title></html>")
        if route.script:
            status, headers, body = route.script.pop(0)
            return self._simple(seen, status, headers, body)
        if route.redirect is not None:
            return self._simple(seen, route.redirect_status, {"Location": route.redirect}, b"")
        self._serve(route, seen)

    def _simple(self, seen: Seen, status: int, headers: dict[str, str], body: bytes) -> None:
        seen.status = status
        self.send_response(status)
        for key, value in {"Content-Type": "text/html", **headers}.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _serve(self, route: Route, seen: Seen) -> None:
        size = route.size()
        validators = {}
        if route.etag:
            validators["ETag"] = route.etag
        if route.last_modified is not None:
            validators["Last-Modified"] = email.utils.formatdate(route.last_modified, usegmt=True)
        if route.etag and seen.headers.get("if-none-match") == route.etag:
            return self._simple(seen, 304, validators, b"")
        start = 0
        wanted = seen.headers.get("range", "")
        if_range = seen.headers.get("if-range")
        range_ok = not if_range or if_range in validators.values()
        if wanted.startswith("bytes=") and not route.ignore_range and range_ok:
            start = int(wanted[6:].split("-", 1)[0])
            if start >= size:
                return self._simple(seen, 416, {"Content-Range": f"bytes */{size}"}, b"")
        status = 206 if start else 200
        seen.status = status
        self.send_response(status)
        self.send_header("Content-Type", route.content_type)
        if route.send_length:
            self.send_header("Content-Length", str(size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Accept-Ranges", "bytes")
        for key, value in {**validators, **route.extra_headers}.items():
            self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        drop = None
        if route.drop_after is not None and route.drop_times > 0:
            route.drop_times -= 1
            drop = route.drop_after
        self._send_body(route, start, size, drop)

    def _send_body(self, route: Route, start: int, size: int, drop: int | None) -> None:
        end = size if drop is None else min(size, max(start, drop))
        try:
            if route.trickle is not None:
                step, pause = route.trickle
                data = route.body if route.body is not None else route.file.read_bytes()  # type: ignore[union-attr]
                for offset in range(start, end, step):
                    self.wfile.write(data[offset : min(offset + step, end)])
                    self.wfile.flush()
                    if self.server.stopping.wait(pause):
                        return
            elif route.body is not None:
                self.wfile.write(route.body[start:end])
            else:
                self.wfile.flush()
                with open(route.file, "rb") as handle:  # type: ignore[arg-type]
                    self.connection.sendfile(handle, offset=start, count=end - start)
        except (BrokenPipeError, ConnectionResetError):
            return
        if drop is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)


class FaultServer(ThreadingHTTPServer):
    """`with FaultServer() as server: server.add("/a.safetensors", Route(body=...)); server.url("/a.safetensors")`."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1"):
        super().__init__((host, 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def add(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.url(path)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server_address[1]}{path}"

    def seen(self, path: str) -> list[Seen]:
        return [r for r in self.requests if r.path.split("?", 1)[0] == path]

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


def write_big_safetensors(path: Path, size: int, seed: int = 0) -> str:
    """Write a valid safetensors file of about `size` bytes (one U8 tensor of varied bytes); return its sha256."""
    data_len = max(size - 128, 1)
    header = json.dumps({"blob": {"dtype": "U8", "shape": [data_len], "data_offsets": [0, data_len]}}).encode()
    header += b" " * (-len(header) % 8)
    digest = hashlib.sha256()
    pattern = hashlib.sha256(str(seed).encode()).digest() * (1 << 15)  # 1 MiB
    with open(path, "wb") as handle:
        for piece in (struct.pack("<Q", len(header)), header):
            handle.write(piece)
            digest.update(piece)
        written, counter = 0, 0
        while written < data_len:
            piece = (counter.to_bytes(8, "little") + pattern)[: min(len(pattern), data_len - written)]
            handle.write(piece)
            digest.update(piece)
            written += len(piece)
            counter += 1
    return digest.hexdigest()
