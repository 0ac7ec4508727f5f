"""Shared test set-up: the repo root is importable (so `lora_train` and `nodes` resolve as in ComfyUI)."""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
