"""Captioner back ends for auto-label: where the CLIP image and text encoders come from (`comfy_clip`: CLIP_VISION +
CLIP objects from the graph; `hf_clip`: a local Hugging Face CLIP folder)."""
