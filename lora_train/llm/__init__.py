"""Language models: LoRA / DoRA (QLoRA with bitsandbytes) adapters trained through peft on a local Hugging Face
causal LM (Llama, GLM / GLM-4 through transformers' own classes; remote-code checkpoints refused), from a .jsonl
of instruction or chat records rendered with the model's chat template, loss on the response tokens only, optional
packing; the output is a peft adapter folder with the image LoRAs' metadata conventions, optionally a merged model.
Reuses the training package's optimizers, schedules, resume-state file and torchrun data parallel."""

from lora_train.lazy import lazy_exports

EXPORTS = {
    "LlmTrainConfig": "config",
    "LlmPaths": "config",
    "train_causal_lm": "trainer",
    "prepare": "trainer",
    "LlmTrainResult": "trainer",
    "LlmDataError": "data",
    "LlmModelError": "model",
    "load_conversations": "data",
    "inspect_base_model": "model",
    "ClipLoraConfig": "clip_lora",
    "PairData": "clip_lora",
    "PromptPair": "clip_lora",
    "load_pairs": "clip_lora",
    "ADAPTER_WEIGHTS": "adapters",
    "ADAPTER_CONFIG": "adapters",
    "read_adapter_metadata": "adapters",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
