"""Files from every network family load in a real ComfyUI with zero unloaded keys, change the image, and
ComfyUI's own merge math gives exactly the weights our hooks trained against."""

import io
import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lora_train.dev import host_builder
from lora_train.dev.tiny_models import TINY_SD15_NAME
from lora_train.training.lora_io import build_metadata, save_lora
from lora_train.training.networks.adapter_set import NETWORKS, AdapterSet, AdapterSpec, find_targets, kohya_unet_prefix

pytestmark = pytest.mark.host

NOT_LOADED = "lora key not loaded"
STRENGTH = 0.8
RESBLOCK_LAYERS = ("in_layers.2", "out_layers.3", "skip_connection", "emb_layers.1")


def unet_from_checkpoint(path) -> nn.Module:
    """Stand-in layers named and shaped like the checkpoint's UNet weights (and holding them, for DoRA's norms)."""
    root = nn.Module()
    with safe_open(str(path), "pt") as handle:
        for key in handle.keys():
            if not (key.startswith("model.diffusion_model.") and key.endswith(".weight")):
                continue
            weight = handle.get_tensor(key).float()
            if weight.ndim == 2:
                layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")  # no init work
            elif weight.ndim == 4:
                layer = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), bias=False, device="meta")
            else:
                continue
            layer.weight = nn.Parameter(weight, requires_grad=False)
            parent = root
            *parents, leaf = key.removeprefix("model.").removesuffix(".weight").split(".")
            for name in parents:
                if not hasattr(parent, name):
                    parent.add_module(name, nn.Module())
                parent = getattr(parent, name)
            parent.add_module(leaf, layer)
    return root


def kohya_targets(path: str, module: nn.Module) -> bool:
    """Attention linears, proj_in/out (kohya's Transformer2DModel set) and ResBlock layers (LoCon's extra)."""
    return (".transformer_blocks." in path or path.endswith(("proj_in", "proj_out"))
            or path.endswith(RESBLOCK_LAYERS))  # fmt: skip


def randomized_adapters(unet: nn.Module, network: str, seed: int) -> AdapterSet:
    """Adapters with every parameter random, scaled so each layer's weight moves by about 20%."""
    targets = find_targets(unet, kohya_targets)
    adapters = AdapterSet.create(targets, AdapterSpec(4, 4.0, network=network), key_prefix_for=kohya_unet_prefix)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for path in adapters.module_paths:
            adapter, weight = adapters.adapter(path), unet.get_submodule(path).weight
            for name, param in adapter.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(param * (1 + 0.2 * noise) if name == "dora_scale" else noise)
            ratio = float(adapter.delta_weight(weight).norm() / weight.norm())
            adapter.alpha.mul_(0.2 / ratio)
            adapter.refresh_scale()
    return adapters


def sample_workflow(lora_name: str | None) -> dict:
    model, clip = ["1", 0], ["1", 1]
    workflow = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_SD15_NAME}}}
    if lora_name:
        inputs = {"model": model, "clip": clip, "lora_name": lora_name, "strength_model": 1.0, "strength_clip": 1.0}
        workflow["8"] = {"class_type": "LoraLoader", "inputs": inputs}
        model, clip = ["8", 0], ["8", 1]
    workflow |= {
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red square", "clip": clip}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler",
              "inputs": {"model": model, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
                         "seed": 5, "steps": 4, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": lora_name or "base"}},
    }  # fmt: skip
    return workflow


def sample(comfy, lora_name: str | None) -> tuple[np.ndarray, str]:
    """The sampled image and the server log written while sampling it."""
    log_start = len(comfy.log_text())
    result = comfy.run_workflow(sample_workflow(lora_name))
    image = Image.open(io.BytesIO(comfy.view(result.outputs["7"]["images"][0]))).convert("RGB")
    return np.asarray(image, dtype=np.float32), comfy.log_text()[log_start:]


@pytest.fixture(scope="module")
def tiny_unet(tiny_models_dir) -> nn.Module:
    return unet_from_checkpoint(tiny_models_dir / "checkpoints" / TINY_SD15_NAME)


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_lora_file_loads_in_comfyui_and_changes_the_image(comfy, tiny_unet, network):
    adapters = randomized_adapters(tiny_unet, network, seed=11)
    name = f"adapters_{network}.safetensors"
    metadata = build_metadata({"resolution": 64}, base_model_name=TINY_SD15_NAME, network=network, rank=4,
                              alpha=4.0, steps=1, epochs=1, title=f"{network} test")  # fmt: skip
    save_lora(comfy.models_dir / "loras" / name, adapters.state_dict_kohya(), metadata)
    if network == "lora":
        assert not any(".in_layers." in path for path in adapters.module_paths)
    else:
        assert any(path.endswith("in_layers.2") for path in adapters.module_paths)

    base, _ = sample(comfy, None)
    with_lora, log = sample(comfy, name)
    not_loaded = [line for line in log.splitlines() if NOT_LOADED in line]
    assert not not_loaded, f"{len(not_loaded)} keys not loaded, e.g. {not_loaded[:3]}"
    assert np.isfinite(with_lora).all()
    assert np.abs(with_lora - base).mean() > 1.0, "the LoRA did not change the image"


COMFY_MERGE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from lora_train.host.bootstrap import import_comfy
import_comfy(sys.argv[2])
import comfy.lora
from safetensors.torch import load_file
report = {}
for case in json.load(open(sys.argv[3])):
    lora, expected = load_file(case["lora"]), load_file(case["expected"])
    key_map = {prefix: f"{path}.weight" for path, prefix in case["paths"].items()}
    patches = comfy.lora.load_lora(lora, key_map)
    worst = 0.0
    for prefix, key in key_map.items():
        base, merged = expected[prefix + ".base"], expected[prefix + ".merged"]
        out = comfy.lora.calculate_weight([(case["strength"], patches[key], 1.0, None, None)], base.clone(), key)
        worst = max(worst, float((out - merged).abs().max() / (merged - base).abs().max()))
    report[case["network"]] = {"patched": len(patches), "layers": len(key_map), "worst": worst}
print(json.dumps(report))
"""


def test_comfyui_merge_equals_the_weights_our_hooks_train(host, tiny_unet, tmp_path):
    """ComfyUI's calculate_weight (LoraLoader's math) on our file == W + delta_weight, at strength 0.8."""
    cases = []
    for network in sorted(NETWORKS):
        adapters = randomized_adapters(tiny_unet, network, seed=12)
        adapters.multiplier = STRENGTH
        lora_path, expected_path = tmp_path / f"{network}.safetensors", tmp_path / f"{network}_expected.safetensors"
        save_lora(lora_path, adapters.state_dict_kohya(), {})
        expected = {}
        for path in adapters.module_paths:
            prefix, base = adapters.prefixes[path], tiny_unet.get_submodule(path).weight.detach()
            expected[prefix + ".base"] = base.clone()
            expected[prefix + ".merged"] = base + adapters.delta_weight(path)
        save_file(expected, str(expected_path))
        cases.append({"network": network, "lora": str(lora_path), "expected": str(expected_path),
                      "paths": adapters.prefixes, "strength": STRENGTH})  # fmt: skip
    cases_path = tmp_path / "cases.json"
    cases_path.write_text(json.dumps(cases))
    done = subprocess.run([str(host.python), "-c", COMFY_MERGE, str(host_builder.REPO_ROOT), str(host.comfyui),
                           str(cases_path)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert NOT_LOADED not in done.stderr + done.stdout
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for network, result in report.items():
        assert result["patched"] == result["layers"], (network, result)
        assert result["worst"] < 1e-4, (network, result)
