"""Training that holds up in real use, in-process on ComfyUI's real model management: previews, shuffled captions,
encode-once caching, memory, optimizers and a full disk."""

import pytest
import torch
from PIL import Image

from lora_train.dataset.loading import dataset_from_images, load_dataset
from lora_train.host.comfy_adapter import ComfyHost
from lora_train.training import train_lora
from lora_train.training.captions import split_tags
from lora_train.training.config import TrainConfig

pytestmark = pytest.mark.host

BASE = {
    "rank": 4,
    "alpha": 4,
    "steps": 4,
    "batch_size": 2,
    "resolution": 64,
    "learning_rate": 1e-3,
    "dropout": 0.1,  # adapter dropout draws from torch's global stream: a disturbed stream shows in the weights
    "output_name": "real",
    "log_every": 1,
}


def _train(checkpoint, dataset, out, host_class=ComfyHost, **overrides):
    model, clip, vae = checkpoint
    cfg = TrainConfig.from_dict({**BASE, **overrides})
    with torch.inference_mode():  # as every ComfyUI node runs
        return train_lora(cfg, dataset, host_class(model, clip, vae), out)


def _same_weights(a, b) -> list[str]:
    assert a.lora_tensors.keys() == b.lora_tensors.keys()
    return [k for k in a.lora_tensors if not torch.equal(a.lora_tensors[k], b.lora_tensors[k])]


# ---- sample previews -------------------------------------------------------------------------------------------
def test_previews_do_not_change_the_trained_weights(tiny_checkpoint, style_dataset_dir, tmp_path):
    dataset = load_dataset(style_dataset_dir)
    plain = _train(tiny_checkpoint, dataset, tmp_path / "plain")
    previewed = _train(
        tiny_checkpoint, dataset, tmp_path / "previewed", sample_every=2, sample_steps=3, sample_prompts="a\nb"
    )
    assert not _same_weights(plain, previewed), "sampling previews changed the training run"
    assert plain.loss_history == previewed.loss_history
    names = sorted(p.name for p in (tmp_path / "previewed").glob("*.png"))
    assert names == [f"real_sample_s{s:06d}_{i}.png" for s in (2, 4) for i in (0, 1)], names
    with Image.open(tmp_path / "previewed" / names[0]) as image:
        assert image.size == (64, 64)
    assert not list((tmp_path / "plain").glob("*.png"))


SHOWN: list = []  # (step, total, images, paths) per show_samples call of _RecordingHost


class _RecordingHost(ComfyHost):
    def show_samples(self, step, total, images, paths):
        SHOWN.append((step, total, [im.copy() for im in images], paths))
        super().show_samples(step, total, images, paths)


def test_previews_sample_with_the_lora_attached(tiny_checkpoint, style_dataset_dir, tmp_path):
    """A big learning rate moves the model: the last preview differs from the first, drawn with the same seed."""
    SHOWN.clear()
    _train(
        tiny_checkpoint,
        load_dataset(style_dataset_dir),
        tmp_path,
        host_class=_RecordingHost,
        steps=6,
        sample_every=1,
        sample_steps=3,
        learning_rate=5e-2,
        trigger_word="redstyle",
    )
    steps = [s for s, *_ in SHOWN]
    assert steps == [1, 2, 3, 4, 5, 6]
    import numpy as np

    first, last = (np.asarray(SHOWN[i][2][0], dtype=np.float32) for i in (0, -1))
    assert np.abs(first - last).mean() > 1.0, "previews did not change while the LoRA trained"


def test_train_lora_node_sends_preview_events_and_writes_the_files(comfy, style_dataset_dir):
    import io

    from lora_train.dev.workflows import train_and_sample

    workflow = train_and_sample(
        str(style_dataset_dir), steps=4, sample_every=3, sample_steps=2, output_name="previewed"
    )
    result = comfy.run_workflow(workflow)
    events = result.events_of("lora_train.train_sample")
    assert [(e["node"], e["step"]) for e in events] == [("train", 3), ("train", 4)]
    for event in events:
        assert event["image"]["type"] == "temp"
        with Image.open(io.BytesIO(comfy.view(event["image"]))) as image:
            assert image.size == (64, 64)
    saved = sorted(p.name for p in (comfy.models_dir / "loras").glob("previewed_sample_*.png"))
    assert saved == ["previewed_sample_s000003_0.png", "previewed_sample_s000004_0.png"]


# ---- shuffled captions -----------------------------------------------------------------------------------------
class _TextRecordingHost(ComfyHost):
    """The real host; records every caption the text encoder sees once training has started."""

    def encode_examples(self, dataset, cfg):
        examples = super().encode_examples(dataset, cfg)
        self.encoded_in_training = []
        return examples

    def encode_text(self, text):
        if hasattr(self, "encoded_in_training"):
            self.encoded_in_training.append(text)
        return super().encode_text(text)


def test_shuffled_captions_are_encoded_every_step_with_the_trigger_first(tiny_checkpoint, tmp_path):
    model, clip, vae = tiny_checkpoint
    dataset = dataset_from_images(torch.rand(2, 64, 64, 3), ["red, round, shiny, small", "blue, square, dull, big"])
    cfg = TrainConfig.from_dict(
        {**BASE, "steps": 3, "shuffle_captions": True, "trigger_word": "mytrig", "keep_tokens": 1}
    )
    host = _TextRecordingHost(model, clip, vae)
    with torch.inference_mode():
        train_lora(cfg, dataset, host, tmp_path)
    texts = host.encoded_in_training
    assert len(texts) == 3 * 2, "shuffled captions must be encoded once per image per step"
    tags = [split_tags(t) for t in texts]
    assert all(t[0] == "mytrig" and t[1] in ("red", "blue") for t in tags), texts
    assert all(sorted(t[2:]) in (["round", "shiny", "small"], ["big", "dull", "square"]) for t in tags), texts
    assert len({tuple(t) for t in tags}) > 2, f"the tags were not shuffled: {texts}"


# ---- encode once, cache across runs ------------------------------------------------------------------------------
def _count_calls(monkeypatch, obj, name: str) -> list:
    calls = []
    original = getattr(obj, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, counted)
    return calls


def test_vae_and_text_encoder_run_once_per_item_and_the_disk_cache_skips_the_vae(
    tiny_checkpoint, tmp_path, monkeypatch
):
    _, clip, vae = tiny_checkpoint
    generator = torch.Generator().manual_seed(0)
    dataset = dataset_from_images(torch.rand(4, 64, 64, 3, generator=generator), ["a, b", "a, b", "c", "c"])
    vae_calls = _count_calls(monkeypatch, vae, "encode")
    text_calls = _count_calls(monkeypatch, clip, "encode_from_tokens")

    def run(out, **overrides):
        vae_calls.clear(), text_calls.clear()
        return _train(tiny_checkpoint, dataset, out, steps=5, **overrides)

    in_memory = run(tmp_path / "memory")
    assert len(vae_calls) == 4, "the VAE must encode each image once, not once per step"
    assert len(text_calls) == 3, "the text encoder must encode each distinct caption (and the empty one) once"

    first = run(tmp_path / "disk", cache_latents_to_disk=True)
    assert len(vae_calls) == 4
    entries = sorted((tmp_path / "disk" / ".lora_train_cache" / "latents").iterdir())
    assert len(entries) == 4 and all(p.suffix == ".latent" for p in entries), entries

    second = run(tmp_path / "disk", cache_latents_to_disk=True)
    assert vae_calls == [], "a second run must reuse every cached latent"
    assert not _same_weights(first, second) and not _same_weights(in_memory, first)

    run(tmp_path / "disk", cache_latents_to_disk=True, resolution=128)  # another bucket: new entries
    assert len(vae_calls) == 4
    assert len(list((tmp_path / "disk" / ".lora_train_cache" / "latents").iterdir())) == 8


# ---- memory ------------------------------------------------------------------------------------------------------
def _bytes_saved_for_backward(checkpoint, dataset, out, **overrides):
    """Bytes of distinct storages autograd keeps for backward over one training step (deterministic, any device),
    and the run's result."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = _train(checkpoint, dataset, out, steps=1, **overrides)
    return sum(storages.values()), result


def test_gradient_checkpointing_keeps_fewer_activations_and_trains_the_same(
    tiny_checkpoint, style_dataset_dir, tmp_path
):
    dataset = load_dataset(style_dataset_dir)
    plain, plain_result = _bytes_saved_for_backward(tiny_checkpoint, dataset, tmp_path / "plain")
    checkpointed, result = _bytes_saved_for_backward(
        tiny_checkpoint, dataset, tmp_path / "ckpt", gradient_checkpointing=True
    )
    assert checkpointed < 0.25 * plain, f"checkpointing kept {checkpointed} bytes for backward vs {plain} without"
    for key, value in plain_result.lora_tensors.items():  # recomputation (dropout included) gives the same step
        torch.testing.assert_close(result.lora_tensors[key], value, rtol=0, atol=1e-6)


# ---- optimizers ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("optimizer", "package"), [("prodigy", "prodigyopt"), ("adamw8bit", "bitsandbytes")])
def test_a_missing_optimizer_package_is_named(
    tiny_checkpoint, style_dataset_dir, tmp_path, monkeypatch, optimizer, package
):
    import sys

    monkeypatch.setitem(sys.modules, package, None)  # as if not installed (the test venv has bitsandbytes)
    with pytest.raises(RuntimeError, match=f"needs the '{package}' package: pip install {package}"):
        _train(tiny_checkpoint, load_dataset(style_dataset_dir), tmp_path, optimizer=optimizer, steps=1)
    assert not list(tmp_path.glob("*.safetensors"))


def test_adamw8bit_trains_where_bitsandbytes_is_installed(tiny_checkpoint, style_dataset_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    result = _train(tiny_checkpoint, load_dataset(style_dataset_dir), tmp_path, optimizer="adamw8bit", steps=2)
    ups = [v for k, v in result.lora_tensors.items() if k.endswith("lora_up.weight")]
    assert ups and any(bool(v.abs().sum() > 0) for v in ups), "adamw8bit did not move the zero-initialised up weights"


def test_adafactor_trains(tiny_checkpoint, style_dataset_dir, tmp_path):
    result = _train(tiny_checkpoint, load_dataset(style_dataset_dir), tmp_path, optimizer="adafactor", steps=2)
    ups = [v for k, v in result.lora_tensors.items() if k.endswith("lora_up.weight")]
    assert ups and any(bool(v.abs().sum() > 0) for v in ups), "adafactor did not move the zero-initialised up weights"


# ---- a full disk -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [4, 2], ids=["intermediate save", "final save"])
def test_a_full_disk_during_a_save_keeps_the_last_good_save_and_no_temp_files(
    tiny_checkpoint, style_dataset_dir, tmp_path, monkeypatch, steps
):
    import errno

    from safetensors.torch import load_file

    import lora_train.training.lora_io
    from lora_train.fsutil import atomic_write
    from lora_train.training import TrainingError

    written: list[bytes] = []

    def fills_the_disk_on_the_second_save(path, data):
        with atomic_write(path) as handle:
            if written:
                handle.write(data[: len(data) // 2])  # part of the file reached the disk, then the device filled up
                raise OSError(errno.ENOSPC, "No space left on device")
            handle.write(data)
        written.append(data)

    monkeypatch.setattr(lora_train.training.lora_io, "atomic_write_bytes", fills_the_disk_on_the_second_save)
    with pytest.raises(TrainingError, match=r"could not write .*: the disk is full.* real_s000001\.safetensors is"):
        _train(tiny_checkpoint, load_dataset(style_dataset_dir), tmp_path, steps=steps, save_steps=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real.lora_state", "real_s000001.safetensors"]
    assert (tmp_path / "real_s000001.safetensors").read_bytes() == written[0]
    assert load_file(tmp_path / "real_s000001.safetensors")


def test_cli_runs_reuse_the_latent_cache_and_write_previews(host, tmp_path, tiny_models_dir, style_dataset_dir):
    from lora_train.dev.tiny_models import TINY_SD15_NAME
    from tests.cli import run_cli, write_config

    out = tmp_path / "out"
    config = write_config(
        tmp_path / "job.yaml",
        train_data_dir=style_dataset_dir,
        base_model=tiny_models_dir / "checkpoints" / TINY_SD15_NAME,
        output_dir=out,
        rank=4,
        batch_size=2,
        steps=2,
        resolution=64,
        output_name="cli",
        cache_latents_to_disk="true",
        sample_every=2,
        sample_steps=2,
    )
    for _ in range(2):
        done = run_cli(host, "train", "--config", config, "--comfyui", str(host.comfyui), "--cpu")
        assert done.returncode == 0, done.stderr[-3000:]
    log = (out / "cli.log").read_text()
    assert "8 reused, 0 encoded" in log, log[-3000:]
    assert (out / "cli_sample_s000002_0.png").is_file()
