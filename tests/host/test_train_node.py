"""Train LoRA in a real ComfyUI: one graph trains and samples; the file loads in LoraLoader and reproduces it."""

import io

import numpy as np
import pytest
from PIL import Image

from lora_train.dev.workflows import lora_loader_sample, train_and_sample

pytestmark = pytest.mark.host


def _image(comfy, result, node) -> np.ndarray:
    images = result.outputs[node]["images"]
    return np.asarray(Image.open(io.BytesIO(comfy.view(images[0]))).convert("RGB"), dtype=np.float32)


@pytest.fixture(scope="module")
def trained(comfy, style_dataset_dir):
    result = comfy.run_workflow(train_and_sample(str(style_dataset_dir), output_name="node_lora"))
    return result


def test_graph_trains_and_samples_with_the_lora_at_once(comfy, trained):
    lora_file = comfy.models_dir / "loras" / "node_lora.safetensors"
    assert lora_file.is_file()
    before, after = _image(comfy, trained, "before_save"), _image(comfy, trained, "after_save")
    assert np.abs(after - before).mean() > 1.0, "the LoRA did not change the sampled image"
    chart = trained.outputs["train"]["images"][0]
    assert Image.open(io.BytesIO(comfy.view(chart))).size == (640, 320)
    assert trained.outputs["train"]["lora_name"] == ["node_lora.safetensors"]


def test_progress_events_reach_the_client(trained):
    events = trained.events_of("lora_train.train_progress")
    assert [e["step"] for e in events] == [2, 4, 6]
    assert all(e["total"] == 6 and np.isfinite(e["loss"]) and e["node"] == "train" for e in events)
    progress = [e for e in trained.events_of("progress") if e.get("node") == "train"]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == 6


def test_lora_loader_loads_every_key_and_reproduces_the_trained_model(comfy, trained):
    log_before = len(comfy.log_text())
    result = comfy.run_workflow(lora_loader_sample("node_lora.safetensors"))
    new_log = comfy.log_text()[log_before:]
    assert "lora key not loaded" not in new_log, new_log[-3000:]
    loaded, trained_image = _image(comfy, result, "loader_save"), _image(comfy, trained, "after_save")
    assert np.abs(loaded - trained_image).max() <= 1.0, "LoraLoader at strength 1 differs from Train LoRA's MODEL"
