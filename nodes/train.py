"""Train LoRA node: dataset + MODEL/CLIP/VAE in, MODEL/CLIP with the trained LoRA applied out (plus the file)."""

from __future__ import annotations

import logging

from lora_train.training import TrainConfig

from ._ui import DATASET_TYPE, loras_dir, save_temp_preview, settings_since

log = logging.getLogger(__name__)

# Settings declared after this one came after the first release: optional widgets after `captions` (see
# settings_since). Settings marked advanced are folded away on the node (web/js/advanced_widgets.js).
FIRST_RELEASE_LAST_SETTING = "log_every"
REG_TOOLTIP = (
    "Regularisation (class) images with their class captions, mixed in at reg_ratio with prior_loss_weight (kohya "
    "reg_data_dir). The trigger word is not added to them."
)


class TrainLoRA:
    """Train a LoRA on the connected model and output the model with it applied, ready for KSampler."""

    CATEGORY = "LoRA Train/training"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", "LOSS_MAP")
    RETURN_NAMES = ("model", "clip", "lora_name", "loss")
    OUTPUT_TOOLTIPS = (
        "The input model with the trained LoRA applied (strength 1): connect to KSampler.",
        "The input CLIP, with the LoRA's text-encoder part when the text encoder was trained.",
        "File name of the saved LoRA in the loras folder (for LoraLoader / Publish LoRA).",
        "Loss history {'loss': [...]} (ComfyUI's LOSS_MAP type).",
    )
    DESCRIPTION = (
        "Trains a LoRA with kohya-compatible output on ComfyUI's model management: latents and text are encoded "
        "once, adapters sit on activations, the base model is left untouched. Saves to models/loras."
    )

    @classmethod
    def INPUT_TYPES(cls):
        first, added = settings_since(TrainConfig, FIRST_RELEASE_LAST_SETTING)
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The base diffusion model to train the LoRA for."}),
                "clip": ("CLIP", {"tooltip": "The checkpoint's text encoder (encodes the captions)."}),
                "vae": ("VAE", {"tooltip": "The checkpoint's VAE (encodes the images once)."}),
                **TrainConfig.comfy_inputs(skip=added),
            },
            "optional": {
                "dataset": (DATASET_TYPE, {"tooltip": "Images + captions from Load LoRA Dataset / Auto-label."}),
                "images": ("IMAGE", {"tooltip": "Or: a batch of images to train on (with `captions`)."}),
                "captions": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "forceInput": False,
                        "tooltip": "One caption per line for `images` (one line = same caption for all).",
                    },
                ),
                **TrainConfig.comfy_inputs(skip=first),
                "reg_dataset": (DATASET_TYPE, {"tooltip": REG_TOOLTIP}),
                "validation_dataset": (
                    DATASET_TYPE,
                    {"tooltip": "Images to measure the validation loss on (besides any validation_split)."},
                ),
                "clip_vision": (
                    "CLIP_VISION",
                    {
                        "tooltip": "Wan 2.1 image-to-video only: the CLIP vision model (clip_vision_h) that encodes each "
                        "clip's start image, as for WanImageToVideo."
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def execute(
        self, model, clip, vae, dataset=None, images=None, captions="", unique_id=None, reg_dataset=None,
        validation_dataset=None, clip_vision=None, **widgets,
    ):  # fmt: skip
        from lora_train.dataset import dataset_from_images
        from lora_train.host.comfy_adapter import ComfyHost, apply_lora, send_event_to_client
        from lora_train.training import TrainingError, loss_chart, train_lora

        cfg = TrainConfig.from_dict(widgets)
        if dataset is None:
            if images is None:
                raise TrainingError("connect a dataset (Load LoRA Dataset) or images + captions to Train LoRA")
            dataset = dataset_from_images(images, captions.splitlines() or [""])
        host = ComfyHost(model, clip, vae, node_id=unique_id, send_event=send_event_to_client, clip_vision=clip_vision)
        result = train_lora(cfg, dataset, host, loras_dir(), reg_dataset=reg_dataset,
                            validation_dataset=validation_dataset)  # fmt: skip
        strength_clip = 1.0 if cfg.train_text_encoder else 0.0
        model_out, clip_out = apply_lora(model, clip, result.lora_tensors, 1.0, strength_clip)
        chart = save_temp_preview(loss_chart(result.loss_history, result.validation_history), "lora_train_loss")
        loss_map = {"loss": [loss for _, loss in result.loss_history], "steps": [s for s, _ in result.loss_history]}
        if result.validation_history:
            loss_map["validation_loss"] = [loss for _, loss in result.validation_history]
            loss_map["validation_steps"] = [step for step, _ in result.validation_history]
        ui = {"images": [chart], "lora_name": [result.lora_path.name]}
        return {"ui": ui, "result": (model_out, clip_out, result.lora_path.name, loss_map)}


NODE_CLASS_MAPPINGS = {"LoraTrain_TrainLoRA": TrainLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraTrain_TrainLoRA": "Train LoRA"}
