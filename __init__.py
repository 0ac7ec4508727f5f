"""ComfyUI entry point for the LoRA Train & Distribute extension (the folder is also the `lora_train` CLI's home)."""

import os
import sys

# ComfyUI imports this folder as a package under its own name; make `lora_train` importable as a top-level
# package too, so the nodes and the CLI share one core.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:
    # Imported as a lone module (pytest collecting the repo root from a folder whose name is not an identifier,
    # e.g. comfyui-lora-train): there is no package to import nodes from, and no ComfyUI to register them with.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
