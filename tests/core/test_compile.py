"""The `compile` setting: regional torch.compile trains the same LoRA as the eager path (within float tolerance),
leaves the model uncompiled afterwards, and where compile cannot run says so once and trains eagerly."""

from __future__ import annotations

import logging

import pytest
import torch

from lora_train.dataset import load_dataset
from lora_train.training import TrainConfig, train_lora
from lora_train.training.compiling import compile_unavailable
from tests.core.standin import StandInHost, TinyFlowModel, write_images

BASE = {"rank": 4, "alpha": 4, "steps": 3, "batch_size": 2, "resolution": 64, "learning_rate": 1e-2,
        "output_name": "c", "log_every": 1, "seed": 3}  # fmt: skip


def _train(tmp_path, name: str, **overrides):
    data = load_dataset(write_images(tmp_path / "data", size=(64, 64)))
    host = StandInHost(TinyFlowModel(seed=1))
    result = train_lora(TrainConfig.from_dict(BASE | overrides), data, host, tmp_path / name)
    return result, host.model


def test_compiled_blocks_train_the_lora_of_the_eager_path(tmp_path, caplog):
    compile_unavailable.cache_clear()
    eager, _ = _train(tmp_path, "eager")
    with caplog.at_level(logging.INFO, logger="lora_train.training.compiling"):
        compiled, model = _train(tmp_path, "compiled", compile=True)
    assert "3 blocks compiled regionally" in caplog.text, caplog.text
    assert any(t.abs().sum() > 0 for k, t in compiled.lora_tensors.items() if "lora_up" in k)
    for key, tensor in eager.lora_tensors.items():
        torch.testing.assert_close(compiled.lora_tensors[key], tensor, rtol=1e-4, atol=1e-6)
    assert all(m._compiled_call_impl is None for m in model.modules()), "a block stayed compiled"


def test_compile_without_torch_compile_logs_once_and_trains_eagerly(tmp_path, caplog, monkeypatch):
    eager, _ = _train(tmp_path, "eager")
    compile_unavailable.cache_clear()
    monkeypatch.delattr(torch, "compile")
    try:
        with caplog.at_level(logging.INFO, logger="lora_train.training.compiling"):
            fallback, _ = _train(tmp_path, "fallback", compile=True)
    finally:
        compile_unavailable.cache_clear()
    lines = [r for r in caplog.records if r.name == "lora_train.training.compiling"]
    assert (
        len(lines) == 1 and "has no torch.compile" in lines[0].getMessage() and "without it" in lines[0].getMessage()
    )
    assert all(torch.equal(fallback.lora_tensors[k], t) for k, t in eager.lora_tensors.items())


def test_a_broken_cpu_compiler_is_found_before_the_run(tmp_path, caplog, monkeypatch):
    """No working C++ compiler for inductor's CPU code: the probe fails, the run trains eagerly, nothing raises."""
    inductor_config = pytest.importorskip("torch._inductor.config")
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("/nonexistent/c++",))
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled earlier is reused
    torch._dynamo.reset()
    compile_unavailable.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="lora_train.training.compiling"):
            result, _ = _train(tmp_path, "broken", compile=True)
    finally:
        compile_unavailable.cache_clear()
    assert "torch.compile is unavailable here" in caplog.text
    assert result.steps == 3 and (tmp_path / "broken" / "c.safetensors").is_file()
