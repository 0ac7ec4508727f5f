"""Every tiny model family loads through ComfyUI's own loaders, is detected as the family it stands for, encodes a
prompt, round-trips an image through its VAE and samples finite, non-constant latents."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
import torch

from lora_train.dev.tiny_models import FAMILIES, TinyModel, tiny_model, write_tiny

pytestmark = pytest.mark.host

BIG = {"sd2v", "sdxl", "flux_dev", "flux_schnell"}  # full-size CLIP-H/G or a 3072-wide Flux block: seconds each
FAMILY_PARAMS = [pytest.param(f, marks=pytest.mark.slow) if f in BIG else f for f in FAMILIES]
# family -> (model_sampling prediction class, model_sampling schedule class, flow shift or None)
SAMPLING = {
    "sd15": ("EPS", "ModelSamplingDiscrete", None),
    "sd2v": ("V_PREDICTION", "ModelSamplingDiscrete", None),
    "sdxl": ("EPS", "ModelSamplingDiscrete", None),
    "sd3": ("CONST", "ModelSamplingDiscreteFlow", 3.0),
    "flux_dev": ("CONST", "ModelSamplingFlux", 1.15),
    "flux_schnell": ("CONST", "ModelSamplingDiscreteFlow", 1.0),
}
CFG = {"flux_dev": 1.0, "flux_schnell": 1.0}  # guidance-distilled: one pass; the others run real CFG at 2
PROMPT = "a red circle"


@pytest.fixture(scope="module", params=FAMILY_PARAMS)
def loaded(request, family_models) -> Iterator[tuple[TinyModel, object, object, object]]:
    """(descriptor, MODEL, CLIP, VAE) of one family; one family in memory at a time, freed before the next."""
    import comfy.model_management

    tiny = write_tiny(request.param, family_models)
    model, clip, vae = tiny.load(family_models)
    yield tiny, model, clip, vae
    del model, clip, vae
    comfy.model_management.unload_all_models()
    gc.collect()
    comfy.model_management.soft_empty_cache()


def _encode(clip, text: str) -> list:
    """CLIPTextEncode's conditioning: [[cond, {pooled_output, ...}]]."""
    out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
    cond = out.pop("cond")
    return [[cond, out]]


def test_every_family_has_a_descriptor():
    assert [tiny_model(f).family for f in FAMILIES] == list(FAMILIES)
    with pytest.raises(ValueError, match="unknown tiny model family"):
        tiny_model("sd4")


def test_loader_nodes_reference_the_files():
    nodes, model, clip, vae = tiny_model("sdxl").loader_nodes("a_")
    assert nodes == {
        "a_ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sdxl.safetensors"}}
    }
    assert (model, clip, vae) == (["a_ckpt", 0], ["a_ckpt", 1], ["a_ckpt", 2])
    nodes, model, clip, vae = tiny_model("flux_dev").loader_nodes("b_")
    assert {k: v["class_type"] for k, v in nodes.items()} == {
        "b_unet": "UNETLoader",
        "b_clip": "CLIPLoader",
        "b_vae": "VAELoader",
    }
    assert nodes["b_clip"]["inputs"] == {"clip_name": "tiny_clip_l.safetensors", "type": "stable_diffusion"}
    assert (model, clip, vae) == (["b_unet", 0], ["b_clip", 0], ["b_vae", 0])


def test_model_is_detected_as_its_family(loaded):
    import comfy.model_sampling

    tiny, model, _, _ = loaded
    assert type(model.model.model_config).__name__ == tiny.detected
    prediction, schedule, shift = SAMPLING[tiny.family]
    sampling = model.get_model_object("model_sampling")
    assert isinstance(sampling, getattr(comfy.model_sampling, prediction))
    assert isinstance(sampling, getattr(comfy.model_sampling, schedule))
    if shift is not None:
        assert sampling.shift == pytest.approx(shift)


def test_clip_encodes_a_prompt(loaded):
    _, _, clip, _ = loaded
    with torch.inference_mode():
        [[cond, extra]] = _encode(clip, PROMPT)
    assert cond.ndim == 3 and cond.shape[0] == 1
    assert torch.isfinite(cond).all() and cond.std() > 0
    assert torch.isfinite(extra["pooled_output"]).all()


def test_vae_round_trips_a_64px_image(loaded):
    _, model, _, vae = loaded
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        latent = vae.encode(image)
        decoded = vae.decode(latent)
    assert latent.shape == (1, model.model.latent_format.latent_channels, 8, 8)
    assert decoded.shape == (1, 64, 64, 3)
    assert torch.isfinite(latent).all() and torch.isfinite(decoded).all()


def test_two_euler_steps_give_finite_latents(loaded):
    import comfy.sample

    tiny, model, clip, _ = loaded
    channels = model.model.latent_format.latent_channels
    latent = torch.zeros(1, channels, 8, 8)
    with torch.inference_mode():
        positive, negative = _encode(clip, PROMPT), _encode(clip, "")
        noise = comfy.sample.prepare_noise(latent, 0)
        samples = comfy.sample.sample(
            model, noise, 2, CFG.get(tiny.family, 2.0), "euler", "normal", positive, negative, latent, seed=0
        )
    assert samples.shape == latent.shape
    assert torch.isfinite(samples).all()
    assert samples.std() > 1e-3


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_loader_nodes_run_in_a_real_server(comfy, tiny_family, family):
    """The API graph from `loader_nodes` is accepted and runs: encode, sample 2 steps, decode, preview."""
    tiny = tiny_family(family)
    workflow, model, clip, vae = tiny.loader_nodes("tiny_")
    empty = "EmptySD3LatentImage" if family == "sd3" else "EmptyLatentImage"
    workflow.update(
        {
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": clip}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
            "empty": {"class_type": empty, "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "sample": {
                "class_type": "KSampler",
                "inputs": {
                    "model": model,
                    "positive": ["pos", 0],
                    "negative": ["neg", 0],
                    "latent_image": ["empty", 0],
                    "seed": 0,
                    "steps": 2,
                    "cfg": 2.0,
                    "sampler_name": "euler",
                    "scheduler": "normal",
                    "denoise": 1.0,
                },
            },
            "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": vae}},
            "preview": {"class_type": "PreviewImage", "inputs": {"images": ["decode", 0]}},
        }
    )
    result = comfy.run_workflow(workflow, timeout=300)
    assert result.outputs["preview"]["images"]
