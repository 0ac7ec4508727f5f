"""The on-disk latent cache: keys change with everything that decides the latents; entries are atomic and
damage-tolerant."""

import torch
from PIL import Image

from lora_train.dataset.loading import ImageItem
from lora_train.training.latent_cache import LatentCache, cache_folder, image_digest, latent_key, tensors_identity

KEY = dict(image_sha256="a" * 64, bucket=(512, 512), vae_identity="v1")


def test_the_key_changes_with_image_bucket_vae_and_preparation():
    base = latent_key(**KEY)
    assert latent_key(**KEY) == base
    variants = [
        latent_key(**{**KEY, "image_sha256": "b" * 64}),
        latent_key(**{**KEY, "bucket": (512, 448)}),
        latent_key(**{**KEY, "bucket": (448, 512)}),
        latent_key(**{**KEY, "vae_identity": "v2"}),
        latent_key(**KEY, prepare="another resize"),
    ]
    assert len({base, *variants}) == 6


def test_image_digest_follows_content_not_name(tmp_path):
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes())
    Image.new("RGB", (8, 8), (0, 255, 0)).save(tmp_path / "c.png")
    a, b, c = (image_digest(ImageItem(caption="", path=tmp_path / n)) for n in ("a.png", "b.png", "c.png"))
    assert a == b != c
    red = image_digest(ImageItem(caption="", image=Image.new("RGB", (8, 8), (255, 0, 0))))
    green = image_digest(ImageItem(caption="", image=Image.new("RGB", (8, 8), (0, 255, 0))))
    assert red != green


def test_tensors_identity_sees_a_changed_weight():
    weights = {"w": torch.arange(10_000, dtype=torch.float32), "b": torch.zeros(3)}
    before = tensors_identity(weights.items(), "VAE")
    weights["w"][0] += 1
    assert tensors_identity(weights.items(), "VAE") != before
    assert tensors_identity(weights.items(), "VAE:fp16") != tensors_identity(weights.items(), "VAE:fp32")


def test_put_then_get_round_trips_and_leaves_no_temp_files(tmp_path):
    cache = LatentCache(cache_folder(tmp_path))
    latents = torch.randn(1, 4, 8, 6)
    key = latent_key(**KEY)
    assert cache.get(key) is None and cache.misses == 1
    cache.put(key, latents)
    assert torch.equal(cache.get(key), latents) and cache.hits == 1
    assert [p.name for p in cache.folder.iterdir()] == [f"{key}.latent"]
    assert cache.folder == tmp_path / ".lora_train_cache" / "latents"


def test_a_damaged_or_foreign_entry_is_a_miss(tmp_path):
    cache = LatentCache(tmp_path)
    key, other = latent_key(**KEY), latent_key(**{**KEY, "vae_identity": "x"})
    cache.path(key).write_bytes(b"truncated")
    assert cache.get(key) is None
    cache.put(other, torch.ones(2))
    cache.path(key).write_bytes(cache.path(other).read_bytes())  # a file renamed by hand
    assert cache.get(key) is None
    cache.put(key, torch.zeros(2))
    assert torch.equal(cache.get(key), torch.zeros(2))
