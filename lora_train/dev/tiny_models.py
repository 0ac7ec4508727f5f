"""Tiny, seeded checkpoints that ComfyUI detects as real model families, for tests, the demo and the benches.

Built with ComfyUI's own classes (so the shapes are right by construction) and random weights from a fixed seed;
written once into the cache and reused. Nothing here is ever committed.

    python -m lora_train.dev.tiny_models /path/to/models [family ...]   # default: every family

Each family is as small as ComfyUI 0.3.75's detection allows (measured facts: HOST.md); text encoders are always built
at full size by ComfyUI, so their files hold full random weights (keys missing from a file stay uninitialised).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lora_train.fsutil import atomic_write

log = logging.getLogger(__name__)

TINY_SD15_NAME = "tiny_sd15.safetensors"
SEED = 20261130
# One level, one ResBlock, one transformer block per input/output block, no middle block: the smallest UNet
# ComfyUI's detection still calls SD15 (model_channels 320, context_dim 768, conv proj_in, 4 latent channels).
TINY_SD15_UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1],
    "channel_mult": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "transformer_depth_middle": -2,
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "legacy": False,
}

FAMILIES = ("sd15", "sd2v", "sdxl", "sd3", "flux_dev", "flux_schnell")

# SD2 768-v: SD20 reads V_PREDICTION from the spread of `output_blocks.11.1.transformer_blocks.0.norm1.bias`
# (std > 0.09), so the UNet needs 12 output blocks with a transformer in the last: one level of 11 ResBlocks, and
# one input transformer (context_dim and linear proj_in are read from the first input transformer).
TINY_SD2V_UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [11],
    "channel_mult": [1],
    "transformer_depth": [1] + [0] * 10,
    "transformer_depth_output": [1] + [0] * 11,  # popped from the end: the 1 lands in output block 11
    "transformer_depth_middle": -2,
    "context_dim": 1024,
    "num_heads": -1,
    "num_head_channels": 64,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "legacy": False,
}
SD2V_MARKER = "output_blocks.11.1.transformer_blocks.0.norm1.bias"

# SDXL matches on the input transformer depths exactly ([0, 0, 2, 2, 10, 10]); one level of six ResBlocks holds
# them. Output blocks and the middle block are free, so they carry no transformers.
TINY_SDXL_UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [6],
    "channel_mult": [1],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0] * 7,
    "transformer_depth_middle": -2,
    "context_dim": 2048,
    "num_heads": -1,
    "num_head_channels": 64,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
}

# SD3 MMDiT: hidden = 64 x depth. Context 4096 and pooled 2048 are what CLIPLoader type `sd3` yields (CLIP-L padded
# with zeros for the missing CLIP-G / T5). pos_embed covers 64 x 64 patches = 1024 px.
TINY_SD3_MMDIT = {
    "input_size": None,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "depth": 2,
    "adm_in_channels": 2048,
    "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
    "num_patches": 64 * 64,
    "pos_embed_max_size": 64,
    "pos_embed_scaling_factor": None,
    "x_block_self_attn_layers": [],
}

# Flux: width 3072, 24 heads and axes [16, 56, 56] are fixed by detection; one double block, no single blocks.
# txt_in and vector_in take CLIP-L width (768) so a plain CLIP-L (CLIPLoader type `stable_diffusion`) feeds it:
# the full T5-XXL of type `flux` (4.8 B parameters) is never built.
TINY_FLUX = {
    "in_channels": 16,
    "out_channels": 16,
    "vec_in_dim": 768,
    "context_in_dim": 768,
    "hidden_size": 3072,
    "mlp_ratio": 4.0,
    "num_heads": 24,
    "depth": 1,
    "depth_single_blocks": 0,
    "axes_dim": [16, 56, 56],
    "theta": 10000,
    "patch_size": 2,
    "qkv_bias": True,
}

CLIP_L_NAME = "tiny_clip_l.safetensors"
TAESD16_NAME = "tiny_taesd16.safetensors"


@dataclass(frozen=True)
class TinyModel:
    """One tiny family: the files it is made of and how ComfyUI loads them."""

    family: str  # key of FAMILIES
    detected: str  # class name of the model_config ComfyUI detects (SD15, SD20, SDXL, SD3, Flux, FluxSchnell)
    files: dict[str, str] = field(default_factory=dict)  # ComfyUI folder (= sub-folder) -> file name
    clip_type: str = ""  # CLIPLoader type when the text encoder is a separate file

    def paths(self, models_dir: str | Path) -> dict[str, Path]:
        """Full path of each file under `models_dir`, keyed by ComfyUI folder name."""
        return {folder: Path(models_dir) / folder / name for folder, name in self.files.items()}

    def loader_nodes(self, prefix: str) -> tuple[dict, list, list, list]:
        """API-format loader nodes (ids start with `prefix`) and the [node_id, output] refs of MODEL, CLIP, VAE."""
        if "checkpoints" in self.files:
            node = f"{prefix}ckpt"
            nodes = {
                node: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": self.files["checkpoints"]}}
            }
            return nodes, [node, 0], [node, 1], [node, 2]
        unet, clip, vae = f"{prefix}unet", f"{prefix}clip", f"{prefix}vae"
        nodes = {
            unet: {
                "class_type": "UNETLoader",
                "inputs": {"unet_name": self.files["diffusion_models"], "weight_dtype": "default"},
            },
            clip: {
                "class_type": "CLIPLoader",
                "inputs": {"clip_name": self.files["text_encoders"], "type": self.clip_type},
            },
            vae: {"class_type": "VAELoader", "inputs": {"vae_name": self.files["vae"]}},
        }
        return nodes, [unet, 0], [clip, 0], [vae, 0]

    def load(self, models_dir: str | Path) -> tuple:
        """(ModelPatcher, CLIP, VAE) through comfy.sd's own loaders, under inference mode as a server node runs."""
        import comfy.sd

        from lora_train.host.comfy_adapter import load_split_files

        paths = self.paths(models_dir)
        if "checkpoints" in paths:
            with torch.inference_mode():
                model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
                    str(paths["checkpoints"]), output_vae=True, output_clip=True
                )
            return model, clip, vae
        return load_split_files(
            paths["diffusion_models"],
            [paths["text_encoders"]],
            getattr(comfy.sd.CLIPType, self.clip_type.upper()),
            paths["vae"],
        )


_SPLIT_16 = {"text_encoders": CLIP_L_NAME, "vae": TAESD16_NAME}
_MODELS = {
    "sd15": TinyModel("sd15", "SD15", {"checkpoints": TINY_SD15_NAME}),
    "sd2v": TinyModel("sd2v", "SD20", {"checkpoints": "tiny_sd2v.safetensors"}),
    "sdxl": TinyModel("sdxl", "SDXL", {"checkpoints": "tiny_sdxl.safetensors"}),
    "sd3": TinyModel("sd3", "SD3", {"diffusion_models": "tiny_sd3.safetensors", **_SPLIT_16}, "sd3"),
    "flux_dev": TinyModel(
        "flux_dev", "Flux", {"diffusion_models": "tiny_flux_dev.safetensors", **_SPLIT_16}, "stable_diffusion"
    ),
    "flux_schnell": TinyModel(
        "flux_schnell",
        "FluxSchnell",
        {"diffusion_models": "tiny_flux_schnell.safetensors", **_SPLIT_16},
        "stable_diffusion",
    ),
}


def tiny_model(family: str) -> TinyModel:
    """The descriptor of one family (see FAMILIES)."""
    try:
        return _MODELS[family]
    except KeyError:
        raise ValueError(f"unknown tiny model family {family!r}; known: {', '.join(FAMILIES)}") from None


def _init_(module: torch.nn.Module, generator: torch.Generator, std: float | None = None) -> None:
    """Explicit init (ComfyUI's ops skip it): normals (std `std`, else fan-in scaled), unit norms, zero biases."""
    for name, param in module.named_parameters():
        with torch.no_grad():
            if name.endswith("bias"):
                param.zero_()
            elif param.ndim == 1:
                param.fill_(1.0)
            elif std is not None:
                param.copy_(torch.randn(param.shape, generator=generator) * std)
            else:
                fan_in = math.prod(param.shape[1:])
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(fan_in))


def _generator(part: str) -> torch.Generator:
    """A generator per part, so a part (e.g. CLIP-L) has the same weights in every file that holds it."""
    return torch.Generator().manual_seed(SEED ^ zlib.crc32(part.encode()))


def tiny_sd15_state_dict(seed: int = SEED) -> dict[str, torch.Tensor]:
    """UNet + TAESD VAE + full-size CLIP-L (ComfyUI always builds CLIP-L at full size) as one SD1.5 checkpoint."""
    import comfy.ops
    import comfy.sd1_clip
    import comfy.taesd.taesd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from transformers import CLIPTextConfig, CLIPTextModel

    generator = torch.Generator().manual_seed(seed)
    unet = UNetModel(**TINY_SD15_UNET, operations=comfy.ops.disable_weight_init)
    _init_(unet, generator)
    vae = comfy.taesd.taesd.TAESD(latent_channels=4)
    _init_(vae, generator)

    clip_config_path = Path(comfy.sd1_clip.__file__).parent / "sd1_clip_config.json"
    clip_config = CLIPTextConfig(
        **{k: v for k, v in json.loads(clip_config_path.read_text()).items() if k != "architectures"}
    )
    torch.manual_seed(seed)
    clip = CLIPTextModel(clip_config)

    state = {f"model.diffusion_model.{k}": v.float().contiguous() for k, v in unet.state_dict().items()}
    state.update({f"first_stage_model.{k}": v.float().contiguous() for k, v in vae.state_dict().items()})
    state.update({f"cond_stage_model.transformer.{k}": v.half().contiguous() for k, v in clip.state_dict().items()})
    return state


def write_tiny_sd15(models_dir: str | Path, seed: int = SEED) -> Path:
    """Write `checkpoints/tiny_sd15.safetensors` under `models_dir` if missing; return its path."""
    from safetensors.torch import save

    path = Path(models_dir) / "checkpoints" / TINY_SD15_NAME
    if path.is_file():
        return path
    state = tiny_sd15_state_dict(seed)
    with atomic_write(path) as handle:
        handle.write(save(state, metadata={"generator": "lora_train.dev.tiny_models", "seed": str(seed)}))
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


# --- parts: each returns a state dict in the layout ComfyUI's own loaders read -----------------------------------


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _clip_text(config: str, part: str) -> dict[str, torch.Tensor]:
    """Full-size fp16 CLIP text model (ComfyUI's class, HF key layout `text_model.*`, `text_projection.weight`)."""
    import comfy.clip_model
    import comfy.ops

    path = Path(comfy.clip_model.__file__).parent / config
    model = comfy.clip_model.CLIPTextModel(
        json.loads(path.read_text()), torch.float16, "cpu", comfy.ops.disable_weight_init
    )
    _init_(model, _generator(part))
    return dict(model.state_dict())


def _clip_l() -> dict[str, torch.Tensor]:
    return _clip_text("sd1_clip_config.json", "clip_l")


def _open_clip(prefix: str, config: str, part: str) -> dict[str, torch.Tensor]:
    """A CLIP text model in OpenCLIP layout (`<prefix>transformer.resblocks.*`), as SD2 and SDXL checkpoints hold."""
    from comfy.diffusers_convert import convert_text_enc_state_dict_v20

    state = _prefixed("clip.transformer.", _clip_text(config, part))
    state = convert_text_enc_state_dict_v20(state, "clip")
    return {prefix + k[len("clip.") :]: v for k, v in state.items()}


def _taesd(latent_channels: int) -> dict[str, torch.Tensor]:
    """TAESD-shaped VAE (`taesd_encoder.*`, `taesd_decoder.*`): ComfyUI builds a TAESD from these keys."""
    import comfy.taesd.taesd

    vae = comfy.taesd.taesd.TAESD(latent_channels=latent_channels)
    _init_(vae, _generator(f"taesd{latent_channels}"))
    with torch.no_grad():  # neutral latent scaling (randn would make the encoder divide by a random number)
        vae.vae_scale.fill_(1.0)
        vae.vae_shift.fill_(0.0)
    return {k: v.float().contiguous() for k, v in vae.state_dict().items()}


def _unet(config: dict, part: str) -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**config, dtype=torch.float16, operations=comfy.ops.disable_weight_init)
    _init_(unet, _generator(part))
    return dict(unet.state_dict())


def _sd2v_checkpoint() -> dict[str, torch.Tensor]:
    """SD2 768-v: UNet (fp16) + TAESD + full CLIP-H (OpenCLIP keys under `cond_stage_model.model.`)."""
    unet = _unet(TINY_SD2V_UNET, "sd2v_unet")
    marker = unet[SD2V_MARKER]
    marker.copy_(torch.randn(marker.shape, generator=_generator("sd2v_marker")) * 0.2)  # std ~0.2 > 0.09: v-pred
    state = _prefixed("model.diffusion_model.", unet)
    state.update(_prefixed("first_stage_model.", _taesd(4)))
    state.update(_open_clip("cond_stage_model.model.", "text_encoders/sd2_clip_config.json", "clip_h"))
    return state


def _sdxl_checkpoint() -> dict[str, torch.Tensor]:
    """SDXL: UNet (fp16) + TAESD + full CLIP-L and CLIP-G in the `conditioner.embedders.{0,1}` layout."""
    state = _prefixed("model.diffusion_model.", _unet(TINY_SDXL_UNET, "sdxl_unet"))
    state.update(_prefixed("first_stage_model.", _taesd(4)))
    state.update(_prefixed("conditioner.embedders.0.transformer.", _clip_l()))
    gc.collect()
    state.update(_open_clip("conditioner.embedders.1.model.", "clip_config_bigg.json", "clip_g"))
    return state


def _sd3_unet() -> dict[str, torch.Tensor]:
    """SD3 MMDiT (fp16) with a sin-cos pos_embed (a buffer, so `_init_` does not reach it)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.mmdit import OpenAISignatureMMDITWrapper, get_2d_sincos_pos_embed_torch

    model = OpenAISignatureMMDITWrapper(
        **TINY_SD3_MMDIT, dtype=torch.float16, operations=comfy.ops.disable_weight_init
    )
    _init_(model, _generator("sd3_mmdit"))
    size = TINY_SD3_MMDIT["pos_embed_max_size"]
    with torch.no_grad():
        model.pos_embed.copy_(get_2d_sincos_pos_embed_torch(model.hidden_size, size, size).reshape(1, size * size, -1))
    return dict(model.state_dict())


# Fields newer ComfyUIs added to FluxParams without a default, with the value that means Flux.1 (0.33.0 added
# `txt_ids_dims`: which text-token position axes carry ids; Flux.1 has none). Chosen by what the class declares,
# never by version number.
FLUX1_NEWER_FIELDS = {"txt_ids_dims": []}


def _fields_newer_hosts_require(params_class: type, values: dict) -> dict:
    """The subset of `values` whose fields `params_class` (a dataclass) declares."""
    import dataclasses

    declared = {field.name for field in dataclasses.fields(params_class)}
    return {name: value for name, value in values.items() if name in declared}


def flux1_params(config: dict, guidance: bool) -> dict:
    """Keyword arguments of this host's comfy Flux class for a Flux.1 model of `config`'s sizes."""
    from comfy.ldm.flux.model import FluxParams

    return {**config, "guidance_embed": guidance, **_fields_newer_hosts_require(FluxParams, FLUX1_NEWER_FIELDS)}


def _flux_unet(guidance: bool) -> dict[str, torch.Tensor]:
    """Flux (bf16, ~400 M parameters): dev has `guidance_in`, schnell does not."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    model = Flux(**flux1_params(TINY_FLUX, guidance), dtype=torch.bfloat16, operations=comfy.ops.disable_weight_init)
    _init_(model, _generator("flux_dev" if guidance else "flux_schnell"))
    return dict(model.state_dict())


_PARTS: dict[tuple[str, str], Callable[[], dict[str, torch.Tensor]]] = {
    ("checkpoints", "tiny_sd2v.safetensors"): _sd2v_checkpoint,
    ("checkpoints", "tiny_sdxl.safetensors"): _sdxl_checkpoint,
    ("diffusion_models", "tiny_sd3.safetensors"): _sd3_unet,
    ("diffusion_models", "tiny_flux_dev.safetensors"): lambda: _flux_unet(guidance=True),
    ("diffusion_models", "tiny_flux_schnell.safetensors"): lambda: _flux_unet(guidance=False),
    ("text_encoders", CLIP_L_NAME): _clip_l,
    ("vae", TAESD16_NAME): lambda: _taesd(16),
}

_ST_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64"}


def _write_safetensors(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Stream `state` (emptied as it goes) to a safetensors file, atomically, without a second copy in memory."""
    names = sorted(state)
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for name in names:
        tensor = state[name]
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _ST_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_write(path) as handle:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for name in names:
            handle.write(state.pop(name).contiguous().reshape(-1).view(torch.uint8).numpy())


def write_tiny(family: str, models_dir: str | Path) -> TinyModel:
    """Write the files of `family` that are missing under `models_dir` (one at a time); return its descriptor."""
    model = tiny_model(family)
    if family == "sd15":
        write_tiny_sd15(models_dir)
        return model
    write_parts(model.paths(models_dir), _PARTS, "lora_train.dev.tiny_models")
    return model


def write_parts(paths: dict[str, Path], parts: dict, generator: str) -> None:
    """Write each file of `paths` (folder -> path) not on disk yet from its builder in `parts`, one at a time (each
    state is freed before the next is built). Files already there are marked as used (for `_make_room`)."""
    for folder, path in paths.items():
        if path.is_file():
            os.utime(path)
            continue
        state = parts[(folder, path.name)]()
        _make_room(sum(t.numel() * t.element_size() for t in state.values()), path, keep=set(paths.values()))
        _write_safetensors(path, state, {"generator": generator, "seed": str(SEED)})
        del state
        gc.collect()
        log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)


# When the disk runs short, generated files at least this large are removed, least recently used first, and rebuilt
# (identical: same seed) on their next use: every use asks `write_parts` for them first. Smaller ones (the SD1.5
# checkpoint a test server links once, CLIP-L, VAEs) are never removed. The suite then fits a disk with room for the
# hosts and a few of the largest tiny models (SDXL's full-size text encoders: 1.9 GB), not all of them at once.
EVICTABLE_BYTES = 512 * 2**20
FREE_RESERVE_BYTES = 3 * 2**30


def _make_room(need: int, path: Path, keep: set[Path]) -> None:
    """Ensure `need` bytes plus a reserve are free for writing `path`, by removing large generated tiny models under
    the cache's models folder (every host's), least recently used first, never one of `keep`."""
    from lora_train.dev.host_builder import cache_dir

    path.parent.mkdir(parents=True, exist_ok=True)
    root = cache_dir() / "models"
    if shutil.disk_usage(path.parent).free >= need + FREE_RESERVE_BYTES or root not in path.resolve().parents:
        return
    files = [f for f in root.rglob("*.safetensors") if f not in keep and f.stat().st_size >= EVICTABLE_BYTES]
    for old in sorted(files, key=lambda f: f.stat().st_mtime):
        if shutil.disk_usage(path.parent).free >= need + FREE_RESERVE_BYTES:
            return
        if _generator_of(old).startswith("lora_train.dev."):
            log.info("disk short: removed %s (%.0f MB), rebuilt when next used", old, old.stat().st_size / 1e6)
            old.unlink(missing_ok=True)


def _generator_of(path: Path) -> str:
    """The `generator` metadata of a safetensors file ("" when absent or unreadable)."""
    from lora_train.safetensors_file import SafetensorsError, read_header

    try:
        return read_header(path).metadata.get("generator", "")
    except (OSError, SafetensorsError):
        return ""


def main(argv: list[str] | None = None) -> int:
    """CLI: write tiny models of the given families (default all) under a models folder."""
    parser = argparse.ArgumentParser(prog="python -m lora_train.dev.tiny_models", description=main.__doc__)
    parser.add_argument("models_dir", type=Path)
    parser.add_argument("families", nargs="*", metavar="family", help=f"any of {', '.join(FAMILIES)} (default: all)")
    parser.add_argument("--comfyui", help="ComfyUI folder (default: $COMFYUI_PATH or the one this extension is in)")
    args = parser.parse_args(argv)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        parser.error(f"unknown family {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    from lora_train.host.bootstrap import import_comfy

    import_comfy(args.comfyui, cpu=True)
    for family in args.families or FAMILIES:
        model = write_tiny(family, args.models_dir)
        for path in model.paths(args.models_dir).values():
            print(f"{family}\t{path}\t{path.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
