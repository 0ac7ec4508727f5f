"""The one place the trainer touches ComfyUI: model management, sampling, encoders, progress and Cancel.

Host APIs used (all present in 0.3.75 and upstream ~0.38; optional ones are probed with `hasattr`):
`comfy.model_management.load_models_gpu / throw_exception_if_processing_interrupted / soft_empty_cache`,
`ModelPatcher.model / load_device / get_model_object("model_sampling") / clone`, `BaseModel.diffusion_model /
model_config / process_latent_in / extra_conds / process_timestep / get_dtype / manual_cast_dtype`,
`VAE.encode / decode / first_stage_model / vae_dtype`, `CLIP.tokenize / encode_from_tokens /
encode_from_tokens_scheduled`, `comfy.sample.sample / prepare_noise / fix_empty_latent_channels` (previews),
`comfy.utils.unet_to_diffusers / mmdit_to_diffusers / ProgressBar`, `comfy.sd.load_lora_for_models`,
`comfy.model_management.current_loaded_models` (+ `LoadedModel.model / model_unload`, `ModelPatcher.is_clone`),
`model_sampling.sigma / timestep / percent_to_sigma / noise_scaling / calculate_input / calculate_denoised`,
`comfy.model_sampling.V_PREDICTION`, `folder_paths.get_temp_directory`, `server.PromptServer.instance.send_sync`.
Upstream (~0.38, read) keeps all of these; its LoadedModel also serves "dynamic" models, whose model_unload works
the same way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from lora_train.dataset import LoraDataset, fit_to_bucket, load_frames
from lora_train.host.compat import HostTooOld, check_host
from lora_train.host.edit import check_references, control_item, with_references
from lora_train.host.families import architecture, family_support, model_family, size_conditioning
from lora_train.host.naming import diffusers_names, diffusers_pieces, same_name_pieces
from lora_train.host.session import (
    ComfySession,
    fresh_parameters,
    host_training_flag,
    protect_inplace_residuals,
    training_attention,
)
from lora_train.host.start_image import (
    START_PREPARE,
    check_clip_vision,
    reads_clip_vision,
    start_conds,
    start_image_note,
    start_video,
    takes_start_image,
    with_start_image,
)
from lora_train.training import (
    Example,
    LatentCache,
    Progress,
    TrainConfig,
    TrainingError,
    image_digest,
    latent_key,
    preview_prompts,
    tensors_identity,
    training_buckets,
)

log = logging.getLogger(__name__)


PROGRESS_EVENT = "lora_train.train_progress"
SAMPLE_EVENT = "lora_train.train_sample"
PREVIEW_MAX_SIZE = 512


def unload_from_device(patcher) -> bool:
    """Take `patcher` (and its clones) out of ComfyUI's loaded models, back to its offload device."""
    import comfy.model_management as mm

    unloaded = False
    for index in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[index]
        model = loaded.model
        if model is not None and (model is patcher or model.is_clone(patcher)):
            loaded.model_unload()
            mm.current_loaded_models.pop(index)
            unloaded = True
    return unloaded


def caption_with_trigger(caption: str, trigger: str) -> str:
    """Prepend the trigger word unless the caption already starts with it."""
    caption, trigger = caption.strip(), trigger.strip()
    if not trigger or caption.lower().startswith(trigger.lower()):
        return caption or trigger
    return f"{trigger}, {caption}" if caption else trigger


class ComfyHost:
    """Adapter from a ComfyUI MODEL (+ CLIP, VAE) to the trainer's `TrainingHost` protocol."""

    def __init__(
        self, model, clip, vae, *, node_id: str | None = None, send_event: Callable | None = None, clip_vision=None
    ):
        try:
            check_host()
        except HostTooOld as exc:
            raise TrainingError(str(exc)) from None
        self.family = model_family(model)
        self.support = family_support(model, self.family)
        if vae is None or clip is None:
            raise TrainingError("Train LoRA needs the checkpoint's CLIP and VAE: connect both from the loader")
        self.model, self.clip, self.vae = model, clip, vae
        self.node_id = node_id
        self.send_event = send_event
        self.architecture = architecture(model, self.family, self.support)
        self.start_image = takes_start_image(model)
        self.clip_vision = clip_vision  # CLIP_VISION: image-to-video models that read its features
        self.base_model_name = self.family
        self.guidance = 1.0
        self._progress_bar = None
        self._preview_prompts: list[str] = []
        self._preview_conds: tuple[list, list] | None = None

    # ---- encoding (once per image and caption) -------------------------------------------------------------
    def encode_text(self, text: str) -> dict[str, Any]:
        tokens = self.clip.tokenize(text)
        encoded = self.clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
        cond = encoded.pop("cond")
        return {"cross_attn": cond, **encoded}

    def encode_conditioning(self, text: str) -> list:
        """CONDITIONING for ComfyUI's sampler (what CLIPTextEncode outputs)."""
        return self.clip.encode_from_tokens_scheduled(self.clip.tokenize(text))

    def preview_conditioning(self, *, fresh: bool = False) -> tuple[list, list]:
        """(one CONDITIONING per preview prompt, the empty negative); encoded once, or now when `fresh` (the text
        encoder is training: its adapters must be in the previews)."""
        if fresh or self._preview_conds is None:
            conds = ([self.encode_conditioning(p) for p in self._preview_prompts], self.encode_conditioning(""))
            if fresh:
                return conds
            self._preview_conds = conds
        return self._preview_conds

    def model_conds(
        self, text_out: dict[str, Any], latents: torch.Tensor, size: dict[str, int] | None = None
    ) -> dict[str, Any]:
        """The model's own conditioning (BaseModel.extra_conds) for one example: text, pooled vectors, SDXL's size
        conditioning (`size`, else the latents' pixel size), Flux's guidance input."""
        base = self.model.model
        size = size or {"width": latents.shape[-1] * 8, "height": latents.shape[-2] * 8}
        extra = {"guidance": self.guidance, **size, **text_out}
        conds = base.extra_conds(device=torch.device("cpu"), noise=latents, **extra)
        return {k: type(v)(v.cond.detach().clone()) if torch.is_tensor(v.cond) else v for k, v in conds.items()}

    def vae_identity(self) -> str:
        """Fingerprint of the VAE's weights and dtype (part of the latent cache key)."""
        stage = self.vae.first_stage_model
        return tensors_identity(stage.state_dict().items(), f"{type(stage).__name__}:{self.vae.vae_dtype}")

    def _raw_latents(
        self, item, bucket: tuple[int, int], cache: Any, vae_id: str, pixels: Callable, start: bool = False
    ) -> torch.Tensor:
        """The VAE's latents of one image (or clip) at its bucket size, or with `start` of its start-image video:
        from the disk cache, or encoded (and stored) from `pixels()`."""
        key = ""
        if cache is not None:
            key = latent_key(image_digest(item) + (f"; {START_PREPARE}" if start else ""), bucket, vae_id)
            cached = cache.get(key)
            if cached is not None:
                return cached
        frames = pixels()
        latents = self.vae.encode(torch.from_numpy(start_video(frames) if start else frames)).float().cpu()
        if cache is not None:
            cache.put(key, latents)
        return latents

    def _start_image(self, item, bucket: tuple[int, int], cache: Any, vae_id: str, pixels: Callable) -> dict:
        """The start-image conditioning of one clip (its first frame), with its CLIP vision features where the
        model reads them (as CLIPVisionEncode, crop center, gives them)."""
        refs = start_conds(self._raw_latents(item, bucket, cache, vae_id, pixels, start=True))
        if reads_clip_vision(self.model):
            refs["clip_vision_output"] = self.clip_vision.encode_image(torch.from_numpy(pixels()[:1]), crop=True)
        return refs

    def _pixels(self, item, index: int, bucket: tuple[int, int]):
        """An image (or a clip's frames) fitted to its bucket: one [frames, H, W, C] float array in 0..1 (video VAEs
        encode a clip as one batch)."""
        import numpy as np

        try:
            images = load_frames(item) if item.frames else [item.load()]
        except Exception as exc:  # PIL and PyAV raise many types for broken files
            raise TrainingError(f"cannot read training image {item.path or index}: {exc}") from exc
        return np.stack([np.asarray(fit_to_bucket(image, bucket), dtype=np.float32) / 255.0 for image in images])

    def check_config(self, cfg: TrainConfig) -> None:
        """Settings this family cannot train with, refused before any work starts."""
        if self.support.encode_once and (cfg.train_text_encoder or cfg.shuffle_captions):
            setting = "train_text_encoder" if cfg.train_text_encoder else "shuffle_captions"
            raise TrainingError(
                f"{setting} is not available for {self.family}: its captions are encoded once before training so "
                "that its large text encoder (T5-XXL) is not kept in memory next to the model. Turn it off."
            )

    def check_clips(self, dataset: LoraDataset) -> None:
        """Video clips only for video VAEs, with the frame counts they take (4k+1 for Wan's and HunyuanVideo's),
        refused by file before any work."""
        clips = [item for item in dataset.items if item.frames]
        if not clips:
            return
        temporal = getattr(self.vae, "upscale_index_formula", None)
        if getattr(self.vae, "latent_dim", 2) != 3 or not temporal:
            raise TrainingError(
                f"{clips[0].path}: a video clip, but {self.family} trains on images (its VAE encodes no frames). "
                "Remove the clips from the dataset or connect a video model (Wan, HunyuanVideo)."
            )
        step = int(temporal[0])
        for item in clips:
            if (item.frames - 1) % step:
                raise TrainingError(
                    f"{item.path}: {item.frames} frames, but {self.family}'s VAE takes {step}k+1 frames (1, "
                    f"{1 + step}, {1 + 2 * step}, ...). Set the dataset's frames setting to one of those (0 picks the "
                    "most each clip has)."
                )

    def encode_examples(self, dataset: LoraDataset, cfg: TrainConfig, cache_dir: Path | None = None) -> list[Example]:
        """VAE-encode every image (or clip) once (at its bucket size; with `cache_dir`, once across runs) and
        text-encode every distinct caption once."""
        self.check_config(cfg)
        self.check_clips(dataset)
        check_references(self.model, self.family, dataset)
        if self.start_image:
            check_clip_vision(self.model, self.family, self.clip_vision)
            log.info(start_image_note(self.family))
        self.guidance = cfg.guidance
        texts: dict[str, dict[str, Any]] = {}
        examples = []
        buckets = training_buckets(dataset.items, cfg)
        first = caption_with_trigger(dataset.items[0].caption, cfg.trigger_word) if dataset.items else ""
        self._preview_prompts = preview_prompts(cfg.sample_prompts, cfg.trigger_word, first)
        self._preview_conds = None
        cache = LatentCache(cache_dir) if cache_dir is not None else None
        with torch.inference_mode():
            vae_id = self.vae_identity() if cache is not None else ""
            if cfg.sample_every:  # before training loads the model: on a GPU, encoding later could evict it
                self.preview_conditioning()
            for index, (item, bucket) in enumerate(zip(dataset.items, buckets, strict=True)):
                pixels = functools.cache(functools.partial(self._pixels, item, index, bucket))  # decoded once
                raw = self._raw_latents(item, bucket, cache, vae_id, pixels)
                latents = self.model.model.process_latent_in(raw).float().cpu()
                control = control_item(item)
                refs = None
                if control:
                    control_pixels = functools.partial(self._pixels, control, index, bucket)
                    refs = [self._raw_latents(control, bucket, cache, vae_id, control_pixels)]
                if self.start_image:  # image-to-video: the clip's first frame is its start image
                    refs = self._start_image(item, bucket, cache, vae_id, pixels)
                caption = caption_with_trigger(item.caption, cfg.trigger_word)
                for text in (caption, ""):
                    if text not in texts:
                        texts[text] = self.encode_text(text)
                self.check_cancel()
                original = (item.width, item.height) if item.width > 0 and item.height > 0 else bucket
                examples.append((latents, caption, item.repeats, size_conditioning(original, bucket), refs))
        if cache is not None:
            log.info("latent cache %s: %d reused, %d encoded", cache.folder, cache.hits, cache.misses)
        # Ordinary tensors (made outside inference mode, which every node runs in): autograd must save them.
        out = []
        with torch.inference_mode(False):
            for latents, caption, repeats, size, refs in examples:
                latents = latents.clone()
                # Edit models see the source image with and without the caption (caption dropout keeps it).
                extra = with_start_image if self.start_image else with_references
                conds = tuple(self.model_conds(extra(texts[t], refs), latents, size) for t in (caption, ""))
                out.append(Example(latents[0], *conds, repeats=repeats, caption=caption, size=size))
        return out

    # ---- the training session -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self, cfg: TrainConfig) -> Iterator[ComfySession]:
        """Load the model where ComfyUI wants it (making room), make it trainable, restore it afterwards."""
        import comfy.model_management as mm

        # Room for adapters, optimizer state and activations on top of the weights; ComfyUI unloads other models.
        extra = int(cfg.batch_size * (cfg.resolution / 512) ** 2 * 2.5 * 1024**3)
        kwargs = {"memory_required": extra}
        # Whole, unless blocks are swapped: then a card too small for the model gets ComfyUI's partial load
        # (the swapped blocks leave the device right after, whatever ComfyUI loaded).
        if "force_full_load" in mm.load_models_gpu.__code__.co_varnames:
            kwargs["force_full_load"] = not cfg.blocks_to_swap
        text_model = self.clip.cond_stage_model if cfg.train_text_encoder else None
        # Shuffled captions are encoded every step: the text encoder stays loaded next to the model.
        encodes = cfg.train_text_encoder or cfg.shuffle_captions
        patchers = [self.model] + ([self.clip.patcher] if encodes else [])
        text_patcher = getattr(self.clip, "patcher", None)
        if not encodes and text_patcher is not None:  # captions are cached: the text encoders leave the device
            unload_from_device(text_patcher)
        mm.load_models_gpu(patchers, **kwargs)
        base = self.model.model
        frozen = [m for m in (base.diffusion_model, text_model) if m is not None]
        states = [(m, m.training, {n: p.requires_grad for n, p in m.named_parameters()}) for m in frozen]
        norm_hooks = protect_inplace_residuals(base.diffusion_model)
        attention = training_attention()
        if attention is not None:
            log.info("training attention: torch SDPA (in place of ComfyUI's CPU fallback kernel)")
        try:
            with torch.inference_mode(False), torch.enable_grad(), host_training_flag(True):
                for module in frozen:
                    log.debug("made %d inference tensors trainable-safe", fresh_parameters(module))
                    module.requires_grad_(False)
                yield ComfySession(
                    self.model,
                    base.diffusion_model,
                    self.model.get_model_object("model_sampling"),
                    self.model.load_device,
                    base.get_dtype(),
                    diffusers_names(base) if self.support.naming == "kohya_diffusers" else {},
                    host=self,
                    text_model=text_model,
                    **self._file_naming(base),
                    attention=attention,
                )
        finally:
            for hook in norm_hooks:
                hook.remove()
            for module, was_training, requires_grad in states:
                for name, p in module.named_parameters():
                    p.grad = None
                    p.requires_grad_(requires_grad.get(name, False))
                module.train(was_training)
            if hasattr(mm, "soft_empty_cache"):
                mm.soft_empty_cache()

    def _file_naming(self, base) -> dict[str, Any]:
        """ComfySession's file-naming fields for this family (see FamilySupport.naming), logged once per run."""
        naming = self.support.naming
        if naming == "comfyui":
            log.info(
                "%s has no family entry: the LoRA is written in ComfyUI's own key naming (diffusion_model.<module>."
                "lora_down/lora_up, as ComfyUI's LoraLoader and built-in trainer read and write it); other tools "
                "(kohya, diffusers, ai-toolkit) may not read this file",
                self.family,
            )
            return {"comfyui_naming": True}
        log.info("%s LoRA written in %s key naming", self.family, naming)
        if naming == "diffusers":
            return {"diffusers_pieces": diffusers_pieces(base)}
        if naming == "diffusers_zimage":
            return {
                "diffusers_pieces": diffusers_pieces(base, "z_image_to_diffusers"),
                "peft_prefix": "diffusion_model.",
            }
        if naming == "diffusers_same":
            return {"diffusers_pieces": same_name_pieces(base.diffusion_model)}
        if naming == "comfyui_peft":
            return {"diffusers_pieces": same_name_pieces(base.diffusion_model), "peft_prefix": "diffusion_model."}
        return {}

    # ---- progress and cancel --------------------------------------------------------------------------------
    def check_cancel(self) -> None:
        import comfy.model_management as mm

        mm.throw_exception_if_processing_interrupted()

    def _bar(self, total: int):
        import comfy.utils

        if self._progress_bar is None:
            self._progress_bar = comfy.utils.ProgressBar(total)
        return self._progress_bar

    def show_samples(self, step: int, total: int, images: list, paths: list) -> None:
        """Show the newest preview on the node (progress preview) and tell the client where each one is."""
        if not images:
            return
        self._bar(total).update_absolute(step, total, ("JPEG", images[-1], PREVIEW_MAX_SIZE))
        if self.send_event is None:
            return
        import folder_paths

        for image, path in zip(images, paths, strict=True):
            # A copy in ComfyUI's temp folder: the client fetches it through /view?type=temp.
            name = f"lora_train_{path.stem}_{uuid.uuid4().hex[:8]}.png"
            temp = Path(folder_paths.get_temp_directory())
            temp.mkdir(parents=True, exist_ok=True)
            image.save(temp / name, compress_level=1)
            data = {"node": self.node_id, "step": step, "image": {"filename": name, "subfolder": "", "type": "temp"}}
            self.send_event(SAMPLE_EVENT, data)

    def report(self, progress: Progress) -> None:
        self._bar(progress.total).update_absolute(progress.step, progress.total)
        if self.send_event is not None:
            self.send_event(
                PROGRESS_EVENT,
                {
                    "node": self.node_id,
                    "step": progress.step,
                    "total": progress.total,
                    "loss": progress.loss,
                    "smoothed_loss": progress.smoothed_loss,
                    "lr": progress.lr,
                    "eta_s": progress.eta_s,
                    "elapsed_s": progress.elapsed_s,
                    "validation_loss": progress.validation_loss,
                },
            )


def load_split_files(
    unet: str | Path,
    text_encoders: list[str],
    clip_type,
    vae: str | Path,
    *,
    model_options: dict | None = None,
    embedding_directory: list[str] | None = None,
):
    """(MODEL, CLIP, VAE) of a release shipped as separate files, loaded as ComfyUI's Load Diffusion Model, Load CLIP
    (or DualCLIPLoader) and Load VAE nodes load them, under inference mode as nodes run. `clip_type` is a
    `comfy.sd.CLIPType`."""
    import comfy.sd
    import comfy.utils

    with torch.inference_mode():
        model = comfy.sd.load_diffusion_model(str(unet), model_options=model_options or {})
        clip = comfy.sd.load_clip(
            ckpt_paths=[str(p) for p in text_encoders], embedding_directory=embedding_directory, clip_type=clip_type
        )
        vae_model = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vae)))
        vae_model.throw_exception_if_invalid()
    return model, clip, vae_model


def apply_lora(model, clip, lora_tensors: dict[str, torch.Tensor], strength_model: float, strength_clip: float):
    """MODEL and CLIP with a LoRA applied through ComfyUI's own loader path (as LoraLoader does)."""
    import comfy.sd

    return comfy.sd.load_lora_for_models(model, clip, lora_tensors, strength_model, strength_clip)


def send_event_to_client(event: str, data: dict) -> None:
    """Send a namespaced websocket event to the client that queued the running prompt."""
    try:
        from server import PromptServer
    except ImportError:  # used as a library (CLI): nobody to tell
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None:
        instance.send_sync(event, data, getattr(instance, "client_id", None))
