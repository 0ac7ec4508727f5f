"""Training: the loop (encode once, then noise -> predict -> loss -> backward -> step), losses read from the host's
model sampling, adapter networks (LoRA, LoCon, DoRA, LoHa, LoKr), optimizers and schedules, gradient
checkpointing, the resumable state, the latent cache, sample previews, torchrun data parallel, and the kohya-format
LoRA file with its metadata. Knows nothing of ComfyUI: a host (lora_train.host) lends the model."""

from lora_train.lazy import lazy_exports

EXPORTS = {
    "TrainConfig": "config",
    "train_lora": "loop",
    "TrainResult": "loop",
    "TrainingError": "host_api",
    "TrainingHost": "host_api",
    "TrainingSession": "host_api",
    "Example": "host_api",
    "Progress": "host_api",
    "Distributed": "distributed",
    "SINGLE_PROCESS": "distributed",
    "DistributedError": "distributed",
    "from_environment": "distributed",
    "pick_device_type": "distributed",
    "process_group": "distributed",
    "preview_prompts": "captions",
    "LatentCache": "latent_cache",
    "image_digest": "latent_cache",
    "latent_key": "latent_cache",
    "tensors_identity": "latent_cache",
    "loss_chart": "plot",
    "save_lora": "lora_io",
    "training_buckets": "data",
    "transformer_blocks": "block_swap",
    "tensorboard_available": "tensorboard_log",
    "load_lora": "lora_io",
    "OPTIMIZERS": "optim",
    "SCHEDULES": "optim",
    "make_optimizer": "optim",
    "make_scheduler": "optim",
    "AdapterSet": "networks",
    "AdapterSpec": "networks",
    "find_targets": "networks",
    "ResumeState": "resume",
    "Streams": "resume",
    "capture_streams": "resume",
    "ResumeError": "resume",
    "load_state": "resume",
    "save_state": "resume",
    "state_path": "resume",
}
__all__ = sorted(EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, EXPORTS)
