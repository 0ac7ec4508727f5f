"""LoRA training and distribution core, shared by the ComfyUI nodes and the `python -m lora_train` CLI.

Importing this package is cheap and never imports ComfyUI (`comfy`, `folder_paths`, `server`) or heavy
libraries: the host adapter (`lora_train.host`) is imported only where a ComfyUI is present.
"""

__version__ = "0.1.0"
