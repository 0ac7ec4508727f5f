"""WebDAV (RFC 4918) with plain HTTP: MKCOL the folders, PUT each file streamed under a temporary name, read it
back (GET, sha256), then MOVE it to its final name; so a cut upload never leaves a partial file under the name a
manifest points at. Auth: Basic from LORA_TRAIN_WEBDAV_USER / LORA_TRAIN_WEBDAV_PASSWORD, or Bearer from
LORA_TRAIN_WEBDAV_TOKEN; never logged. Plain WebDAV has no resumable upload: a dropped PUT is retried from zero
(with backoff)."""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import os
import urllib.parse
import uuid
from pathlib import Path

from lora_train.fsutil import CHUNK
from lora_train.upload.destinations import Destination, Progress, UploadError, canonical, public_base
from lora_train.upload.retry import TransientError, with_retries

log = logging.getLogger(__name__)

TIMEOUT_S = 60.0
USER_ENV, PASSWORD_ENV, TOKEN_ENV = "LORA_TRAIN_WEBDAV_USER", "LORA_TRAIN_WEBDAV_PASSWORD", "LORA_TRAIN_WEBDAV_TOKEN"


def _auth_header() -> dict[str, str]:
    token = os.environ.get(TOKEN_ENV, "")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get(USER_ENV, ""), os.environ.get(PASSWORD_ENV, "")
    if user or password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


class WebdavDestination(Destination):
    """`webdav://host:port/path/` (http) or `webdavs://...` (https); `url=` gives a public base for the links."""

    kind = "webdav"

    def __init__(self, location: str, options: dict[str, str], base: urllib.parse.SplitResult):
        super().__init__(location, options)
        self.base = base  # http(s) URL of the remote folder, path ending in /
        self.public = public_base(options, location)
        self.retries = int(options.get("retries", "3"))
        self.backoff = float(options.get("backoff", "1"))

    # ---- HTTP ------------------------------------------------------------------------------------------------
    def _connection(self) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.base.scheme == "https" else http.client.HTTPConnection
        return cls(self.base.hostname or "", self.base.port, timeout=TIMEOUT_S)

    def _path(self, name: str = "") -> str:
        return self.base.path + urllib.parse.quote(name)

    def _url(self, name: str) -> str:
        return urllib.parse.urlunsplit((self.base.scheme, self.base.netloc, self._path(name), "", ""))

    def _call(self, step: str, method: str, path: str, headers: dict[str, str] | None = None,
              source: Path | None = None, progress: Progress | None = None, sink=None) -> int:  # fmt: skip
        """One request; returns the status. 5xx (but 507), 429 and dropped connections raise TransientError."""
        conn = self._connection()
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            sent_headers = {**_auth_header(), **(headers or {})}
            size = source.stat().st_size if source is not None else 0
            sent_headers["Content-Length"] = str(size)
            for key, value in sent_headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            if source is not None:
                self._send_file(conn, source, size, progress)
            response = conn.getresponse()
            if sink is not None and response.status == 200:
                while chunk := response.read(CHUNK):
                    sink(chunk)
            else:
                response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"{step}: connection failed ({type(exc).__name__}: {exc})") from None
        finally:
            conn.close()
        if (response.status >= 500 and response.status != 507) or response.status == 429:
            raise TransientError(f"{step}: HTTP {response.status} {response.reason}")
        return response.status

    @staticmethod
    def _send_file(conn: http.client.HTTPConnection, source: Path, size: int, progress: Progress | None) -> None:
        sent = 0
        with open(source, "rb") as handle:
            while chunk := handle.read(CHUNK):
                conn.send(chunk)
                sent += len(chunk)
                if progress:
                    progress(sent, size)

    def _retrying(self, step: str, *args, **kwargs) -> int:
        try:
            return with_retries(f"{self} {step}", lambda: self._call(step, *args, **kwargs), retries=self.retries,
                                backoff=self.backoff)  # fmt: skip
        except TransientError as exc:
            raise UploadError(f"{self}: {exc} (gave up after {self.retries} retries)") from None

    def _refuse(self, step: str, status: int) -> None:
        if status in (401, 403):
            raise UploadError(f"{self}: {step}: the server refused the credentials (HTTP {status}); set "
                              f"{USER_ENV} and {PASSWORD_ENV} (or {TOKEN_ENV})")  # fmt: skip
        if status == 507:
            raise UploadError(f"{self}: {step}: the server is out of space (HTTP 507 Insufficient Storage); free "
                              "space there or choose another destination")  # fmt: skip
        if status == 413:
            raise UploadError(f"{self}: {step}: the server refuses a file this large (HTTP 413)")
        raise UploadError(f"{self}: {step}: unexpected HTTP {status}")

    # ---- Destination ------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Create the remote folder, one level at a time (MKCOL answers 405 where it exists)."""
        segments = [s for s in self.base.path.split("/") if s]
        for depth in range(1, len(segments) + 1):
            path = "/" + "/".join(segments[:depth]) + "/"
            status = self._retrying(f"MKCOL {path}", "MKCOL", path)
            if status not in (200, 201, 301, 405):
                self._refuse(f"MKCOL {path}", status)

    def upload(self, path: Path, name: str, sha256: str, progress: Progress | None = None) -> None:
        temp = f".{name}.upload-{uuid.uuid4().hex[:8]}"
        try:
            status = self._retrying(f"PUT {name}", "PUT", self._path(temp), source=path, progress=progress,
                                    headers={"Content-Type": "application/octet-stream"})  # fmt: skip
            if status not in (200, 201, 204):
                self._refuse(f"PUT {name}", status)
            self._verify(temp, name, path.stat().st_size, sha256)
            status = self._retrying(f"MOVE {name}", "MOVE", self._path(temp),
                                    headers={"Destination": self._url(name), "Overwrite": "T"})  # fmt: skip
            if status not in (201, 204):
                self._refuse(f"MOVE {name}", status)
        except BaseException:
            self._discard(temp)
            raise

    def _verify(self, temp: str, name: str, size: int, sha256: str) -> None:
        """Read the uploaded bytes back and compare size and sha256."""
        digest, count = hashlib.sha256(), [0]

        def take(chunk: bytes) -> None:
            digest.update(chunk)
            count[0] += len(chunk)

        def read_back() -> int:
            digest.__init__()  # a retried read starts over
            count[0] = 0
            return self._call(f"verify {name}", "GET", self._path(temp), sink=take)

        try:
            status = with_retries(f"{self} verify {name}", read_back, retries=self.retries, backoff=self.backoff)
        except TransientError as exc:
            raise UploadError(f"{self}: {exc}") from None
        if status != 200:
            self._refuse(f"verify {name} (GET)", status)
        if (count[0], digest.hexdigest()) != (size, sha256):
            raise UploadError(f"{self}: verify {name}: read back {count[0]} bytes, sha256 {digest.hexdigest()}; "
                              f"expected {size} bytes, sha256 {sha256}")  # fmt: skip

    def _discard(self, temp: str) -> None:
        try:
            self._call(f"DELETE {temp}", "DELETE", self._path(temp))
        except (TimeoutError, TransientError) as exc:
            log.info("%s: could not remove %s: %s", self, temp, exc)

    def link(self, name: str) -> str | None:
        return (self.public or self._url("")) + urllib.parse.quote(name)


def make(parts: urllib.parse.SplitResult, options: dict[str, str]) -> WebdavDestination:
    """`webdav://host[:port]/path` -> http, `webdavs://` -> https."""
    if not parts.hostname:
        raise UploadError(f"webdav destination {parts.geturl()!r} has no host")
    folder = parts.path if parts.path.endswith("/") else parts.path + "/"
    base = urllib.parse.SplitResult("https" if parts.scheme == "webdavs" else "http", parts.netloc, folder, "", "")
    return WebdavDestination(canonical(parts._replace(path=folder), options), options, base)
