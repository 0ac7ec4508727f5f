"""Language-model adapters on tiny random Llama and GLM models built at test time: the loss falls on a memorisable
set, the saved peft folder reloads and reproduces the trained logits (merged too), resume equals an uninterrupted
run bit for bit, packing keeps examples apart, and bad models are refused before anything is loaded or written."""

import json

import pytest
import torch

from lora_train.dev.tiny_llm import write_remote_code_checkpoint
from lora_train.llm import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    LlmModelError,
    LlmPaths,
    LlmTrainConfig,
    read_adapter_metadata,
    train_causal_lm,
)
from tests.llm import MEMORISABLE, tiny_model, write_jsonl

FAST = {"rank": 8, "alpha": 16, "learning_rate": 3e-2, "batch_size": 4, "lr_scheduler": "constant", "log_every": 5,
        "max_length": 128}  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tmp_path_factory.mktemp("llm_models")


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", MEMORISABLE)


def _paths(model, data, out) -> LlmPaths:
    return LlmPaths(base_model=str(model), train_data=str(data), output_dir=str(out))


def _probe(model_dir):
    """Token ids of a rendered training conversation (what the logits are compared on)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    text = tokenizer.apply_chat_template(MEMORISABLE[3]["messages"], tokenize=False)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def _base(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()


@pytest.mark.parametrize("family", ["llama", "glm"])
def test_loss_falls_and_the_saved_adapter_reproduces_the_trained_logits(models, data, tmp_path, family):
    from peft import PeftModel

    model_dir = tiny_model(models, family)
    cfg = LlmTrainConfig(steps=30, dropout=0.0, merge=True, **FAST)
    result = train_causal_lm(cfg, _paths(model_dir, data, tmp_path / "out"))
    first, last = result.loss_history[0][1], result.loss_history[-1][1]
    assert last < 0.25 * first, result.loss_history
    assert sorted(p.name for p in result.adapter_dir.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]

    probe = _probe(model_dir)
    with torch.no_grad():
        base_logits = _base(model_dir)(probe).logits
        reloaded = PeftModel.from_pretrained(_base(model_dir), str(result.adapter_dir)).eval()
        adapter_logits = reloaded(probe).logits
        trained_logits = result.model.eval()(probe).logits
        merged = type(reloaded.get_base_model()).from_pretrained(str(result.merged_dir)).eval()
        merged_logits = merged(probe).logits
    assert torch.equal(adapter_logits, trained_logits)
    torch.testing.assert_close(merged_logits, trained_logits, rtol=1e-4, atol=1e-4)
    assert (adapter_logits - base_logits).abs().max() > 1.0  # the adapter does change the model


def test_adapter_folder_carries_base_model_data_hash_and_settings(models, data, tmp_path):
    import hashlib

    model_dir = tiny_model(models, "llama")
    cfg = LlmTrainConfig(steps=2, network="dora", output_name="colours", **FAST)
    result = train_causal_lm(cfg, _paths(model_dir, data, tmp_path))
    meta = read_adapter_metadata(result.adapter_dir)
    assert meta["ss_sd_model_name"] == model_dir.name == meta["lora_train.base_model"]
    assert meta["lora_train.data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert json.loads(meta["lora_train.config"]) == cfg.to_dict()
    assert meta["modelspec.architecture"] == "llama/dora" and meta["ss_network_dim"] == "8"
    assert json.loads(meta["lora_train.data"])["examples"] == len(MEMORISABLE)
    adapter_config = json.loads((result.adapter_dir / ADAPTER_CONFIG).read_text())
    assert adapter_config["use_dora"] is True and adapter_config["r"] == 8
    assert adapter_config["base_model_name_or_path"] == model_dir.name  # not this machine's path


@pytest.mark.parametrize("where", ["after_a_save", "mid_step"])
def test_resume_after_an_interrupt_matches_the_uninterrupted_run(models, data, tmp_path, monkeypatch, where):
    from safetensors.torch import load_file

    from lora_train.llm import trainer

    model_dir = tiny_model(models, "llama")
    # Dropout and two batches per epoch, so the random streams and the data order both matter.
    cfg = LlmTrainConfig(steps=8, dropout=0.1, save_steps=3, **{**FAST, "batch_size": 2, "log_every": 1})
    straight = train_causal_lm(cfg, _paths(model_dir, data, tmp_path / "straight"))
    assert [p.name for p in straight.saved] == ["my_llm_lora_s000003", "my_llm_lora_s000006", "my_llm_lora"]
    assert (tmp_path / "straight" / "my_llm_lora_s000006" / ADAPTER_WEIGHTS).is_file()

    report = None
    if where == "after_a_save":  # Ctrl-C between steps 5 and 6: the state saved at step 3 continues

        def report(progress):
            if progress.step == 5:
                raise KeyboardInterrupt

    else:  # Ctrl-C inside step 5, after its forward drew dropout masks and took a batch: the state of step 4 is
        # kept with the random streams and the data order rewound to where step 5 began
        real_loss, calls = trainer.summed_token_loss, []

        def interrupted_loss(*args):
            loss = real_loss(*args)
            calls.append(1)
            if len(calls) == 5:
                raise KeyboardInterrupt
            return loss

        monkeypatch.setattr(trainer, "summed_token_loss", interrupted_loss)
    with pytest.raises(KeyboardInterrupt):
        train_causal_lm(cfg, _paths(model_dir, data, tmp_path / "resumed"), report=report)
    monkeypatch.undo()
    assert (tmp_path / "resumed" / f"{cfg.output_name}.lora_state").is_file()
    assert not (tmp_path / "resumed" / cfg.output_name).exists()  # no final adapter from the interrupted run
    resumed = train_causal_lm(cfg, _paths(model_dir, data, tmp_path / "resumed"))
    want = load_file(str(straight.adapter_dir / ADAPTER_WEIGHTS))
    got = load_file(str(resumed.adapter_dir / ADAPTER_WEIGHTS))
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert resumed.loss_history == straight.loss_history
    assert not (tmp_path / "resumed" / f"{cfg.output_name}.lora_state").exists()  # finished: the state is gone


def test_packed_examples_do_not_see_each_other(models, data, tmp_path):
    from lora_train.llm.batches import collate
    from lora_train.llm.render import pack_rows
    from lora_train.llm.trainer import prepare

    model_dir = tiny_model(models, "glm")
    cfg = LlmTrainConfig(**FAST)
    rows = prepare(cfg, _paths(model_dir, data, tmp_path)).rows
    packed = pack_rows(rows[:2], max_length=128)
    assert len(packed) == 1
    model = _base(model_dir)
    inputs = {k: v for k, v in collate(packed, 0, True, torch.device("cpu")).items() if k != "labels"}
    assert "attention_mask" not in inputs  # transformers builds per-example masks from the positions then
    with torch.no_grad():  # use_cache=False as in training: with a cache, transformers ignores the packing
        together = model(**inputs, use_cache=False)
        alone = model(torch.tensor([rows[1].input_ids]), use_cache=False)
    start = len(rows[0].input_ids)
    torch.testing.assert_close(together.logits[0, start:], alone.logits[0], rtol=1e-5, atol=1e-5)


def test_a_remote_code_checkpoint_is_refused_before_anything_runs(tmp_path, data):
    folder = write_remote_code_checkpoint(tmp_path / "chatglm3-6b")
    with pytest.raises(LlmModelError) as caught:
        train_causal_lm(LlmTrainConfig(**FAST), _paths(folder, data, tmp_path / "out"))
    message = str(caught.value)
    assert "remote-code checkpoint" in message and "trust_remote_code" in message
    assert "GlmForCausalLM" in message  # says what to use instead
    assert not (tmp_path / "out").exists()


def test_an_unsupported_family_is_refused_naming_the_supported_ones(tmp_path, data):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(LlmModelError, match=r"model_type 'gpt2'; supported: llama \(LlamaForCausalLM\), glm"):
        train_causal_lm(LlmTrainConfig(**FAST), _paths(folder, data, tmp_path / "out"))


def test_qlora_without_bitsandbytes_says_how_to_get_it(models, data, tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else
                        real_find_spec(name, *a))  # fmt: skip
    cfg = LlmTrainConfig(quantization="4bit", **FAST)
    with pytest.raises(LlmModelError, match="needs the bitsandbytes package: pip install bitsandbytes"):
        train_causal_lm(cfg, _paths(tiny_model(models, "llama"), data, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_settings_refuse_unknown_keys_and_out_of_bound_values():
    from lora_train.settings import SettingsError

    with pytest.raises(SettingsError, match="did you mean 'max_length'"):
        LlmTrainConfig.from_dict({"max_lenght": 10})
    with pytest.raises(SettingsError, match="rank must be between 1 and 1024, got 0"):
        LlmTrainConfig.from_dict({"lora_r": 0})
    assert LlmTrainConfig.from_dict({"cutoff_len": 77}).max_length == 77


def test_optimizer_and_schedule_choices_match_the_training_registries():
    from lora_train.llm.config import OPTIMIZER_CHOICES, SCHEDULER_CHOICES
    from lora_train.training import OPTIMIZERS, SCHEDULES

    assert (set(OPTIMIZER_CHOICES), set(SCHEDULER_CHOICES)) == (set(OPTIMIZERS), set(SCHEDULES))


def test_gradient_checkpointing_trains_the_same_adapter(models, data, tmp_path):
    from safetensors.torch import load_file

    model_dir = tiny_model(models, "llama")
    adapters = []
    for checkpointing in (False, True):
        cfg = LlmTrainConfig(steps=3, dropout=0.0, gradient_checkpointing=checkpointing, **FAST)
        result = train_causal_lm(cfg, _paths(model_dir, data, tmp_path / str(checkpointing)))
        layers_flagged = any(getattr(m, "gradient_checkpointing", False) for m in result.model.modules())
        assert layers_flagged == checkpointing
        adapters.append(load_file(str(result.adapter_dir / ADAPTER_WEIGHTS)))
    assert adapters[0].keys() == adapters[1].keys()
    for key in adapters[0]:
        torch.testing.assert_close(adapters[1][key], adapters[0][key], rtol=1e-5, atol=1e-6, msg=key)
