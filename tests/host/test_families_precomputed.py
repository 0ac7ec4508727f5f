"""Families whose text encoder ComfyUI always builds full size and whose text width is fixed (Qwen-Image: Qwen2.5-VL
7B, 3584 wide): no tiny CLIP can feed them, so they train in-process on precomputed conditioning (the
`PrecomputedText` stand-in, what encode-once caches anyway). Same checks as the graph tests: the file is in the
family's ecosystem naming, ComfyUI's LoRA loader (LoraLoader's call) loads every key, and sampling changes."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lora_train.dataset.loading import load_dataset
from lora_train.dev.tiny_families import QWEN_TEXT_WIDTH, load_with_precomputed_text, write_tiny_any
from lora_train.host.comfy_adapter import ComfyHost, apply_lora
from lora_train.training import train_lora
from lora_train.training.config import TrainConfig
from tests.host.inprocess import assert_diffusers_adds_the_same_updates, sample_tiny, train_logged

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def qwen_trained(comfy_lib, family_models, style_dataset_dir, tmp_path_factory):
    """The tiny Qwen-Image (MODEL, text stand-in, VAE), its training result and the log of the run."""
    tiny = write_tiny_any("qwen_image", family_models)
    model, text, vae = load_with_precomputed_text(tiny, family_models, QWEN_TEXT_WIDTH)
    result, log = train_logged(model, text, vae, style_dataset_dir, tmp_path_factory.mktemp("q"), "qwen")
    return model, text, vae, result, log


def test_qwen_image_trains_on_precomputed_text_and_its_diffusers_file_loads_in_comfyui(qwen_trained, caplog):
    model, text, _, result, log = qwen_trained
    assert type(model.model.model_config).__name__ == "QwenImage"
    assert "QwenImage LoRA written in diffusers_same key naming" in log
    with safe_open(str(result.lora_path), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert metadata["modelspec.architecture"] == "qwen-image/lora"
    assert keys and all(k.startswith("transformer.transformer_blocks.0.") for k in keys), keys[:5]
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys), keys[:5]

    with caplog.at_level(logging.WARNING):
        patched, _ = apply_lora(model, None, load_file(str(result.lora_path)), 1.0, 0.0)
    assert "lora key not loaded" not in caplog.text, caplog.text[-2000:]
    assert len(patched.patches) == len(keys) // 2, "every module of the file patches a weight"
    before, after = sample_tiny(model, text), sample_tiny(patched, text)
    assert (after - before).abs().mean() > 1e-3, "the Qwen-Image LoRA did not change sampling"


def test_qwen_image_file_loads_in_diffusers_with_every_key_and_the_same_weight_updates(qwen_trained):
    from diffusers import QwenImagePipeline, QwenImageTransformer2DModel

    result = qwen_trained[3]
    with torch.device("meta"):
        transformer = QwenImageTransformer2DModel(num_layers=1)
    assert_diffusers_adds_the_same_updates(transformer, QwenImagePipeline, result.lora_path)


@pytest.fixture
def edit_pairs(style_dataset_dir, tmp_path):
    """The style images, each with a `_control.png` source image (its colours inverted) and its caption."""
    import shutil

    from PIL import Image, ImageOps

    folder = tmp_path / "pairs"
    folder.mkdir()
    for image in sorted(style_dataset_dir.glob("*.png"))[:4]:
        shutil.copyfile(image, folder / image.name)
        shutil.copyfile(image.with_suffix(".txt"), folder / f"{image.stem}.txt")
        with Image.open(image) as opened:
            ImageOps.invert(opened.convert("RGB")).save(folder / f"{image.stem}_control.png")
    return folder


def test_qwen_image_edit_trains_on_pairs_with_the_source_as_reference_latents(qwen_trained, edit_pairs, tmp_path):
    model, text, vae, _, _ = qwen_trained
    dataset = load_dataset(edit_pairs)
    assert len(dataset.items) == 4 and all(item.control_path is not None for item in dataset.items)
    host = ComfyHost(model, text, vae)
    cfg = TrainConfig.from_dict({"rank": 4, "steps": 2, "resolution": 64, "output_name": "edit"})
    with torch.inference_mode():
        examples = host.encode_examples(dataset, cfg)
    (reference,) = examples[0].cond["ref_latents"].cond
    assert reference.shape == (1, 16, 1, 8, 8) and not torch.equal(reference[0], examples[0].latents)
    assert "ref_latents" in examples[0].empty_cond, "caption dropout keeps the source image"

    seen = []
    hook = model.model.diffusion_model.register_forward_pre_hook(
        lambda _m, _a, kwargs: seen.append(len(kwargs.get("ref_latents") or [])), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            result = train_lora(cfg, dataset, host, tmp_path)
    finally:
        hook.remove()
    assert result.steps == 2 and seen and set(seen) == {1}, "every training forward saw the source image"


def test_control_images_are_refused_where_they_cannot_train_before_work(
    qwen_trained, tiny_checkpoint, edit_pairs, style_dataset_dir, tmp_path
):
    from lora_train.training import TrainingError

    cfg = TrainConfig.from_dict({"rank": 4, "steps": 1, "resolution": 64, "output_name": "refused"})
    sd15 = ComfyHost(*tiny_checkpoint)
    with pytest.raises(TrainingError, match=r"_control.png: a control image, but SD15 takes no reference images"):
        train_lora(cfg, load_dataset(edit_pairs), sd15, tmp_path / "a")
    model, text, vae, _, _ = qwen_trained
    (edit_pairs / sorted(p.name for p in edit_pairs.glob("*_control.png"))[0]).unlink()
    with pytest.raises(TrainingError, match=r"no control image beside it \(1 image\(s\) lack one\)"):
        train_lora(cfg, load_dataset(edit_pairs), ComfyHost(model, text, vae), tmp_path / "b")
    unet = model.model.model_config.unet_config
    before = dict(unet)
    unet["default_ref_method"] = "index_timestep_zero"  # what ComfyUI detects for Qwen-Image-Edit 2511
    try:
        with pytest.raises(TrainingError, match=r"is an edit model .* needs its control/source image"):
            train_lora(cfg, load_dataset(style_dataset_dir), ComfyHost(model, text, vae), tmp_path / "c")
    finally:
        unet.clear()
        unet.update(before)
    assert not any((tmp_path / d).exists() and list((tmp_path / d).iterdir()) for d in "abc"), "nothing written"
