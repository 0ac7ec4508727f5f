"""The Publish LoRA node in a real ComfyUI: a LoRA in models/loras becomes a release under output/lora_releases."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from lora_train.dev.server import WorkflowError
from lora_train.release.manifest import load_manifest
from lora_train.release.publish import PublishConfig
from tests.core.test_publish import make_lora

pytestmark = pytest.mark.host


def widget_defaults() -> dict:
    values = {}
    for spec in dataclasses.fields(PublishConfig):
        default = spec.default if spec.default is not dataclasses.MISSING else spec.default_factory()
        values[spec.name] = ", ".join(default) if isinstance(default, list) else default
    return values


def publish_workflow(lora_name: str, **widgets) -> dict:
    inputs = {**widget_defaults(), "lora_name": lora_name, **widgets}
    return {"1": {"class_type": "LoraTrain_PublishLoRA", "inputs": inputs}}


LORA_NAME = "host_publish_test.safetensors"


@pytest.fixture(scope="module")
def lora_tensors(comfy) -> dict:
    """A generated kohya-style LoRA placed in the server's models/loras."""
    return make_lora(comfy.models_dir / "loras" / LORA_NAME, seed=11)


def test_publish_node_writes_a_release_from_the_loras_folder(comfy, lora_tensors):
    tensors = lora_tensors
    workflow = publish_workflow(LORA_NAME, name="hosttest_style", trigger_words="hst, test",
                                date="2026-11-30", make_zip=True)  # fmt: skip
    result = comfy.run_workflow(workflow)
    release = comfy.output_dir / "lora_releases" / "hosttest_style"
    published = load_file(release / "hosttest_style_v1.safetensors")
    assert all(torch.equal(published[k], tensors[k]) for k in tensors) and published.keys() == tensors.keys()
    assert sorted(p.name for p in release.iterdir()) == [
        "README.md", "hosttest_style_v1.safetensors", "hosttest_style_v1.zip", "manifest.json"]  # fmt: skip
    manifest = load_manifest(release / "manifest.json")
    assert manifest.versions == [1] and manifest.trigger_words == ["hst", "test"]
    assert "<lora:hosttest_style_v1:0.8> hst, test" in (release / "README.md").read_text()
    assert "hosttest_style v1: wrote" in result.outputs["1"]["text"][0]

    # The same version again: ComfyUI shows our message and the release is untouched.
    before = (release / "manifest.json").read_bytes()
    with pytest.raises(WorkflowError, match="hosttest_style_v1 already exists"):
        comfy.run_workflow(publish_workflow(LORA_NAME, name="hosttest_style", version=1))
    assert (release / "manifest.json").read_bytes() == before


def test_publish_node_takes_a_path_from_another_node_and_dry_run_writes_nothing(comfy, lora_tensors, tmp_path):
    source = tmp_path / "elsewhere.safetensors"
    make_lora(source, seed=12)
    workflow = publish_workflow(LORA_NAME, name="hostpath_style", dry_run=True, lora_file=["2", 0])
    workflow["2"] = {"class_type": "PrimitiveString", "inputs": {"value": str(source)}}
    result = comfy.run_workflow(workflow)
    assert "hostpath_style v1: would write hostpath_style_v1.safetensors" in result.outputs["1"]["text"][0]
    assert not (comfy.output_dir / "lora_releases" / "hostpath_style").exists()
