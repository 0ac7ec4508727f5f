"""Memory of a base model in 4-bit NF4 (QLoRA's load) vs fp32, on the CPU, for tiny random Llama folders:

    python -m lora_train.dev.qlora_memory [width ...]      # default: 64 (the QLoRA tests' model) and 1024

Prints, per width, transformers' `get_memory_footprint()` (parameters + buffers) and the bytes of the decoder's
linear weights alone (what bitsandbytes quantizes; embeddings, norms and the output head stay in fp32)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def footprints(folder: Path) -> dict[str, int]:
    """Footprint and decoder-linear bytes of the model in `folder`, loaded in fp32 and in 4-bit NF4."""
    import bitsandbytes
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)  # fmt: skip
    fp32 = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    nf4 = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, quantization_config=quant,
                                               device_map={"": "cpu"})  # fmt: skip
    linear_fp32 = [m.weight for n, m in fp32.named_modules() if ".layers." in n and isinstance(m, torch.nn.Linear)]
    linear_nf4 = [m for m in nf4.modules() if isinstance(m, bitsandbytes.nn.Linear4bit)]
    state_bytes = 0
    for module in linear_nf4:  # absmax (double-quantized) and its second-level state
        for tensor in module.weight.quant_state.as_dict(packed=True).values():
            state_bytes += tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0
    return {
        "footprint_fp32": fp32.get_memory_footprint(),
        "footprint_4bit": nf4.get_memory_footprint(),
        "linear_fp32": sum(w.numel() * w.element_size() for w in linear_fp32),
        "linear_4bit": sum(m.weight.numel() * m.weight.element_size() for m in linear_nf4) + state_bytes,
    }


def main(argv: list[str]) -> int:
    from lora_train.dev.tiny_llm import QLORA_LAYERS, write_tiny_llm

    for width in [int(arg) for arg in argv] or [64, 1024]:
        layers = {**QLORA_LAYERS, "hidden_size": width, "intermediate_size": 2 * width}
        with tempfile.TemporaryDirectory() as tmp:
            sizes = footprints(write_tiny_llm(Path(tmp) / "model", "llama", layers=layers))
        print(
            f"width {width}: whole model {sizes['footprint_fp32']:,} B fp32 -> {sizes['footprint_4bit']:,} B 4-bit; "
            f"decoder linear weights {sizes['linear_fp32']:,} B -> {sizes['linear_4bit']:,} B "
            f"({sizes['linear_fp32'] / sizes['linear_4bit']:.1f}x smaller)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
