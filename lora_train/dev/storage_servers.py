"""Real storage servers on 127.0.0.1 for upload tests: WebDAV (`rclone serve webdav`, Debian's rclone, installed
with apt-get when missing) and S3 (moto's server, from PyPI) behind a small proxy that enforces presigned-link
expiry on its own clock, which a test can move forward instead of sleeping.

Why moto: it is the S3-compatible server on PyPI that runs in-process with no binary download or container (MinIO's
PyPI package is only a client; LocalStack needs Docker), and it implements buckets, multipart uploads, metadata and
SigV4 query authentication well enough for boto3. It does not enforce `X-Amz-Expires`, so `ExpiryProxy` does,
answering exactly as S3 does (403, `AccessDenied`, "Request has expired").
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import logging
import shutil
import socket
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

S3_EXPIRED = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code><Message>Request has '
              b"expired</Message></Error>")  # fmt: skip
S3_UNKNOWN_KEY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidAccessKeyId</Code><Message>The AWS '
                  b"Access Key Id you provided does not exist in our records.</Message></Error>")  # fmt: skip
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "proxy-connection"}


def read_request_body(handler: BaseHTTPRequestHandler) -> bytes:
    """A request's whole body, sent with Content-Length or chunked."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while (size := int(handler.rfile.readline().split(b";")[0], 16)) > 0:
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
        while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(parts)
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_rclone() -> str:
    """The rclone binary; installs Debian's package when it is missing (tests run as root on the dev machines)."""
    found = shutil.which("rclone")
    if found:
        return found
    install = ["apt-get", "install", "-y", "-q", "rclone"]
    if subprocess.run(install, capture_output=True, timeout=600).returncode != 0:  # a fresh machine: no lists yet
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True, timeout=600)
        subprocess.run(install, check=True, capture_output=True, timeout=600)
    found = shutil.which("rclone")
    if not found:
        raise RuntimeError("rclone is still missing after apt-get install rclone")
    return found


@dataclass
class WebdavServer:
    url: str  # http://127.0.0.1:PORT/
    root: Path
    user: str
    password: str


@contextlib.contextmanager
def rclone_webdav(root: Path, user: str = "uploader", password: str = "s3cret-pass") -> Iterator[WebdavServer]:
    """`rclone serve webdav ROOT` on a free loopback port with basic auth; stopped afterwards."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [ensure_rclone(), "serve", "webdav", str(root), "--addr", f"127.0.0.1:{port}", "--user", user,
           "--pass", password, "--config", "/dev/null", "-v"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stderr:  # type: ignore[union-attr]  # rclone logs the address once it listens
            seen.append(line)
            if "serving on" in line.lower() or "server started on" in line.lower():
                break
        else:
            raise RuntimeError(f"rclone serve webdav did not start: {''.join(seen)[-2000:]}")
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # type: ignore[union-attr]
        yield WebdavServer(f"http://127.0.0.1:{port}/", root, user, password)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class ExpiryProxy(ThreadingHTTPServer):
    """Forwards every request to an S3 server; refuses presigned links past X-Amz-Date + X-Amz-Expires on its clock
    (`offset` moves that clock). `fail_puts` (every PUT) or `fail_part` (one multipart part) answer 500: an upload
    cut server-side. With `access_keys` set, a signed request whose access key id is not among them gets S3's own
    InvalidAccessKeyId answer (moto itself accepts any key)."""

    daemon_threads = True

    def __init__(self, upstream: tuple[str, int]):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.offset = datetime.timedelta(0)
        self.fail_puts = False
        self.fail_part: int | None = None  # answer 500 to PUTs of this multipart part number
        self.puts: list[str] = []  # every PUT's path and query, in order
        self.expired_answers = 0
        self.access_keys: set[str] | None = None
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def now(self) -> datetime.datetime:
        return datetime.datetime.now(datetime.UTC) + self.offset

    def __enter__(self) -> ExpiryProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    server: ExpiryProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _expired(self) -> bool:
        query = {k.lower(): v for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query)}
        if "x-amz-date" not in query or "x-amz-expires" not in query:
            return False
        signed = datetime.datetime.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.UTC)
        return self.server.now() > signed + datetime.timedelta(seconds=int(query["x-amz-expires"]))

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        head = self.command == "HEAD"  # a HEAD answer keeps the upstream Content-Length (the object's size)
        for key, value in headers:
            if key.lower() not in HOP_HEADERS and (head or key.lower() != "content-length"):
                self.send_header(key, value)
        if not head:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _access_key(self) -> str | None:
        """The access key id a signed request names (Authorization header or presigned X-Amz-Credential)."""
        query = {k.lower(): v for k, v in urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query)}
        credential = query.get("x-amz-credential") or self.headers.get("Authorization", "").partition("Credential=")[2]
        return credential.split("/", 1)[0] or None

    def _forward(self) -> None:
        body = read_request_body(self)
        known = self.server.access_keys
        if known is not None and self._access_key() not in known:
            return self._answer(403, [("Content-Type", "application/xml")], S3_UNKNOWN_KEY)
        if self.command == "GET" and self._expired():
            self.server.expired_answers += 1
            return self._answer(403, [("Content-Type", "application/xml")], S3_EXPIRED)
        if self.command == "PUT":
            self.server.puts.append(self.path)
        part = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query)).get("partNumber")
        failing_part = self.server.fail_part is not None and part == str(self.server.fail_part)
        if self.command == "PUT" and (self.server.fail_puts or failing_part):
            return self._answer(500, [("Content-Type", "application/xml")], b"<Error><Code>InternalError</Code>"
                                b"<Message>disk died</Message></Error>")  # fmt: skip
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
        headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(*self.server.upstream, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            self._answer(response.status, response.getheaders(), response.read())
        finally:
            conn.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward


@dataclass
class S3Server:
    endpoint: str  # the proxy's URL: give it as the destination's endpoint
    proxy: ExpiryProxy


@contextlib.contextmanager
def moto_s3(bucket: str | None = "releases") -> Iterator[S3Server]:
    """moto's S3 server on a loopback port behind an ExpiryProxy; `bucket` is created (None: none)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/moto-api/reset")  # moto keeps its buckets in the process: start empty
    conn.getresponse().read()
    conn.close()
    try:
        with ExpiryProxy(server.get_host_and_port()) as proxy:
            if bucket:
                import boto3

                client = boto3.client(
                    "s3",
                    endpoint_url=proxy.url,
                    region_name="us-east-1",
                    aws_access_key_id="moto",
                    aws_secret_access_key="moto",
                )  # moto takes any
                client.create_bucket(Bucket=bucket)
            yield S3Server(proxy.url, proxy)
    finally:
        server.stop()
