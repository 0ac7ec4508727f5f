"""Browser-test fixtures: the real ComfyUI test host (the host tests' fixtures) and Debian Chromium."""

from __future__ import annotations

import pytest

from tests.browser.browser import ensure_chromium, launch

# The host tests' fixtures, so these tests open the frontend of a real server with this extension linked in.
from tests.host.conftest import comfy, host, start_server, style_dataset_dir, tiny_models_dir  # noqa: F401


@pytest.fixture(scope="session")
def chromium():
    """Headless Debian Chromium (installed with apt-get when missing; the test is skipped only if that fails)."""
    reason = ensure_chromium()
    if reason:
        pytest.skip(f"Chromium is not available and could not be installed: {reason}")
    with launch() as browser:
        yield browser
