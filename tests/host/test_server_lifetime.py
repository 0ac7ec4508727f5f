"""A test process that is killed (SIGTERM from `timeout` or CI, or SIGKILL) takes its ComfyUI server with it, even
mid-workflow: no server is left training at 100% CPU."""

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lora_train.dev import host_builder

pytestmark = pytest.mark.host

# Starts a server, queues a long training run, says "TRAINING <server pid>" at the first progress event, then
# keeps following the run (it would take minutes) until it is killed.
DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from lora_train.dev.server import ComfyServer
from lora_train.dev.workflows import train_and_sample

comfyui, base, checkpoint, dataset = map(Path, sys.argv[2:6])
server = ComfyServer(comfyui, Path(sys.executable), base)
server.prepare()
(server.models_dir / "checkpoints" / checkpoint.name).symlink_to(checkpoint)
server.start()
said = []

def on_event(event):
    if event["type"] == "lora_train.train_progress" and not said:
        said.append(True)
        print("TRAINING", server.proc.pid, flush=True)

server.run_workflow(train_and_sample(str(dataset), steps=100000, log_every=1, output_name="orphan"), on_event=on_event)
"""


def _alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie waiting to be reaped has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _watch(pid: int) -> int:
    """A pidfd for `pid`: it becomes readable when the process exits (no polling loop)."""
    return os.pidfd_open(pid)


def _exits_within(pidfd: int, seconds: float) -> bool:
    readable, _, _ = select.select([pidfd], [], [], seconds)
    return bool(readable)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_killed_test_process_stops_its_server(host, tiny_models_dir, style_dataset_dir, tmp_path, sig):
    from lora_train.dev.tiny_models import TINY_SD15_NAME

    checkpoint = tiny_models_dir / "checkpoints" / TINY_SD15_NAME
    args = [str(host_builder.REPO_ROOT), str(host.comfyui), str(tmp_path / "base"), str(checkpoint)]
    driver = subprocess.Popen(
        [str(host.python), "-c", DRIVER, *args, str(style_dataset_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server_pid = None
    try:
        for line in driver.stdout:
            if line.startswith("TRAINING"):
                server_pid = int(line.split()[1])
                break
        assert server_pid is not None, "the driver never reached training"
        watch = _watch(server_pid)
        assert _alive(server_pid)
        driver.send_signal(sig)
        driver.wait(timeout=60)
        assert _exits_within(watch, 30), f"ComfyUI (pid {server_pid}) outlived the killed test process"
    finally:
        if driver.poll() is None:
            driver.kill()
        if server_pid is not None and _alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_the_test_command_takes_pytest_with_it(tmp_path):
    """tests/run.py's pytest child is armed the same way (a `timeout` on the test command stops everything)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import signal, subprocess, sys\n"
        f"sys.path.insert(0, {str(host_builder.REPO_ROOT)!r})\n"
        "from lora_train.dev.lifetime import die_with_parent_hook\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import signal; signal.pause()'],"
        " preexec_fn=die_with_parent_hook())\n"
        "print(child.pid, flush=True)\n"
        "signal.pause()\n"
    )
    parent = subprocess.Popen([sys.executable, str(probe)], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    try:
        watch = _watch(child_pid)
        assert _alive(child_pid)
        parent.terminate()
        parent.wait(timeout=30)
        assert _exits_within(watch, 30), "the child outlived its killed parent"
    finally:
        if _alive(child_pid):
            os.kill(child_pid, signal.SIGKILL)
