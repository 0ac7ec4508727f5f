"""`TrainConfig`: the single source of every training setting (node widgets, YAML keys, CLI help, file metadata)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lora_train.dataset import BucketOptions
from lora_train.settings import Settings, SettingsError, setting

NETWORK_CHOICES = ("lora", "locon", "dora", "loha", "lokr")
OPTIMIZER_CHOICES = ("adamw", "adam", "sgd", "adamw8bit", "adafactor", "prodigy")
SCHEDULER_CHOICES = ("constant", "linear", "cosine", "cosine_with_restarts")
LOSS_CHOICES = ("mse", "l1", "huber", "smooth_l1")
PRECISION_CHOICES = ("no", "bf16", "fp16")
TARGET_CHOICES = ("attention", "attention_and_conv", "all_linear")
TIMESTEP_CHOICES = ("auto", "uniform", "logit_normal")


@dataclass
class TrainConfig(Settings):
    """Everything that decides what a LoRA training run does. Defaults follow common SD1.5 kohya practice."""

    # ---- the adapter ----------------------------------------------------------------------------------------
    network: str = setting(
        "lora",
        "Adapter type: lora (linear layers), locon (also 3x3 convs), dora, loha, lokr.",
        choices=NETWORK_CHOICES,
    )
    rank: int = setting(16, "LoRA rank (dim): capacity of the adapter. 4-32 is typical for styles.", min=1, max=1024)
    alpha: float = setting(
        8.0,
        "LoRA alpha: the update is scaled by alpha/rank (kohya convention). rank/2 is a safe default.",
        min=0.0001,
        max=4096,
    )
    dropout: float = setting(
        0.0, "Dropout on the adapter input during training (regularisation).", min=0.0, max=0.9, advanced=True
    )
    targets: str = setting(
        "attention",
        "Which UNet layers get adapters: attention blocks (kohya default), plus "
        "ResBlock convs, or every linear layer.",
        choices=TARGET_CHOICES,
        advanced=True,
    )
    train_text_encoder: bool = setting(
        False,
        "Also train adapters on the text encoder (costs memory; disables the text-embedding cache).",
        advanced=True,
    )
    text_encoder_lr: float = setting(5e-5, "Learning rate for text-encoder adapters.", min=0.0, max=1.0, advanced=True)
    # ---- optimisation -------------------------------------------------------------------------------------
    learning_rate: float = setting(1e-4, "Peak learning rate for UNet adapters (0 trains nothing).", min=0.0, max=1.0)
    steps: int = setting(500, "Optimizer steps to train (used when epochs is 0).", min=1, max=1_000_000)
    epochs: int = setting(
        0,
        "Train for this many passes over the dataset (with repeats) instead of `steps`; 0 = use steps.",
        min=0,
        max=10_000,
        advanced=True,
    )
    batch_size: int = setting(1, "Images per forward pass.", min=1, max=256)
    gradient_accumulation: int = setting(
        1, "Forward passes per optimizer step (effective batch = batch_size x this).", min=1, max=1024, advanced=True
    )
    optimizer: str = setting(
        "adamw", "Optimizer. adamw8bit needs bitsandbytes, prodigy needs prodigyopt.", choices=OPTIMIZER_CHOICES
    )
    weight_decay: float = setting(0.01, "Decoupled weight decay (AdamW family).", min=0.0, max=1.0, advanced=True)
    lr_scheduler: str = setting(
        "constant", "Learning-rate schedule after warmup.", choices=SCHEDULER_CHOICES, advanced=True
    )
    warmup_steps: int = setting(
        0, "Linear warmup steps from 0 to the learning rate.", min=0, max=100_000, advanced=True
    )
    max_grad_norm: float = setting(
        1.0, "Clip the adapter gradient norm to this; 0 = no clipping.", min=0.0, max=1e6, advanced=True
    )
    seed: int = setting(
        42,
        "Seed for adapter init, data order, noise and timesteps: same seed, same LoRA.",
        min=0,
        max=2**63 - 1,
        advanced=True,
    )
    # ---- the objective ------------------------------------------------------------------------------------
    loss: str = setting(
        "mse", "Loss in the model's own prediction space (eps, v or flow).", choices=LOSS_CHOICES, advanced=True
    )
    huber_delta: float = setting(0.1, "Delta for the huber / smooth_l1 losses.", min=1e-6, max=10.0, advanced=True)
    min_snr_gamma: float = setting(
        0.0,
        "Min-SNR loss weighting gamma (arXiv 2303.09556); 5 is typical, 0 = off.",
        min=0.0,
        max=100.0,
        advanced=True,
    )
    noise_offset: float = setting(
        0.0,
        "Noise offset (per-channel constant added to the noise) for darker/brighter images; 0.05-0.1 typical.",
        min=0.0,
        max=1.0,
        advanced=True,
    )
    timestep_sampling: str = setting(
        "auto",
        "How training noise levels are drawn: auto = uniform timesteps for eps/v models (SD1/2/XL), logit-normal for "
        "flow models (SD3, Flux; the SD3 paper's choice), through the model's own timestep shift.",
        choices=TIMESTEP_CHOICES,
        advanced=True,
    )
    logit_mean: float = setting(
        0.0, "Mean of the logit-normal timestep distribution (flow models).", min=-10.0, max=10.0, advanced=True
    )
    logit_std: float = setting(
        1.0, "Standard deviation of the logit-normal timestep distribution.", min=0.01, max=10.0, advanced=True
    )
    guidance: float = setting(
        1.0,
        "Flux dev's guidance input during training (kohya and ai-toolkit train at 1.0); ignored by other models.",
        min=0.0,
        max=100.0,
        advanced=True,
    )
    # ---- data ---------------------------------------------------------------------------------------------
    resolution: int = setting(
        512, "Training resolution: images are bucketed to about this many pixels squared.", min=64, max=4096, step=64
    )
    trigger_word: str = setting("", "Prepended to every caption (and written into the file's metadata).")
    caption_dropout: float = setting(
        0.0, "Probability of training an image with an empty caption.", min=0.0, max=1.0, advanced=True
    )
    shuffle_captions: bool = setting(
        False,
        "Shuffle the comma-separated tags of each caption every time it is used (kohya). The text encoder then "
        "runs every step instead of once per caption (about 1-2% of a 512 px SD1.5 step) and stays loaded.",
        advanced=True,
    )
    keep_tokens: int = setting(
        0,
        "With shuffle_captions: keep the caption's first N tags in place (the trigger word always stays first).",
        min=0,
        max=255,
        advanced=True,
    )
    cache_latents_to_disk: bool = setting(
        False,
        "Keep VAE latents in .lora_train_cache/ (next to the dataset folder, else the output folder), keyed by "
        "image content, bucket and VAE, so later runs skip encoding.",
        advanced=True,
    )
    # ---- sample previews ----------------------------------------------------------------------------------
    sample_every: int = setting(
        0, "Sample preview images with the LoRA every N steps (and at the end); 0 = off.", min=0, max=1_000_000
    )
    sample_prompts: str = setting(
        "",
        "Preview prompts, one per line; empty = the trigger word, else the first caption.",
        multiline=True,
    )
    sample_steps: int = setting(12, "Sampler steps per preview image (euler).", min=1, max=200, advanced=True)
    sample_cfg: float = setting(
        0.0,
        "CFG scale of the preview images; 0 = the family's usual value (7 for SD1/SD2/SDXL, 5 for SD3, 1 for Flux, "
        "whose guidance is a model input).",
        min=0.0,
        max=100.0,
        advanced=True,
    )
    sample_seed: int = setting(
        0,
        "Noise seed of the preview images (the same every time, so previews compare).",
        min=0,
        max=2**63 - 1,
        advanced=True,
    )
    # ---- memory / speed -----------------------------------------------------------------------------------
    mixed_precision: str = setting(
        "no", "Autocast the base model to bf16/fp16; adapter weights stay fp32.", choices=PRECISION_CHOICES
    )
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward: less memory, ~30% slower.")
    # ---- output -------------------------------------------------------------------------------------------
    output_name: str = setting("my_lora", "File name (without .safetensors) in the loras folder.")
    save_steps: int = setting(
        0, "Also save every N steps (file name gets _sNNNNNN); 0 = only at the end.", min=0, max=1_000_000
    )
    keep_last: int = setting(
        3,
        "Keep only the newest N intermediate saves (_sNNNNNN files); 0 = keep them all.",
        min=0,
        max=10_000,
        advanced=True,
    )
    resume: bool = setting(
        True,
        "Continue from <output_name>.lora_state (written every save_steps and on Cancel) when one is there.",
        advanced=True,
    )
    log_every: int = setting(
        10,
        "Read the loss back from the device every N steps (a sync); the chart and the progress bar update then.",
        min=1,
        max=10_000,
        advanced=True,
    )

    # ---- validation, EMA, masks, LoRA+, buckets, regularisation, TensorBoard ----------------------------------
    # Declared after the original settings: a saved workflow's widget values are positional, so new widgets go last.
    validation_split: float = setting(
        0.0,
        "Hold out this fraction of the images (chosen by `seed`, at least one) to measure a validation loss on; "
        "0 = none, unless a validation dataset is connected.",
        min=0.0,
        max=0.9,
        advanced=True,
    )
    validate_every: int = setting(
        0, "Measure the validation loss every N steps (and at the end); 0 = at the end only.", min=0, max=1_000_000,
        advanced=True,
    )  # fmt: skip
    validation_seed: int = setting(
        0,
        "Seed of the validation noise and noise levels: the same for every run, so validation curves compare.",
        min=0,
        max=2**63 - 1,
        advanced=True,
    )
    ema_decay: float = setting(
        0.0,
        "Keep an exponential moving average of the adapter weights (0.999 is typical) and save that as the LoRA "
        "(previews and validation use it too); 0 = off.",
        min=0.0,
        max=0.99999,
        advanced=True,
    )
    masked_loss: bool = setting(
        False,
        "Weight the loss by a mask per image (kohya masked_loss): `<image>_mask.png` beside it (white = learn, "
        "black = ignore), else the image's alpha channel; images with neither count everywhere.",
        advanced=True,
    )
    loraplus_lr_ratio: float = setting(
        0.0,
        "LoRA+ (arXiv 2402.12354): the up (B) matrices learn this many times faster than the down ones (16 is the "
        "paper's value); 0 = off. lora, locon and dora only.",
        min=0.0,
        max=1024.0,
        advanced=True,
    )
    rank_dropout: float = setting(
        0.0, "kohya rank dropout: drop each rank of the adapter per sample with this probability (lora, locon).",
        min=0.0, max=0.9, advanced=True,
    )  # fmt: skip
    module_dropout: float = setting(
        0.0, "kohya module dropout: skip a whole adapter for a step with this probability.", min=0.0, max=0.9,
        advanced=True,
    )  # fmt: skip
    buckets: bool = setting(
        True, "Aspect-ratio buckets (kohya enable_bucket); off = every image center-cropped to a square.",
        advanced=True,
    )  # fmt: skip
    bucket_min: int = setting(0, "Smallest bucket side in pixels; 0 = resolution / 2.", min=0, max=8192, advanced=True)
    bucket_max: int = setting(0, "Largest bucket side in pixels; 0 = resolution x 2.", min=0, max=16384, advanced=True)
    bucket_step: int = setting(
        64, "Bucket sides are multiples of this (kohya bucket_reso_steps).", min=8, max=512, step=8, advanced=True
    )
    bucket_no_upscale: bool = setting(
        False,
        "Images smaller than resolution² keep their size (rounded down to bucket_step) instead of being upscaled.",
        advanced=True,
    )
    prior_loss_weight: float = setting(
        1.0, "Loss weight of the regularisation (class) images (kohya prior_loss_weight).", min=0.0, max=100.0,
        advanced=True,
    )  # fmt: skip
    reg_ratio: float = setting(
        1.0,
        "Regularisation images per training image (with repeats) in each epoch; kohya uses 1.",
        min=0.01,
        max=100.0,
        advanced=True,
    )
    blocks_to_swap: int = setting(
        0,
        "Low VRAM for transformer models (Flux, SD3): keep the weights of the last N transformer blocks in CPU memory "
        "and copy each to the GPU only while it runs (kohya blocks_to_swap); turns on gradient_checkpointing. "
        "0 = off.",
        min=0,
        max=1000,
        advanced=True,
    )
    tensorboard: bool = setting(
        False,
        "Write TensorBoard event files (loss, validation loss, lr, previews) to <output folder>/tensorboard/"
        "<output_name>; needs `pip install tensorboard`.",
        advanced=True,
    )
    compile: bool = setting(
        False,
        "torch.compile each repeated block of the model (regional compile): faster steps after a slower start "
        "while the blocks compile. Where compile cannot run, one log line and training runs without it.",
        advanced=True,
    )

    ALIASES: ClassVar[dict[str, str]] = {
        "lora_rank": "rank",
        "network_dim": "rank",
        "network_alpha": "alpha",
        "lr": "learning_rate",
        "max_train_steps": "steps",
        "train_batch_size": "batch_size",
        "gradient_accumulation_steps": "gradient_accumulation",
        "save_every_n_steps": "save_steps",
        "max_train_epochs": "epochs",
        "lr_warmup_steps": "warmup_steps",
        "optimizer_type": "optimizer",
        "caption_dropout_rate": "caption_dropout",
        "enable_bucket": "buckets",
        "min_bucket_reso": "bucket_min",
        "max_bucket_reso": "bucket_max",
        "bucket_reso_steps": "bucket_step",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if (
            not self.output_name.strip()
            or any(c in self.output_name for c in "/\\\0")
            or self.output_name in (".", "..")
        ):
            raise SettingsError(f"output_name must be a plain file name, got {self.output_name!r}")
        self._check_buckets()
        if self.rank_dropout > 0 and self.network not in ("lora", "locon"):
            raise SettingsError(
                f"rank_dropout works on lora and locon (kohya networks.lora), not network={self.network!r}; "
                "set rank_dropout to 0 or use module_dropout"
            )
        if self.loraplus_lr_ratio > 0 and self.network not in ("lora", "locon", "dora"):
            raise SettingsError(
                f"loraplus_lr_ratio needs up/down matrices (lora, locon, dora), not network={self.network!r}; "
                "set it to 0 or pick one of those networks"
            )

    def _check_buckets(self) -> None:
        if self.bucket_step % 8:
            raise SettingsError(f"bucket_step must be a multiple of 8 (the latent grid), got {self.bucket_step}")
        if self.bucket_min and self.bucket_min > self.resolution:
            raise SettingsError(
                f"bucket_min ({self.bucket_min}) is larger than resolution ({self.resolution}); lower it or use 0"
            )
        if self.bucket_max and self.bucket_max < self.resolution:
            raise SettingsError(
                f"bucket_max ({self.bucket_max}) is smaller than resolution ({self.resolution}); raise it or use 0"
            )

    def bucket_options(self) -> BucketOptions:
        """The bucket settings as the dataset package's `BucketOptions`."""
        return BucketOptions(self.buckets, self.bucket_min, self.bucket_max, self.bucket_step, self.bucket_no_upscale)
