"""The `README.md` model card of a release, rendered from the manifest and the published file's metadata."""

from __future__ import annotations

from lora_train.release.manifest import Manifest, Release, versioned_name

SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

# Training settings worth showing, by the metadata key kohya-style trainers (ours included) record them under.
TRAINING_FIELDS = {
    "ss_network_module": "Network module",
    "ss_network_dim": "Rank (dim)",
    "ss_network_alpha": "Alpha",
    "ss_network_args": "Network arguments",
    "ss_optimizer": "Optimizer",
    "ss_learning_rate": "Learning rate",
    "ss_unet_lr": "UNet learning rate",
    "ss_text_encoder_lr": "Text encoder learning rate",
    "ss_lr_scheduler": "LR scheduler",
    "ss_max_train_steps": "Steps",
    "ss_num_epochs": "Epochs",
    "ss_batch_size_per_device": "Batch size",
    "ss_gradient_accumulation_steps": "Gradient accumulation",
    "ss_num_train_images": "Training images",
    "ss_resolution": "Resolution",
    "ss_mixed_precision": "Precision",
    "ss_noise_offset": "Noise offset",
    "ss_min_snr_gamma": "Min-SNR gamma",
    "ss_seed": "Seed",
    "ss_sd_model_name": "Trained on checkpoint",
    "ss_base_model_version": "Base model version",
}


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ").strip() or "—"


def _table(rows: list[tuple[str, str]], head: tuple[str, str] = ("", "")) -> list[str]:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    return lines + [f"| {_cell(key)} | {_cell(value)} |" for key, value in rows]


def training_summary(metadata: dict[str, str]) -> list[tuple[str, str]]:
    """(label, value) rows for the training settings the file records, in a fixed order."""
    return [
        (label, metadata[key]) for key, label in TRAINING_FIELDS.items() if metadata.get(key, "") not in ("", "None")
    ]


TEXT_ENCODER_LORA = "comfyui_text_encoder_lora"  # written by the Train LLM LoRA node (lora_train.host.llm_train)


def usage_lines(vname: str, weight: str, prompt_words: str, metadata: dict[str, str]) -> list[str]:
    """How to use the file: an image LoRA in ComfyUI and A1111, or a LoRA for the LLM behind a ComfyUI CLIP."""
    if metadata.get("lora_train.kind") == TEXT_ENCODER_LORA:
        base = metadata.get("lora_train.base_model", "the text encoder it was trained on")
        return [
            "### ComfyUI (Generate Text)", "",
            f"A LoRA for the language model inside a ComfyUI text encoder ({base}), for the **Generate Text** node "
            "(ComfyUI 0.33 or newer).", "",
            f"1. Put `{vname}.safetensors` in `ComfyUI/models/loras/`.",
            "2. Load that text encoder with **Load CLIP**, then add a **Load LoRA** (`LoraLoader`) node on its CLIP "
            f"and pick `{vname}.safetensors`; set `strength_clip` to {weight} and `strength_model` to 0 (its MODEL "
            "input can come from any checkpoint).",
            "3. Connect its CLIP output to **Generate Text**.",
        ]  # fmt: skip
    return [
        "### ComfyUI", "",
        f"1. Put `{vname}.safetensors` in `ComfyUI/models/loras/` (or fetch it with the **Fetch LoRA** node and this "
        "release's `manifest.json`).",
        "2. Add a **Load LoRA** (`LoraLoader`) node between your checkpoint loader and the sampler, and pick "
        f"`{vname}.safetensors`.",
        f"3. Set `strength_model` and `strength_clip` to {weight}.",
        f"4. Write the trigger words in your prompt: {prompt_words}." if prompt_words else "4. Prompt as usual.",
        "", "### AUTOMATIC1111 / Forge", "",
        "Put the file in `models/Lora/` and add this to the prompt:", "",
        "```", f"<lora:{vname}:{weight}>" + (f" {prompt_words}" if prompt_words else ""), "```",
    ]  # fmt: skip


def render_model_card(
    manifest: Manifest, version: int, metadata: dict[str, str], samples: list[str], hashes: dict[str, str]
) -> str:
    """Markdown for `README.md`: summary, usage (ComfyUI and A1111), training settings, samples, hashes, history."""
    release = manifest.select(version)
    vname = versioned_name(manifest.name, version)
    weight = f"{manifest.recommended_weight:g}"
    triggers = ", ".join(f"`{word}`" for word in manifest.trigger_words) or "none (the LoRA applies without them)"
    prompt_words = ", ".join(manifest.trigger_words)
    lines = [f"# {manifest.title}", ""]
    if manifest.description:
        lines += [manifest.description.strip(), ""]
    lines += _table([
        ("File", f"`{vname}.safetensors`"),
        ("Version", f"v{version} ({release.date})"),
        ("Base model", manifest.base_model or "not recorded"),
        ("Trigger words", triggers),
        ("Recommended weight", weight),
        ("License", manifest.license or "not specified"),
        ("Data source", manifest.data_source or "not specified"),
    ])  # fmt: skip
    lines += ["", "## Usage", "", *usage_lines(vname, weight, prompt_words, metadata), "", "## Training settings", ""]
    summary = training_summary(metadata)
    lines += _table(summary, ("Setting", "Value")) if summary else ["Not recorded in the file."]
    if samples:
        lines += ["", "## Samples", ""] + [f"![sample {i}]({name})" for i, name in enumerate(samples, start=1)]
    lines += ["", "## Files and hashes", ""]
    lines += _table([
        ("SHA256", f"`{hashes['sha256']}`"),
        ("AutoV2 (A1111 / Civitai)", f"`{hashes['autov2']}`"),
        ("kohya `sshs_model_hash` (tensor data; Civitai AutoV3)", f"`{hashes['sshs_model_hash']}`"),
    ], (f"`{vname}.safetensors`", ""))  # fmt: skip
    lines += ["", "## Versions", ""]
    lines += ["| Version | Date | SHA256 |", "|---|---|---|"] + [
        f"| v{r.version} | {r.date} | `{r.weights.sha256}` |" for r in manifest.releases
    ]
    if manifest.mirrors:
        lines += ["", "## Download mirrors", ""] + [f"- {url}" for url in manifest.mirrors]
    lines += _provenance(manifest, release)
    return "\n".join(lines) + "\n"


def _provenance(manifest: Manifest, release: Release) -> list[str]:
    """Where this version was uploaded (no credentials, no signed links) and who signed the manifest."""
    lines = []
    if release.destinations:
        lines += ["", "## Uploaded to", "", "| Kind | Location | Links expire |", "|---|---|---|"]
        lines += [f"| {_cell(d['kind'])} | `{_cell(d['location'])}` | {_cell(d.get('expires', 'never'))} |"
                  for d in release.destinations]  # fmt: skip
    if manifest.signer:
        signer = manifest.signer
        who = signer.get("name") or "anonymous"
        lines += ["", "## Signature", "",
                  f"`manifest.json` is signed (Ed25519, `manifest.json.sig`) by **{who}**,"
                  f" key id `{signer['key_id']}`. Fetch LoRA verifies it when that public key is among your trusted "
                  "keys."]  # fmt: skip
    return lines
