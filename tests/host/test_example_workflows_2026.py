"""The Wan 2.2 example workflow runs in a real ComfyUI on the tiny Wan 2.2 5B-class model and a 2-clip dataset.

(The Qwen-Image example cannot run on a tiny model: ComfyUI builds Qwen2.5-VL 7B at full size and no smaller text
encoder yields its 3584-wide conditioning; its graph is the Qwen-Image template's plus Train LoRA, and
tests/host/test_families_precomputed.py trains Qwen-Image itself.)"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageSequence

from lora_train.dev.host_builder import host_version
from lora_train.dev.synthetic import write_clip_dataset
from tests.browser import examples

pytestmark = pytest.mark.host


def _clip(comfy, result, node: str) -> np.ndarray:
    (saved,) = result.outputs[node]["images"]
    with Image.open(io.BytesIO(comfy.view(saved))) as image:
        return np.stack([np.asarray(f.convert("RGB"), np.float32) for f in ImageSequence.Iterator(image)])


def test_wan22_example_trains_on_clips_and_samples_a_clip_with_and_without_the_lora(comfy, tiny_family, tmp_path):
    if host_version() == "0.3.75":
        pytest.skip("0.3.75's TAEHV (the tiny Wan 2.2 VAE) cannot encode")
    wan = tiny_family("wan22_5b")
    clips = write_clip_dataset(tmp_path / "clips", count=2, frames=9)
    values = {examples.WAN22_MODEL: wan.files["diffusion_models"], examples.WAN22_VAE: wan.files["vae"],
              examples.DATASET_DIR: str(clips)}  # fmt: skip
    workflow = examples.tiny(examples.substitute(examples.load_api("train_wan22_lora"), values))
    # The one node swapped: the tiny Wan reads CLIP-L padded to UMT5's width (a full UMT5-XXL cannot run here).
    assert workflow["2"]["class_type"] == "CLIPLoader" and workflow["2"]["inputs"]["type"] == "wan"
    workflow["2"]["inputs"].update(clip_name=wan.files["text_encoders"], type="sd3")
    workflow["4"]["inputs"].update(frames=9, fps=0)  # the example's 49 frames at 24 fps need longer clips
    assert not examples.leftover_placeholders(workflow)
    result = comfy.run_workflow(workflow)
    with_lora, without = _clip(comfy, result, "16"), _clip(comfy, result, "26")
    assert with_lora.shape == without.shape and len(with_lora) == 5, "a 5-frame clip each"
    assert np.abs(with_lora - without).mean() > 0.5, "the trained LoRA did not change the clip"
    assert (comfy.models_dir / "loras" / "my_wan22_lora.safetensors").is_file()
