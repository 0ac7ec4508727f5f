"""API-format ComfyUI graphs used by the demo, the host tests and the benches (the example workflows' shapes)."""

from __future__ import annotations

CKPT = "tiny_sd15.safetensors"


def train_settings(**overrides) -> dict:
    """Train LoRA widgets for a quick run on the tiny model."""
    from lora_train.training import TrainConfig

    values = TrainConfig().to_widgets()
    values.update(
        {
            "rank": 4,
            "alpha": 4.0,
            "steps": 6,
            "batch_size": 2,
            "resolution": 64,
            "learning_rate": 1e-2,
            "log_every": 2,
            "output_name": "test_lora",
        }
    )
    values.update(overrides)
    return values


def sample_nodes(prefix: str, model: list, clip: list, vae: list, seed: int = 7, text: str = "redstyle, a circle"):
    """CLIPTextEncode x2 -> EmptyLatentImage -> KSampler -> VAEDecode -> SaveImage, ids prefixed with `prefix`."""
    return {
        f"{prefix}_pos": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}},
        f"{prefix}_neg": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
        f"{prefix}_lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        f"{prefix}_ks": {
            "class_type": "KSampler",
            "inputs": {
                "model": model,
                "positive": [f"{prefix}_pos", 0],
                "negative": [f"{prefix}_neg", 0],
                "latent_image": [f"{prefix}_lat", 0],
                "seed": seed,
                "steps": 4,
                "cfg": 3.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        f"{prefix}_dec": {"class_type": "VAEDecode", "inputs": {"samples": [f"{prefix}_ks", 0], "vae": vae}},
        f"{prefix}_save": {
            "class_type": "SaveImage",
            "inputs": {"images": [f"{prefix}_dec", 0], "filename_prefix": prefix},
        },
    }


# (graph nodes, MODEL ref, CLIP ref, VAE ref) of a model loader; the default is the tiny SD1.5 checkpoint.
Loaders = tuple[dict, list, list, list]


def checkpoint_loader(ckpt_name: str = CKPT) -> Loaders:
    nodes = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}}}
    return nodes, ["ckpt", 0], ["ckpt", 1], ["ckpt", 2]


def train_and_sample(dataset_dir: str, loaders: Loaders | None = None, **train_overrides) -> dict:
    """Loaders -> Load LoRA Dataset -> Train LoRA -> sample; plus the same sample from the base model."""
    from lora_train.dataset import DatasetConfig

    nodes, model, clip, vae = loaders or checkpoint_loader()
    dataset = DatasetConfig(path=dataset_dir, resolution=64).to_widgets()
    workflow = {
        **nodes,
        "data": {"class_type": "LoraTrain_LoadDataset", "inputs": dataset},
        "train": {
            "class_type": "LoraTrain_TrainLoRA",
            "inputs": {
                "model": model,
                "clip": clip,
                "vae": vae,
                "dataset": ["data", 0],
                **train_settings(**train_overrides),
            },
        },
    }
    workflow |= sample_nodes("after", ["train", 0], ["train", 1], vae)
    workflow |= sample_nodes("before", model, clip, vae)
    return workflow


def lora_loader_sample(lora_name: str, strength: float = 1.0, loaders: Loaders | None = None) -> dict:
    """Loaders -> LoraLoader(lora_name) -> the same sample as `train_and_sample`'s "after" branch."""
    nodes, model, clip, vae = loaders or checkpoint_loader()
    workflow = {
        **nodes,
        "lora": {
            "class_type": "LoraLoader",
            "inputs": {
                "model": model,
                "clip": clip,
                "lora_name": lora_name,
                "strength_model": strength,
                "strength_clip": strength,
            },
        },
    }
    return workflow | sample_nodes("loader", ["lora", 0], ["lora", 1], vae)


def smoke_workflow(seed: int = 1) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red square", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": seed,
                "steps": 4,
                "cfg": 4.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "smoke"}},
    }


def text_generate(clip: list, prompt: str, max_length: int = 10) -> dict:
    """ComfyUI's Generate Text node (0.33+), greedy (sampling_mode off)."""
    inputs = {"clip": clip, "prompt": prompt, "max_length": max_length, "sampling_mode": "off"}
    return {"class_type": "TextGenerate", "inputs": inputs}


def show_text(source: list) -> dict:
    """PreviewAny: an output node, so the text it receives lands in the history (`outputs[id]["text"]`)."""
    return {"class_type": "PreviewAny", "inputs": {"source": source}}


def train_llm_and_generate(clip_node: dict, text: str, prompt: str, **widgets) -> dict:
    """A CLIP node -> Train LLM LoRA -> Generate Text, beside Generate Text on the CLIP without the LoRA."""
    train = {"clip": ["clip", 0], "train_data": "", "text": text, **widgets}
    return {
        "clip": clip_node,
        "train": {"class_type": "LoraTrain_TrainLLMLoRA", "inputs": train},
        "gen_before": text_generate(["clip", 0], prompt),
        "gen_after": text_generate(["train", 0], prompt),
        "show_before": show_text(["gen_before", 0]),
        "show_after": show_text(["gen_after", 0]),
    }


def lora_loader_generate(clip_node: dict, lora_name: str, prompt: str, model: list | None = None) -> dict:
    """LoraLoader (strength_model 0, strength_clip 1) on a CLIP -> Generate Text. LoraLoader needs a MODEL input:
    the tiny checkpoint's by default."""
    graph = {"clip": clip_node}
    if model is None:
        graph["ckpt"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}
        model = ["ckpt", 0]
    loader = {"model": model, "clip": ["clip", 0], "lora_name": lora_name, "strength_model": 0.0, "strength_clip": 1.0}
    graph["lora"] = {"class_type": "LoraLoader", "inputs": loader}
    graph["gen_loader"] = text_generate(["lora", 1], prompt)
    graph["show_loader"] = show_text(["gen_loader", 0])
    return graph
