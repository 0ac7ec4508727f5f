"""The tiny-model cache makes room on a short disk: large generated files go, least recently used first, and
nothing else does (a user's files, the files being written, small shared ones)."""

import os
import shutil

import torch

from lora_train.dev import tiny_models
from lora_train.dev.tiny_models import _write_safetensors, write_parts

MB = 2**20


def _file(path, megabytes: int, generator: str, age: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_safetensors(path, {"w": torch.zeros(megabytes * MB // 4)}, {"generator": generator})
    os.utime(path, (1_000_000 + age, 1_000_000 + age))
    return path


def test_short_disk_removes_oldest_generated_large_files_only(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_TRAIN_CACHE", str(tmp_path))
    host = tmp_path / "models" / "comfyui-0.33.0"
    other = tmp_path / "models" / "comfyui-0.3.75"
    ours = "lora_train.dev.tiny_models"
    users = _file(host / "checkpoints" / "mine.safetensors", 40, "someone else", age=0)
    oldest = _file(other / "diffusion_models" / "a.safetensors", 40, ours, age=1)
    older = _file(host / "diffusion_models" / "b.safetensors", 40, ours, age=2)
    kept = _file(host / "diffusion_models" / "c.safetensors", 40, ours, age=3)
    small = _file(host / "vae" / "small.safetensors", 2, ours, age=0)
    newest = _file(host / "checkpoints" / "d.safetensors", 40, ours, age=4)
    monkeypatch.setattr(tiny_models, "EVICTABLE_BYTES", 10 * MB)
    # Pretend the disk is 60 MB short of (need + reserve): two 40 MB files must go.
    need = 8 * MB
    monkeypatch.setattr(tiny_models, "FREE_RESERVE_BYTES", shutil.disk_usage(tmp_path).free - need + 60 * MB)
    target = host / "diffusion_models" / "new.safetensors"

    write_parts(
        {"diffusion_models": target, "keep": kept},
        {("diffusion_models", target.name): lambda: {"x": torch.ones(2 * MB)}},
        ours,
    )

    assert target.is_file()
    assert not oldest.exists() and not older.exists()
    assert users.exists() and kept.exists() and small.exists() and newest.exists()


def test_plenty_of_disk_removes_nothing_and_marks_use(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_TRAIN_CACHE", str(tmp_path))
    host = tmp_path / "models" / "comfyui-0.33.0"
    ours = "lora_train.dev.tiny_models"
    old = _file(host / "diffusion_models" / "a.safetensors", 1, ours, age=0)
    monkeypatch.setattr(tiny_models, "EVICTABLE_BYTES", 0)
    target = host / "vae" / "new.safetensors"

    write_parts({"diffusion_models": old, "vae": target}, {("vae", target.name): lambda: {"x": torch.ones(4)}}, ours)

    assert target.is_file() and old.exists()
    assert old.stat().st_mtime > 1_000_000 + 10  # asked for again: now the most recently used
