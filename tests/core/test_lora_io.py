"""LoRA files: atomic and finite-only writes, lossless round trips, kohya + ModelSpec metadata."""

import json
from pathlib import Path

import pytest
import torch

from lora_train.dataset.loading import ImageItem, LoraDataset
from lora_train.safetensors_file import read_header
from lora_train.training.lora_io import (
    CONFIG_KEY,
    DatasetInfo,
    LoraFileError,
    build_metadata,
    dataset_info_from,
    load_lora,
    save_lora,
)


def tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "lora_unet_a.lora_down.weight": torch.randn(4, 8, generator=generator),
        "lora_unet_a.lora_up.weight": torch.randn(6, 4, generator=generator).to(torch.bfloat16),
        "lora_unet_a.alpha": torch.tensor(2.0),
    }


def test_round_trip_keeps_tensors_dtypes_and_metadata(tmp_path):
    path = tmp_path / "loras" / "style.safetensors"
    save_lora(path, tensors(), {"ss_network_dim": "4", "note": "ünïcode ✓"})
    loaded, metadata = load_lora(path)
    assert metadata == {"ss_network_dim": "4", "note": "ünïcode ✓"}
    assert loaded.keys() == tensors().keys()
    for key, tensor in tensors().items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor)
    assert [p.name for p in path.parent.iterdir()] == ["style.safetensors"]  # no temp file left


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_save_refuses_non_finite_tensors_naming_the_first_and_writes_nothing(tmp_path, bad):
    values = tensors()
    values["lora_unet_a.lora_up.weight"][2, 1] = bad
    values["lora_unet_b.lora_up.weight"] = torch.full((2, 2), bad)
    path = tmp_path / "diverged.safetensors"
    with pytest.raises(LoraFileError, match=r"'lora_unet_a\.lora_up\.weight' holds NaN or inf.*learning_rate"):
        save_lora(path, values, {})
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "style.safetensors"
    save_lora(path, tensors(), {"version": "1"})
    before = path.read_bytes()
    broken = {**tensors(), "lora_unet_a.alpha": torch.tensor(float("nan"))}
    with pytest.raises(LoraFileError):
        save_lora(path, broken, {"version": "2"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["style.safetensors"]


def test_save_refuses_non_string_metadata_and_empty_tensor_sets(tmp_path):
    with pytest.raises(LoraFileError, match="'ss_network_dim' is int"):
        save_lora(tmp_path / "x.safetensors", tensors(), {"ss_network_dim": 4})
    with pytest.raises(LoraFileError, match="no tensors"):
        save_lora(tmp_path / "x.safetensors", {}, {})
    assert list(tmp_path.iterdir()) == []


def test_save_copies_views_that_share_storage(tmp_path):
    base = torch.randn(8, 8)
    path = tmp_path / "views.safetensors"
    save_lora(path, {"a": base[:4], "b": base[4:].t()}, {})
    loaded, _ = load_lora(path)
    assert torch.equal(loaded["a"], base[:4]) and torch.equal(loaded["b"], base[4:].t())


def test_load_names_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no LoRA file"):
        load_lora(tmp_path / "absent.safetensors")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(LoraFileError, match=r"corrupt\.safetensors is not a valid safetensors LoRA"):
        load_lora(corrupt)


CONFIG = {
    "network": "locon", "rank": 8, "alpha": 4.0, "learning_rate": 1e-4, "optimizer": "adamw",
    "lr_scheduler": "cosine", "mixed_precision": "bf16", "seed": 7, "resolution": 512, "output_name": "red_style",
    "batch_size": 2, "gradient_checkpointing": False, "steps": 300,
}  # fmt: skip


def dataset(root: Path) -> LoraDataset:
    items = [
        ImageItem("red, square, sks", root / "10_red" / "a.png", repeats=10),
        ImageItem("red, circle", root / "10_red" / "b.png", repeats=10),
        ImageItem("blue", root / "c.png", repeats=1),
    ]
    return LoraDataset(items, root=root)


def test_metadata_has_kohya_and_modelspec_keys(tmp_path):
    meta = build_metadata(
        CONFIG, base_model_name="v1-5-pruned.safetensors", network="locon", rank=8, alpha=4.0, steps=300, epochs=3,
        dataset=dataset(tmp_path / "photos"), title="Red style", trigger_words="sks", started_at=1_700_000_000.5,
        finished_at=1_700_000_600.25,
    )  # fmt: skip
    assert all(isinstance(v, str) for v in meta.values())
    assert meta["ss_network_module"] == "networks.lora"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "8", "conv_alpha": "4.0"}
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("8", "4.0")
    assert (meta["ss_steps"], meta["ss_epoch"], meta["ss_seed"]) == ("300", "3", "7")
    assert (meta["ss_learning_rate"], meta["ss_optimizer"], meta["ss_lr_scheduler"]) == ("0.0001", "adamw", "cosine")
    assert meta["ss_mixed_precision"] == "bf16"
    assert meta["ss_sd_model_name"] == "v1-5-pruned.safetensors"
    assert meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_resolution"] == "(512, 512)"
    assert meta["ss_num_train_images"] == "21"
    assert json.loads(meta["ss_tag_frequency"]) == {"10_red": {"red": 2, "square": 1, "sks": 1, "circle": 1},
                                                    "photos": {"blue": 1}}  # fmt: skip
    assert json.loads(meta["ss_dataset_dirs"]) == {"10_red": {"n_repeats": 10, "img_count": 2},
                                                   "photos": {"n_repeats": 1, "img_count": 1}}  # fmt: skip
    assert float(meta["ss_training_started_at"]) == 1_700_000_000.5
    assert float(meta["ss_training_finished_at"]) == 1_700_000_600.25
    assert meta["ss_output_name"] == "red_style"
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.title"] == "Red style"
    assert meta["modelspec.resolution"] == "512x512"
    assert meta["modelspec.trigger_phrase"] == "sks"
    assert meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.date"].startswith("2023-11-1")
    assert json.loads(meta[CONFIG_KEY]) == CONFIG


@pytest.mark.parametrize(
    ("network", "module", "args"),
    [
        ("lora", "networks.lora", {}),
        ("dora", "lycoris.kohya", {"algo": "lora", "dora_wd": "True", "conv_dim": "8", "conv_alpha": "4.0"}),
        ("loha", "lycoris.kohya", {"algo": "loha", "conv_dim": "8", "conv_alpha": "4.0"}),
        ("lokr", "lycoris.kohya", {"algo": "lokr", "factor": "-1", "conv_dim": "8", "conv_alpha": "4.0"}),
    ],
)
def test_network_module_and_args_per_family(network, module, args):
    meta = build_metadata(CONFIG, base_model_name="m", network=network, rank=8, alpha=4.0, steps=1, epochs=1)
    assert meta["ss_network_module"] == module
    assert json.loads(meta["ss_network_args"]) == args


def test_metadata_for_other_architectures_and_several_trigger_words():
    meta = build_metadata(
        {"resolution": 1024}, base_model_name="sdxl.safetensors", network="lora", rank=4, alpha=4, steps=10, epochs=1,
        architecture="stable-diffusion-xl-v1-base/lora", dataset_info=DatasetInfo(num_images=5),
        trigger_words=["ohwx", " red style "],
    )  # fmt: skip
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.resolution"] == "1024x1024"
    assert meta["modelspec.trigger_phrase"] == "ohwx, red style"
    assert meta["ss_num_train_images"] == "5"
    flux = build_metadata({}, base_model_name="f", network="lora", rank=4, alpha=4, steps=1, epochs=1,
                          architecture="flux-1-dev/lora")  # fmt: skip
    assert "modelspec.prediction_type" not in flux
    assert flux["modelspec.implementation"] == "https://github.com/black-forest-labs/flux"


def test_unknown_network_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="lora, locon, dora, loha, lokr"):
        build_metadata({}, base_model_name="m", network="ia3", rank=4, alpha=4, steps=1, epochs=1)


def test_in_memory_images_count_under_one_folder():
    info = dataset_info_from(LoraDataset([ImageItem("a, b"), ImageItem("b")]))
    assert info.num_images == 2
    assert info.tag_frequency == {"images": {"a": 1, "b": 2}}


def test_metadata_survives_a_file_round_trip_and_a_header_check(tmp_path):
    meta = build_metadata(CONFIG, base_model_name="m", network="dora", rank=8, alpha=4.0, steps=1, epochs=1)
    path = tmp_path / "dora.safetensors"
    save_lora(path, tensors(), meta)
    assert read_header(path).metadata == meta
    assert load_lora(path)[1] == meta
