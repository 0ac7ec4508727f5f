"""Video families: a tiny Wan 2.2 5B-class model trains through the node on a 2-clip dataset and its LoRA changes a
sampled clip; a tiny Wan image-to-video model trains with each clip's first frame as ComfyUI's start image; clips
become one latent video each; clip frame counts the VAE cannot take, and clips given to an image model, are refused
by file before any work."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lora_train.dataset.loading import load_dataset
from lora_train.dev.host_builder import host_version
from lora_train.dev.synthetic import write_clip_dataset
from lora_train.dev.tiny_families import write_tiny_any
from lora_train.dev.workflows import lora_loader_sample, train_and_sample
from lora_train.host.comfy_adapter import ComfyHost
from lora_train.training import TrainingError, train_lora
from lora_train.training.config import TrainConfig

pytestmark = pytest.mark.host

FRAMES = 5  # sampled clip length (4k+1)


@pytest.fixture(scope="module")
def clip_dataset_dir(tmp_path_factory):
    """Two 9-frame 64-px GIF clips with captions."""
    return write_clip_dataset(tmp_path_factory.mktemp("clips"), count=2, frames=9)


def _video_latents(workflow: dict) -> dict:
    """Every empty latent of the graph as a FRAMES-frame video latent (EmptyHunyuanLatentVideo, in both hosts)."""
    for node in [n for n in workflow if n.endswith("_lat")]:
        workflow[node] = {
            "class_type": "EmptyHunyuanLatentVideo",
            "inputs": {"width": 64, "height": 64, "length": FRAMES, "batch_size": 1},
        }
    return workflow


def _frames(comfy, result, node) -> np.ndarray:
    images = result.outputs[node]["images"]
    return np.stack([np.asarray(Image.open(io.BytesIO(comfy.view(i))).convert("RGB"), np.float32) for i in images])


def test_wan22_5b_trains_on_two_clips_and_its_lora_changes_a_sampled_clip(comfy, tiny_family, clip_dataset_dir):
    if host_version() == "0.3.75":
        pytest.skip("0.3.75's TAEHV (the tiny Wan 2.2 VAE) cannot encode")
    tiny = tiny_family("wan22_5b")
    loaders = tiny.loader_nodes("wan22_")
    settings = {"steps": 4, "batch_size": 1, "rank": 4, "learning_rate": 5e-3}
    log_start = len(comfy.log_text())
    result = comfy.run_workflow(
        _video_latents(train_and_sample(str(clip_dataset_dir), loaders, output_name="wan22", **settings))
    )
    before, after = _frames(comfy, result, "before_save"), _frames(comfy, result, "after_save")
    assert len(before) == len(after) >= FRAMES, "the sample is a clip"
    assert np.abs(after - before).mean() > 0.5, "the Wan 2.2 LoRA did not change the sampled clip"
    with safe_open(str(comfy.models_dir / "loras" / "wan22.safetensors"), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert metadata["modelspec.architecture"] == "wan-2.2-ti2v-5b/lora"
    assert keys and all(k.startswith("lora_unet_blocks_") for k in keys), keys[:5]  # musubi-tuner's layout

    loaded = comfy.run_workflow(_video_latents(lora_loader_sample("wan22.safetensors", loaders=loaders)))
    log = comfy.log_text()[log_start:]
    assert "WAN22_T2V LoRA written in kohya_ldm key naming" in log
    assert "lora key not loaded" not in log, log[-3000:]
    assert np.abs(_frames(comfy, loaded, "loader_save") - after).max() <= 2.0


def _host(family: str, models):
    model, clip, vae = write_tiny_any(family, models).load(models)
    return ComfyHost(model, clip, vae)


def test_each_clip_is_one_latent_video_with_1_plus_frames_over_4_latent_frames(
    comfy_lib, family_models, clip_dataset_dir
):
    host = _host("wan21_t2v", family_models)
    with torch.inference_mode():
        examples = host.encode_examples(load_dataset(clip_dataset_dir), TrainConfig(resolution=64))
    assert [tuple(e.latents.shape) for e in examples] == [(16, 3, 8, 8)] * 2  # 9 frames -> 1 + 8/4 latent frames
    assert not torch.equal(examples[0].latents[:, 0], examples[0].latents[:, 2]), "the frames differ over time"


@pytest.mark.parametrize("family, frames, message", [
    ("wan21_t2v", 6, r"clip00_circle.gif: 6 frames, but WAN21_T2V's VAE takes 4k\+1 frames .* frames setting"),
    ("sd3", 0, r"clip00_circle.gif: a video clip, but SD3 trains on images"),
])  # fmt: skip
def test_clips_the_vae_cannot_take_are_refused_by_file_before_work(
    comfy_lib, family_models, clip_dataset_dir, tmp_path, family, frames, message
):
    host = _host(family, family_models)
    cfg = TrainConfig.from_dict({"rank": 4, "steps": 1, "resolution": 64, "output_name": "refused"})
    with pytest.raises(TrainingError, match=message), torch.inference_mode():
        train_lora(cfg, load_dataset(clip_dataset_dir, frames=frames), host, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir()), "nothing may be written"


def _wan_start_image(vae, clip, dataset, frames: int, clip_vision=None) -> list:
    """ComfyUI's own WanImageToVideo conditioning for the first clip's first frame (at the 64 px bucket), with
    CLIPVisionEncode's features of it (crop center) when a CLIP vision model is given."""
    from comfy_extras.nodes_wan import WanImageToVideo

    from lora_train.dataset import fit_to_bucket, load_frames

    first = np.asarray(fit_to_bucket(load_frames(dataset.items[0])[0], (64, 64)), np.float32) / 255.0
    start = torch.from_numpy(first)[None]
    positive = clip.encode_from_tokens_scheduled(clip.tokenize(dataset.items[0].caption))
    with torch.inference_mode():
        features = clip_vision.encode_image(start, crop=True) if clip_vision is not None else None
        output = WanImageToVideo.execute(
            positive, positive, vae, 64, 64, frames, 1, start_image=start, clip_vision_output=features
        )
    return output.args[0]


# tiny family -> (the architecture its file names, the conditions its training forwards must see)
I2V = {
    "wan22_i2v": ("wan-2.2-i2v-a14b/lora", ("c_concat",)),
    "wan21_i2v": ("wan-2.1-i2v/lora", ("c_concat", "clip_fea")),
}


@pytest.mark.parametrize("family", sorted(I2V))
def test_wan_i2v_trains_with_each_clips_first_frame_given_as_comfyuis_start_image(
    comfy_lib, family_models, clip_dataset_dir, tmp_path, caplog, family
):
    import comfy.sample
    from safetensors.torch import load_file

    from lora_train.dev.tiny_families import load_tiny_clip_vision
    from lora_train.host.comfy_adapter import apply_lora

    architecture, conds = I2V[family]
    model, clip, vae = write_tiny_any(family, family_models).load(family_models)
    clip_vision = load_tiny_clip_vision(tmp_path) if "clip_fea" in conds else None
    host, dataset = ComfyHost(model, clip, vae, clip_vision=clip_vision), load_dataset(clip_dataset_dir)
    cfg = TrainConfig.from_dict({"rank": 4, "steps": 2, "resolution": 64, "output_name": "i2v", "learning_rate": 5e-3})
    with torch.inference_mode():
        examples = host.encode_examples(dataset, cfg)
    comfys = _wan_start_image(vae, clip, dataset, 9, clip_vision)
    expected = host.model_conds(
        {**host.encode_text(dataset.items[0].caption), **comfys[0][1]}, examples[0].latents[None]
    )
    for name in conds:
        torch.testing.assert_close(examples[0].cond[name].cond, expected[name].cond)
        assert name in examples[0].empty_cond, "caption dropout keeps the start image"

    seen = []  # the model's input: noise, then the 4-channel mask (given on the first latent frame), then the image
    hook = model.model.diffusion_model.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append((args[0].detach(), kwargs.get("clip_fea"))), with_kwargs=True
    )
    try:
        with torch.inference_mode(), caplog.at_level("INFO"):
            result = train_lora(cfg, dataset, host, tmp_path / "out")
    finally:
        hook.remove()
    assert "takes a start image" in caplog.text
    assert seen and all(x.shape[1] == 36 for x, _ in seen)
    assert all(bool((x[:, 16:20, 0] == 1).all() and (x[:, 16:20, 1:] == 0).all()) for x, _ in seen)
    assert all((features is not None) == ("clip_fea" in conds) for _, features in seen)

    with safe_open(str(result.lora_path), "pt") as handle:
        assert handle.metadata()["modelspec.architecture"] == architecture
    with caplog.at_level("WARNING"):
        patched, _ = apply_lora(model, None, load_file(str(result.lora_path)), 1.0, 0.0)
    assert "lora key not loaded" not in caplog.text
    latent = torch.zeros([1, 16, 3, 8, 8])
    noise = comfy.sample.prepare_noise(latent, 7)
    samples = [
        comfy.sample.sample(m, noise, 2, 4.0, "euler", "normal", comfys, comfys, latent, disable_pbar=True, seed=7)
        for m in (model, patched)
    ]
    assert (samples[1] - samples[0]).abs().mean() > 1e-3, "the I2V LoRA did not change the sampled clip"


def test_wan21_i2v_without_the_clip_vision_model_is_refused_before_work(
    comfy_lib, family_models, clip_dataset_dir, tmp_path
):
    model, clip, vae = write_tiny_any("wan21_i2v", family_models).load(family_models)
    cfg = TrainConfig.from_dict({"rank": 4, "steps": 1, "resolution": 64, "output_name": "refused"})
    with pytest.raises(TrainingError, match=r"WAN21_I2V also reads CLIP vision features .* clip_vision input"):
        with torch.inference_mode():
            train_lora(cfg, load_dataset(clip_dataset_dir), ComfyHost(model, clip, vae), tmp_path / "out")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir()), "nothing may be written"
