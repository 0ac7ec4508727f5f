"""Every API-format workflow in example_workflows/api/ runs in a real ComfyUI on the tiny checkpoint.

Placeholders are replaced with test values and sizes/steps shrunk (tests/browser/examples.py TINY_PROFILE); the
graphs are otherwise exactly the shipped files. The UI-format twins are checked against these in the browser test.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_train.dev.tiny_models import TINY_SD15_NAME
from tests.browser import examples

pytestmark = pytest.mark.host

TRAIN_STEPS = examples.TINY_PROFILE["LoraTrain_TrainLoRA"]["steps"]
LOG_EVERY = examples.TINY_PROFILE["LoraTrain_TrainLoRA"]["log_every"]


def run_example(comfy, name: str, values: dict[str, str], inputs: dict[str, dict] | None = None):
    """Run example `name` with placeholders replaced by `values`, the tiny profile and per-node-type `inputs`."""
    workflow = examples.tiny(examples.substitute(examples.load_api(name), {examples.CHECKPOINT: TINY_SD15_NAME,
                                                                          **values}))  # fmt: skip
    for node in workflow.values():
        node["inputs"].update((inputs or {}).get(node["class_type"], {}))
    assert not examples.leftover_placeholders(workflow), "the test left a placeholder in the workflow"
    return comfy.run_workflow(workflow)


def saved_image(comfy, result, node: str) -> np.ndarray:
    image = result.outputs[node]["images"][0]
    return np.asarray(Image.open(io.BytesIO(comfy.view(image))).convert("RGB"), dtype=np.float32)


@pytest.fixture(scope="module")
def trained(comfy, style_dataset_dir):
    """The training example run once; its LoRA (my_style_lora.safetensors) feeds the publish and fetch examples."""
    return run_example(comfy, "train_lora_from_folder", {examples.DATASET_DIR: str(style_dataset_dir)})


def test_every_example_has_an_api_and_a_ui_file():
    for name in examples.BUILDERS:
        assert examples.load_api(name) and examples.load_ui(name)["nodes"], name
    assert (examples.EXAMPLES_DIR / "README.md").is_file()


def test_train_example_trains_and_samples_with_and_without_the_lora(comfy, trained):
    assert (comfy.models_dir / "loras" / examples.LORA_FILE).is_file()
    assert trained.outputs["3"]["lora_name"] == [examples.LORA_FILE]
    with_lora, without = saved_image(comfy, trained, "15"), saved_image(comfy, trained, "25")
    assert with_lora.shape == without.shape == (64, 64, 3)
    assert np.abs(with_lora - without).mean() > 1.0, "the trained LoRA did not change the sample"
    steps = [event["step"] for event in trained.events_of("lora_train.train_progress")]
    assert steps == list(range(LOG_EVERY, TRAIN_STEPS + 1, LOG_EVERY))


def test_auto_label_example_writes_a_caption_for_every_image(comfy, host, style_dataset_dir, tmp_path):
    from lora_train.dataset.loading import load_dataset
    from lora_train.dev.tiny_clip import write_tiny_hf_clip

    folder = tmp_path / "uncaptioned"
    folder.mkdir()
    for image in sorted(style_dataset_dir.glob("*.png")):
        shutil.copyfile(image, folder / image.name)
    clip = write_tiny_hf_clip(tmp_path / "tiny_clip", host.comfyui / "comfy" / "sd1_tokenizer", seed=3)
    # A random tiny CLIP scores near 0: no threshold, so every image gets tags.
    values = {examples.DATASET_DIR: str(folder), examples.CLIP_MODEL: str(clip)}
    result = run_example(
        comfy, "auto_label_folder", values, {"LoraTrain_AutoLabel": {"threshold": -1.0, "device": "cpu"}}
    )
    assert "labelled 8 image(s)" in result.outputs["2"]["text"][0]
    items = load_dataset(folder, captions="csv").items
    assert len(items) == 8 and all(item.caption.strip() for item in items)


def test_publish_example_makes_a_versioned_release(comfy, trained):
    from lora_train.release.manifest import load_manifest

    result = run_example(comfy, "publish_lora_release", {})
    release = Path(result.outputs["2"]["text"][0])
    assert release == comfy.output_dir / "lora_releases" / "my_style"
    manifest = load_manifest(release / "manifest.json")
    version = manifest.versions[0]
    weights = release / f"my_style_v{version}.safetensors"
    assert weights.is_file() and (release / "README.md").is_file()
    assert manifest.select(version).files[0].name == weights.name


def test_fetch_example_downloads_a_release_by_manifest_and_samples(comfy, trained, tmp_path):
    if "LoraTrain_FetchLoRA" not in comfy.get_json("/object_info"):
        pytest.skip("the Fetch LoRA node (nodes/fetch.py, branch fetch) is not in this checkout yet")
    with examples.serve_folder(tmp_path / "releases") as base_url:
        published = examples.publish_release(comfy.models_dir / "loras" / examples.LORA_FILE, tmp_path / "releases",
                                             base_url, "fetched_style")  # fmt: skip
        values = {examples.MANIFEST_URL: f"{base_url}fetched_style/manifest.json"}
        result = run_example(comfy, "fetch_lora_and_sample", values,
                             {"LoraTrain_FetchLoRA": {"allow_private_addresses": True}})  # fmt: skip
    fetched_name = result.outputs["2"]["lora_name"][0]
    assert (comfy.models_dir / "loras" / fetched_name).read_bytes() == published.weights_path.read_bytes()
    assert saved_image(comfy, result, "15").shape == (64, 64, 3)


@pytest.mark.slow
def test_flux_example_trains_on_fp8_weights_and_samples_with_and_without_the_lora(
    comfy, tiny_family, style_dataset_dir
):
    from safetensors import safe_open

    flux = tiny_family("flux_dev")
    values = {
        examples.FLUX_MODEL: flux.files["diffusion_models"],
        examples.FLUX_VAE: flux.files["vae"],
        examples.DATASET_DIR: str(style_dataset_dir),
    }
    workflow = examples.tiny(examples.substitute(examples.load_api("train_flux_lora"), values))
    # The one node swapped: the tiny Flux reads CLIP-L-width text (a full T5-XXL cannot run on this machine).
    assert workflow["2"]["class_type"] == "DualCLIPLoader"
    workflow["2"] = {
        "class_type": "CLIPLoader",
        "inputs": {"clip_name": flux.files["text_encoders"], "type": "stable_diffusion"},
    }
    assert workflow["1"]["inputs"]["weight_dtype"] == "fp8_e4m3fn"
    result = comfy.run_workflow(workflow)

    lora = comfy.models_dir / "loras" / "my_flux_lora.safetensors"
    with safe_open(str(lora), "pt") as handle:
        assert handle.metadata()["modelspec.architecture"] == "flux-1-dev/lora"
    with_lora, without = saved_image(comfy, result, "15"), saved_image(comfy, result, "25")
    assert with_lora.shape == without.shape == (64, 64, 3)
    assert np.abs(with_lora - without).mean() > 0.5, "the trained LoRA did not change the Flux sample"
