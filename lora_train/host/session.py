"""The training session ComfyUI lends the loop: the loaded diffusion model made trainable (inference tensors
replaced, in-place residuals protected, the host's training switch on), its raw prediction, caption encoding for
text-encoder training, and preview sampling with ComfyUI's own sampler."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from lora_train.host.naming import to_comfyui_names, to_diffusers_peft
from lora_train.training import TrainConfig

if TYPE_CHECKING:
    from lora_train.host.comfy_adapter import ComfyHost

log = logging.getLogger(__name__)

# kohya's text-encoder prefixes: te1 is CLIP-L, te2 OpenCLIP-G (SDXL); a single encoder is plain `lora_te_`.
TEXT_ENCODER_ORDER = ("clip_l", "clip_g", "clip_h")
PREVIEW_SAMPLER, PREVIEW_SCHEDULER = "euler", "normal"
ATTENTION_ENV = "LORA_TRAIN_ATTENTION"  # "host": train with ComfyUI's own attention kernel (see training_attention)


# Blocks whose forward adds to its input in place (`img += ...`: ComfyUI's Flux double/single-stream blocks) after a
# LayerNorm saved that input for backward: in fp32 (no autocast copy in between) backward then fails with "modified
# by an inplace operation".
INPLACE_RESIDUAL_BLOCKS = ("DoubleStreamBlock", "SingleStreamBlock")


@contextlib.contextmanager
def host_training_flag(on: bool) -> Iterator[None]:
    """ComfyUI's own training switch, `model_management.in_training`, set for the duration and restored after
    (also on Cancel and errors). Newer hosts (0.33.0) route RoPE, norms and other kernels through custom ops
    (comfy_kitchen) that have no backward unless it is True, as their built-in trainer sets it; sampling runs
    with it off. Hosts without the flag (0.3.75) need nothing."""
    import comfy.model_management as mm

    if not hasattr(mm, "in_training"):
        yield
        return
    before = mm.in_training
    mm.in_training = on
    try:
        yield
    finally:
        mm.in_training = before


def _clone_input(_module: torch.nn.Module, args: tuple) -> tuple | None:
    if args and torch.is_tensor(args[0]) and torch.is_grad_enabled():
        return (args[0].clone(), *args[1:])
    return None


def protect_inplace_residuals(root: torch.nn.Module) -> list:
    """Give every LayerNorm inside an in-place residual block its own copy of its input while grad is on (one
    activation per norm); the hooks are removed after training. Returns the hook handles."""
    handles = []
    for block in root.modules():
        if type(block).__name__ in INPLACE_RESIDUAL_BLOCKS:
            for module in block.modules():
                if isinstance(module, torch.nn.LayerNorm):
                    handles.append(module.register_forward_pre_hook(_clone_input))
    return handles


def training_attention() -> Any:
    """The attention kernel for training: torch SDPA in place of ComfyUI's CPU fallbacks (sub-quadratic, split,
    basic), which it picks where no accelerated kernel is set up (every CPU). SDPA computes the same attention in
    one fused kernel with its own backward (its share of the measured gain alone is not separated yet).
    Returned as ComfyUI's `optimized_attention_override` (transformer_options), so only the training forward
    passes use it; None (the host's choice kept) where the host already uses another kernel (GPU: SDPA, flash,
    sage, xformers) or has no override hook, or `LORA_TRAIN_ATTENTION=host` asks for the host's kernel.
    Half-precision inputs whose layer asks for fp32 attention (`attn_precision`, SD2.x) keep the host's kernel,
    which upcasts."""
    if os.environ.get(ATTENTION_ENV, "").strip().lower() == "host":
        return None
    try:
        import comfy.ldm.modules.attention as attention
    except ImportError:
        return None
    names = ("attention_sub_quad", "attention_split", "attention_basic")
    fallbacks = [getattr(attention, name) for name in names if hasattr(attention, name)]
    sdpa = getattr(attention, "attention_pytorch", None)
    if sdpa is None or not hasattr(attention, "wrap_attn") or attention.optimized_attention not in fallbacks:
        return None
    # The host's wrapper hands the override the undecorated kernel; calling the decorated SDPA from inside it runs
    # SDPA directly (the `_inside_attn_wrapper` flag in kwargs).
    replaced = {getattr(f, "__wrapped__", f) for f in fallbacks} | set(fallbacks)

    def override(func, *args, **kwargs):
        query = args[0] if args else kwargs.get("q")
        upcast = kwargs.get("attn_precision") is not None and query is not None and query.dtype != torch.float32
        if func in replaced and not upcast:
            return sdpa(*args, **kwargs)
        return func(*args, **kwargs)

    return override


def fresh_parameters(module: torch.nn.Module) -> int:
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
    peft_prefix: str = "transformer."  # what diffusers' keys start with in this family's files
    comfyui_naming: bool = False  # the generic path: ComfyUI's own key naming (`diffusion_model.<path>`)
    attention: Any = None  # ComfyUI's optimized_attention_override while training (see training_attention)

    def kohya_prefix(self, module_path: str) -> str:
        """kohya key prefix; diffusers-style block names (what kohya writes), LDM names where none exists."""
        return "lora_unet_" + self.prefixes.get(module_path, module_path).replace(".", "_")

    def file_tensors(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The kohya tensors as this family's file stores them (see FamilySupport.naming)."""
        if self.comfyui_naming:
            paths = {self.kohya_prefix(path): path for path, _ in self.diffusion_model.named_modules() if path}
            return to_comfyui_names(tensors, paths)
        if not self.diffusers_pieces:
            return tensors
        by_prefix = {self.kohya_prefix(path): pieces for path, pieces in self.diffusers_pieces.items()}
        return to_diffusers_peft(tensors, by_prefix, self.peft_prefix)

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
        batch = {key: first[key].concat([c[key] for c in conds[1:]]) for key in first}
        # CONDConstant values (Lumina 2's num_tokens) are plain numbers, shared by the batch; CONDList values
        # (edit models' ref_latents) lists of tensors.
        return {key: _to(value, self.device) for key, value in batch.items()}

    def sample_previews(self, cfg: TrainConfig) -> list:
        """One image per preview prompt: ComfyUI's own sampler on this patcher (the adapters are forward hooks on
        its modules, so it samples with the LoRA), then the VAE. The caller holds no_grad and the RNG streams."""
        import comfy.sample

        assert self.host is not None
        positives, negative = self.host.preview_conditioning(fresh=self.text_model is not None)
        vae = self.host.vae
        ratio = vae.spacial_compression_decode() if hasattr(vae, "spacial_compression_decode") else 8
        size = cfg.resolution // ratio
        latent = comfy.sample.fix_empty_latent_channels(self.model, torch.zeros([1, 4, size, size]))
        scale = cfg.sample_cfg or self.host.support.preview_cfg
        was_training = self.diffusion_model.training
        self.diffusion_model.eval()
        images = []
        try:
            with host_training_flag(False):
                for positive in positives:
                    # KSampler's own noise for this seed (it reseeds torch's global stream; the caller restores it), so
                    # a KSampler with the trained LoRA and seed sample_seed redraws the preview.
                    noise = comfy.sample.prepare_noise(latent, cfg.sample_seed)
                    samples = comfy.sample.sample(
                        self.model, noise, cfg.sample_steps, scale, PREVIEW_SAMPLER, PREVIEW_SCHEDULER,
                        positive, negative, latent, disable_pbar=True, seed=cfg.sample_seed,
                    )  # fmt: skip
                    decoded = vae.decode(samples)  # video VAEs: [batch, frames, H, W, C]; the first frame shows
                    images.append(_to_pil(decoded.reshape(-1, *decoded.shape[-3:])[0]))
        finally:
            self.diffusion_model.train(was_training)
            # The sampler may have (re)loaded the model, which brings ComfyUI's inference-mode weights back.
            fresh_parameters(self.diffusion_model)
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
        extra = {k: _to(v, dtype=dtype) for k, v in extra.items()}
        t = base.process_timestep(timesteps.float(), x=noisy, **extra)
        options = {"optimized_attention_override": self.attention} if self.attention is not None else {}
        return base.diffusion_model(x, t, context=context, control=None, transformer_options=options, **extra)


def _to(value: Any, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Any:
    """A cond value (tensor, list of tensors, or plain value) on `device` / in float `dtype`."""
    if isinstance(value, list):
        return [_to(v, device, dtype) for v in value]
    if not torch.is_tensor(value):
        return value
    if dtype is not None and value.is_floating_point():
        value = value.to(dtype)
    return value.to(device) if device is not None else value


def _to_pil(pixels: torch.Tensor):
    """[H, W, C] floats in 0..1 (VAE.decode's layout) as a PIL image."""
    from PIL import Image

    array = (pixels.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()
    return Image.fromarray(array[..., :3])
