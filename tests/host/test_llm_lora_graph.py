"""Train LLM LoRA in a real ComfyUI graph (0.33+ server): its CLIP output feeds Generate Text at once, which then
answers as trained while the same prompt on the input CLIP does not; LoraLoader on that CLIP with the saved file
answers the same with no key left unloaded; progress reaches the client."""

from __future__ import annotations

import json

import pytest

from lora_train.dev.server import ComfyServer
from lora_train.dev.tiny_llm_node import NODE_NAME, install
from lora_train.dev.tiny_models import TINY_SD15_NAME
from lora_train.dev.workflows import lora_loader_generate, train_llm_and_generate
from lora_train.llm import ClipLoraConfig

pytestmark = pytest.mark.host

EXAMPLES = [
    {"instruction": "fox", "output": "The quick brown fox jumps."},
    {"instruction": "cat", "output": "A sleepy cat naps."},
    {"instruction": "owl", "output": "Owls hoot at night."},
]
WIDGETS = {"output_name": "graph_llm_lora", "steps": 20, "learning_rate": 1e-2, "rank": 8, "alpha": 8.0,
           "batch_size": 3, "max_length": 64, "seed": 0}  # fmt: skip
CLIP_NODE = {"class_type": NODE_NAME, "inputs": {"seed": 0}}


@pytest.fixture(scope="module")
def llm_server(host, tiny_models_dir, tmp_path_factory):
    if not (host.comfyui / "comfy_extras" / "nodes_textgen.py").is_file():
        pytest.skip("this ComfyUI has no Generate Text node (tests/host/test_llm_lora_node.py checks the refusal)")
    server = ComfyServer(host.comfyui, host.python, tmp_path_factory.mktemp("llm_server"))
    server.prepare()
    install(server.base_dir / "custom_nodes")
    (server.models_dir / "checkpoints" / TINY_SD15_NAME).symlink_to(tiny_models_dir / "checkpoints" / TINY_SD15_NAME)
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def trained(llm_server):
    text = "\n".join(json.dumps(record) for record in EXAMPLES)
    widgets = {**ClipLoraConfig().to_widgets(), **WIDGETS}  # an API-format graph names every widget
    return llm_server.run_workflow(train_llm_and_generate(CLIP_NODE, text, "fox", **widgets))


def _text(result, node: str) -> str:
    return result.outputs[node]["text"][0]


def test_generate_text_on_the_node_output_answers_as_trained(llm_server, trained):
    assert _text(trained, "show_after") == "The quick brown fox jumps."
    assert _text(trained, "show_before") != "The quick brown fox jumps."
    assert trained.outputs["train"]["lora_name"] == ["graph_llm_lora.safetensors"]
    assert (llm_server.models_dir / "loras" / "graph_llm_lora.safetensors").is_file()
    events = trained.events_of("lora_train.train_progress")
    assert [e["step"] for e in events] == list(range(1, 21)) and all(e["node"] == "train" for e in events)
    assert events[-1]["loss"] < 0.05 * events[0]["loss"]


def test_lora_loader_in_a_graph_loads_every_key_and_answers_the_same(llm_server, trained):
    log_before = len(llm_server.log_text())
    result = llm_server.run_workflow(lora_loader_generate(CLIP_NODE, "graph_llm_lora.safetensors", "cat"))
    new_log = llm_server.log_text()[log_before:]
    assert "lora key not loaded" not in new_log and "NOT LOADED" not in new_log, new_log[-3000:]
    assert _text(result, "show_loader") == "A sleepy cat naps."
