"""The example workflows' graphs (API format), their placeholders, and the tiny-model profile the tests run them with.

`example_workflows/api/*.json` are written from the builders here (`python -m tests.browser.build_examples`) and
the UI-format files next to them are converted from those by the real frontend. Users replace the placeholders;
the host test substitutes test values and shrinks sizes and steps for the tiny checkpoint (TINY_PROFILE).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXAMPLES_DIR = Path(__file__).resolve().parent.parent.parent / "example_workflows"
API_DIR = EXAMPLES_DIR / "api"

# What a user sets before queueing (each also named in a Note on the UI-format workflow).
CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
DATASET_DIR = "__DATASET_DIR__"
CLIP_MODEL = "__CLIP_MODEL__"
MANIFEST_URL = "__MANIFEST_URL__"
LORA_FILE = "my_style_lora.safetensors"  # what the training example saves and the publish example publishes
# The Flux example: the files of ComfyUI's own Flux dev template.
FLUX_MODEL, FLUX_CLIP_L, FLUX_T5, FLUX_VAE = (
    "flux1-dev.safetensors",
    "clip_l.safetensors",
    "t5xxl_fp16.safetensors",
    "ae.safetensors",
)
# The Qwen-Image and Wan 2.2 examples: the files of ComfyUI's own templates for them.
QWEN_MODEL, QWEN_TEXT, QWEN_VAE = (
    "qwen_image_fp8_e4m3fn.safetensors",
    "qwen_2.5_vl_7b_fp8_scaled.safetensors",
    "qwen_image_vae.safetensors",
)
WAN22_MODEL, WAN_TEXT, WAN22_VAE = (
    "wan2.2_ti2v_5B_fp16.safetensors",
    "umt5_xxl_fp8_e4m3fn_scaled.safetensors",
    "wan2.2_vae.safetensors",
)
PLACEHOLDERS = (
    QWEN_MODEL,
    QWEN_TEXT,
    QWEN_VAE,
    WAN22_MODEL,
    WAN_TEXT,
    WAN22_VAE,
    CHECKPOINT,
    DATASET_DIR,
    CLIP_MODEL,
    MANIFEST_URL,
    LORA_FILE,
    FLUX_MODEL,
    FLUX_CLIP_L,
    FLUX_T5,
    FLUX_VAE,
)

# Sizes and step counts for the tiny test checkpoint (64 px, a few steps), by node type and input name.
TINY_PROFILE: dict[str, dict[str, Any]] = {
    "LoraTrain_LoadDataset": {"resolution": 64},
    "LoraTrain_TrainLoRA": {
        "steps": 12,
        "resolution": 64,
        "batch_size": 2,
        "rank": 4,
        "alpha": 4.0,
        "learning_rate": 0.01,
        "log_every": 2,
    },
    "EmptyLatentImage": {"width": 64, "height": 64},
    "EmptySD3LatentImage": {"width": 64, "height": 64},
    "Wan22ImageToVideoLatent": {"width": 64, "height": 64, "length": 5},
    "KSampler": {"steps": 4},
}

NOTES = {
    "train_lora_from_folder": (
        "Train a LoRA from a folder and sample with it at once.\n\n"
        f"1. Load Checkpoint: pick your SD1.5 checkpoint.\n2. Load LoRA Dataset: set path to your image folder "
        f"(replace {DATASET_DIR}); captions come from <image>.txt or metadata.csv (run the auto-label example "
        "first if you have none).\n3. Train LoRA: set output_name and, for a style, a trigger_word. The chart under "
        "the node shows the loss while it trains.\n\nThe two Save Image nodes show the same seed with and without "
        "the LoRA."
    ),
    "train_flux_lora": (
        "Train a Flux dev LoRA and sample with it at once.\n\n"
        f"1. Load Diffusion Model: {FLUX_MODEL} (weight_dtype fp8_e4m3fn halves its memory; the LoRA still trains "
        f"in bf16/fp32). DualCLIPLoader: {FLUX_CLIP_L} + {FLUX_T5}, type flux. Load VAE: {FLUX_VAE}.\n"
        f"2. Load LoRA Dataset: set path (replace {DATASET_DIR}).\n3. Train LoRA: captions are encoded once and "
        "T5-XXL leaves the GPU before training; resolution 1024 with gradient checkpointing and bf16. Set "
        "output_name and a trigger_word.\n\nSampling uses cfg 1 with FluxGuidance 3.5, as Flux dev expects."
    ),
    "train_qwen_image_lora": (
        "Train a Qwen-Image LoRA and sample with it at once.\n\n"
        f"1. Load Diffusion Model: {QWEN_MODEL}. Load CLIP: {QWEN_TEXT}, type qwen_image. Load VAE: {QWEN_VAE}.\n"
        f"2. Load LoRA Dataset: set path (replace {DATASET_DIR}).\n3. Train LoRA: captions are encoded once and "
        "Qwen2.5-VL leaves the GPU before training; 1024 px, bf16, gradient checkpointing (fits 24 GB with the fp8 "
        "model). The file is in diffusers' PEFT keys (transformer.transformer_blocks...), which ComfyUI, diffusers "
        "and ai-toolkit read.\n\nSampling follows ComfyUI's Qwen-Image template: AuraFlow shift 3.1, cfg 2.5."
    ),
    "train_wan22_lora": (
        "Train a Wan 2.2 5B (text/image-to-video) LoRA on video clips and sample a clip with it.\n\n"
        f"1. Load Diffusion Model: {WAN22_MODEL}. Load CLIP: {WAN_TEXT}, type wan. Load VAE: {WAN22_VAE}.\n"
        f"2. Load LoRA Dataset: a folder of clips (mp4/webm/gif, or <name>.frames folders) with <clip>.txt "
        f"captions (replace {DATASET_DIR}); frames 49 trains on 49 frames per clip (4k+1), fps 24.\n3. Train LoRA: "
        "UMT5 is encoded once and leaves the GPU; 480 px, bf16, gradient checkpointing (fits 16 GB). The file is "
        "musubi-tuner's layout (lora_unet_blocks_...), which ComfyUI and diffusers read.\n\nSampling follows "
        "ComfyUI's Wan 2.2 5B template: shift 8, uni_pc, cfg 5; the clips are saved as animated WEBP."
    ),
    "auto_label_folder": (
        "Caption a folder of images with CLIP (writes metadata.csv into the folder).\n\n"
        f"folder: your image folder (replace {DATASET_DIR}).\nclip_path: a Hugging Face CLIP model folder (full "
        f"path, or its name inside models/clip_vision; replace {CLIP_MODEL}). Or connect Load CLIP Vision + its "
        "matching text encoder instead.\nmode skip never touches existing captions."
    ),
    "fetch_lora_and_sample": (
        "Download a published LoRA by its release manifest and sample with it.\n\n"
        f"urls: the manifest.json link of a release (replace {MANIFEST_URL}); plain .safetensors links and "
        "several mirror links (one per line) work too. The file is verified (size, sha256, header) before it "
        "lands in models/loras. The trigger words from the manifest start the prompt."
    ),
    "publish_lora_release": (
        "Publish a LoRA from your loras folder as a versioned release: <name>_v<N>.safetensors, README.md "
        "model card and manifest.json under output/lora_releases/<name>/.\n\n"
        f"lora_name: the LoRA to publish ({LORA_FILE} is what the training example saves).\nAfter uploading the "
        "folder, put its URL in mirrors and publish again, or edit manifest.json."
    ),
}


def widget_defaults(settings_class) -> dict[str, Any]:
    """Every widget of a Settings-backed node at its default, optional ones too (API-format workflows name them all,
    as every frontend queues them)."""
    inputs = {**settings_class.comfy_inputs(), **settings_class.comfy_inputs(optional=True)}
    return {name: spec[1]["default"] for name, spec in inputs.items() if "default" in spec[1]}


def _sample(
    first_id: int, model: list, clip: list, vae: list, prefix: str, text: Any, title: str, *, flux: bool = False
) -> dict:
    """Prompt -> empty latent -> KSampler -> decode -> save, with numeric ids from `first_id`. `flux`: 1024 px,
    FluxGuidance 3.5 on the prompt and cfg 1 (ComfyUI's Flux dev template)."""
    pos, neg, latent, sampler, decode, save, guidance = (str(first_id + i) for i in range(7))
    nodes = {
        pos: {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}, "_meta": {"title": "Prompt"}},
        neg: {"class_type": "CLIPTextEncode", "inputs": {"text": "" if flux else "blurry, lowres", "clip": clip},
              "_meta": {"title": "Negative prompt"}},
        latent: {"class_type": "EmptySD3LatentImage" if flux else "EmptyLatentImage",
                 "inputs": {"width": 1024 if flux else 512, "height": 1024 if flux else 512, "batch_size": 1}},
        sampler: {"class_type": "KSampler",
                  "inputs": {"model": model, "positive": [guidance if flux else pos, 0], "negative": [neg, 0],
                             "latent_image": [latent, 0], "seed": 1234, "steps": 20, "cfg": 1.0 if flux else 7.0,
                             "sampler_name": "euler", "scheduler": "simple" if flux else "normal", "denoise": 1.0}},
        decode: {"class_type": "VAEDecode", "inputs": {"samples": [sampler, 0], "vae": vae}},
        save: {"class_type": "SaveImage", "inputs": {"images": [decode, 0], "filename_prefix": prefix},
               "_meta": {"title": title}},
    }  # fmt: skip
    if flux:
        nodes[guidance] = {"class_type": "FluxGuidance", "inputs": {"conditioning": [pos, 0], "guidance": 3.5}}
    return nodes


def _checkpoint() -> dict:
    return {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}}


def train_lora_from_folder() -> dict:
    """Folder -> Load LoRA Dataset -> Train LoRA -> sample with the LoRA, and the same sample without it."""
    from lora_train.dataset.loading import DatasetConfig
    from lora_train.training.config import TrainConfig

    train = widget_defaults(TrainConfig) | {"output_name": LORA_FILE.removesuffix(".safetensors")}
    prompt = "a lighthouse on a cliff at sunset"
    return {
        "1": _checkpoint(),
        "2": {"class_type": "LoraTrain_LoadDataset", "inputs": widget_defaults(DatasetConfig) | {"path": DATASET_DIR}},
        "3": {"class_type": "LoraTrain_TrainLoRA",
              "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["2", 0], **train,
                         "captions": ""}},
        **_sample(10, ["3", 0], ["3", 1], ["1", 2], "lora_train/with_lora", prompt, "With the new LoRA"),
        **_sample(20, ["1", 0], ["1", 1], ["1", 2], "lora_train/without_lora", prompt, "Base model (same seed)"),
    }  # fmt: skip


def train_flux_lora() -> dict:
    """Flux dev from its split files (fp8) -> Load LoRA Dataset -> Train LoRA -> Flux sampling with and without."""
    from lora_train.dataset.loading import DatasetConfig
    from lora_train.training.config import TrainConfig

    train = widget_defaults(TrainConfig) | {
        "output_name": "my_flux_lora", "resolution": 1024, "mixed_precision": "bf16", "gradient_checkpointing": True,
        "alpha": 16.0,
    }  # fmt: skip
    prompt = "a lighthouse on a cliff at sunset"
    dataset = widget_defaults(DatasetConfig) | {"path": DATASET_DIR, "resolution": 1024}
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": FLUX_MODEL, "weight_dtype": "fp8_e4m3fn"}},
        "2": {"class_type": "DualCLIPLoader",
              "inputs": {"clip_name1": FLUX_CLIP_L, "clip_name2": FLUX_T5, "type": "flux", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": FLUX_VAE}},
        "4": {"class_type": "LoraTrain_LoadDataset", "inputs": dataset},
        "5": {"class_type": "LoraTrain_TrainLoRA",
              "inputs": {"model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0], "dataset": ["4", 0], **train,
                         "captions": ""}},
        **_sample(10, ["5", 0], ["5", 1], ["3", 0], "lora_train/flux_with_lora", prompt, "With the new LoRA",
                  flux=True),
        **_sample(20, ["1", 0], ["2", 0], ["3", 0], "lora_train/flux_without_lora", prompt, "Base model (same seed)",
                  flux=True),
    }  # fmt: skip


def _sample_with(
    first_id: int, model: list, clip: list, vae: list, latent: dict, sampling: dict, save: dict, title: str
) -> dict:
    """Prompt -> shifted model -> KSampler on `latent` -> decode -> `save` (a 2026 family's template)."""
    pos, neg, lat, shift, sampler, decode, out = (str(first_id + i) for i in range(7))
    return {
        pos: {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse on a cliff at sunset", "clip": clip},
              "_meta": {"title": "Prompt"}},
        neg: {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}, "_meta": {"title": "Negative"}},
        lat: latent,
        shift: {"class_type": sampling["shift_node"], "inputs": {"model": model, "shift": sampling["shift"]}},
        sampler: {"class_type": "KSampler",
                  "inputs": {"model": [shift, 0], "positive": [pos, 0], "negative": [neg, 0], "latent_image": [lat, 0],
                             "seed": 1234, "steps": 20, "cfg": sampling["cfg"], "sampler_name": sampling["sampler"],
                             "scheduler": "simple", "denoise": 1.0}},
        decode: {"class_type": "VAEDecode", "inputs": {"samples": [sampler, 0], "vae": vae}},
        out: {**save, "inputs": {**save["inputs"], "images": [decode, 0]}, "_meta": {"title": title}},
    }  # fmt: skip


def _split_loaders(model: str, text: str, text_type: str, vae: str, dataset: dict, train: dict) -> dict:
    """Load Diffusion Model / Load CLIP / Load VAE -> Load LoRA Dataset -> Train LoRA (ids 1-5)."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": model, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": text, "type": text_type, "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "4": {"class_type": "LoraTrain_LoadDataset", "inputs": dataset},
        "5": {"class_type": "LoraTrain_TrainLoRA",
              "inputs": {"model": ["1", 0], "clip": ["2", 0], "vae": ["3", 0], "dataset": ["4", 0], **train,
                         "captions": ""}},
    }  # fmt: skip


def train_qwen_image_lora() -> dict:
    """Qwen-Image from its split files -> Load LoRA Dataset -> Train LoRA -> sampling with and without the LoRA."""
    from lora_train.dataset.loading import DatasetConfig
    from lora_train.training.config import TrainConfig

    train = widget_defaults(TrainConfig) | {
        "output_name": "my_qwen_image_lora",
        "resolution": 1024,
        "mixed_precision": "bf16",
        "gradient_checkpointing": True,
        "alpha": 16.0,
    }
    dataset = widget_defaults(DatasetConfig) | {"path": DATASET_DIR, "resolution": 1024}
    latent = {"class_type": "EmptySD3LatentImage", "inputs": {"width": 1328, "height": 1328, "batch_size": 1}}
    sampling = {"shift_node": "ModelSamplingAuraFlow", "shift": 3.1, "cfg": 2.5, "sampler": "euler"}
    save = {"class_type": "SaveImage", "inputs": {"filename_prefix": "lora_train/qwen"}}
    return {
        **_split_loaders(QWEN_MODEL, QWEN_TEXT, "qwen_image", QWEN_VAE, dataset, train),
        **_sample_with(10, ["5", 0], ["5", 1], ["3", 0], latent, sampling, save, "With the new LoRA"),
        **_sample_with(20, ["1", 0], ["2", 0], ["3", 0], latent, sampling, save, "Base model (same seed)"),
    }  # fmt: skip


def train_wan22_lora() -> dict:
    """Wan 2.2 5B from its split files -> Load LoRA Dataset (clips) -> Train LoRA -> a clip with and without it."""
    from lora_train.dataset.loading import DatasetConfig
    from lora_train.training.config import TrainConfig

    train = widget_defaults(TrainConfig) | {
        "output_name": "my_wan22_lora",
        "resolution": 480,
        "mixed_precision": "bf16",
        "gradient_checkpointing": True,
        "alpha": 16.0,
    }
    dataset = widget_defaults(DatasetConfig) | {"path": DATASET_DIR, "resolution": 480, "frames": 49, "fps": 24}
    latent = {
        "class_type": "Wan22ImageToVideoLatent",
        "inputs": {"vae": ["3", 0], "width": 832, "height": 480, "length": 49, "batch_size": 1},
    }
    sampling = {"shift_node": "ModelSamplingSD3", "shift": 8.0, "cfg": 5.0, "sampler": "uni_pc"}
    save = {
        "class_type": "SaveAnimatedWEBP",
        "inputs": {
            "filename_prefix": "lora_train/wan22",
            "fps": 24.0,
            "lossless": False,
            "quality": 90,
            "method": "default",
        },
    }
    return {
        **_split_loaders(WAN22_MODEL, WAN_TEXT, "wan", WAN22_VAE, dataset, train),
        **_sample_with(10, ["5", 0], ["5", 1], ["3", 0], latent, sampling, save, "With the new LoRA"),
        **_sample_with(20, ["1", 0], ["2", 0], ["3", 0], latent, sampling, save, "Base model (same seed)"),
    }  # fmt: skip


def auto_label_folder() -> dict:
    """Auto-label (CLIP) over a folder, its summary shown as text."""
    from lora_train.dataset.autolabel import CaptionConfig

    label = {"folder": DATASET_DIR, **widget_defaults(CaptionConfig), "clip_path": CLIP_MODEL}
    return {
        "1": {"class_type": "LoraTrain_AutoLabel", "inputs": label},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 1]}, "_meta": {"title": "Captions written"}},
    }


def fetch_lora_and_sample() -> dict:
    """Fetch LoRA by manifest (applied to the model) -> prompt starting with its trigger words -> sample."""
    from lora_train.fetch import FetchConfig

    fetch = widget_defaults(FetchConfig) | {"urls": MANIFEST_URL}
    return {
        "1": _checkpoint(),
        "2": {"class_type": "LoraTrain_FetchLoRA",
              "inputs": {**fetch, "model": ["1", 0], "clip": ["1", 1], "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "StringConcatenate",
              "inputs": {"string_a": ["2", 3], "string_b": "a lighthouse on a cliff at sunset", "delimiter": ", "},
              "_meta": {"title": "Trigger words + prompt"}},
        **_sample(10, ["2", 1], ["2", 2], ["1", 2], "lora_train/fetched", ["3", 0], "With the fetched LoRA"),
    }  # fmt: skip


def publish_lora_release() -> dict:
    """Publish LoRA on a file from the loras folder, the release folder shown as text."""
    from lora_train.release.publish import PublishConfig

    publish = widget_defaults(PublishConfig) | {
        "name": "my_style", "title": "My Style", "description": "A style LoRA trained with LoRA Train.",
        "recommended_weight": 0.8, "license": "CC-BY-4.0", "data_source": "My own photographs.",
    }  # fmt: skip
    return {
        "1": {"class_type": "LoraTrain_PublishLoRA", "inputs": {"lora_name": LORA_FILE, **publish}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}, "_meta": {"title": "Release folder"}},
    }


BUILDERS = {
    "train_lora_from_folder": train_lora_from_folder,
    "train_flux_lora": train_flux_lora,
    "train_qwen_image_lora": train_qwen_image_lora,
    "train_wan22_lora": train_wan22_lora,
    "auto_label_folder": auto_label_folder,
    "fetch_lora_and_sample": fetch_lora_and_sample,
    "publish_lora_release": publish_lora_release,
}


# ---- reading the committed files -----------------------------------------------------------------------------
def load_api(name: str) -> dict:
    """A committed API-format example."""
    return json.loads((API_DIR / f"{name}.json").read_text())


def load_ui(name: str) -> dict:
    """A committed UI-format example (what ComfyUI's template browser opens)."""
    return json.loads((EXAMPLES_DIR / f"{name}.json").read_text())


def substitute(document: Any, values: dict[str, str]) -> Any:
    """A deep copy of `document` with every string equal to a key of `values` replaced by its value."""
    if isinstance(document, dict):
        return {key: substitute(value, values) for key, value in document.items()}
    if isinstance(document, list):
        return [substitute(value, values) for value in document]
    if isinstance(document, str):
        return values.get(document, document)
    return copy.copy(document)


def tiny(workflow: dict, profile: dict[str, dict[str, Any]] = TINY_PROFILE) -> dict:
    """The API workflow with TINY_PROFILE's sizes and step counts applied (for the tiny test checkpoint)."""
    shrunk = copy.deepcopy(workflow)
    for node in shrunk.values():
        for name, value in profile.get(node["class_type"], {}).items():
            if name in node["inputs"]:
                node["inputs"][name] = value
    return shrunk


def leftover_placeholders(document: Any) -> set[str]:
    """Placeholder strings (`__NAME__`) still present in `document`."""
    text = json.dumps(document)
    return {p for p in (DATASET_DIR, CLIP_MODEL, MANIFEST_URL) if f'"{p}"' in text}


# ---- a release to fetch --------------------------------------------------------------------------------------
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # the stdlib's signature; requests are not logged
        pass


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """A static HTTP server on 127.0.0.1 for `folder` (created if missing); yields its base URL."""
    folder.mkdir(parents=True, exist_ok=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def publish_release(lora_path: Path, releases: Path, base_url: str, name: str):
    """Publish `lora_path` as release `name` into `releases` (served at `base_url`) with lora_train.release."""
    from lora_train.release.publish import PublishConfig, publish_lora

    config = PublishConfig(name=name, trigger_words=["redstyle"], mirrors=[f"{base_url}{name}/"])
    return publish_lora(config, lora_path, releases)
