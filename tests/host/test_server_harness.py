"""The test harness fails fast and clearly: port taken, server never ready, server dead mid-test."""

import os
import signal
import socket

import pytest

from lora_train.dev.server import ComfyServer, ServerError
from lora_train.dev.workflows import smoke_workflow

pytestmark = pytest.mark.host


def test_port_already_in_use_gives_an_error_with_the_server_log(host, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = ComfyServer(host.comfyui, host.python, tmp_path)
        with pytest.raises(ServerError, match=r"(?s)exited with code.*server log"):
            server.start(port=busy.getsockname()[1])
    assert server.proc.poll() is not None


def test_a_server_that_never_becomes_ready_times_out_and_is_stopped(host, tmp_path):
    server = ComfyServer(host.comfyui, host.python, tmp_path)
    with pytest.raises(ServerError, match="did not answer /object_info within 1s"):
        server.start(timeout=1)
    assert server.proc.poll() is not None, "the half-started server was left running"


def test_a_server_dying_mid_test_is_reported_not_waited_for(start_server):
    server = start_server("dies")
    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait()
    with pytest.raises(ServerError, match=r"(?s)not running.*server log"):
        server.run_workflow(smoke_workflow())
