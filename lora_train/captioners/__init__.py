"""Captioner back ends: where CLIP encoders come from (Hugging Face folder, ComfyUI objects) and where captions go."""
