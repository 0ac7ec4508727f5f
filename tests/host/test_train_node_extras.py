"""Train LoRA in a real ComfyUI with class images and a validation split: the graph wires them, the live progress
carries the validation loss, the file records the class images as kohya does."""

import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from lora_train.dev.workflows import train_and_sample

pytestmark = pytest.mark.host


def _class_images(folder, count=3):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    for index in range(count):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"dog{index}.png")
        (folder / f"dog{index}.txt").write_text("a photo of a dog")
    return folder


def test_class_images_and_validation_through_the_graph(comfy, style_dataset_dir, tmp_path):
    workflow = train_and_sample(str(style_dataset_dir), output_name="node_extras", steps=4, log_every=2,
                                validation_split=0.25, validate_every=2, prior_loss_weight=0.5)  # fmt: skip
    workflow["reg"] = {"class_type": "LoraTrain_LoadDataset", "inputs": {**workflow["data"]["inputs"],
                       "path": str(_class_images(tmp_path / "1_dog"))}}  # fmt: skip
    workflow["train"]["inputs"]["reg_dataset"] = ["reg", 0]
    result = comfy.run_workflow(workflow)

    events = result.events_of("lora_train.train_progress")
    assert [(e["step"], e["validation_loss"] is not None) for e in events] == [(2, True), (4, True)]
    with safe_open(str(comfy.models_dir / "loras" / "node_extras.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["ss_reg_dataset_dirs"]) == {"1_dog": {"n_repeats": 1, "img_count": 3}}
    assert meta["ss_num_reg_images"] == "6"  # as many class images per epoch as the 6 training images left
    assert meta["ss_prior_loss_weight"] == "0.5"
