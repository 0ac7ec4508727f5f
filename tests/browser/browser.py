"""Headless Debian Chromium driven by PyPI playwright against a real ComfyUI frontend (tests and tools).

Never `playwright install`: it downloads a browser. The Debian package is installed with apt when missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1500, "height": 950}


def ensure_chromium() -> str | None:
    """Install Debian's chromium if it is missing; None when it is there, else why it could not be installed."""
    if CHROMIUM.exists():
        return None
    if shutil.which("apt-get") is None:
        return "no /usr/bin/chromium and no apt-get to install Debian's chromium package"
    if os.geteuid() != 0:
        return "no /usr/bin/chromium, and installing Debian's chromium package needs root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"])
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            return f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-600:]}"
    return None if CHROMIUM.exists() else "apt-get installed chromium but /usr/bin/chromium is missing"


@contextlib.contextmanager
def launch() -> Iterator:
    """Headless Debian Chromium under playwright's sync API (one per process at a time)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def skip_first_visit_templates(url: str) -> None:
    """Mark the frontend's tutorial as done (a user setting), so no Templates dialog covers the canvas."""
    request = urllib.request.Request(
        f"{url}/settings/Comfy.TutorialCompleted", data=b"true", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


@contextlib.contextmanager
def frontend(browser, url: str) -> Iterator:
    """A page of `browser` with ComfyUI's frontend loaded from `url`, with no Templates dialog open.

    `page.console_messages` collects the console (for failure reports)."""
    skip_first_visit_templates(url)
    page = browser.new_page(viewport=VIEWPORT)
    try:
        page.console_messages = []
        page.on("console", lambda message: page.console_messages.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: page.console_messages.append(f"pageerror: {error}"))
        page.goto(url)
        page.wait_for_function("window.app?.graph && window.LiteGraph && window.comfyAPI?.api", timeout=90_000)
        page.wait_for_function(
            "window.app.extensions.some((e) => e.name === 'lora_train.train_view') && "
            "Boolean(window.LiteGraph.registered_node_types.LoraTrain_TrainLoRA)"
        )
        page.keyboard.press("Escape")  # any other dialog the frontend opened on start
        yield page
    finally:
        page.close()
