"""Train LLM LoRA node: a CLIP whose text encoder is an LLM + text examples in, the CLIP with the trained LoRA applied
out (feeds Generate Text at once) and the file in models/loras (LoraLoader applies it to the same CLIP)."""

from __future__ import annotations

from lora_train.llm import ClipLoraConfig

from ._ui import loras_dir, save_temp_preview

DATA_TOOLTIP = (
    'A .jsonl file (full path): one record per line, {instruction, input, output} or {"messages": [...]} with one '
    "assistant message, as for `python -m lora_train train` with model_type causal_lm. Leave empty to use `text`."
)
TEXT_TOOLTIP = (
    "Or type the examples here, one per line: a JSON record as in the .jsonl file (prompt -> answer), or plain text "
    "the model should write when Generate Text gets an empty prompt."
)


class TrainLLMLoRA:
    """Train a LoRA on the language model behind a CLIP (the one Generate Text runs) from prompt/answer examples."""

    CATEGORY = "LoRA Train/training"
    FUNCTION = "execute"
    OUTPUT_NODE = True
    RETURN_TYPES = ("CLIP", "STRING", "LOSS_MAP")
    RETURN_NAMES = ("clip", "lora_name", "loss")
    OUTPUT_TOOLTIPS = (
        "The input CLIP with the trained LoRA applied (strength 1): connect to Generate Text.",
        "File name of the saved LoRA in the loras folder (LoraLoader with strength_clip, or Publish LoRA).",
        "Loss history {'loss': [...]} (ComfyUI's LOSS_MAP type).",
    )
    DESCRIPTION = (
        "Trains a LoRA on the LLM inside a CLIP (Qwen3, Gemma, ... text encoders that Generate Text runs) from "
        "prompt/answer examples: each prompt is tokenized as Generate Text tokenizes it, the loss is on the answer. "
        "Adapters sit beside ComfyUI's own layers; the file (models/loras) uses the key names ComfyUI's LoraLoader "
        "maps to this CLIP. Needs a ComfyUI with the Generate Text node (0.33.0 tested)."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "A CLIP whose text encoder is an LLM (Load CLIP, e.g. a Qwen3 file)."}),
                "train_data": ("STRING", {"default": "", "tooltip": DATA_TOOLTIP}),
                "text": ("STRING", {"multiline": True, "default": "", "tooltip": TEXT_TOOLTIP}),
                **ClipLoraConfig.comfy_inputs(),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def execute(self, clip, train_data: str = "", text: str = "", unique_id=None, **widgets):
        from lora_train.host.comfy_adapter import send_event_to_client
        from lora_train.host.llm_train import PROGRESS_EVENT, apply_clip_lora, train_clip_lora
        from lora_train.llm import load_pairs
        from lora_train.training import loss_chart

        cfg = ClipLoraConfig.from_dict(widgets)
        data = load_pairs(train_data, text)
        bar = _progress_bar(cfg.steps)

        def report(progress: dict) -> None:
            bar.update_absolute(progress["step"], progress["total"])
            if unique_id is not None:  # queued from a client (not called as a library): its live view draws this
                send_event_to_client(PROGRESS_EVENT, {"node": unique_id, **progress})

        result = train_clip_lora(clip, data, cfg, loras_dir(), report=report)
        clip_out = apply_clip_lora(clip, result.tensors)
        chart = save_temp_preview(loss_chart(result.loss_history), "lora_train_llm_loss")
        loss_map = {"loss": [loss for _, loss in result.loss_history], "steps": [s for s, _ in result.loss_history]}
        ui = {"images": [chart], "lora_name": [result.lora_path.name]}
        return {"ui": ui, "result": (clip_out, result.lora_path.name, loss_map)}


def _progress_bar(total: int):
    import comfy.utils

    return comfy.utils.ProgressBar(total)


NODE_CLASS_MAPPINGS = {"LoraTrain_TrainLLMLoRA": TrainLLMLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"LoraTrain_TrainLLMLoRA": "Train LLM LoRA"}
