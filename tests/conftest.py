"""Shared test set-up: the repo root is importable (so `lora_train` and `nodes` resolve as in ComfyUI)."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def load_extension():
    """Import this folder the way ComfyUI loads a custom node (by file location, under its folder name)."""
    import importlib.util

    name = REPO_ROOT.name
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
