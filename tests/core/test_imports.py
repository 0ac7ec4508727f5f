"""Importing the core is cheap and host-free; importing the extension pulls in nothing heavy."""

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

HOST_MODULES = ("comfy", "folder_paths", "server")
HEAVY_MODULES = ("transformers", "peft", "diffusers", "bitsandbytes", "torchvision")


def _modules_after(code: str) -> set[str]:
    probe = f"import sys, json; sys.path.insert(0, {str(REPO_ROOT)!r}); {code}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/")
    return {name.split(".")[0] for name in json.loads(out.stdout.strip().splitlines()[-1])}


def test_import_lora_train_core_imports_no_comfyui():
    import pkgutil

    import lora_train

    core = [
        m.name
        for m in pkgutil.walk_packages(lora_train.__path__, "lora_train.")
        if not m.name.startswith(("lora_train.host", "lora_train.__main__"))
    ]
    loaded = _modules_after(f"import importlib; [importlib.import_module(m) for m in {core!r}]")
    assert not loaded & set(HOST_MODULES), f"core imported host modules: {loaded & set(HOST_MODULES)}"


def test_extension_import_pulls_in_nothing_heavy():
    parent, name = str(REPO_ROOT.parent), REPO_ROOT.name
    loaded = _modules_after(f"sys.path.insert(0, {parent!r}); import importlib; importlib.import_module({name!r})")
    assert not loaded & set(HEAVY_MODULES), f"extension import loaded {loaded & set(HEAVY_MODULES)}"
    assert not loaded & set(HOST_MODULES)
