"""Train LLM LoRA's data and settings (no ComfyUI): prompt/answer pairs from a .jsonl file or the text box, bad
input named by line, and the node's widgets."""

from __future__ import annotations

import json

import pytest

from lora_train.llm import ClipLoraConfig, LlmDataError, load_pairs
from lora_train.settings import SettingsError
from tests.conftest import load_extension

ANSWER = {"role": "assistant", "content": "A cat."}


def _jsonl(tmp_path, records) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def test_file_records_become_prompt_answer_pairs(tmp_path):
    path = _jsonl(
        tmp_path,
        [
            {"instruction": "Describe", "input": "a fox", "output": "A red fox in snow."},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "cat"}, ANSWER]},
        ],
    )
    data = load_pairs(path, "")
    assert [(p.prompt, p.response) for p in data.pairs] == [
        ("Describe\n\na fox", "A red fox in snow."),
        ("Be brief.\n\ncat", "A cat."),
    ]
    assert data.pairs[1].where.endswith("data.jsonl, line 2") and len(data.sha256) == 64


def test_text_box_takes_json_records_and_plain_lines():
    text = '{"instruction": "fox", "output": "The quick brown fox."}\n\n  a line of plain text  \n'
    data = load_pairs("", text)
    assert [(p.prompt, p.response, p.where) for p in data.pairs] == [
        ("fox", "The quick brown fox.", "text, line 1"),
        ("", "a line of plain text", "text, line 3"),
    ]
    assert data.source == "text"


def test_a_multi_turn_record_is_refused_by_line(tmp_path):
    chat = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]  # fmt: skip
    path = _jsonl(tmp_path, [{"instruction": "x", "output": "y"}, {"messages": chat}])
    with pytest.raises(LlmDataError, match=r"line 2: Generate Text answers one prompt.*has 2\)"):
        load_pairs(path, "")


def test_malformed_and_empty_input_is_named():
    with pytest.raises(LlmDataError, match=r"text, line 2 is not valid JSON"):
        load_pairs("", 'plain\n{"instruction": "x",\n')
    with pytest.raises(LlmDataError, match=r"no training text"):
        load_pairs("", "  \n\n")
    with pytest.raises(LlmDataError, match=r"either train_data .* or text, not both"):
        load_pairs("data.jsonl", "something")
    with pytest.raises(LlmDataError, match=r"'nowhere.jsonl' does not exist"):
        load_pairs("nowhere.jsonl", "")


def test_settings_are_checked():
    with pytest.raises(SettingsError, match="output_name must be a plain file name"):
        ClipLoraConfig.from_dict({"output_name": "../x"})
    with pytest.raises(SettingsError, match="targets must be one of"):
        ClipLoraConfig.from_dict({"targets": "everything"})
    assert ClipLoraConfig().targets == "all_linear"


def test_node_face_has_clip_data_and_every_setting():
    node = load_extension().NODE_CLASS_MAPPINGS["LoraTrain_TrainLLMLoRA"]
    required = node.INPUT_TYPES()["required"]
    assert list(required)[:3] == ["clip", "train_data", "text"]
    assert set(ClipLoraConfig.comfy_inputs()) <= set(required)
    assert required["network"][1]["advanced"] is True and "advanced" not in required["steps"][1]
    assert node.RETURN_TYPES == ("CLIP", "STRING", "LOSS_MAP")
    assert load_extension().NODE_DISPLAY_NAME_MAPPINGS["LoraTrain_TrainLLMLoRA"] == "Train LLM LoRA"


def test_publish_card_of_a_text_encoder_lora_says_to_use_it_with_generate_text(tmp_path):
    import torch
    from safetensors.torch import save_file

    from lora_train.release import PublishConfig, publish_lora

    lora = tmp_path / "tiny_llm_lora.safetensors"
    tensors = {"lora_te_layers_0_self_attn_q_proj.lora_down.weight": torch.ones(4, 16),
               "lora_te_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(16, 4),
               "lora_te_layers_0_self_attn_q_proj.alpha": torch.tensor(4.0)}  # fmt: skip
    metadata = {"lora_train.kind": "comfyui_text_encoder_lora", "lora_train.base_model": "AnimaTEModel_ "
                "(qwen3_06b: Qwen3_06B)", "ss_network_dim": "4", "ss_sd_model_name": "Qwen3_06B"}  # fmt: skip
    save_file(tensors, str(lora), metadata=metadata)
    cfg = PublishConfig.from_dict({"name": "fox_answers", "date": "2026-01-02", "recommended_weight": 1.0})
    card = publish_lora(cfg, lora, tmp_path / "rel").readme_path.read_text()
    assert "### ComfyUI (Generate Text)" in card and "(qwen3_06b: Qwen3_06B)" in card
    assert "`strength_clip` to 1 and `strength_model` to 0" in card
    assert "AUTOMATIC1111" not in card and "<lora:" not in card
