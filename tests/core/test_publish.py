"""Publishing a LoRA: versioned name, enriched metadata with identical tensors, hashes, card, manifest, zip."""

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save, save_file

from lora_train.release.manifest import SCHEMA_PATH, load_manifest, validate_manifest
from lora_train.release.publish import PublishConfig, PublishError, check_name, publish_lora
from lora_train.safetensors_file import read_header
from tests.conftest import REPO_ROOT

DATE = "2026-11-30"
TRAINING_METADATA = {
    "ss_network_module": "networks.lora",
    "ss_network_dim": "16",
    "ss_network_alpha": "8.0",
    "ss_learning_rate": "0.0001",
    "ss_max_train_steps": "500",
    "ss_base_model_version": "sd_v1",
    "ss_sd_model_name": "tiny_sd15.safetensors",
    "ss_output_name": "last",
    "sshs_model_hash": "stale",
}
# (kohya key, in features, out features); the 1280-wide ff modules make the file pass 1.1 MiB, so the legacy hash
# window [1 MiB, 1 MiB + 64 KiB) lies inside the file.
MODULES = [
    ("lora_unet_down_blocks_0_attentions_0_proj_in", 320, 320),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", 320, 320),
    ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj", 320, 2560),
    ("lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj", 1280, 10240),
    ("lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_ff_net_0_proj", 1280, 10240),
    ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", 768, 768),
]


def make_lora(path: Path, seed: int = 0, rank: int = 16, metadata: dict | None = None, poison=None) -> dict:
    """A kohya-format LoRA made from `seed`; `poison` (a float) is written into one weight."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, fan_in, fan_out in MODULES:
        tensors[f"{key}.lora_down.weight"] = torch.randn(rank, fan_in, generator=generator)
        tensors[f"{key}.lora_up.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.01
        tensors[f"{key}.alpha"] = torch.tensor(float(rank) / 2)
    if poison is not None:
        tensors[f"{MODULES[1][0]}.lora_up.weight"][3, 2] = poison
    save_file(tensors, str(path), metadata=TRAINING_METADATA if metadata is None else metadata)
    return tensors


def config(**changes) -> PublishConfig:
    values = {"name": "pixelart_style", "title": "Pixel Art", "description": "Chunky pixels, flat colours.",
              "trigger_words": "pixelart, 8bit", "recommended_weight": 0.7, "license": "CC-BY-4.0",
              "data_source": "200 drawings by the author", "date": DATE}  # fmt: skip
    return PublishConfig.from_dict({**values, **changes})


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones included) with its sha256."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture
def lora(tmp_path) -> Path:
    path = tmp_path / "trained" / "my run.safetensors"
    path.parent.mkdir()
    make_lora(path)
    return path


def data_region(path: Path) -> bytes:
    return path.read_bytes()[read_header(path).data_start :]


def test_publish_names_the_file_and_keeps_every_tensor_byte(lora, tmp_path):
    result = publish_lora(config(), lora, tmp_path / "releases")
    assert result.version == 1
    assert result.weights_path == tmp_path / "releases" / "pixelart_style" / "pixelart_style_v1.safetensors"
    assert data_region(result.weights_path) == data_region(lora)
    original, published = load_file(lora), load_file(result.weights_path)
    assert published.keys() == original.keys()
    assert all(torch.equal(published[k], original[k]) for k in original)
    assert sorted(p.name for p in result.release_dir.iterdir()) == [
        "README.md", "manifest.json", "pixelart_style_v1.safetensors"]  # fmt: skip


def test_published_metadata_carries_card_fields_modelspec_and_keeps_training_keys(lora, tmp_path):
    metadata = read_header(publish_lora(config(), lora, tmp_path / "rel").weights_path).metadata
    assert metadata["modelspec.title"] == "Pixel Art"
    assert metadata["modelspec.description"] == "Chunky pixels, flat colours."
    assert metadata["modelspec.trigger_phrase"] == "pixelart, 8bit"
    assert metadata["modelspec.usage_hint"] == "<lora:pixelart_style_v1:0.7> pixelart, 8bit"
    assert metadata["modelspec.date"] == DATE
    assert metadata["modelspec.license"] == "CC-BY-4.0"
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert json.loads(metadata["lora_release.trigger_words"]) == ["pixelart", "8bit"]
    assert metadata["lora_release.recommended_weight"] == "0.7"
    assert metadata["lora_release.base_model"] == "tiny_sd15.safetensors"
    assert metadata["lora_release.data_source"] == "200 drawings by the author"
    assert metadata["ss_output_name"] == "pixelart_style_v1"
    assert metadata["ss_network_dim"] == "16" and metadata["ss_learning_rate"] == "0.0001"


def test_hashes_equal_what_other_tools_compute(lora, tmp_path):
    result = publish_lora(config(), lora, tmp_path / "rel")
    raw = result.weights_path.read_bytes()
    assert result.weights_path.stat().st_size > 0x110000, "file too small to exercise the legacy hash window"
    assert result.sha256 == hashlib.sha256(raw).hexdigest()
    assert result.autov2 == result.sha256[:10].upper()
    metadata = read_header(result.weights_path).metadata
    # A1111 reads sshs_model_hash, else computes the "addnet" hash: sha256 of everything after the header.
    addnet_hash = hashlib.sha256(data_region(result.weights_path)).hexdigest()
    assert metadata["sshs_model_hash"] == result.sshs_model_hash == addnet_hash
    assert metadata["modelspec.hash_sha256"] == "0x" + result.sshs_model_hash
    # kohya's legacy hash: the file re-saved with only ss_* metadata, sha256 of bytes [1 MiB, 1 MiB + 64 KiB), 8 hex.
    resaved = save(load_file(result.weights_path), {k: v for k, v in metadata.items() if k.startswith("ss_")})
    assert metadata["sshs_legacy_hash"] == hashlib.sha256(resaved[0x100000:0x110000]).hexdigest()[:8]
    assert "stale" not in metadata.values()


def test_model_card_has_usage_trigger_words_settings_samples_and_hashes(tmp_path):
    lora = tmp_path / "run.safetensors"
    make_lora(lora)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(tmp_path / "run_sample_000100.png")
    (tmp_path / "run_samples").mkdir()
    Image.new("RGB", (8, 8), (30, 30, 200)).save(tmp_path / "run_samples" / "a.jpg")
    (tmp_path / "unrelated.png").write_bytes(b"x")
    result = publish_lora(config(), lora, tmp_path / "rel")
    card = result.readme_path.read_text()
    assert card.startswith("# Pixel Art\n")
    assert "<lora:pixelart_style_v1:0.7> pixelart, 8bit" in card
    assert "LoraLoader" in card and "models/loras" in card
    assert "| Rank (dim) | 16 |" in card and "| Steps | 500 |" in card
    assert "200 drawings by the author" in card and "CC-BY-4.0" in card
    assert result.sha256 in card and result.autov2 in card and result.sshs_model_hash in card
    assert [p.name for p in result.samples] == ["pixelart_style_v1_sample1.png", "pixelart_style_v1_sample2.jpg"]
    for sample in result.samples:
        assert sample.is_file() and f"]({sample.name})" in card
    assert not (result.release_dir / "unrelated.png").exists()


def test_card_without_training_metadata_says_so(tmp_path):
    lora = tmp_path / "bare.safetensors"
    make_lora(lora, metadata={})
    card = publish_lora(config(trigger_words=""), lora, tmp_path / "rel").readme_path.read_text()
    assert "Not recorded in the file." in card
    assert "<lora:pixelart_style_v1:0.7>\n" in card


def test_next_version_is_proposed_and_history_carried_in_the_manifest(tmp_path):
    releases = tmp_path / "rel"
    for seed in (1, 2):
        make_lora(tmp_path / f"s{seed}.safetensors", seed=seed)
    mirrors = "https://a.example/rel/, https://b.example/m/"
    first = publish_lora(config(mirrors=mirrors), tmp_path / "s1.safetensors", releases)
    v1_bytes = first.weights_path.read_bytes()
    second = publish_lora(config(date="2026-12-24"), tmp_path / "s2.safetensors", releases)
    assert second.version == 2
    assert first.weights_path.read_bytes() == v1_bytes
    manifest = load_manifest(second.manifest_path)
    assert manifest.versions == [2, 1]
    assert manifest.mirrors == ["https://a.example/rel/", "https://b.example/m/"], "mirrors carry over when not given"
    assert manifest.select(1).weights.sha256 == first.sha256
    assert manifest.select().weights == manifest.select(2).weights
    assert manifest.select().weights.sha256 == second.sha256 and manifest.select().date == "2026-12-24"
    v1 = manifest.select(1)
    assert manifest.file_urls(v1, v1.weights)[0] == "https://a.example/rel/pixelart_style_v1.safetensors"
    assert "| v1 | 2026-11-30 |" in second.readme_path.read_text()


def test_manifest_matches_the_json_schema(lora, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    result = publish_lora(config(make_zip=True, mirrors="https://a.example/"), lora, tmp_path / "rel")
    data = json.loads(result.manifest_path.read_text())
    assert validate_manifest(data) == []
    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text()))
    files = {f["name"]: f for f in data["releases"][0]["files"]}
    assert files["pixelart_style_v1.zip"]["sha256"] == hashlib.sha256(result.zip_path.read_bytes()).hexdigest()
    assert files["pixelart_style_v1.safetensors"]["size"] == result.weights_path.stat().st_size


def test_zip_is_byte_identical_for_the_same_inputs(lora, tmp_path):
    first = publish_lora(config(make_zip=True), lora, tmp_path / "a")
    second = publish_lora(config(make_zip=True), lora, tmp_path / "b")
    assert first.zip_path.read_bytes() == second.zip_path.read_bytes()
    with zipfile.ZipFile(first.zip_path) as archive:
        assert archive.namelist() == ["README.md", "pixelart_style_v1.safetensors"]
        assert archive.read("pixelart_style_v1.safetensors") == first.weights_path.read_bytes()
        assert {info.date_time for info in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    other = publish_lora(config(make_zip=True, date="2026-12-01"), lora, tmp_path / "c")
    assert other.zip_path.read_bytes() != first.zip_path.read_bytes()


def test_dry_run_lists_the_files_and_writes_nothing(lora, tmp_path):
    releases = tmp_path / "rel"
    result = publish_lora(config(dry_run=True, make_zip=True), lora, releases)
    assert not releases.exists()
    assert [p.name for p in result.written] == [
        "pixelart_style_v1.safetensors", "pixelart_style_v1.zip", "README.md", "manifest.json"]  # fmt: skip
    real = publish_lora(config(make_zip=True), lora, releases)
    assert (result.sha256, result.zip_path) == (real.sha256, real.zip_path)


def test_explicit_version_is_used_and_an_existing_one_is_refused(lora, tmp_path):
    releases = tmp_path / "rel"
    assert publish_lora(config(version=3), lora, releases).version == 3
    before = tree(releases)
    with pytest.raises(PublishError, match=r"pixelart_style_v3 already exists.*version 4"):
        publish_lora(config(version=3), lora, releases)
    assert tree(releases) == before
    assert publish_lora(config(), lora, releases).version == 4


def test_a_version_present_only_as_a_file_is_not_overwritten(lora, tmp_path):
    folder = tmp_path / "rel" / "pixelart_style"
    folder.mkdir(parents=True)
    (folder / "pixelart_style_v1.safetensors").write_bytes(b"uploaded by hand")
    with pytest.raises(PublishError, match="already exists"):
        publish_lora(config(version=1), lora, tmp_path / "rel")
    assert publish_lora(config(), lora, tmp_path / "rel").version == 2
    assert (folder / "pixelart_style_v1.safetensors").read_bytes() == b"uploaded by hand"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "name is empty"),
        ("PixelArt_Style", r"breaks the naming convention.*try 'pixelart_style'"),
        ("pixel-art style", r"try 'pixel_art_style'"),
        ("pixel__art", "breaks the naming convention"),
        ("pixelart", "needs a purpose and a type"),
        ("pixelart_style_v2", r"already carries a version: use name='pixelart_style', version=2"),
        ("caf\u00e9_style", "breaks the naming convention"),
    ],
)
def test_names_breaking_the_convention_are_refused(name, message):
    with pytest.raises(PublishError, match=message):
        check_name(name)


def _nan_lora(path):
    make_lora(path, poison=float("nan"))


def _inf_lora(path):
    make_lora(path, poison=float("-inf"))


def _pickle(path):
    torch.save({"w": torch.ones(2)}, path)


def _wrong_hash_manifest(path):
    make_lora(path)


BAD_INPUTS = {
    "nan tensor": (_nan_lora, {}, r"NaN/inf values in 1 tensor\(s\): lora_unet_.*attn1_to_q.lora_up.weight \(1\)"),
    "inf tensor": (_inf_lora, {}, "NaN/inf"),
    "pickle file": (_pickle, {}, "not a valid safetensors file"),
    "empty file": (lambda p: p.write_bytes(b""), {}, "not a valid safetensors file"),
    "bad name": (make_lora, {"name": "Pixel Art"}, "naming convention"),
    "bad date": (make_lora, {"date": "30/11/2026"}, "date must look like"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, case):
    build, changes, message = BAD_INPUTS[case]
    source = tmp_path / "in.safetensors"
    build(source)
    releases = tmp_path / "rel"
    with pytest.raises(PublishError, match=message):
        publish_lora(config(**changes), source, releases)
    assert tree(releases) == {}


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            lambda m: m["releases"][0]["files"][0].update(sha256="0" * 64),
            "says pixelart_style_v1.safetensors has size",
        ),
        (lambda m: m.update(schema="lora-release/9"), "unknown schema version 'lora-release/9'"),
        (lambda m: m.update(name="other_style"), "belongs to 'other_style'"),
    ],
)
def test_an_earlier_manifest_that_does_not_check_out_stops_the_release(lora, tmp_path, corrupt, message):
    releases = tmp_path / "rel"
    first = publish_lora(config(), lora, releases)
    data = json.loads(first.manifest_path.read_text())
    corrupt(data)
    first.manifest_path.write_text(json.dumps(data))
    before = tree(releases)
    with pytest.raises(PublishError, match=message):
        publish_lora(config(), lora, releases)
    assert tree(releases) == before, "a refused publish must leave the folder exactly as it was"


def test_config_rejects_unknown_keys_with_a_hint():
    with pytest.raises(ValueError, match="did you mean 'trigger_words'"):
        PublishConfig.from_dict({"name": "a_b", "trigger_word": "x"})


def _cli(*args, cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "lora_train", "publish", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


def test_cli_dry_run_then_publish_into_the_default_releases_folder(lora, tmp_path):
    dry = _cli(lora, "--name", "pixelart_style", "--dry-run", "--trigger-words", "pixelart", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "pixelart_style v1: would write" in dry.stdout and "pixelart_style_v1.safetensors" in dry.stdout
    assert not (tmp_path / "releases").exists()
    done = _cli(lora, "--name", "pixelart_style", "--make-zip", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["version"] == 1 and summary["manifest"]["releases"][0]["version"] == 1
    assert (tmp_path / "releases" / "pixelart_style" / "pixelart_style_v1.zip").is_file()


def test_cli_bad_input_exits_2_with_the_reason(lora, tmp_path):
    bad_name = _cli(lora, "--name", "Pixel Art", cwd=tmp_path)
    assert bad_name.returncode == 2 and "naming convention" in bad_name.stderr
    typo = _cli(lora, "--name", "pixel_art", "--recommended-weight", "heavy", cwd=tmp_path)
    assert typo.returncode == 2 and "recommended_weight must be a float" in typo.stderr
    assert not (tmp_path / "releases").exists()
