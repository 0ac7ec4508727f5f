"""Adapter folders through the release flow: publish zips the folder (byte-reproducible, with a model card that says
how to load it), fetch from a real loopback server unpacks it back into a folder peft loads."""

import json
import zipfile

import pytest
import torch

from lora_train.dev.http_server import FaultServer, Route
from lora_train.fetch import FetchConfig, fetch_lora
from lora_train.llm import ADAPTER_CONFIG, ADAPTER_WEIGHTS, LlmPaths, LlmTrainConfig, train_causal_lm
from lora_train.release import PublishConfig, PublishError, load_manifest, publish_adapter
from tests.llm import MEMORISABLE, tiny_model, write_jsonl


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_release")
    model = tiny_model(root, "llama")
    data = write_jsonl(root / "train.jsonl", MEMORISABLE)
    cfg = LlmTrainConfig(steps=3, rank=4, learning_rate=1e-2, output_name="pirate", batch_size=4)
    result = train_causal_lm(cfg, LlmPaths(base_model=str(model), train_data=str(data), output_dir=str(root / "out")))
    return model, result.adapter_dir


def _publish(adapter, releases, **changes):
    values = {"name": "pirate_speech", "date": "2026-12-01", "license": "CC-BY-4.0", **changes}
    return publish_adapter(PublishConfig.from_dict(values), adapter, releases)


def test_publish_zips_the_adapter_folder_reproducibly_with_a_card_that_says_how_to_load_it(trained, tmp_path):
    model, adapter = trained
    first = _publish(adapter, tmp_path / "a")
    again = _publish(adapter, tmp_path / "b")
    assert sorted(p.name for p in first.release_dir.iterdir()) == [
        "README.md",
        "manifest.json",
        "pirate_speech_v1.zip",
    ]
    assert first.zip_path.read_bytes() == again.zip_path.read_bytes()
    with zipfile.ZipFile(first.zip_path) as archive:
        members = sorted(archive.namelist())
    assert members == sorted(f"pirate_speech_v1/{n}" for n in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md"))
    manifest = load_manifest(first.manifest_path.read_bytes())
    assert manifest.base_model == model.name  # read from the adapter's metadata, as for image LoRAs
    assert manifest.select(1).weights.sha256 == first.sha256
    card = first.readme_path.read_text()
    assert 'PeftModel.from_pretrained(base, "pirate_speech_v1")' in card and "### ComfyUI" in card
    assert first.sha256 in card


def test_publish_refuses_a_folder_that_is_not_an_adapter(tmp_path):
    folder = tmp_path / "not_adapter"
    folder.mkdir()
    (folder / ADAPTER_WEIGHTS).write_bytes(b"x")
    with pytest.raises(PublishError, match="not a peft adapter folder"):
        _publish(folder, tmp_path / "releases")
    assert not (tmp_path / "releases" / "pirate_speech").exists()


def test_fetch_unpacks_a_released_adapter_into_a_folder_peft_loads(trained, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, adapter = trained
    with FaultServer() as server:
        result = _publish(adapter, tmp_path / "releases", mirrors=[server.url("/pirate/")])
        for path in result.release_dir.iterdir():
            server.add(f"/pirate/{path.name}", Route(file=path))
        cfg = FetchConfig.from_dict({"urls": server.url("/pirate/manifest.json"), "allow_private_addresses": True,
                                     "cache_dir": str(tmp_path / "cache")})  # fmt: skip
        loras = tmp_path / "loras"
        loras.mkdir()
        fetched = fetch_lora(cfg, loras)
        again = fetch_lora(cfg, loras)
    folder = loras / "pirate_speech_v1"
    assert fetched.lora_name == f"pirate_speech_v1/{ADAPTER_WEIGHTS}"
    assert sorted(p.name for p in folder.iterdir()) == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md"])
    assert again.status == "present"
    assert json.loads((folder / ADAPTER_CONFIG).read_text()) == json.loads((adapter / ADAPTER_CONFIG).read_text())
    base = AutoModelForCausalLM.from_pretrained(str(model))
    loaded = PeftModel.from_pretrained(base, str(folder))
    original = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(model)), str(adapter))
    probe = torch.tensor([[1, 5, 9, 20, 33]])
    with torch.no_grad():
        assert torch.equal(loaded(probe).logits, original(probe).logits)
