"""QLoRA on the CPU: the base's linear layers are bitsandbytes 4-bit NF4 while the adapters train on top, the loss
falls on a memorisable set, the adapter folder loads with `PeftModel.from_pretrained` on a 4-bit base and reproduces
the trained logits, `--merge` merges into the unquantized base, and a bitsandbytes without CPU 4-bit kernels is
refused naming the version needed. Tiny models of width 64: see QLORA_LAYERS in lora_train/dev/tiny_llm.py."""

import json

import pytest
import torch

from lora_train.dev.tiny_llm import QLORA_LAYERS, write_tiny_llm
from lora_train.llm import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LlmModelError, LlmPaths, LlmTrainConfig, train_causal_lm
from tests.llm import MEMORISABLE, write_jsonl

FAST = {"rank": 8, "alpha": 16, "learning_rate": 3e-2, "batch_size": 4, "lr_scheduler": "constant", "log_every": 5,
        "max_length": 128, "dropout": 0.0, "quantization": "4bit"}  # fmt: skip


def _paths(model, data, out) -> LlmPaths:
    return LlmPaths(base_model=str(model), train_data=str(data), output_dir=str(out))


def _load(model_dir, four_bit: bool):
    """The base model as a user loads it: 4-bit NF4 (fp32 compute) on the CPU, or plain fp32."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if not four_bit:
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)  # fmt: skip
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, quantization_config=quant,
                                                device_map={"": "cpu"}).eval()  # fmt: skip


def _probe(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    text = tokenizer.apply_chat_template(MEMORISABLE[3]["messages"], tokenize=False)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def _linear_kinds(model) -> dict[str, str]:
    """Class name of every decoder-layer linear weight holder (the peft base layer where adapters wrap it)."""
    kinds = {}
    for name, module in model.named_modules():
        if ".layers." in name and name.endswith("_proj") and hasattr(module, "get_base_layer"):
            kinds[name] = type(module.get_base_layer()).__name__
    return kinds


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One QLoRA run per family (30 steps, merge on): the model folder, the data and the result."""
    runs = {}

    def run(family: str):
        if family not in runs:
            root = tmp_path_factory.mktemp(f"qlora_{family}")
            model_dir = write_tiny_llm(root / "model", family, layers=QLORA_LAYERS)
            data = write_jsonl(root / "train.jsonl", MEMORISABLE)
            cfg = LlmTrainConfig(steps=30, merge=True, **FAST)
            runs[family] = (model_dir, data, train_causal_lm(cfg, _paths(model_dir, data, root / "out")))
        return runs[family]

    return run


@pytest.mark.parametrize("family", ["llama", "glm"])
def test_qlora_trains_adapters_on_a_4bit_base_and_the_loss_falls(trained, family):
    import bitsandbytes

    _, _, result = trained(family)
    kinds = _linear_kinds(result.model)
    assert kinds and set(kinds.values()) == {"Linear4bit"}, kinds  # every adapted linear layer is 4-bit
    base_layer = next(m for m in result.model.modules() if isinstance(m, bitsandbytes.nn.Linear4bit))
    assert isinstance(base_layer.weight, bitsandbytes.nn.Params4bit) and base_layer.weight.dtype == torch.uint8
    assert base_layer.weight.quant_state.quant_type == "nf4" and not base_layer.weight.requires_grad
    trainable = {n: p for n, p in result.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable.items())
    first, last = result.loss_history[0][1], result.loss_history[-1][1]
    assert last < 0.25 * first, result.loss_history
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    assert json.loads(result.metadata["lora_train.config"])["quantization"] == "4bit"


def test_the_adapter_loads_on_a_4bit_base_and_reproduces_the_trained_logits(trained):
    from peft import PeftModel

    model_dir, _, result = trained("llama")
    probe = _probe(model_dir)
    with torch.no_grad():
        base_logits = _load(model_dir, four_bit=True)(probe).logits
        reloaded = PeftModel.from_pretrained(_load(model_dir, four_bit=True), str(result.adapter_dir)).eval()
        adapter_logits = reloaded(probe).logits
        trained_logits = result.model.eval()(probe).logits
    assert set(_linear_kinds(reloaded).values()) == {"Linear4bit"}
    torch.testing.assert_close(adapter_logits, trained_logits, rtol=0, atol=1e-5)
    assert (adapter_logits - base_logits).abs().max() > 1.0  # the adapter does change the model


def test_merge_after_qlora_writes_the_unquantized_base_with_the_adapter_merged(trained):
    from peft import PeftModel
    from safetensors import safe_open

    model_dir, _, result = trained("llama")
    config = json.loads((result.merged_dir / "config.json").read_text())
    assert "quantization_config" not in config  # a plain full-precision model folder, loadable without bitsandbytes
    with safe_open(str(result.merged_dir / "model.safetensors"), "pt") as handle:
        dtypes = {handle.get_slice(key).get_dtype() for key in handle.keys()}
    assert dtypes == {"F32"}
    probe = _probe(model_dir)
    with torch.no_grad():
        merged_logits = _load(result.merged_dir, four_bit=False)(probe).logits
        unmerged = PeftModel.from_pretrained(_load(model_dir, four_bit=False), str(result.adapter_dir)).eval()
        unmerged_logits = unmerged(probe).logits
        fp32_base_logits = _load(model_dir, four_bit=False)(probe).logits
    torch.testing.assert_close(merged_logits, unmerged_logits, rtol=1e-4, atol=1e-4)
    assert (merged_logits - fp32_base_logits).abs().max() > 1.0  # the adapter is in the merged weights


def test_the_4bit_base_holds_its_linear_weights_in_an_eighth_of_the_fp32_bytes(trained):
    import bitsandbytes

    model_dir, _, _ = trained("llama")
    four_bit, fp32 = _load(model_dir, four_bit=True), _load(model_dir, four_bit=False)
    packed = [m.weight for m in four_bit.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    packed_bytes = sum(w.numel() * w.element_size() for w in packed)
    full = [m.weight for n, m in fp32.named_modules() if ".layers." in n and isinstance(m, torch.nn.Linear)]
    full_bytes = sum(w.numel() * w.element_size() for w in full)
    assert len(packed) == len(full) > 0
    assert packed_bytes * 8 == full_bytes  # two 4-bit values per byte vs 4 bytes per fp32 value
    assert four_bit.get_memory_footprint() < 0.5 * fp32.get_memory_footprint()


def test_a_bitsandbytes_without_cpu_4bit_kernels_is_refused_naming_the_version(tmp_path, monkeypatch):
    import importlib.metadata

    model_dir = write_tiny_llm(tmp_path / "model", "llama", layers=QLORA_LAYERS)
    data = write_jsonl(tmp_path / "train.jsonl", MEMORISABLE)
    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.45.5" if name == "bitsandbytes" else
                        real_version(name))  # fmt: skip
    with pytest.raises(LlmModelError, match=r"on the CPU needs bitsandbytes >= 0\.46 .* has bitsandbytes 0\.45\.5"):
        train_causal_lm(LlmTrainConfig(**FAST), _paths(model_dir, data, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_an_interrupted_qlora_run_resumes_to_the_same_adapter(trained, tmp_path):
    from safetensors.torch import load_file

    model_dir, data, _ = trained("llama")
    cfg = LlmTrainConfig(steps=6, save_steps=3, **{**FAST, "dropout": 0.1, "batch_size": 2, "log_every": 1})
    straight = train_causal_lm(cfg, _paths(model_dir, data, tmp_path / "straight"))

    def interrupt(progress):  # Ctrl-C after step 4: the state saved at step 3 continues
        if progress.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_causal_lm(cfg, _paths(model_dir, data, tmp_path / "resumed"), report=interrupt)
    resumed = train_causal_lm(cfg, _paths(model_dir, data, tmp_path / "resumed"))
    want = load_file(str(straight.adapter_dir / ADAPTER_WEIGHTS))
    got = load_file(str(resumed.adapter_dir / ADAPTER_WEIGHTS))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert resumed.loss_history == straight.loss_history


def test_gradient_checkpointing_under_qlora_trains_the_same_adapter(trained, tmp_path):
    from safetensors.torch import load_file

    model_dir, data, _ = trained("llama")
    tensors = {}
    for checkpointing in (False, True):
        cfg = LlmTrainConfig(steps=3, gradient_checkpointing=checkpointing, **FAST)
        result = train_causal_lm(cfg, _paths(model_dir, data, tmp_path / str(checkpointing)))
        tensors[checkpointing] = load_file(str(result.adapter_dir / ADAPTER_WEIGHTS))
    assert tensors[True].keys() == tensors[False].keys()
    for key, value in tensors[False].items():
        torch.testing.assert_close(tensors[True][key], value, rtol=0, atol=1e-6)
    assert any(bool(v.abs().sum() > 0) for k, v in tensors[True].items() if "lora_B" in k)  # B moved off zero
