"""Use a ComfyUI install as a library (CLI, benches, generators): find it, put it on sys.path, pick the device.

Inside a running ComfyUI none of this is needed: `comfy` is already imported with the server's own arguments.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_VAR = "COMFYUI_PATH"


class ComfyUINotFound(RuntimeError):
    """No ComfyUI install could be found; the message says how to point at one."""


def find_comfyui(explicit: str | os.PathLike | None = None) -> Path:
    """`explicit`, else $COMFYUI_PATH, else the ComfyUI this folder sits in (`ComfyUI/custom_nodes/<us>`)."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    here = Path(__file__).resolve().parents[2]
    candidates += [here.parent.parent, Path(os.path.abspath(__file__)).parents[4]]
    for path in candidates:
        if (path / "comfy" / "model_management.py").is_file() and (path / "folder_paths.py").is_file():
            return path.resolve()
    tried = ", ".join(str(p) for p in candidates) or "(nothing)"
    raise ComfyUINotFound(
        f"no ComfyUI found (looked in: {tried}). Pass --comfyui /path/to/ComfyUI, set {ENV_VAR}, or install this "
        "extension into ComfyUI/custom_nodes/. For a throw-away test host run: "
        "python -m lora_train.dev.host_builder setup"
    )


def import_comfy(comfyui: str | os.PathLike | None = None, *, cpu: bool | None = None) -> Path:
    """Make `comfy`, `folder_paths` and `nodes` importable as a library; returns the ComfyUI root.

    `cpu=None` picks the CPU when torch sees no accelerator (ComfyUI would otherwise fail on CUDA init).
    """
    if "comfy.model_management" in sys.modules:
        import folder_paths

        return Path(folder_paths.base_path)
    root = find_comfyui(comfyui)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    args.cpu = bool(cpu)
    return root
