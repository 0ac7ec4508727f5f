"""Tiny, seeded causal-LM folders for tests (random weights, a few kilobytes): a byte-level BPE tokenizer trained on
the fly with `tokenizers` (no download), with a chat template set here, and Llama / GLM / GLM-4 configs of width 32."""

from __future__ import annotations

import json
from pathlib import Path

# A plain-text template with role markers; renders each conversation prefix as a prefix of the whole.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is the capital of france? paris is the capital of france.",
    "translate to pirate: hello friend -> ahoy matey",
    "answer with a colour: the sky is blue, grass is green, blood is red",
    "0 1 2 3 4 5 6 7 8 9 + - = ? ! . , : ; ' \" ( ) [ ] { }",
]
LAYERS = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 512,
          # Wide initial weights: with the default 0.02 a width-32 model's logits stay within about +-0.6 whatever the
          # adapters do (the output head and norms are frozen), so no test could see memorisation.
          "initializer_range": 0.3}  # fmt: skip
# For QLoRA tests: bitsandbytes' CPU inference kernel (eval mode, no grad, on a CPU with AVX512-BF16) repacks each
# 4-bit weight and needs in_features a multiple of its 64-value blocks and out_features a multiple of 32 (as every
# real model's are); width 32 with 8-wide heads fails there with "shape '[32, 0]' is invalid" (0.50.2).
QLORA_LAYERS = {**LAYERS, "hidden_size": 64, "intermediate_size": 128, "head_dim": 16}
FAMILIES = ("llama", "glm", "glm4")


def write_tiny_tokenizer(folder: str | Path, *, chat_template: str | None = CHAT_TEMPLATE, vocab_size: int = 320):
    """A fast tokenizer (byte-level BPE trained on a small fixed corpus) saved into `folder`; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>")  # fmt: skip
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def write_tiny_llm(
    folder: str | Path,
    family: str = "llama",
    *,
    seed: int = 0,
    chat_template: str | None = CHAT_TEMPLATE,
    layers: dict | None = None,
) -> Path:
    """A tiny random causal LM of `family` (llama, glm, glm4) with its tokenizer, saved as safetensors in `folder`;
    `layers`: the shape settings (default LAYERS with 8-wide heads; QLORA_LAYERS for 4-bit tests)."""
    import torch
    import transformers

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    tokenizer = write_tiny_tokenizer(folder, chat_template=chat_template)
    config_class, model_class = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "glm": (transformers.GlmConfig, transformers.GlmForCausalLM),
        "glm4": (transformers.Glm4Config, transformers.Glm4ForCausalLM),
    }[family]
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = config_class(vocab_size=len(tokenizer), **{"head_dim": 8, **(layers or LAYERS)}, **ids)
    torch.manual_seed(seed)
    model_class(config).save_pretrained(str(folder))
    return Path(folder)


def write_remote_code_checkpoint(folder: str | Path) -> Path:
    """A folder shaped like ChatGLM3's release (config.json with auto_map, modeling_chatglm.py); no weights needed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "chatglm", "architectures": ["ChatGLMModel"],
              "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                           "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (folder / "modeling_chatglm.py").write_text("raise SystemExit('remote code must never run')\n", encoding="utf-8")
    return folder


# ---- a tiny LLM text encoder that ComfyUI (0.33+) runs in Generate Text ---------------------------------------------
# ComfyUI's text-encoder detection (comfy.sd.detect_te_model) reads Qwen3-0.6B from a q_norm key and a width of 1024;
# the width and the vocabulary (ComfyUI's shipped qwen25 tokenizer: ids up to 151645) are therefore fixed, while
# depth, heads and MLP width come from ComfyUI's own per-model config override (model_options
# "qwen3_06b_model_config", read by SDClipModel). 2 blocks of 2 heads and a 128-wide MLP: ~157 M parameters, nearly all
# of them the tied embedding.
TINY_QWEN3 = {"num_hidden_layers": 2, "intermediate_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1}
QWEN3_WIDTH, QWEN3_VOCAB, QWEN3_HEAD_DIM = 1024, 151936, 128


def tiny_qwen3_state_dict(seed: int = 0, config: dict | None = None) -> dict:
    """Random Qwen3-0.6B-shaped text-encoder weights (HF key names, fp32) for `config` (default TINY_QWEN3)."""
    import torch

    cfg = {**TINY_QWEN3, **(config or {})}
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int):
        return torch.randn(*shape, generator=generator) * 0.02

    width, heads, kv_heads = QWEN3_WIDTH, cfg["num_attention_heads"], cfg["num_key_value_heads"]
    state = {"model.embed_tokens.weight": normal(QWEN3_VOCAB, width), "model.norm.weight": torch.ones(width)}
    for i in range(cfg["num_hidden_layers"]):
        block = f"model.layers.{i}."
        shapes = {
            "self_attn.q_proj": (heads * QWEN3_HEAD_DIM, width),
            "self_attn.k_proj": (kv_heads * QWEN3_HEAD_DIM, width),
            "self_attn.v_proj": (kv_heads * QWEN3_HEAD_DIM, width),
            "self_attn.o_proj": (width, heads * QWEN3_HEAD_DIM),
            "mlp.gate_proj": (cfg["intermediate_size"], width),
            "mlp.up_proj": (cfg["intermediate_size"], width),
            "mlp.down_proj": (width, cfg["intermediate_size"]),
        }
        for name, shape in shapes.items():
            state[f"{block}{name}.weight"] = normal(*shape)
        for norm, size in (("input_layernorm", width), ("post_attention_layernorm", width),
                           ("self_attn.q_norm", QWEN3_HEAD_DIM), ("self_attn.k_norm", QWEN3_HEAD_DIM)):  # fmt: skip
            state[f"{block}{norm}.weight"] = torch.ones(size)
    return state


def load_tiny_qwen3_clip(seed: int = 0, config: dict | None = None):
    """A ComfyUI CLIP (Qwen3-0.6B family as ComfyUI detects it, its qwen tokenizer) built by ComfyUI's own text-encoder
    loader from random weights, under inference mode as the Load CLIP node loads it. Needs ComfyUI imported."""
    import comfy.sd
    import torch

    options = {"qwen3_06b_model_config": {**TINY_QWEN3, **(config or {})}}
    with torch.inference_mode():
        return comfy.sd.load_text_encoder_state_dicts([tiny_qwen3_state_dict(seed, config)], model_options=options)
