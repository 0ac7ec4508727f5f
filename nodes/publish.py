"""Publish LoRA node: a LoRA from the loras folder (or the Train LoRA node) in, a versioned release folder out."""

from __future__ import annotations

from pathlib import Path

# lora_train.release is imported inside the functions: ComfyUI times every extension's import at start-up.
RELEASES_SUBDIR = "lora_releases"


def _lora_choices() -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list("loras")


def resolve_lora(lora_name: str, lora_file: str) -> Path:
    """`lora_file` (a loras-folder name or a full path) wins over the `lora_name` combo."""
    import folder_paths

    from lora_train.release import PublishError

    chosen = (lora_file or "").strip() or lora_name
    if Path(chosen).is_absolute():
        return Path(chosen)
    full = folder_paths.get_full_path("loras", chosen)
    if full is None:
        raise PublishError(f"LoRA {chosen!r} is not in ComfyUI's loras folder: pick one from the list or connect "
                           "the Train LoRA node's lora_name output")  # fmt: skip
    return Path(full)


def releases_dir(output_dir: str) -> Path:
    """Where release folders go: `output_dir` if absolute, else under ComfyUI's output folder."""
    import folder_paths

    base = Path(folder_paths.get_output_directory())
    return Path(output_dir) if Path(output_dir).is_absolute() else base / (output_dir or RELEASES_SUBDIR)


class PublishLoRA:
    """Turn a trained LoRA into a release: `<name>_v<N>.safetensors`, README.md model card, manifest.json, zip."""

    CATEGORY = "LoRA Train/distribute"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("release_dir", "manifest_path")
    OUTPUT_TOOLTIPS = (
        "The release folder (all versions side by side): upload it as is to your mirrors.",
        "Its manifest.json (for Fetch LoRA; add mirror URLs after uploading).",
    )
    DESCRIPTION = (
        "Publishes a LoRA as the next version of a named release under output/lora_releases/<name>/: the weights "
        "renamed to <name>_v<N>.safetensors with model-card metadata and hashes (tensors untouched), a README.md "
        "model card with ComfyUI and A1111 usage, and manifest.json listing every version. Never overwrites a "
        "version; dry_run only lists what it would write. Optional: destinations (a folder, WebDAV, S3, Hugging "
        "Face Hub) to upload to, with the links written into the manifest last, and sign_key to sign it."
    )

    @classmethod
    def INPUT_TYPES(cls):
        from lora_train.release import PublishConfig

        return {
            "required": {
                "lora_name": (_lora_choices(), {"tooltip": "The LoRA file in ComfyUI's loras folder to publish."}),
                **PublishConfig.comfy_inputs(),
            },
            "optional": {
                "lora_file": (
                    "STRING",
                    {
                        "forceInput": True,
                        "tooltip": "Overrides lora_name: a loras-folder file name (Train LoRA's "
                        "lora_name output) or a full path.",
                    },
                ),
                # Added later, after every older widget: saved workflows keep their widget values in place.
                **PublishConfig.comfy_inputs(optional=True),
            },
        }

    def execute(self, lora_name: str, lora_file: str = "", **widgets):
        from lora_train.release import PublishConfig
        from lora_train.upload import publish_and_upload

        cfg = PublishConfig.from_dict(widgets)
        result, uploaded = publish_and_upload(cfg, resolve_lora(lora_name, lora_file), releases_dir(cfg.output_dir))
        verb = "would write" if result.dry_run else "wrote"
        lines = [f"{result.name} v{result.version}: {verb} " + ", ".join(p.name for p in result.written)]
        if uploaded is not None:
            lines.append(f"uploaded and verified {len(uploaded.uploaded)} file(s)")
            lines += [f"manifest at {dest}: {link}" for dest, link in uploaded.manifest_links.items()]
        return {"ui": {"text": ["\n".join(lines)]}, "result": (str(result.release_dir), str(result.manifest_path))}


NODE_CLASS_MAPPINGS = {"LoraTrain_PublishLoRA": PublishLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraTrain_PublishLoRA": "Publish LoRA"}
