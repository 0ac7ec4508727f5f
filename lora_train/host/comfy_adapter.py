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
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_train.dataset import LoraDataset
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


@dataclass(frozen=True)
class FamilySupport:
    """How one model family (ComfyUI's model_config class) trains and how its LoRA files are named.

    naming: `kohya_diffusers` = kohya's SD1/SD2 keys (`lora_unet_down_blocks_0_attentions_0_...`, diffusers block
    names); `kohya_ldm` = `lora_unet_` + ComfyUI's own module path (kohya's SDXL keys with LDM block names, and
    kohya's Flux keys with BFL names, `lora_unet_double_blocks_0_img_attn_qkv`); `diffusers` = diffusers' PEFT keys
    (`transformer.transformer_blocks.0.attn.to_q.lora_A.weight`, fused qkv split into q/k/v), for SD3, whose kohya
    keys diffusers cannot read.
    """

    architecture: str  # modelspec.architecture of the LoRA
    naming: str
    preview_cfg: float  # the CFG scale previews use when sample_cfg is 0 (the family's usual one)
    # T5-XXL families: captions are encoded once, before training, and the text encoders are never trained, so
    # the 4.8 B-parameter encoder is never resident next to the diffusion model.
    encode_once: bool = False


FAMILIES: dict[str, FamilySupport] = {
    "SD15": FamilySupport("stable-diffusion-v1/lora", "kohya_diffusers", 7.0),
    "SD20": FamilySupport("stable-diffusion-v2-768-v/lora", "kohya_diffusers", 7.0),  # -512 when it predicts eps
    "SDXL": FamilySupport("stable-diffusion-xl-v1-base/lora", "kohya_ldm", 7.0),
    "SD3": FamilySupport("stable-diffusion-3/lora", "diffusers", 5.0, encode_once=True),
    "Flux": FamilySupport("flux-1-dev/lora", "kohya_ldm", 1.0, encode_once=True),
    "FluxSchnell": FamilySupport("flux-1-schnell/lora", "kohya_ldm", 1.0, encode_once=True),
}
# kohya's text-encoder prefixes: te1 is CLIP-L, te2 OpenCLIP-G (SDXL); a single encoder is plain `lora_te_`.
TEXT_ENCODER_ORDER = ("clip_l", "clip_g", "clip_h")
PROGRESS_EVENT = "lora_train.train_progress"
SAMPLE_EVENT = "lora_train.train_sample"
PREVIEW_SAMPLER, PREVIEW_SCHEDULER, PREVIEW_MAX_SIZE = "euler", "normal", 512


def model_family(model) -> str:
    """ComfyUI's name for the model's family (its model_config class), e.g. SD15, SDXL, Flux."""
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "diffusion_model"):
        raise TrainingError("the MODEL input is not a diffusion model; connect a checkpoint or UNet loader's MODEL")
    return type(base.model_config).__name__


def size_conditioning(original: tuple[int, int], bucket: tuple[int, int]) -> dict[str, int]:
    """SDXL's micro-conditioning for an image of `original` (w, h) trained at `bucket`: its original size, the
    top-left corner `fit_to_bucket` crops at (in resized pixels, as kohya records it) and the target size."""
    (w, h), (bw, bh) = original, bucket
    scale = max(bw / w, bh / h)
    resized_w, resized_h = max(bw, round(w * scale)), max(bh, round(h * scale))
    return {
        "width": w,
        "height": h,
        "crop_w": (resized_w - bw) // 2,
        "crop_h": (resized_h - bh) // 2,
        "target_width": bw,
        "target_height": bh,
    }


def _predicts_v(model) -> bool:
    import comfy.model_sampling

    return isinstance(model.get_model_object("model_sampling"), comfy.model_sampling.V_PREDICTION)


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


def fit_to_bucket(image, size: tuple[int, int]):
    """Scale so the image covers `size`, then center-crop to it."""
    from PIL import Image

    w, h = size
    scale = max(w / image.width, h / image.height)
    resized = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))), Image.LANCZOS)
    left, top = (resized.width - w) // 2, (resized.height - h) // 2
    return resized.crop((left, top, left + w, top + h))


def caption_with_trigger(caption: str, trigger: str) -> str:
    """Prepend the trigger word unless the caption already starts with it."""
    caption, trigger = caption.strip(), trigger.strip()
    if not trigger or caption.lower().startswith(trigger.lower()):
        return caption or trigger
    return f"{trigger}, {caption}" if caption else trigger


# Blocks whose forward adds to its input in place (`img += ...`: ComfyUI's Flux double/single-stream blocks) after a
# LayerNorm saved that input for backward: in fp32 (no autocast copy in between) backward then fails with "modified
# by an inplace operation".
INPLACE_RESIDUAL_BLOCKS = ("DoubleStreamBlock", "SingleStreamBlock")


def _clone_input(_module: torch.nn.Module, args: tuple) -> tuple | None:
    if args and torch.is_tensor(args[0]) and torch.is_grad_enabled():
        return (args[0].clone(), *args[1:])
    return None


def _protect_inplace_residuals(root: torch.nn.Module) -> list:
    """Give every LayerNorm inside an in-place residual block its own copy of its input while grad is on (one
    activation per norm); the hooks are removed after training. Returns the hook handles."""
    handles = []
    for block in root.modules():
        if type(block).__name__ in INPLACE_RESIDUAL_BLOCKS:
            for module in block.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    handles.append(module.register_forward_pre_hook(_clone_input))
    return handles


def _fresh_parameters(module: torch.nn.Module) -> int:
    """Replace inference-mode parameters/buffers with ordinary tensors of equal value (see HOST.md); return count.

    ComfyUI loads weights under inference mode; autograd refuses to save those for backward. Cloning the tensor
    in place (`p.data = ...`) is not enough, the Parameter object itself must be new.
    """
    replaced = 0
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None and param.is_inference():
                sub._parameters[name] = torch.nn.Parameter(param.clone(), requires_grad=False)
                replaced += 1
        for name, buf in list(sub._buffers.items()):
            if buf is not None and buf.is_inference():
                sub._buffers[name] = buf.clone()
                replaced += 1
    return replaced


@dataclass
class ComfySession:
    """The diffusion model lent to the loop for one run."""

    model: Any  # ModelPatcher
    diffusion_model: torch.nn.Module
    sampling: Any
    device: torch.device
    dtype: torch.dtype
    prefixes: dict[str, str] = field(default_factory=dict)
    host: ComfyHost | None = None
    text_model: torch.nn.Module | None = None  # the CLIP's cond_stage_model when the text encoder trains
    # naming "diffusers": ComfyUI module path -> the diffusers modules holding its weight's rows
    diffusers_pieces: dict[str, list[tuple[str, Any, Any]]] = field(default_factory=dict)

    def kohya_prefix(self, module_path: str) -> str:
        """kohya key prefix; diffusers-style block names (what kohya writes), LDM names where none exists."""
        return "lora_unet_" + self.prefixes.get(module_path, module_path).replace(".", "_")

    def file_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The kohya tensors as this family's file stores them (see FamilySupport.naming)."""
        if not self.diffusers_pieces:
            return tensors
        by_prefix = {self.kohya_prefix(path): pieces for path, pieces in self.diffusers_pieces.items()}
        return to_diffusers_peft(tensors, by_prefix)

    def fingerprint(self) -> str:
        """Identifies the base model (family + a sample of its current weights) for resume checks."""
        digest = hashlib.sha256(type(self.model.model.model_config).__name__.encode())
        for name, tensor in self.diffusion_model.state_dict().items():  # 16 evenly spaced values of every tensor
            flat = tensor.detach().flatten()
            digest.update(name.encode())
            digest.update(flat[:: max(1, flat.numel() // 16)][:16].float().cpu().numpy().tobytes())
        return f"{type(self.model.model.model_config).__name__}:{digest.hexdigest()[:16]}"

    def text_encoder_targets(self) -> dict[str, torch.nn.Module]:
        """The text encoders' attention and MLP projections (kohya's CLIPAttention/CLIPMLP targets)."""
        if self.text_model is None:
            return {}
        return {
            path: module
            for path, module in self.text_model.named_modules()
            if isinstance(module, torch.nn.Linear) and ".encoder.layers." in path and ".transformer." in path
        }

    def kohya_te_prefix(self, module_path: str) -> str:
        """`clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj` -> `lora_te_text_model_..._q_proj`
        (`lora_te1_` / `lora_te2_` for clip_l / clip_g when a model has two text encoders, as kohya names SDXL)."""
        encoder, _, rest = module_path.partition(".transformer.")
        rank = {name: i for i, name in enumerate(TEXT_ENCODER_ORDER)}
        encoders = sorted({p.split(".", 1)[0] for p in self.text_encoder_targets()}, key=lambda e: rank.get(e, 99))
        prefix = "lora_te_" if len(encoders) < 2 else f"lora_te{encoders.index(encoder) + 1}_"
        return prefix + rest.replace(".", "_")

    def encode_captions(
        self, captions: list[str], latents: torch.Tensor, sizes: list[dict[str, int] | None]
    ) -> dict[str, torch.Tensor]:
        """Encode captions now, with gradients through the text encoder's adapters (text-encoder training)."""
        assert self.host is not None
        conds = [
            self.host.model_conds(self.host.encode_text(c), latents[i : i + 1], sizes[i])
            for i, c in enumerate(captions)
        ]
        return self.collate(conds)

    def collate(self, conds: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Concatenate per-example ComfyUI conds (CONDRegular & co) into batch tensors on the device."""
        first = conds[0]
        return {key: first[key].concat([c[key] for c in conds[1:]]).to(self.device) for key in first}

    def sample_previews(self, cfg: TrainConfig) -> list:
        """One image per preview prompt: ComfyUI's own sampler on this patcher (the adapters are forward hooks on
        its modules, so it samples with the LoRA), then the VAE. The caller holds no_grad and the RNG streams."""
        import comfy.sample

        assert self.host is not None
        positives, negative = self.host.preview_conditioning(fresh=self.text_model is not None)
        size = cfg.resolution // 8
        latent = comfy.sample.fix_empty_latent_channels(self.model, torch.zeros([1, 4, size, size]))
        scale = cfg.sample_cfg or self.host.support.preview_cfg
        was_training = self.diffusion_model.training
        self.diffusion_model.eval()
        images = []
        try:
            for positive in positives:
                # KSampler's own noise for this seed (it reseeds torch's global stream; the caller restores it), so
                # a KSampler with the trained LoRA and seed sample_seed redraws the preview.
                noise = comfy.sample.prepare_noise(latent, cfg.sample_seed)
                samples = comfy.sample.sample(
                    self.model, noise, cfg.sample_steps, scale, PREVIEW_SAMPLER, PREVIEW_SCHEDULER,
                    positive, negative, latent, disable_pbar=True, seed=cfg.sample_seed,
                )  # fmt: skip
                images.append(_to_pil(self.host.vae.decode(samples)[0]))
        finally:
            self.diffusion_model.train(was_training)
            # The sampler may have (re)loaded the model, which brings ComfyUI's inference-mode weights back.
            _fresh_parameters(self.diffusion_model)
        return images

    def predict(self, model_input, sigmas, timesteps, cond, noisy) -> torch.Tensor:
        """The raw diffusion-model output (eps, v or flow), as BaseModel would compute it before denoising."""
        base = self.model.model
        extra = dict(cond)
        x = model_input
        if "c_concat" in extra:
            x = torch.cat([x, extra.pop("c_concat").to(x)], dim=1)
        context = extra.pop("c_crossattn", None)
        dtype = getattr(base, "manual_cast_dtype", None) or self.dtype
        x = x.to(dtype)
        if context is not None:
            context = context.to(dtype)
        extra = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in extra.items()}
        t = base.process_timestep(timesteps.float(), x=noisy, **extra)
        return base.diffusion_model(x, t, context=context, control=None, transformer_options={}, **extra)


def _to_pil(pixels: torch.Tensor):
    """[H, W, C] floats in 0..1 (VAE.decode's layout) as a PIL image."""
    from PIL import Image

    array = (pixels.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    return Image.fromarray(array[..., :3])


def to_diffusers_peft(
    tensors: dict[str, torch.Tensor], pieces: dict[str, list[tuple[str, Any, Any]]]
) -> dict[str, torch.Tensor]:
    """kohya LoRA tensors -> diffusers PEFT keys (`transformer.<module>.lora_A/lora_B.weight`, alpha/rank folded
    into lora_B). A fused weight (SD3's qkv) becomes one LoRA per diffusers module, sharing lora_A, each with its
    rows of lora_B (exact: the product of each pair is those rows of the fused update); `function` re-orders rows
    as ComfyUI's key map does (SD3's last adaLN). Tensors that are not plain LoRA (LyCORIS types), or modules with
    no diffusers name, stay in kohya naming, which ComfyUI loads too."""
    prefixes = {key.split(".", 1)[0] for key in tensors}
    plain = all(
        key.split(".", 1)[1] in ("lora_down.weight", "lora_up.weight", "alpha") and key.split(".", 1)[0] in pieces
        for key in tensors
    )
    if not plain:
        log.warning("LoRA kept in kohya naming: diffusers keys exist only for plain LoRA on mapped modules")
        return tensors
    out: dict[str, torch.Tensor] = {}
    for prefix in sorted(prefixes):
        down, up = tensors[f"{prefix}.lora_down.weight"], tensors[f"{prefix}.lora_up.weight"]
        alpha = tensors.get(f"{prefix}.alpha")
        scale = float(alpha) / down.shape[0] if alpha is not None else 1.0
        for name, offset, function in pieces[prefix]:
            rows = up * scale
            if offset is not None:
                dim, start, size = offset
                rows = rows.narrow(dim, start, size)
            if function is not None:
                rows = function(rows)
            out[f"transformer.{name}.lora_A.weight"] = down.contiguous()
            out[f"transformer.{name}.lora_B.weight"] = rows.contiguous()
    return out


def _diffusers_pieces(base) -> dict[str, list[tuple[str, Any, Any]]]:
    """ComfyUI module path -> [(diffusers module path, (dim, start, size) rows or None, row function or None)] for
    SD3's MMDiT, from ComfyUI's own key map (the one its LoRA loader reads diffusers files with)."""
    import comfy.utils

    mapping = comfy.utils.mmdit_to_diffusers(base.model_config.unet_config, output_prefix="")
    pieces: dict[str, list[tuple[str, Any, Any]]] = {}
    for diffusers_key, target in mapping.items():
        if isinstance(target, str):
            key, offset, function = target, None, None
        else:
            key, offset, function = target[0], target[1], target[2] if len(target) > 2 else None
        if diffusers_key.endswith(".weight") and key.endswith(".weight"):
            pieces.setdefault(key[: -len(".weight")], []).append((diffusers_key[: -len(".weight")], offset, function))
    return pieces


def _diffusers_names(base) -> dict[str, str]:
    """LDM module path -> diffusers module path for UNet models (kohya's naming for SD1/SD2/SDXL LoRAs)."""
    import comfy.utils

    unet_config = getattr(base.model_config, "unet_config", {})
    mapping = comfy.utils.unet_to_diffusers(unet_config) if "num_res_blocks" in unet_config else {}
    return {
        ldm[: -len(".weight")]: diff[: -len(".weight")] for diff, ldm in mapping.items() if ldm.endswith(".weight")
    }


class ComfyHost:
    """Adapter from a ComfyUI MODEL (+ CLIP, VAE) to the trainer's `TrainingHost` protocol."""

    def __init__(self, model, clip, vae, *, node_id: str | None = None, send_event: Callable | None = None):
        self.family = model_family(model)
        if self.family not in FAMILIES:
            raise TrainingError(
                f"ComfyUI detected this model as {self.family}; training LoRAs for it is not supported yet "
                f"(supported: {', '.join(FAMILIES)}). Nothing was trained."
            )
        self.support = FAMILIES[self.family]
        if vae is None or clip is None:
            raise TrainingError("Train LoRA needs the checkpoint's CLIP and VAE: connect both from the loader")
        self.model, self.clip, self.vae = model, clip, vae
        self.node_id = node_id
        self.send_event = send_event
        self.architecture = self.support.architecture
        if self.family == "SD20" and not _predicts_v(model):
            self.architecture = "stable-diffusion-v2-512/lora"
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

    def _raw_latents(self, item, index: int, bucket: tuple[int, int], cache: Any, vae_id: str) -> torch.Tensor:
        """The VAE's latents of one image at its bucket size: from the disk cache, or encoded (and stored)."""
        import numpy as np

        key = latent_key(image_digest(item), bucket, vae_id) if cache is not None else ""
        cached = cache.get(key) if cache is not None else None
        if cached is not None:
            return cached
        try:
            image = item.load()
        except Exception as exc:  # PIL raises many types for broken files
            raise TrainingError(f"cannot read training image {item.path or index}: {exc}") from exc
        pixels = torch.from_numpy(np.asarray(fit_to_bucket(image, bucket), dtype=np.float32) / 255.0)[None]
        latents = self.vae.encode(pixels).float().cpu()
        if cache is not None:
            cache.put(key, latents)
        return latents

    def check_config(self, cfg: TrainConfig) -> None:
        """Settings this family cannot train with, refused before any work starts."""
        if self.support.encode_once and (cfg.train_text_encoder or cfg.shuffle_captions):
            setting = "train_text_encoder" if cfg.train_text_encoder else "shuffle_captions"
            raise TrainingError(
                f"{setting} is not available for {self.family}: its captions are encoded once before training so "
                "that its large text encoder (T5-XXL) is not kept in memory next to the model. Turn it off."
            )

    def encode_examples(self, dataset: LoraDataset, cfg: TrainConfig, cache_dir: Path | None = None) -> list[Example]:
        """VAE-encode every image once (at its bucket size; with `cache_dir`, once across runs) and text-encode
        every distinct caption once."""
        self.check_config(cfg)
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
                raw = self._raw_latents(item, index, bucket, cache, vae_id)
                latents = self.model.model.process_latent_in(raw).float().cpu()
                caption = caption_with_trigger(item.caption, cfg.trigger_word)
                for text in (caption, ""):
                    if text not in texts:
                        texts[text] = self.encode_text(text)
                self.check_cancel()
                original = (item.width, item.height) if item.width > 0 and item.height > 0 else bucket
                examples.append((latents, caption, item.repeats, size_conditioning(original, bucket)))
        if cache is not None:
            log.info("latent cache %s: %d reused, %d encoded", cache.folder, cache.hits, cache.misses)
        # Ordinary tensors (made outside inference mode, which every node runs in): autograd must save them.
        out = []
        with torch.inference_mode(False):
            for latents, caption, repeats, size in examples:
                latents = latents.clone()
                conds = self.model_conds(texts[caption], latents, size), self.model_conds(texts[""], latents, size)
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
        if "force_full_load" in mm.load_models_gpu.__code__.co_varnames:
            kwargs["force_full_load"] = True
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
        norm_hooks = _protect_inplace_residuals(base.diffusion_model)
        try:
            with torch.inference_mode(False), torch.enable_grad():
                for module in frozen:
                    log.debug("made %d inference tensors trainable-safe", _fresh_parameters(module))
                    module.requires_grad_(False)
                yield ComfySession(
                    self.model,
                    base.diffusion_model,
                    self.model.get_model_object("model_sampling"),
                    self.model.load_device,
                    base.get_dtype(),
                    _diffusers_names(base) if self.support.naming == "kohya_diffusers" else {},
                    host=self,
                    text_model=text_model,
                    diffusers_pieces=_diffusers_pieces(base) if self.support.naming == "diffusers" else {},
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
