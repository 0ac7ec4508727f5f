"""One node, every family: SD2 768-v, SDXL, SD3 and Flux dev/schnell train through the same Train LoRA node on
tiny seeded models ComfyUI detects as those families; the files load in LoraLoader with every key and change
KSampler's output. (SD1.5 has its own, deeper tests.)"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from lora_train.dataset.loading import load_dataset
from lora_train.dev.tiny_models import write_tiny
from lora_train.dev.workflows import lora_loader_sample, train_and_sample
from lora_train.host.comfy_adapter import ComfyHost
from lora_train.training import TrainingError, train_lora
from lora_train.training.config import TrainConfig
from tests.cli import run_cli, write_config

pytestmark = pytest.mark.host

SLOW = pytest.mark.slow
FAMILIES = [
    pytest.param("sd2v", marks=SLOW),
    pytest.param("sdxl", marks=SLOW),
    "sd3",
    pytest.param("flux_dev", marks=SLOW),
    pytest.param("flux_schnell", marks=SLOW),
]
ARCHITECTURE = {
    "sd2v": "stable-diffusion-v2-768-v/lora",
    "sdxl": "stable-diffusion-xl-v1-base/lora",
    "sd3": "stable-diffusion-3/lora",
    "flux_dev": "flux-1-dev/lora",
    "flux_schnell": "flux-1-schnell/lora",
}


def _naming_ok(family: str, key: str) -> bool:
    """The key naming each family's ecosystem reads (see FamilySupport in lora_train/host/comfy_adapter.py)."""
    module = key.partition(".")[0]
    if family == "sd2v":  # kohya SD1/SD2: diffusers block names
        return module.startswith(("lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_"))
    if family == "sdxl":  # kohya SDXL: LDM block names
        return module.startswith(("lora_unet_input_blocks_", "lora_unet_output_blocks_", "lora_unet_middle_block_"))
    if family == "sd3":  # diffusers PEFT
        return key.startswith("transformer.transformer_blocks.") and key.endswith((".lora_A.weight", ".lora_B.weight"))
    return module.startswith(("lora_unet_double_blocks_", "lora_unet_single_blocks_"))  # kohya Flux (BFL names)


def _image(comfy, result, node) -> np.ndarray:
    images = result.outputs[node]["images"]
    return np.asarray(Image.open(io.BytesIO(comfy.view(images[0]))).convert("RGB"), dtype=np.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_in_the_node_and_its_file_loads_with_every_key(comfy, tiny_family, style_dataset_dir, family):
    tiny = tiny_family(family)
    name = f"family_{family}"
    loaders = tiny.loader_nodes(f"{family}_")
    result = comfy.run_workflow(
        train_and_sample(
            str(style_dataset_dir), loaders, output_name=name, steps=4, batch_size=1, rank=4, sample_every=4,
            sample_steps=2,
        )
    )  # fmt: skip
    previews = result.events_of("lora_train.train_sample")
    assert [event["step"] for event in previews] == [4], "the preview sampled with the LoRA is missing"
    before, after = _image(comfy, result, "before_save"), _image(comfy, result, "after_save")
    assert np.abs(after - before).mean() > 0.5, f"the {family} LoRA did not change KSampler's output"

    lora_file = comfy.models_dir / "loras" / f"{name}.safetensors"
    with safe_open(str(lora_file), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert keys and all(_naming_ok(family, k) for k in keys), [k for k in keys if not _naming_ok(family, k)][:5]
    assert metadata["modelspec.architecture"] == ARCHITECTURE[family]
    assert json.loads(metadata["lora_train.config"])["output_name"] == name

    log_start = len(comfy.log_text())
    loaded = comfy.run_workflow(lora_loader_sample(f"{name}.safetensors", loaders=loaders))
    new_log = comfy.log_text()[log_start:]
    assert "lora key not loaded" not in new_log, new_log[-3000:]
    difference = np.abs(_image(comfy, loaded, "loader_save") - after).max()
    assert difference <= 2.0, f"LoraLoader at strength 1 differs from Train LoRA's MODEL by {difference}"


def _train(tiny, models_dir, dataset_dir, tmp_path, **overrides):
    model, clip, vae = tiny.load(models_dir)
    cfg = TrainConfig.from_dict(
        {"rank": 4, "alpha": 4, "steps": 2, "batch_size": 1, "resolution": 64, "output_name": "t", "log_every": 1}
        | overrides
    )
    host = _WatchTextEncoder(model, clip, vae)
    with torch.inference_mode():  # as every ComfyUI node runs
        return train_lora(cfg, load_dataset(dataset_dir), host, tmp_path), host


class _WatchTextEncoder(ComfyHost):
    """Records, at every progress report, whether the text encoder is among ComfyUI's loaded models."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.text_encoder_loaded: list[bool] = []

    def report(self, progress):
        import comfy.model_management as mm

        loaded = [m.model for m in mm.current_loaded_models]
        self.text_encoder_loaded.append(any(m is not None and m.is_clone(self.clip.patcher) for m in loaded))
        super().report(progress)


@pytest.mark.parametrize(
    "family, precision",
    [
        ("sd3", "no"),
        ("sd3", "bf16"),
        pytest.param("flux_dev", "no", marks=SLOW),
        pytest.param("flux_dev", "bf16", marks=SLOW),
    ],
)
def test_flow_models_train_in_fp32_and_bf16_with_the_text_encoder_off_the_device(
    comfy_lib, family_models, style_dataset_dir, tmp_path, family, precision
):
    tiny = write_tiny(family, family_models)
    # bf16 also recomputes activations: Flux's blocks add into their inputs in place, which checkpointing must survive.
    result, host = _train(
        tiny,
        family_models,
        style_dataset_dir,
        tmp_path,
        mixed_precision=precision,
        gradient_checkpointing=precision != "no",
    )
    assert all(np.isfinite(loss) for _, loss in result.loss_history) and result.steps == 2
    assert host.text_encoder_loaded == [False, False], "the text encoder stayed loaded during training"
    assert any(t.abs().sum() > 0 for k, t in result.lora_tensors.items() if "lora_B" in k or "lora_up" in k)


@pytest.mark.parametrize("setting", ["train_text_encoder", "shuffle_captions"])
def test_t5_families_refuse_per_step_text_encoding_before_work(
    comfy_lib, family_models, style_dataset_dir, tmp_path, setting
):
    tiny = write_tiny("sd3", family_models)
    with pytest.raises(TrainingError, match=f"{setting} is not available for SD3"):
        _train(tiny, family_models, style_dataset_dir, tmp_path, **{setting: True})
    assert not list(tmp_path.iterdir()), "nothing may be written"


@SLOW
def test_sdxl_text_encoder_training_is_opt_in_and_names_te1_clip_l_te2_clip_g(
    comfy_lib, family_models, style_dataset_dir, tmp_path
):
    import comfy.lora

    tiny = write_tiny("sdxl", family_models)
    result, _ = _train(tiny, family_models, style_dataset_dir, tmp_path, train_text_encoder=True, steps=1)
    te1 = {k.split(".")[0] for k in result.lora_tensors if k.startswith("lora_te1_")}
    te2 = {k.split(".")[0] for k in result.lora_tensors if k.startswith("lora_te2_")}
    assert te1 and te2 and not any(k.startswith("lora_te_") for k in result.lora_tensors)
    _, clip, _ = tiny.load(family_models)
    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    assert te1 | te2 <= set(key_map), sorted((te1 | te2) - set(key_map))[:5]
    assert all(key_map[k].startswith("clip_l.") for k in te1) and all(key_map[k].startswith("clip_g.") for k in te2)
    off, _ = _train(tiny, family_models, style_dataset_dir, tmp_path / "off", steps=1)
    assert not any(k.startswith("lora_te") for k in off.lora_tensors), "text encoders train only when asked"


def test_a_model_without_a_noise_schedule_is_refused_naming_what_comfyui_detected(tiny_checkpoint):
    model, clip, vae = tiny_checkpoint
    # A shallow copy of the real loaded model, of a family with no entry and no model_sampling (inference-only).
    base = type(model.model).__new__(type(model.model))
    base.__dict__.update(model.model.__dict__)
    base._modules = dict(model.model._modules)
    base.model_sampling = None
    config = model.model.model_config
    base.model_config = type("DepthAnything3", (type(config),), {})(config.unet_config)
    unsupported = model.clone()
    unsupported.model = base
    with pytest.raises(TrainingError, match=r"detected this model as DepthAnything3, which has no noise schedule"):
        ComfyHost(unsupported, clip, vae)
    assert model.model.model_sampling is not None, "the shared model was changed"


@pytest.mark.parametrize("family, needs", [
    ("WAN21_FunControl2V", "its control video"), ("WAN22_Camera", "its camera-motion conditioning"),
])  # fmt: skip
def test_a_model_needing_conditioning_the_trainer_does_not_build_is_refused_by_name(tiny_checkpoint, family, needs):
    model, clip, vae = tiny_checkpoint
    base = type(model.model).__new__(type(model.model))
    base.__dict__.update(model.model.__dict__)
    config = model.model.model_config
    base.model_config = type(family, (type(config),), {})(config.unet_config)
    unsupported = model.clone()
    unsupported.model = base
    with pytest.raises(TrainingError, match=rf"detected this model as {family}: training it needs {needs}"):
        ComfyHost(unsupported, clip, vae)


def test_fp8_base_weights_as_comfyui_loads_them_train_with_bf16_autocast(
    comfy_lib, family_models, style_dataset_dir, tmp_path
):
    import comfy.sd

    tiny = write_tiny("sd3", family_models)
    _, clip, vae = tiny.load(family_models)
    path = family_models / "diffusion_models" / tiny.files["diffusion_models"]
    with torch.inference_mode():  # UNETLoader with weight_dtype fp8_e4m3fn
        model = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.float8_e4m3fn})
    stored = {p.dtype for p in model.model.diffusion_model.joint_blocks.parameters()}
    assert stored == {torch.float8_e4m3fn}
    cfg = TrainConfig.from_dict(
        {"rank": 4, "steps": 2, "batch_size": 1, "resolution": 64, "output_name": "fp8", "mixed_precision": "bf16"}
    )
    with torch.inference_mode():
        result = train_lora(cfg, load_dataset(style_dataset_dir), ComfyHost(model, clip, vae), tmp_path)
    assert all(np.isfinite(loss) for _, loss in result.loss_history)
    assert {p.dtype for p in model.model.diffusion_model.joint_blocks.parameters()} == {torch.float8_e4m3fn}
    assert any(t.abs().sum() > 0 for k, t in result.lora_tensors.items() if "lora_B" in k)


def test_cli_trains_a_diffusion_model_only_release_from_its_split_files(
    host, family_models, style_dataset_dir, tmp_path
):
    tiny = write_tiny("sd3", family_models)
    config = write_config(
        tmp_path / "sd3.yaml",
        train_data_dir=style_dataset_dir,
        base_model=family_models / "diffusion_models" / tiny.files["diffusion_models"],
        text_encoders=family_models / "text_encoders" / tiny.files["text_encoders"],
        clip_type="sd3",
        vae=family_models / "vae" / tiny.files["vae"],
        weight_dtype="fp8_e4m3fn",
        mixed_precision="bf16",
        output_dir=tmp_path / "out",
        rank=4,
        steps=2,
        resolution=64,
        output_name="cli_sd3",
    )
    done = run_cli(host, "train", "--config", config, "--comfyui", str(host.comfyui), "--cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    with safe_open(str(tmp_path / "out" / "cli_sd3.safetensors"), "pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert metadata["modelspec.architecture"] == "stable-diffusion-3/lora"
    assert metadata["ss_sd_model_name"] == tiny.files["diffusion_models"]
    assert all(_naming_ok("sd3", k) for k in keys)

    missing_vae = write_config(tmp_path / "bad.yaml", **{**_read(config), "vae": '""'})
    refused = run_cli(host, "train", "--config", missing_vae, "--comfyui", str(host.comfyui), "--cpu")
    assert refused.returncode == 2 and "needs its vae" in refused.stderr


def _read(path) -> dict:
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


@SLOW
def test_sdxl_size_conditioning_carries_each_images_original_size_and_crop(comfy_lib, family_models, tmp_path):
    """SDXL's micro-conditioning as kohya computes it: original size, crop corner in resized pixels, bucket size."""
    folder = tmp_path / "sizes"
    folder.mkdir()
    for name, size in (("wide_small", (96, 64)), ("wide_large", (300, 200))):
        Image.new("RGB", size, (200, 30, 30)).save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text("zkw, red", encoding="utf-8")
    model, clip, vae = write_tiny("sdxl", family_models).load(family_models)
    host = ComfyHost(model, clip, vae)
    with torch.inference_mode():
        examples = host.encode_examples(load_dataset(folder), TrainConfig(resolution=64))
    by_width = {example.size["width"]: example for example in examples}
    # Both land in the 64x64 bucket: scaled to 96x64 (x1 and x0.32), then 16 px cropped off the left.
    assert by_width[96].size == {"width": 96, "height": 64, "crop_w": 16, "crop_h": 0, "target_width": 64,
                                 "target_height": 64}  # fmt: skip
    assert by_width[300].size == {**by_width[96].size, "width": 300, "height": 200}
    small, large = by_width[96].cond["y"].cond, by_width[300].cond["y"].cond
    pooled = small[:, :1280]
    assert torch.equal(pooled, large[:, :1280]) and not torch.equal(small, large)
    expected = model.model.encode_adm(pooled_output=pooled, **by_width[300].size)
    torch.testing.assert_close(large, expected.to(large))
