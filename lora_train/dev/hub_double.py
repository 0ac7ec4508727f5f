"""A test double of the Hugging Face Hub on 127.0.0.1: only the few endpoints huggingface_hub's `create_repo` and
`upload_file` use over the LFS path (set HF_HUB_DISABLE_XET=1), plus `resolve` downloads. It is NOT the Hub: no
git, no Xet, one branch, everything public to read. It checks what the real Hub checks that matters to us: the
bearer token on writes, and that an LFS object's bytes hash to the sha256 (oid) announced for it.

    POST /api/repos/create                                   create a model repo (409 if it exists)
    POST /api/models/{repo}/preupload/{rev}                  upload mode per file: lfs for .safetensors/.zip
    POST /{repo}.git/info/lfs/objects/batch                  where to PUT each LFS object (basic transfer)
    PUT  /lfs-upload/{oid}                                   the object's bytes; refused unless sha256 == oid
    POST /api/models/{repo}/commit/{rev}                     NDJSON commit: inline files and LFS pointers
    GET|HEAD /{repo}/resolve/{rev}/{path}                    the committed file (X-Linked-Size/-Etag for LFS)
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lora_train.dev.storage_servers import read_request_body

LFS_SUFFIXES = (".safetensors", ".zip", ".bin", ".ckpt")


class HubDouble(ThreadingHTTPServer):
    """`with HubDouble(token="hf_x") as hub: os.environ["HF_ENDPOINT"] = hub.url`."""

    daemon_threads = True

    def __init__(self, token: str):
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.token = token
        self.repos: dict[str, dict[str, bytes]] = {}  # repo id -> path -> bytes
        self.lfs: dict[str, bytes] = {}  # oid -> bytes
        self.commits: list[tuple[str, list[str]]] = []  # (repo, paths) in commit order
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> HubDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _HubHandler(BaseHTTPRequestHandler):
    server: HubDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, status: int, body: object, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.server.token}":
            return True
        self._json(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def do_POST(self) -> None:
        body = read_request_body(self)
        path = urllib.parse.urlsplit(self.path).path
        if not self._authorized():
            return
        if path == "/api/repos/create":
            request = json.loads(body)
            repo = f"{request.get('organization') or 'user'}/{request['name']}"
            with self.server.lock:
                if repo in self.server.repos:
                    return self._json(409, {"error": "You already created this model repo", "url": repo})
                self.server.repos[repo] = {}
            return self._json(200, {"url": f"{self.server.url}/{repo}", "name": repo})
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/[^/]+", path):
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                      "shouldIgnore": False} for f in files]  # fmt: skip
            return self._json(200, {"files": modes}) if match[1] in self.server.repos else self._missing(match[1])
        if match := re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path):
            objects = [{"oid": o["oid"], "size": o["size"], "authenticated": True,
                        "actions": {"upload": {"href": f"{self.server.url}/lfs-upload/{o['oid']}"}}}
                       for o in json.loads(body)["objects"]]  # fmt: skip
            return self._json(200, {"transfer": "basic", "objects": objects})
        if match := re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/[^/]+", path):
            return self._commit(match[1], body)
        self._json(404, {"error": f"not implemented by the Hub test double: POST {path}"})

    def _missing(self, repo: str) -> None:
        self._json(404, {"error": f"Repository not found: {repo}"}, {"X-Error-Code": "RepoNotFound"})

    def _commit(self, repo: str, body: bytes) -> None:
        if repo not in self.server.repos:
            return self._missing(repo)
        changes: dict[str, bytes] = {}
        for line in body.splitlines():
            item = json.loads(line)
            value = item.get("value", {})
            if item["key"] == "file":
                changes[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                blob = self.server.lfs.get(value["oid"])
                if blob is None:
                    return self._json(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                changes[value["path"]] = blob
        with self.server.lock:
            self.server.repos[repo].update(changes)
            self.server.commits.append((repo, sorted(changes)))
            oid = hashlib.sha1(str(len(self.server.commits)).encode()).hexdigest()
        self._json(200, {"commitUrl": f"{self.server.url}/{repo}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None})  # fmt: skip

    def do_PUT(self) -> None:
        body = read_request_body(self)
        match = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", urllib.parse.urlsplit(self.path).path)
        if match is None:
            return self._json(404, {"error": "unknown upload"})
        if hashlib.sha256(body).hexdigest() != match[1]:
            return self._json(400, {"error": "the uploaded bytes do not hash to the announced oid"})
        with self.server.lock:
            self.server.lfs[match[1]] = body
        self._json(200, {})

    def do_GET(self) -> None:
        self._resolve(send_body=True)

    def do_HEAD(self) -> None:
        self._resolve(send_body=False)

    def _resolve(self, send_body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path)
        files = self.server.repos.get(match[1], {}) if match else {}
        data = files.get(match[2]) if match else None
        if data is None:
            return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        digest = hashlib.sha256(data).hexdigest()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{digest}"')
        if match[2].endswith(LFS_SUFFIXES):
            self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("X-Linked-ETag", f'"{digest}"')
        self.end_headers()
        if send_body:
            self.wfile.write(data)
