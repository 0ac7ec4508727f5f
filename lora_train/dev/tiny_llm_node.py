"""A test-only ComfyUI node that outputs the tiny Qwen3 CLIP (`tiny_llm.load_tiny_qwen3_clip`), so a real server graph
can feed Train LLM LoRA and Generate Text without a 1.2 GB Qwen3-0.6B file: ComfyUI's Load CLIP cannot pass the
per-model config override that shrinks it. `install(custom_nodes)` drops a one-file custom node into a test server's
custom_nodes folder; the product never registers it."""

from __future__ import annotations

from pathlib import Path

NODE_NAME = "LoraTrainDev_TinyQwen3CLIP"
STUB = "lora_train_dev_tiny_llm.py"


class TinyQwen3CLIP:
    """Random-weight Qwen3-family text encoder (2 blocks), built by ComfyUI's own loader."""

    CATEGORY = "LoRA Train/dev"
    FUNCTION = "load"
    RETURN_TYPES = ("CLIP",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def load(self, seed: int):
        from lora_train.dev.tiny_llm import load_tiny_qwen3_clip

        return (load_tiny_qwen3_clip(seed=seed),)


NODE_CLASS_MAPPINGS = {NODE_NAME: TinyQwen3CLIP}


def install(custom_nodes: str | Path) -> Path:
    """Write the custom-node stub that registers TinyQwen3CLIP from this repository; returns its path."""
    repo = Path(__file__).resolve().parents[2]
    stub = Path(custom_nodes) / STUB
    stub.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(repo)!r})\n"
        "from lora_train.dev.tiny_llm_node import NODE_CLASS_MAPPINGS  # noqa: E402\n"
    )
    return stub
