"""Fetch LoRA inside a real ComfyUI: downloads from a loopback server into models/loras, LoraLoader loads it."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save

from lora_train.dev.http_server import FaultServer, Route
from lora_train.dev.server import WorkflowError
from lora_train.fetch import FetchConfig

pytestmark = pytest.mark.host

RANK = 4


def tiny_sd15_lora(seed: int = 0) -> bytes:
    """A kohya-format LoRA for the tiny SD1.5 UNet's one transformer block (attention q/k/v/out, both attentions)."""
    rng = np.random.default_rng(seed)
    stem = "lora_unet_input_blocks_1_1_transformer_blocks_0_"
    shapes = {"attn1_to_q": (320, 320), "attn1_to_k": (320, 320), "attn1_to_v": (320, 320),
              "attn1_to_out_0": (320, 320), "attn2_to_q": (320, 320), "attn2_to_k": (320, 768),
              "attn2_to_v": (320, 768)}  # fmt: skip
    tensors = {}
    for name, (out_dim, in_dim) in shapes.items():
        tensors[f"{stem}{name}.lora_down.weight"] = (rng.standard_normal((RANK, in_dim)) * 0.2).astype(np.float16)
        tensors[f"{stem}{name}.lora_up.weight"] = (rng.standard_normal((out_dim, RANK)) * 0.2).astype(np.float16)
        tensors[f"{stem}{name}.alpha"] = np.array(RANK, dtype=np.float16)
    return save(tensors, metadata={"ss_network_dim": str(RANK)})


def fetch_inputs(**values) -> dict:
    """Every widget of the node at its default (API-format workflows must name them all), then `values`."""
    return {**{name: spec[1]["default"] for name, spec in FetchConfig.comfy_inputs().items()}, **values}


def workflow(url: str, sha256: str) -> dict:
    sampler = {"seed": 3, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
        "2": {"class_type": "LoraTrain_FetchLoRA",
              "inputs": fetch_inputs(urls=url, sha256=sha256, allow_private_addresses=True, subfolder="fetched",
                                     model=["1", 0], clip=["1", 1], strength_model=1.0, strength_clip=1.0)},
        "3": {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": ["2", 0],
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red square", "clip": ["1", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        # the same sampling three times: base model, LoraLoader's model, Fetch LoRA's own MODEL output
        **{sid: {"class_type": "KSampler", "inputs": {"model": model, "positive": ["4", 0], "negative": ["4", 0],
                                                      "latent_image": ["5", 0], **sampler}}
           for sid, model in (("10", ["1", 0]), ("11", ["3", 0]), ("12", ["2", 1]))},
        **{f"2{i}": {"class_type": "VAEDecode", "inputs": {"samples": [f"1{i}", 0], "vae": ["1", 2]}}
           for i in range(3)},
        **{f"3{i}": {"class_type": "SaveImage", "inputs": {"images": [f"2{i}", 0], "filename_prefix": f"fetch{i}"}}
           for i in range(3)},
    }  # fmt: skip


def pixels(comfy, result, node: str) -> np.ndarray:
    image = result.outputs[node]["images"][0]
    return np.asarray(Image.open(io.BytesIO(comfy.view(image))).convert("RGB"), dtype=np.float32)


def test_fetch_node_downloads_and_loraloader_uses_it(comfy):
    lora = tiny_sd15_lora()
    loras = comfy.models_dir / "loras"
    before = {p for p in loras.rglob("*") if p.is_file()}  # the shared server holds other tests' files
    with FaultServer() as server:
        url = server.add("/styles/tiny_style_v1.safetensors", Route(body=lora, drop_after=len(lora) // 2))
        log_before = len(comfy.log_text())
        result = comfy.run_workflow(workflow(url, hashlib.sha256(lora).hexdigest()))
    saved = comfy.models_dir / "loras" / "fetched" / "tiny_style_v1.safetensors"
    assert saved.read_bytes() == lora
    assert [p.name for p in loras.rglob("*") if p.is_file() and p not in before] == [saved.name], "partial left"
    assert result.outputs["2"]["lora_name"] == ["fetched/tiny_style_v1.safetensors"]
    new_log = comfy.log_text()[log_before:]
    assert "lora key not loaded" not in new_log, new_log[-3000:]
    base, via_loader, via_fetch = (pixels(comfy, result, f"3{i}") for i in range(3))
    assert np.abs(base - via_loader).mean() > 1.0, "the LoRA changed nothing: keys did not match the model"
    assert np.array_equal(via_loader, via_fetch), "Fetch LoRA's MODEL output must equal LoraLoader's"
    events = result.events_of("lora_train.fetch_progress")
    assert events and events[-1]["status"] == "done" and events[-1]["node"] == "2"
    assert any(e["status"] == "retrying" for e in events), "the dropped connection was retried (and resumed)"
    bar = [e for e in result.events_of("progress") if e.get("node") == "2"]
    assert bar and bar[-1]["value"] == bar[-1]["max"] == len(lora)


def test_fetch_node_refuses_loopback_unless_allowed_and_says_why(comfy):
    with FaultServer() as server:
        url = server.add("/x.safetensors", Route(body=tiny_sd15_lora()))
        flow = {"1": {"class_type": "LoraTrain_FetchLoRA", "inputs": fetch_inputs(urls=url)}}
        with pytest.raises(WorkflowError, match="loopback address; set allow_private_addresses"):
            comfy.run_workflow(flow)
        assert server.requests == []


def test_cancel_stops_the_download_and_keeps_the_partial_for_later(comfy):
    lora = tiny_sd15_lora(seed=5)
    with FaultServer() as server:
        url = server.add("/slow_v1.safetensors", Route(body=lora, trickle=(2048, 0.05)))
        inputs = fetch_inputs(urls=url, allow_private_addresses=True)
        flow = {"1": {"class_type": "LoraTrain_FetchLoRA", "inputs": inputs}}

        def cancel_once_downloading(event: dict) -> None:
            data = event.get("data") or {}
            if event.get("type") == "lora_train.fetch_progress" and data.get("status") == "downloading":
                if not getattr(cancel_once_downloading, "sent", False):
                    cancel_once_downloading.sent = True
                    comfy.interrupt()

        result = comfy.run_workflow(flow, on_event=cancel_once_downloading)
        assert result.events_of("execution_interrupted"), "the run was not interrupted"
        assert not (comfy.models_dir / "loras" / "slow_v1.safetensors").exists()
        partials = list((comfy.base_dir / "user" / "__lora_train" / "fetch_cache" / "partial").glob("*.part"))
        assert partials and 0 < partials[0].stat().st_size < len(lora)
