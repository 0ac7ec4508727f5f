"""Train LLM LoRA in ComfyUI, in-process: a tiny Qwen3 text encoder built by ComfyUI's own loader learns three answers;
Generate Text (ComfyUI's TextGenerate) then gives them, LoraLoader applies the saved file to the same CLIP with every
key loaded and the same result; CLIPs that cannot generate and hosts without Generate Text are refused by name."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

# Imported at collection, before ComfyUI's root goes first on sys.path (0.3.75's tree has its own `tests` package).
from tests.conftest import load_extension

pytestmark = pytest.mark.host

EXAMPLES = [
    {"instruction": "fox", "output": "The quick brown fox jumps."},
    {"instruction": "cat", "output": "A sleepy cat naps."},
    {"messages": [{"role": "user", "content": "owl"}, {"role": "assistant", "content": "Owls hoot at night."}]},
]
PLAIN = "Always be kind."  # a plain line: what Generate Text should write for an empty prompt
TEXT = "\n".join(json.dumps(record) for record in EXAMPLES) + f"\n{PLAIN}"
WIDGETS = {"output_name": "tiny_llm_lora", "steps": 20, "learning_rate": 1e-2, "rank": 8, "alpha": 8.0,
           "batch_size": 4, "max_length": 64, "seed": 0}  # fmt: skip
GREEDY = {"sampling_mode": "off"}


def _has_text_generation() -> bool:
    import importlib.util

    return importlib.util.find_spec("comfy_extras.nodes_textgen") is not None


def _generate(clip, prompt: str, max_length: int = 10) -> str:
    from comfy_extras.nodes_textgen import TextGenerate

    with torch.inference_mode():  # as ComfyUI runs a node
        return TextGenerate.execute(clip, prompt, max_length, GREEDY).args[0]


@pytest.fixture(scope="module")
def comfy_folders(comfy_lib, tmp_path_factory):
    """ComfyUI's loras and temp folders pointed at fresh ones for this module (restored afterwards)."""
    import folder_paths

    root = tmp_path_factory.mktemp("llm_lora_folders")
    (root / "loras").mkdir()
    (root / "temp").mkdir()  # ComfyUI makes its temp folder at start-up
    saved_loras, saved_temp = folder_paths.folder_names_and_paths["loras"], folder_paths.get_temp_directory()
    folder_paths.folder_names_and_paths["loras"] = ([str(root / "loras")], saved_loras[1])
    folder_paths.set_temp_directory(str(root / "temp"))
    yield root
    folder_paths.folder_names_and_paths["loras"] = saved_loras
    folder_paths.set_temp_directory(saved_temp)


@pytest.fixture(scope="module")
def llm_clip(comfy_lib):
    if not _has_text_generation():
        pytest.skip("this ComfyUI has no Generate Text node (the refusal is tested below)")
    from lora_train.dev.tiny_llm import load_tiny_qwen3_clip

    return load_tiny_qwen3_clip(seed=0)


@pytest.fixture(scope="module")
def trained(llm_clip, comfy_folders):
    node = load_extension().NODE_CLASS_MAPPINGS["LoraTrain_TrainLLMLoRA"]()
    with torch.inference_mode():  # nodes execute under inference mode
        return node.execute(llm_clip, train_data="", text=TEXT, **WIDGETS)


def test_the_tiny_encoder_is_what_comfyui_detects_as_qwen3_with_generate(llm_clip):
    from lora_train.host.llm_clip import find_llm

    llm = find_llm(llm_clip)
    assert (llm.name, type(llm.transformer).__name__) == ("qwen3_06b", "Qwen3_06B")
    assert len(llm.decoder.layers) == 2 and llm.stop_tokens() == [151643, 151645]


def test_loss_falls_and_the_file_holds_kohya_keys_comfyui_maps(trained, comfy_folders):
    losses = trained["result"][2]["loss"]
    assert len(losses) == WIDGETS["steps"] and losses[-1] < 0.05 * losses[0], losses
    assert trained["result"][1] == "tiny_llm_lora.safetensors"
    tensors = load_file(comfy_folders / "loras" / "tiny_llm_lora.safetensors")
    modules = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in tensors}
    assert len(modules) == 2 * 7 and all(m.startswith("lora_te_layers_") for m in modules), sorted(modules)[:3]
    assert trained["ui"]["images"][0]["type"] == "temp"


def test_generate_text_gives_the_trained_answers_only_with_the_lora(llm_clip, trained):
    clip_out = trained["result"][0]
    with_lora = [_generate(clip_out, record) for record in ("fox", "cat", "owl", "")]
    assert with_lora == ["The quick brown fox jumps.", "A sleepy cat naps.", "Owls hoot at night.", PLAIN]
    without = _generate(llm_clip, "fox")
    assert without != with_lora[0]
    assert _generate(llm_clip, "fox") == without and _generate(clip_out, "fox") == with_lora[0]  # deterministic


def test_lora_loader_applies_every_key_to_the_base_clip_and_reproduces_the_node_output(
    llm_clip, trained, comfy_folders, caplog
):
    import nodes  # ComfyUI's nodes.py (its root is first on sys.path)

    with caplog.at_level(logging.WARNING), torch.inference_mode():
        _, loaded = nodes.LoraLoader().load_lora(None, llm_clip, trained["result"][1], 1.0, 1.0)
    unloaded = [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()]
    assert unloaded == []
    assert len(loaded.patcher.patches) == 2 * 7
    node_clip = trained["result"][0]
    assert loaded.patcher.patches.keys() == node_clip.patcher.patches.keys()
    with torch.inference_mode():
        tokens = llm_clip.tokenize("fox", min_length=1)
        hidden_loader = loaded.encode_from_tokens(tokens).clone()
        hidden_node = node_clip.encode_from_tokens(tokens).clone()
        hidden_base = llm_clip.encode_from_tokens(tokens).clone()
    assert torch.equal(hidden_loader, hidden_node)
    assert not torch.allclose(hidden_loader, hidden_base)
    assert _generate(loaded, "cat") == "A sleepy cat naps."


def test_dora_trains_and_comfyui_applies_it_as_trained(llm_clip, comfy_folders):
    from lora_train.host.llm_train import apply_clip_lora, train_clip_lora
    from lora_train.llm import ClipLoraConfig, load_pairs

    dora = {"output_name": "tiny_llm_dora", "network": "dora", "batch_size": 2, "steps": 14}
    cfg = ClipLoraConfig.from_dict({**WIDGETS, **dora})
    two = load_pairs("", "\n".join(TEXT.splitlines()[:2]))
    with torch.inference_mode():
        result = train_clip_lora(llm_clip, two, cfg, comfy_folders / "loras")
        clip_out = apply_clip_lora(llm_clip, result.tensors)
    assert sum(key.endswith(".dora_scale") for key in result.tensors) == 2 * 7
    assert len(clip_out.patcher.patches) == 2 * 7
    assert [_generate(clip_out, p) for p in ("fox", "cat")] == ["The quick brown fox jumps.", "A sleepy cat naps."]


def test_cancel_writes_nothing_and_leaves_the_base_clip_as_it_was(llm_clip, comfy_folders):
    import comfy.model_management as mm

    from lora_train.host.llm_train import train_clip_lora
    from lora_train.llm import ClipLoraConfig, load_pairs

    before = _generate(llm_clip, "fox")
    cfg = ClipLoraConfig.from_dict({**WIDGETS, "output_name": "cancelled", "steps": 5})
    seen = []

    def cancel_at_step_2(progress: dict) -> None:
        seen.append(progress["step"])
        if progress["step"] == 2:
            mm.interrupt_current_processing(True)  # the Cancel button; the next step's check raises

    with pytest.raises(mm.InterruptProcessingException), torch.inference_mode():
        train_clip_lora(llm_clip, load_pairs("", TEXT), cfg, comfy_folders / "loras", report=cancel_at_step_2)
    assert seen == [1, 2]
    assert not (comfy_folders / "loras" / "cancelled.safetensors").exists()
    assert _generate(llm_clip, "fox") == before  # no adapter left hooked on ComfyUI's layers


def test_an_overlong_example_is_refused_by_line_before_training(llm_clip, comfy_folders):
    from lora_train.host.llm_train import train_clip_lora
    from lora_train.llm import ClipLoraConfig, load_pairs
    from lora_train.training import TrainingError

    cfg = ClipLoraConfig.from_dict({**WIDGETS, "output_name": "too_long", "max_length": 8})
    with pytest.raises(TrainingError, match=r"exceed max_length=8: text, line 3 \(10 tokens\); raise max_length"):
        train_clip_lora(llm_clip, load_pairs("", TEXT), cfg, comfy_folders / "loras")
    assert not (comfy_folders / "loras" / "too_long.safetensors").exists()


def _run_node_on(clip, output_name: str):
    node = load_extension().NODE_CLASS_MAPPINGS["LoraTrain_TrainLLMLoRA"]()
    with torch.inference_mode():
        return node.execute(clip, train_data="", text=TEXT, **{**WIDGETS, "output_name": output_name})


def test_a_clip_that_cannot_generate_is_refused_by_name(comfy_lib, tiny_checkpoint, comfy_folders):
    from lora_train.training import TrainingError

    if not _has_text_generation():
        pytest.skip("this ComfyUI has no Generate Text node: the host is refused first (next test)")
    expected = r"this CLIP \(SD1ClipModel \(clip_l: CLIPTextModel\)\) is not a language model: it has no generate"
    with pytest.raises(TrainingError, match=expected):
        _run_node_on(tiny_checkpoint[1], "refused")
    assert not (comfy_folders / "loras" / "refused.safetensors").exists()


def test_a_comfyui_without_generate_text_is_named(comfy_lib, tiny_checkpoint, comfy_folders):
    from lora_train.host.compat import comfyui_version
    from lora_train.training import TrainingError

    if _has_text_generation():
        pytest.skip("this ComfyUI has the Generate Text node (0.3.75 has none)")
    expected = rf"this ComfyUI \({comfyui_version()}\) has no Generate Text node \(TextGenerate\).*Nothing was trained"
    with pytest.raises(TrainingError, match=expected):
        _run_node_on(tiny_checkpoint[1], "refused")
    assert not (comfy_folders / "loras" / "refused.safetensors").exists()
