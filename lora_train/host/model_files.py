"""Model files for the command line, through ComfyUI's own folders and loaders (needs ComfyUI imported first, see
bootstrap): names looked up in models/<folder>, a single checkpoint loaded as the Load Checkpoint node loads it,
and a split diffusion model + text encoders + VAE as Load Diffusion Model / CLIPLoader / Load VAE do."""

from __future__ import annotations

from pathlib import Path

# How many text encoder files -> ComfyUI's CLIP type, when the config names none.
CLIP_TYPE_BY_COUNT = {1: "stable_diffusion", 2: "flux", 3: "sd3"}
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")


def find_model(name: str, folder: str) -> Path | None:
    """`name` (or `name`.safetensors) in ComfyUI's models/<folder> search paths."""
    import folder_paths

    for candidate in (name, f"{name}.safetensors"):
        found = folder_paths.get_full_path(folder, candidate)
        if found:
            return Path(found)
    return None


def folder_listing(folder: str) -> tuple[list[str], list[str]]:
    """(the folders searched, the file names found there) for a models/<folder>, for messages."""
    import folder_paths

    return list(folder_paths.get_folder_paths(folder)), list(folder_paths.get_filename_list(folder))


def models_folder(folder: str) -> Path:
    """The first (default) folder ComfyUI uses for models/<folder>, e.g. where new LoRAs go."""
    import folder_paths

    return Path(folder_paths.get_folder_paths(folder)[0])


def load_checkpoint(path: Path):
    """(MODEL, CLIP, VAE) with ComfyUI's own loader, as the Load Checkpoint node does (inference mode)."""
    import comfy.sd
    import folder_paths
    import torch

    with torch.inference_mode():
        model, clip, vae, *_ = comfy.sd.load_checkpoint_guess_config(
            str(path),
            output_vae=True,
            output_clip=True,
            embedding_directory=folder_paths.get_folder_paths("embeddings"),
        )
    return model, clip, vae


def clip_type(name: str):
    """ComfyUI's CLIPType for `name`; ValueError listing the known ones."""
    import comfy.sd

    found = getattr(comfy.sd.CLIPType, name.upper(), None)
    if found is None:
        known = ", ".join(t.name.lower() for t in comfy.sd.CLIPType)
        raise ValueError(f"clip_type {name!r} is not a ComfyUI CLIP type; use one of: {known}")
    return found


def load_split_model(unet: Path, encoders: list[str], clip_type_name: str, vae: Path, weight_dtype: str = "default"):
    """(MODEL, CLIP, VAE) from separate files; fp8 `weight_dtype`s as Load Diffusion Model offers them."""
    import folder_paths
    import torch

    from lora_train.host.comfy_adapter import load_split_files

    kind = clip_type(clip_type_name)
    options = {}
    if weight_dtype != "default":
        options["dtype"] = {"fp8_e5m2": torch.float8_e5m2}.get(weight_dtype, torch.float8_e4m3fn)
        if weight_dtype == "fp8_e4m3fn_fast":
            options["fp8_optimizations"] = True
    embeddings = folder_paths.get_folder_paths("embeddings")
    return load_split_files(unet, encoders, kind, vae, model_options=options, embedding_directory=embeddings)
