"""The trainer on ComfyUI's real model management, in-process: base model restored, file format, bad input."""

import contextlib

import pytest
import torch
from safetensors.torch import load_file

from lora_train.dataset.loading import LoraDataset, load_dataset
from lora_train.host.comfy_adapter import ComfyHost, apply_lora
from lora_train.training import TrainingError, train_lora
from lora_train.training.config import TrainConfig

pytestmark = pytest.mark.host


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality, NaNs included (clones: ComfyUI's weights can be inference tensors, which refuse views)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.clone().reshape(-1).view(torch.uint8), b.clone().reshape(-1).view(torch.uint8))


def _snapshot(model):
    import comfy.model_management as mm

    mm.load_models_gpu([model])
    diffusion = model.model.diffusion_model
    state = {k: v.detach().clone() for k, v in diffusion.state_dict().items()}
    names = [n for n, _ in diffusion.named_modules()]
    requires_grad = {n: p.requires_grad for n, p in diffusion.named_parameters()}
    return state, names, requires_grad


def _assert_restored(model, before):
    state, names, requires_grad = before
    after_state, after_names, after_requires_grad = _snapshot(model)
    assert after_names == names, "module tree changed"
    assert after_state.keys() == state.keys(), "state dict keys changed"
    changed = [k for k in state if not torch.equal(state[k], after_state[k])]
    assert not changed, f"weights changed: {changed[:5]}"
    diffusion = model.model.diffusion_model
    hooked = [n for n, m in diffusion.named_modules() if m._forward_hooks or m._forward_pre_hooks]
    assert not hooked, f"leftover hooks on {hooked[:5]}"
    assert all(p.grad is None for p in diffusion.parameters()), "leftover grads"
    assert after_requires_grad == requires_grad, "requires_grad flags changed"


def _train(model, clip, vae, dataset, tmp_path, **overrides):
    cfg = TrainConfig.from_dict(
        {
            "rank": 4,
            "alpha": 4,
            "steps": 3,
            "batch_size": 2,
            "resolution": 64,
            "learning_rate": 1e-3,
            "output_name": "t",
            "log_every": 1,
            **overrides,
        }
    )
    with torch.inference_mode():  # as every ComfyUI node runs
        return train_lora(cfg, dataset, ComfyHost(model, clip, vae), tmp_path)


def test_training_leaves_the_base_model_exactly_as_it_was(tiny_checkpoint, style_dataset_dir, tmp_path):
    model, clip, vae = tiny_checkpoint
    before = _snapshot(model)
    result = _train(model, clip, vae, load_dataset(style_dataset_dir), tmp_path)
    assert result.lora_path.is_file()
    _assert_restored(model, before)


def test_training_on_a_model_that_already_carries_a_lora_restores_it(tiny_checkpoint, style_dataset_dir, tmp_path):
    model, clip, vae = tiny_checkpoint
    first = _train(model, clip, vae, load_dataset(style_dataset_dir), tmp_path / "a", seed=1)
    tensors = {k: (v + 0.05 if k.endswith("lora_up.weight") else v) for k, v in first.lora_tensors.items()}
    with_lora, _ = apply_lora(model, clip, tensors, 1.0, 0.0)
    before = _snapshot(with_lora)
    _train(with_lora, clip, vae, load_dataset(style_dataset_dir), tmp_path / "b")
    _assert_restored(with_lora, before)


def test_saved_file_has_kohya_keys_and_metadata_only(tiny_checkpoint, style_dataset_dir, tmp_path):
    model, clip, vae = tiny_checkpoint
    result = _train(
        model, clip, vae, load_dataset(style_dataset_dir), tmp_path, network="locon", targets="attention_and_conv"
    )
    tensors = load_file(result.lora_path)
    suffixes = {k.split(".", 1)[1] for k in tensors}
    assert suffixes == {"lora_down.weight", "lora_up.weight", "alpha"}
    assert all(k.startswith("lora_unet_") for k in tensors)
    assert any("down_blocks_0_attentions_0" in k for k in tensors), "expected kohya's diffusers-style block names"
    assert any("resnets" in k for k in tensors), "locon should adapt ResBlock convs"
    from safetensors import safe_open

    with safe_open(result.lora_path, "pt") as handle:
        meta = handle.metadata()
    assert meta["ss_network_dim"] == "4" and meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert '"rank": 4' in meta["lora_train.config"]


def test_loss_is_recorded_and_finite(tiny_checkpoint, style_dataset_dir, tmp_path):
    model, clip, vae = tiny_checkpoint
    result = _train(model, clip, vae, load_dataset(style_dataset_dir), tmp_path)
    assert [s for s, _ in result.loss_history] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(v)) for _, v in result.loss_history)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"rank": 0}, "rank must be between 1"), ({"learning_rate": -1}, "learning_rate must be between")],
)
def test_bad_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(overrides)


def test_empty_dataset_and_missing_captions_are_refused_before_work(tiny_checkpoint, tmp_path):
    model, clip, vae = tiny_checkpoint
    with pytest.raises(TrainingError, match="dataset is empty"):
        _train(model, clip, vae, LoraDataset(items=[], root=tmp_path), tmp_path)
    from lora_train.dataset.loading import dataset_from_images

    no_captions = dataset_from_images(torch.rand(2, 64, 64, 3), [""])
    with pytest.raises(TrainingError, match="no caption"):
        _train(model, clip, vae, no_captions, tmp_path)
    assert not list(tmp_path.glob("*.safetensors")), "a refused run must not leave a LoRA file"


class _PoisonedHost(ComfyHost):
    """The real host, with the model output turned to NaN from the `poison_at`-th forward pass on (fault injection)."""

    poison_at = 3

    @contextlib.contextmanager
    def session(self, cfg):
        with super().session(cfg) as session:
            calls = []
            predict = session.predict

            def poisoned(*args, **kwargs):
                calls.append(1)
                out = predict(*args, **kwargs)
                return out * float("nan") if len(calls) >= self.poison_at else out

            session.predict = poisoned
            yield session


def test_non_finite_loss_stops_training_and_keeps_the_last_good_save(tiny_checkpoint, style_dataset_dir, tmp_path):
    model, clip, vae = tiny_checkpoint
    cfg = TrainConfig.from_dict(
        {"rank": 4, "steps": 5, "batch_size": 2, "resolution": 64, "output_name": "nan", "save_steps": 1}
    )
    with pytest.raises(TrainingError, match="loss became nan by step 3"), torch.inference_mode():
        train_lora(cfg, load_dataset(style_dataset_dir), _PoisonedHost(model, clip, vae), tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["nan.lora_state", "nan_s000001.safetensors", "nan_s000002.safetensors"], names
    from lora_train.training.resume import load_state

    assert load_state(tmp_path / "nan.lora_state").step == 2, "the resume state must be the last good step"


def test_a_model_that_is_not_a_diffusion_model_is_refused(tiny_checkpoint):
    _, clip, vae = tiny_checkpoint
    with pytest.raises(TrainingError, match="not a diffusion model"):
        ComfyHost(clip, clip, vae)


def test_text_encoder_training_writes_kohya_te_keys_and_restores_the_clip(
    own_tiny_checkpoint, style_dataset_dir, tmp_path
):
    # Its own checkpoint: clones other tests made of the shared one (with LoRA patches ComfyUI swaps in and out of
    # the shared modules as models load) would change these weights whatever training does.
    model, clip, vae = own_tiny_checkpoint
    import comfy.model_management as mm

    mm.load_models_gpu([clip.patcher])
    # What the never-loaded text projection held when CI failed here: uninitialised memory with NaNs in it.
    projection = clip.cond_stage_model.clip_l.transformer.text_projection.weight
    garbage = projection.detach().clone()
    garbage[0, :4] = float("nan")
    projection.data = garbage
    text_state = {k: v.detach().clone() for k, v in clip.cond_stage_model.state_dict().items()}
    result = _train(model, clip, vae, load_dataset(style_dataset_dir), tmp_path, train_text_encoder=True)
    te_keys = [k for k in result.lora_tensors if k.startswith("lora_te_")]
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in te_keys
    assert any(k.startswith("lora_unet_") for k in result.lora_tensors)
    after = clip.cond_stage_model.state_dict()
    # Bit for bit: the SD1.5 file has no text projection, so that weight is uninitialised memory, which late in a
    # session can hold NaNs (NaN != NaN: torch.equal on values failed there in CI). Restoring must not touch it.
    changed = [k for k in text_state if not _same_bits(text_state[k], after[k])]
    assert not changed, f"text encoder weights changed: {changed[:5]}"
    hooked = [n for n, m in clip.cond_stage_model.named_modules() if m._forward_hooks]
    assert not hooked
    # ComfyUI's loader maps every text-encoder key of the file.
    import comfy.lora

    key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {})
    prefixes = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in te_keys}
    assert prefixes <= set(key_map), sorted(prefixes - set(key_map))[:5]


class _CancelAt(ComfyHost):
    """The real host; the user presses Cancel (ComfyUI's interrupt flag) when step `cancel_at` is reported."""

    cancel_at = 2

    def report(self, progress):
        super().report(progress)
        if progress.step == self.cancel_at:
            import comfy.model_management as mm

            mm.interrupt_current_processing(True)


def test_cancel_stops_within_one_step_and_restores_the_model(tiny_checkpoint, style_dataset_dir, tmp_path):
    import comfy.model_management as mm

    model, clip, vae = tiny_checkpoint
    before = _snapshot(model)
    host = _CancelAt(model, clip, vae)
    steps_seen = []
    host.send_event = lambda _event, data: steps_seen.append(data["step"])
    cfg = TrainConfig.from_dict({"rank": 4, "steps": 50, "batch_size": 2, "resolution": 64, "log_every": 1})
    try:
        with pytest.raises(mm.InterruptProcessingException), torch.inference_mode():
            train_lora(cfg, load_dataset(style_dataset_dir), host, tmp_path)
    finally:
        mm.interrupt_current_processing(False)
    assert steps_seen == [1, 2], "training went on after Cancel"
    assert not list(tmp_path.glob("*.safetensors"))
    _assert_restored(model, before)


def _cancelled_run(model, clip, vae, dataset, out, **overrides):
    import comfy.model_management as mm

    cfg = TrainConfig.from_dict(
        {
            "rank": 4,
            "steps": 6,
            "batch_size": 2,
            "resolution": 64,
            "log_every": 1,
            "output_name": "resumed",
            **overrides,
        }
    )
    try:
        with pytest.raises(mm.InterruptProcessingException), torch.inference_mode():
            train_lora(cfg, dataset, _CancelAt(model, clip, vae), out)
    finally:
        mm.interrupt_current_processing(False)
    return cfg


def test_cancel_leaves_a_state_the_next_run_resumes_from(tiny_checkpoint, style_dataset_dir, tmp_path):
    from lora_train.training.resume import load_state

    model, clip, vae = tiny_checkpoint
    dataset = load_dataset(style_dataset_dir)
    cfg = _cancelled_run(model, clip, vae, dataset, tmp_path / "a")
    assert load_state(tmp_path / "a" / "resumed.lora_state").step in (2, 3)  # mid-step 3 or right after 2
    with torch.inference_mode():
        resumed = train_lora(cfg, dataset, ComfyHost(model, clip, vae), tmp_path / "a")
        straight = train_lora(cfg, dataset, ComfyHost(model, clip, vae), tmp_path / "b")
    assert [s for s, _ in resumed.loss_history] == [1, 2, 3, 4, 5, 6]
    assert all(torch.equal(resumed.lora_tensors[k], straight.lora_tensors[k]) for k in straight.lora_tensors)


def test_resume_with_a_changed_rank_is_refused_naming_the_setting(tiny_checkpoint, style_dataset_dir, tmp_path):
    from lora_train.training.resume import ResumeError

    model, clip, vae = tiny_checkpoint
    dataset = load_dataset(style_dataset_dir)
    cfg = _cancelled_run(model, clip, vae, dataset, tmp_path)
    with pytest.raises(ResumeError, match="rank was 4 and is now 8"), torch.inference_mode():
        train_lora(cfg.replace(rank=8), dataset, ComfyHost(model, clip, vae), tmp_path)
    assert (tmp_path / "resumed.lora_state").exists(), "a refused resume must keep the state"


def test_keep_last_prunes_old_intermediate_saves(tiny_checkpoint, style_dataset_dir, tmp_path):
    model, clip, vae = tiny_checkpoint
    _train(model, clip, vae, load_dataset(style_dataset_dir), tmp_path, steps=5, save_steps=1, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["t.safetensors", "t_s000003.safetensors", "t_s000004.safetensors"], names


def test_resume_state_from_another_base_model_is_refused(tiny_checkpoint, style_dataset_dir, tmp_path):
    from lora_train.training.resume import ResumeError

    model, clip, vae = tiny_checkpoint
    dataset = load_dataset(style_dataset_dir)
    cfg = _cancelled_run(model, clip, vae, dataset, tmp_path)
    other = model.clone()
    patched = "diffusion_model.output_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"  # deep inside, not first
    other.add_patches({patched: ("diff", (torch.full((320, 768), 0.01),))}, 1.0)
    with pytest.raises(ResumeError, match="another base model"), torch.inference_mode():
        train_lora(cfg, dataset, ComfyHost(other, clip, vae), tmp_path)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])  # fp16 goes through the GradScaler
def test_mixed_sizes_train_in_their_own_buckets_under_autocast(tiny_checkpoint, tmp_path, precision):
    from PIL import Image

    from lora_train.dev.synthetic import style_image

    folder = tmp_path / "mixed"
    folder.mkdir()
    for index, size in enumerate([(128, 128), (128, 128), (256, 128), (256, 128), (128, 256)]):
        style_image(index, 64).resize(size, Image.NEAREST).save(folder / f"{index}.png")
        (folder / f"{index}.txt").write_text("redstyle, a shape")
    dataset = load_dataset(folder)
    model, clip, vae = tiny_checkpoint
    host = ComfyHost(model, clip, vae)
    cfg = TrainConfig.from_dict({"resolution": 128, "batch_size": 2, "mixed_precision": precision})
    with torch.inference_mode():
        shapes = sorted({tuple(e.latents.shape) for e in host.encode_examples(dataset, cfg)})
    assert len(shapes) == 3, f"expected square, wide and tall buckets, got {shapes}"
    result = _train(model, clip, vae, dataset, tmp_path / "out", resolution=128, mixed_precision=precision, steps=4)
    assert all(torch.isfinite(v).all() for v in result.lora_tensors.values())
    assert all(v.dtype == torch.float32 for v in result.lora_tensors.values()), "adapter weights must stay fp32"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_on_a_cpu_without_it_computes_in_fp32(
    tiny_checkpoint, style_dataset_dir, tmp_path, monkeypatch, caplog, precision
):
    """The capability probe forced both ways: emulated -> the same adapters as fp32, said once; native -> autocast."""
    model, clip, vae = tiny_checkpoint
    dataset = load_dataset(style_dataset_dir)
    fp32 = _train(model, clip, vae, dataset, tmp_path / "fp32", mixed_precision="no").lora_tensors
    monkeypatch.setenv("LORA_TRAIN_CPU_HALF", "emulated")
    with caplog.at_level("INFO", logger="lora_train.training.precision"):
        emulated = _train(model, clip, vae, dataset, tmp_path / "emulated", mixed_precision=precision).lora_tensors
    said = [r.getMessage() for r in caplog.records if r.name == "lora_train.training.precision"]
    assert len(said) == 1 and f"mixed_precision={precision} computes in fp32" in said[0]
    assert all(torch.equal(fp32[k], emulated[k]) for k in fp32)
    monkeypatch.setenv("LORA_TRAIN_CPU_HALF", "native")
    native = _train(model, clip, vae, dataset, tmp_path / "native", mixed_precision=precision).lora_tensors
    assert any(not torch.equal(fp32[k], native[k]) for k in fp32), "native half precision did not autocast"


def test_the_hosts_training_switch_is_on_while_training_and_restored_after(
    tiny_checkpoint, style_dataset_dir, tmp_path, monkeypatch
):
    import comfy.model_management as mm

    from lora_train.host import comfy_adapter

    model, clip, vae = tiny_checkpoint
    monkeypatch.setattr(mm, "in_training", False, raising=False)  # 0.3.75 has no flag: the adapter adds none
    seen = []
    original = comfy_adapter.ComfySession.predict

    def predict(self, *args, **kwargs):
        seen.append(mm.in_training)
        return original(self, *args, **kwargs)

    import comfy.sample

    sampled = []
    sample = comfy.sample.sample

    def sample_and_see(*args, **kwargs):
        sampled.append(mm.in_training)
        return sample(*args, **kwargs)

    monkeypatch.setattr(comfy_adapter.ComfySession, "predict", predict)
    monkeypatch.setattr(comfy.sample, "sample", sample_and_see)
    _train(model, clip, vae, load_dataset(style_dataset_dir), tmp_path, sample_every=2, sample_steps=1)
    assert seen and all(seen), "training ran with ComfyUI's training switch off"
    assert sampled and not any(sampled), "previews sampled with the training switch on"
    assert mm.in_training is False, "the switch was not restored"

    def cancel(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(comfy_adapter.ComfyHost, "check_cancel", cancel)
    with pytest.raises(KeyboardInterrupt):
        _train(model, clip, vae, load_dataset(style_dataset_dir), tmp_path / "cancelled")
    assert mm.in_training is False, "the switch was left on after Cancel"


def test_every_host_api_the_adapter_uses_exists_on_this_comfyui(comfy_lib):
    from lora_train.host.compat import comfyui_version, missing_apis

    assert missing_apis() == [], f"ComfyUI {comfyui_version()} lacks APIs the adapter uses"


def test_a_comfyui_without_an_api_the_trainer_needs_is_named_before_any_work(tiny_checkpoint, monkeypatch):
    import comfy.sample

    from lora_train.host.compat import OLDEST_TESTED, comfyui_version

    model, clip, vae = tiny_checkpoint
    monkeypatch.delattr(comfy.sample, "fix_empty_latent_channels")
    with pytest.raises(TrainingError) as refused:
        ComfyHost(model, clip, vae)
    message = str(refused.value)
    assert "comfy.sample.fix_empty_latent_channels" in message
    assert f"({comfyui_version()})" in message and f"{OLDEST_TESTED} or newer" in message
