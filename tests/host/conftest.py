"""Fixtures that run a real ComfyUI (the pinned host, lora_train.dev.host_builder) with this extension linked in."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_train.dev import host_builder
from lora_train.dev.server import ComfyServer
from lora_train.dev.tiny_models import TINY_SD15_NAME


@pytest.fixture(scope="session")
def host() -> host_builder.Host:
    """The pinned ComfyUI tree and venv (built on first use, seconds afterwards)."""
    return host_builder.setup_host()


@pytest.fixture(scope="session")
def tiny_models_dir(host: host_builder.Host) -> Path:
    """Cached folder holding `checkpoints/tiny_sd15.safetensors`, generated once from a fixed seed."""
    models = host_builder.models_dir()
    if not (models / "checkpoints" / TINY_SD15_NAME).is_file():
        subprocess.run(
            [
                str(host.python),
                "-c",
                "import sys; sys.path.insert(0, sys.argv[1]);"
                "from lora_train.host.bootstrap import import_comfy; import_comfy(sys.argv[2]);"
                "from lora_train.dev.tiny_models import write_tiny_sd15; write_tiny_sd15(sys.argv[3])",
                str(host_builder.REPO_ROOT),
                str(host.comfyui),
                str(models),
            ],
            check=True,
        )
    return models


def _link_models(server: ComfyServer, models: Path) -> None:
    target = server.models_dir / "checkpoints" / TINY_SD15_NAME
    if not target.exists():
        target.symlink_to(models / "checkpoints" / TINY_SD15_NAME)


@pytest.fixture(scope="session")
def start_server(host, tiny_models_dir, tmp_path_factory):
    """Factory: start another server (own base dir) for tests that need a fresh process."""
    servers: list[ComfyServer] = []

    def start(name: str = "comfy") -> ComfyServer:
        server = ComfyServer(host.comfyui, host.python, tmp_path_factory.mktemp(name))
        server.prepare()
        _link_models(server, tiny_models_dir)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def comfy(start_server) -> Iterator[ComfyServer]:
    """One shared ComfyUI server for the session, with the tiny SD1.5 checkpoint in models/checkpoints."""
    yield start_server("comfy")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failing host test, add the shared server's log tail to the report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "comfy" in item.fixturenames:
        server = item.funcargs.get("comfy")
        if server is not None:
            report.sections.append(("ComfyUI server log", server.log_tail()))


@pytest.fixture(scope="session")
def comfy_lib(host):
    """ComfyUI imported in-process as a library (CPU), for tests of the host adapter without a server."""
    from lora_train.host.bootstrap import import_comfy

    return import_comfy(host.comfyui, cpu=True)


def _load_tiny_checkpoint(tiny_models_dir: Path):
    import comfy.sd
    import torch

    with torch.inference_mode():  # as CheckpointLoaderSimple runs in the server: weights are inference tensors
        out = comfy.sd.load_checkpoint_guess_config(str(tiny_models_dir / "checkpoints" / TINY_SD15_NAME))
    return out[0], out[1], out[2]


@pytest.fixture(scope="session")
def tiny_checkpoint(comfy_lib, tiny_models_dir):
    """(MODEL, CLIP, VAE) of the tiny SD1.5 checkpoint, loaded in-process with ComfyUI's own loader (shared)."""
    return _load_tiny_checkpoint(tiny_models_dir)


@pytest.fixture
def own_tiny_checkpoint(comfy_lib, tiny_models_dir):
    """The same, loaded for this test alone: no other test's clones share its modules."""
    return _load_tiny_checkpoint(tiny_models_dir)


@pytest.fixture(scope="session")
def family_models(comfy_lib) -> Path:
    """The cached models folder, where `tiny_family` writes the other families' tiny models (once, seeded)."""
    return host_builder.models_dir()


@pytest.fixture(scope="session")
def tiny_family(comfy, family_models):
    """Factory: family name (tiny_models' or tiny_families') -> its TinyModel, written if missing and linked into
    the shared server's models."""
    from lora_train.dev.tiny_families import write_tiny_any

    def get(family: str):
        tiny = write_tiny_any(family, family_models)
        for folder, path in tiny.paths(family_models).items():
            target = comfy.models_dir / folder / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(path)
        return tiny

    return get


@pytest.fixture(scope="session")
def style_dataset_dir(tmp_path_factory):
    """8 generated 64-px red-style images with `.txt` captions."""
    from lora_train.dev.synthetic import write_style_dataset

    return write_style_dataset(tmp_path_factory.mktemp("style_data"))
