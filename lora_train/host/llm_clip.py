"""The LLM behind a ComfyUI CLIP, as the Generate Text node (`TextGenerate`, ComfyUI 0.33+) runs it: finding it,
tokenizing training pairs exactly as Generate Text tokenizes its prompt, running it with gradients, and naming its
layers the way ComfyUI's LoRA loader maps CLIP keys (`comfy.lora.model_lora_keys_clip`).

Generate Text's path (read in 0.33.0): `clip.tokenize(prompt, min_length=1, skip_template=..., thinking=...)` ->
`CLIP.generate` -> `SD1ClipModel.generate` -> `SDClipModel.generate`: the first tokenizer's ids are embedded
(`process_tokens`), `transformer.generate` runs `transformer.model` (ComfyUI's Llama2_-style decoder) and
`transformer.logits` on the last position, and stops on `model.config.stop_tokens`. Training runs the same decoder
and head on every response position.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from lora_train.host.compat import comfyui_version
from lora_train.llm import ClipLoraConfig, PairData
from lora_train.training import TrainingError

log = logging.getLogger(__name__)

TEXTGEN_MODULE = "comfy_extras.nodes_textgen"
ATTENTION_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")
IGNORE = -100


def check_text_generation() -> None:
    """Refuse, before any work, on a ComfyUI without the Generate Text node (0.3.75 has none)."""
    import comfy.sd

    has_node = importlib.util.find_spec(TEXTGEN_MODULE) is not None
    if not has_node or not hasattr(comfy.sd.CLIP, "generate"):
        raise TrainingError(
            f"this ComfyUI ({comfyui_version()}) has no Generate Text node (TextGenerate), so it cannot run a "
            "language model from a CLIP and a LoRA trained here could not be used. Update ComfyUI (tested: 0.33.0). "
            "Nothing was trained."
        )


@dataclass
class ClipLlm:
    """The language model inside a CLIP: `name` is its key in the CLIP (`qwen3_06b`), `encoder` ComfyUI's
    SDClipModel around it, `transformer` the class with `generate`/`logits`, `decoder` its `model` (the blocks)."""

    clip: Any
    name: str
    encoder: torch.nn.Module
    transformer: torch.nn.Module
    decoder: torch.nn.Module

    @property
    def layer_prefix(self) -> str:
        """Path of the decoder blocks inside the CLIP's cond_stage_model (its state-dict key stem)."""
        return f"{self.name}.transformer.model.layers."

    def stop_tokens(self) -> list[int]:
        """The ids that end Generate Text's output for this model."""
        return [int(t) for t in getattr(getattr(self.decoder, "config", None), "stop_tokens", None) or []]

    def pad_token(self) -> int:
        """The encoder's pad id (any id works: padded positions are right of every trained one)."""
        return int(getattr(self.encoder, "special_tokens", {}).get("pad", 0))

    def execution_dtype(self, device: torch.device) -> torch.dtype:
        """The dtype BaseGenerate.generate runs the model in on `device`."""
        import comfy.model_management as mm

        return torch.bfloat16 if mm.should_use_bf16(device) else torch.float32


def describe(cond_stage_model: torch.nn.Module) -> str:
    """`AnimaTEModel_ (qwen3_06b: Qwen3_06B)`: the CLIP's model class and, where known, its encoder's class."""
    name = getattr(cond_stage_model, "clip", None)
    inner = getattr(cond_stage_model, name, None) if isinstance(name, str) else None
    transformer = getattr(inner, "transformer", None)
    if transformer is None:
        return type(cond_stage_model).__name__
    return f"{type(cond_stage_model).__name__} ({name}: {type(transformer).__name__})"


def find_llm(clip) -> ClipLlm:
    """The CLIP's language model; a CLIP that cannot generate text (CLIP-L, T5, ...) is refused by name, and so is one
    whose generate takes another path than SDClipModel.generate (training would not match what it generates)."""
    import comfy.sd1_clip

    model = clip.cond_stage_model
    name = getattr(model, "clip", None)
    encoder = getattr(model, name, None) if isinstance(name, str) else None
    transformer = getattr(encoder, "transformer", None)
    decoder = getattr(transformer, "model", None)
    llm_generates = callable(getattr(transformer, "generate", None))
    own_top = callable(getattr(model, "generate", None)) and not isinstance(model, comfy.sd1_clip.SD1ClipModel)
    if not llm_generates and not own_top:
        raise TrainingError(
            f"this CLIP ({describe(model)}) is not a language model: it has no generate method, so Generate Text "
            "cannot run it and there is no LLM to train. Connect a CLIP whose text encoder is an LLM (Load CLIP with "
            "a Qwen3 text encoder, for example). Nothing was trained."
        )
    own_generate = own_top or getattr(type(encoder), "generate", None) is not comfy.sd1_clip.SDClipModel.generate
    if own_generate or not isinstance(decoder, torch.nn.Module) or not callable(getattr(transformer, "logits", None)):
        raise TrainingError(
            f"this CLIP's language model ({describe(model)}) generates text its own way (its own generate: "
            "multimodal positions, other stop tokens or a composite encoder), which Train LLM LoRA does not support "
            "yet; LLM encoders that ComfyUI runs through SDClipModel.generate (Qwen3, for example) are. Nothing was "
            "trained."
        )
    return ClipLlm(clip, name, encoder, transformer, decoder)


# ---- data -------------------------------------------------------------------------------------------------------
def prompt_ids(llm: ClipLlm, prompt: str, use_default_template: bool, where: str) -> list[int]:
    """The ids Generate Text feeds the model for `prompt` (its tokenize call, defaults otherwise)."""
    tokens = llm.clip.tokenize(prompt, image=None, skip_template=not use_default_template, min_length=1,
                               thinking=False, video=None, audio=None)  # fmt: skip
    first = next(iter(tokens.values())) if isinstance(tokens, dict) else tokens  # as SDClipModel.generate reads it
    if len(first) != 1:
        raise TrainingError(f"{where}: the prompt tokenizes into {len(first)} chunks; Generate Text sends one")
    ids = [t[0] for t in first[0]]
    if not all(isinstance(i, int) for i in ids):
        raise TrainingError(f"{where}: the prompt holds embeddings (textual inversion?); train on plain text")
    return ids


def text_tokenizer(llm: ClipLlm):
    """The Hugging Face tokenizer Generate Text decodes with (the CLIP tokenizer's entry for this model)."""
    outer = llm.clip.tokenizer
    inner = getattr(outer, llm.name, None) or getattr(outer, str(getattr(outer, "clip", "")), None)
    hf = getattr(inner, "tokenizer", None)
    if hf is None or not callable(hf):
        raise TrainingError(f"cannot find the text tokenizer of this CLIP ({type(outer).__name__}) for {llm.name}")
    return hf


def encode_pairs(llm: ClipLlm, data: PairData, cfg: ClipLoraConfig) -> list[tuple[list[int], int]]:
    """(prompt + response + stop ids, prompt length) per pair; one over max_length is refused, naming its line."""
    hf = text_tokenizer(llm)
    stop = llm.stop_tokens()[-1:]
    examples, too_long = [], []
    for pair in data.pairs:
        prompt = prompt_ids(llm, pair.prompt, cfg.use_default_template, pair.where)
        response = list(hf(pair.response, add_special_tokens=False)["input_ids"]) + stop
        if len(prompt) + len(response) > cfg.max_length:
            too_long.append(f"{pair.where} ({len(prompt) + len(response)} tokens)")
        examples.append((prompt + response, len(prompt)))
    if too_long:
        raise TrainingError(
            f"{len(too_long)} example(s) exceed max_length={cfg.max_length}: {', '.join(too_long[:5])}; raise "
            "max_length or shorten them. Nothing was trained."
        )
    return examples


def collate(examples: list[tuple[list[int], int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, T] and next-token labels [B, T] (IGNORE except where the next token is response)."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    for row, (tokens, prompt_len) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        # position t predicts token t + 1: the last prompt position predicts the first response token
        labels[row, prompt_len - 1 : len(tokens) - 1] = torch.tensor(tokens[prompt_len:])
    return ids, labels


# ---- running the decoder with gradients ---------------------------------------------------------------------
class _NoOutArgumentsUnderGrad(torch.overrides.TorchFunctionMode):
    """ComfyUI's decoder blocks add the residual with `torch.add(..., out=block_input)`, which autograd refuses
    ("out=... arguments don't support automatic differentiation"). While gradients flow, such calls return a new
    tensor instead; the blocks use the returned value, so the result is the same."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("out") is not None and torch.is_grad_enabled():
            kwargs = {k: v for k, v in kwargs.items() if k != "out"}
        return func(*args, **kwargs)


@contextlib.contextmanager
def trainable(llm: ClipLlm) -> Iterator[None]:
    """Gradients on through ComfyUI's decoder (inference-mode weights replaced, host training flag on)."""
    from lora_train.host.session import fresh_parameters, host_training_flag

    with torch.inference_mode(False), torch.enable_grad(), host_training_flag(True), _NoOutArgumentsUnderGrad():
        log.debug("made %d inference tensors trainable-safe", fresh_parameters(llm.transformer))
        yield


def response_loss(
    llm: ClipLlm, ids: torch.Tensor, labels: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Mean cross-entropy of the response tokens: embeddings as process_tokens makes them, the decoder as generate
    runs it (no mask: padding is on the right, after every trained position), the model's own logits head."""
    ids, labels = ids.to(device), labels.to(device)
    embeds = llm.transformer.get_input_embeddings()(ids, out_dtype=torch.float32).to(dtype)
    hidden = llm.decoder(None, embeds=embeds, attention_mask=None)[0]
    keep = labels != IGNORE
    logits = llm.transformer.logits(hidden[keep][:, None, :])[:, -1]
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])


def target_layers(llm: ClipLlm, targets: str) -> dict[str, torch.nn.Module]:
    """Linear layers of the decoder blocks (paths relative to cond_stage_model): all, or attention only."""
    from lora_train.training import find_targets

    prefix = llm.layer_prefix

    def include(path: str, _module: torch.nn.Module) -> bool:
        if not path.startswith(prefix):
            return False
        return targets == "all_linear" or path.rsplit(".", 1)[-1] in ATTENTION_LAYERS

    found = find_targets(llm.clip.cond_stage_model, include)
    if not found:
        raise TrainingError(f"no linear layers under {prefix}* in this CLIP ({describe(llm.clip.cond_stage_model)})")
    return found


def lora_key_names(llm: ClipLlm, paths: list[str]) -> dict[str, str]:
    """Module path -> LoRA key prefix that ComfyUI's loader maps to that module's weight on this CLIP: kohya's
    `lora_te_<path>` where model_lora_keys_clip offers it (single-LLM CLIPs), else `text_encoders.<path>`."""
    import comfy.lora

    by_weight: dict[str, list[str]] = {}
    for lora_key, weight_key in comfy.lora.model_lora_keys_clip(llm.clip.cond_stage_model, {}).items():
        by_weight.setdefault(weight_key, []).append(lora_key)
    names = {}
    for path in paths:
        offered = by_weight.get(f"{path}.weight", [])
        kohya = [key for key in offered if key.startswith("lora_te_")]
        if kohya:
            names[path] = kohya[0]
        elif f"text_encoders.{path}" in offered:
            names[path] = f"text_encoders.{path}"
        else:
            raise TrainingError(f"ComfyUI's LoRA loader maps no key to {path}.weight on this CLIP; cannot save it")
    return names
