"""Run a real ComfyUI server on loopback and drive it through its HTTP/websocket API (tests, demo, benches).

The server gets its own base directory (models, input, output, user, custom_nodes with this extension linked
in), so the cached ComfyUI tree is never written to. Errors always carry the tail of the server log.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_train.dev.lifetime import die_with_parent_hook

EXTENSION_NAME = "comfyui-lora-train"
REPO_ROOT = Path(__file__).resolve().parents[2]


class ServerError(RuntimeError):
    """The server could not start, stopped answering or died; the message holds its log tail."""


class WorkflowError(RuntimeError):
    """ComfyUI refused or failed a workflow; the message holds ComfyUI's own error text."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class WorkflowResult:
    """What one finished prompt left: its history entry and every websocket event seen for it."""

    prompt_id: str
    history: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def outputs(self) -> dict[str, Any]:
        return self.history.get("outputs", {})

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.events if e.get("type") == kind]


class ComfyServer:
    """A ComfyUI server process. Use as a context manager, or call `start()` / `stop()`."""

    def __init__(self, comfyui: Path, python: Path, base_dir: Path, *, extra_args: tuple[str, ...] = ()):
        self.comfyui = Path(comfyui)
        self.python = Path(python)
        self.base_dir = Path(base_dir)
        self.extra_args = extra_args
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "server.log"
        self.client_id = uuid.uuid4().hex

    # ---- directories ---------------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> None:
        """Lay out the base directory and link this extension into its custom_nodes."""
        for sub in (
            "models/checkpoints",
            "models/loras",
            "models/clip_vision",
            "input",
            "output",
            "user",
            "custom_nodes",
        ):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        link = self.base_dir / "custom_nodes" / EXTENSION_NAME
        if not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)

    # ---- life cycle ----------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0, port: int | None = None) -> ComfyServer:
        """Start the server on `port` (default: a free loopback port) and wait until `/object_info` answers."""
        self.prepare()
        self.port = port or free_port()
        cmd = [
            str(self.python),
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base_dir),
            "--disable-auto-launch",
            "--database-url",
            "sqlite:///:memory:",
            *self.extra_args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.comfyui,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent_hook(),  # no server outlives a killed test run
        )
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"ComfyUI exited with code {self.proc.returncode} before it was ready\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(f"{self.url}/object_info/CheckpointLoaderSimple", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"ComfyUI did not answer /object_info within {timeout:.0f}s\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server (its whole process group), by PID."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=15)

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        return "---- server log (tail) ----\n" + self.log_text()[-chars:]

    def _check_alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise ServerError(f"ComfyUI is not running (exit code {code})\n{self.log_tail()}")

    # ---- HTTP ----------------------------------------------------------------------------------------
    def get_json(self, path: str) -> Any:
        self._check_alive()
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as resp:
            return json.loads(resp.read())

    def get_bytes(self, path: str) -> bytes:
        self._check_alive()
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as resp:
            return resp.read()

    def post_json(self, path: str, payload: Any) -> Any:
        self._check_alive()
        request = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise WorkflowError(f"POST {path} answered {exc.code}: {detail}") from None
        return json.loads(body) if body else None

    def interrupt(self) -> None:
        """What the Cancel button does."""
        self.post_json("/interrupt", {})

    def view(self, image: dict[str, str]) -> bytes:
        """Bytes of an output file named like the `images` entries of a node's output."""
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        return self.get_bytes(f"/view?{query}")

    # ---- workflows -----------------------------------------------------------------------------------
    def run_workflow(self, workflow: dict[str, Any], timeout: float = 600.0, on_event=None) -> WorkflowResult:
        """Queue an API-format workflow, follow the websocket until it ends, return its history and events.

        Raises WorkflowError with ComfyUI's own message when the prompt is refused or a node fails.
        """
        import websocket  # websocket-client, installed in the host venv

        self._check_alive()
        try:
            ws = websocket.create_connection(f"ws://127.0.0.1:{self.port}/ws?clientId={self.client_id}", timeout=2)
        except OSError:
            self._check_alive()  # a dead server explains it (with its log); otherwise the error stands
            raise
        deadline = time.monotonic() + timeout
        try:
            queued = self.post_json("/prompt", {"prompt": workflow, "client_id": self.client_id})
            prompt_id = queued["prompt_id"]
            if queued.get("node_errors"):
                raise WorkflowError(f"ComfyUI refused the workflow: {json.dumps(queued['node_errors'])}")
            events = self._follow(ws, prompt_id, deadline, timeout, on_event)
        finally:
            ws.close()
        # The websocket can report the end before the history entry is stored: wait for it.
        while True:
            history = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if history and history.get("status", {}).get("completed") is not None:
                return WorkflowResult(prompt_id, history, events)
            if time.monotonic() > deadline:
                raise WorkflowError(f"no history for workflow {prompt_id}\n{self.log_tail()}")
            time.sleep(0.05)

    def _follow(self, ws, prompt_id: str, deadline: float, timeout: float, on_event) -> list[dict[str, Any]]:
        """This prompt's websocket events until it succeeds or is interrupted; a failed node raises WorkflowError."""
        import websocket

        events: list[dict[str, Any]] = []
        while True:
            if time.monotonic() > deadline:
                raise WorkflowError(f"workflow {prompt_id} did not finish within {timeout:.0f}s\n{self.log_tail()}")
            try:
                message = ws.recv()
            except websocket.WebSocketTimeoutException:
                self._check_alive()
                continue
            except websocket.WebSocketConnectionClosedException:
                self._check_alive()
                raise
            if isinstance(message, bytes):  # binary preview frames
                continue
            event = json.loads(message)
            data = event.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            events.append(event)
            if on_event is not None:
                on_event(event)
            kind = event.get("type")
            if kind == "execution_error":
                raise WorkflowError(
                    f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type')}: {data.get('exception_message')}\n"
                    + "".join(data.get("traceback", []))[-3000:]
                )
            if kind in ("execution_interrupted", "execution_success") or (
                kind == "executing" and data.get("node") is None
            ):
                return events
