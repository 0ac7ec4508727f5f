"""Job configs for `python -m lora_train train`: YAML + --set, aliases, refusals that say what to change, help."""

import dataclasses
import re
import subprocess
import sys

import pytest
import yaml

from lora_train.cli.config import ConfigError, RunPaths, build_job, defaults_yaml, load_job
from lora_train.training.config import TrainConfig
from tests.conftest import REPO_ROOT

ALL_FIELDS = [f for cls in (RunPaths, TrainConfig) for f in dataclasses.fields(cls)]


def _write(tmp_path, text: str, name: str = "job.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _cli(*args: str, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lora_train", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_seed_example_config_is_accepted_as_is_through_aliases():
    job = load_job(REPO_ROOT / "configs" / "seed_example.yaml")
    assert job.paths.train_data_dir == "data/style"
    assert job.paths.metadata_path == "data/style/metadata.csv"
    assert job.paths.base_model == "v1-5-pruned-emaonly.safetensors"
    assert job.paths.output_dir == "output/loras"
    cfg = job.train
    assert (cfg.rank, cfg.batch_size, cfg.epochs, cfg.learning_rate, cfg.save_steps) == (16, 2, 10, 1e-4, 500)


def test_example_config_parses_and_documents_every_key():
    path = REPO_ROOT / "configs" / "example_lora.yaml"
    job = load_job(path)
    assert not job.missing()
    lines = path.read_text(encoding="utf-8").splitlines()
    keys = {}
    for index, line in enumerate(lines):
        match = re.match(r"^([a-z_0-9]+):", line)
        if match:
            keys[match.group(1)] = index
    assert set(keys) == {f.name for f in ALL_FIELDS}, "the example must hold exactly every key"
    undocumented = [key for key, index in keys.items() if not lines[index - 1].startswith("#")]
    assert not undocumented, f"keys without a comment line above them: {undocumented}"
    # The example's values are the defaults for every training setting (so it also documents them).
    assert job.train == TrainConfig()


def test_set_overrides_win_over_the_file_even_through_an_alias(tmp_path):
    path = _write(tmp_path, "lora_rank: 16\nlr: 1e-4\ntrigger_word: zkw\nseed: 7\n")
    job = load_job(path, ["rank=4", "learning_rate=0.002", "trigger_word=a b=c"])
    assert (job.train.rank, job.train.learning_rate, job.train.trigger_word) == (4, 0.002, "a b=c")
    assert job.train.seed == 7
    assert job.sources == {"rank": "--set", "learning_rate": "--set", "trigger_word": "--set", "seed": str(path)}


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("learning_rat: 1.0e-4\n", "did you mean 'learning_rate'"),
        ("train_data_dr: data\n", "did you mean 'train_data_dir'"),
        ("lora_rnk: 8\n", "did you mean 'lora_rank'"),
    ],
)
def test_unknown_key_is_refused_with_the_nearest_name(tmp_path, text, hint):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=hint) as info:
        load_job(path)
    assert str(path) in str(info.value) and "unknown setting" in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rank: 0\n", "rank must be between 1 and 1024, got 0"),
        ("lora_rank: 2000\n", "lora_rank (= rank): rank must be between 1 and 1024, got 2000"),
        ("rank: many\n", "rank must be a int, got 'many'"),
        ("learning_rate: 2\n", "learning_rate must be between 0.0 and 1.0, got 2.0"),
        ("optimizer: sgdd\n", "got 'sgdd' (did you mean 'sgd'?)"),
        ("mixed_precision: no\n", 'quote it, e.g. mixed_precision: "no"'),
    ],
)
def test_bad_values_name_the_file_key_value_and_bound(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_job(path)
    assert expected in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_bad_override_names_the_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"^--set: batch_size must be between 1 and 256, got 0"):
        load_job(None, ["batch_size=0"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_job(None, ["rank"])


def test_one_setting_given_twice_in_a_file_is_refused(tmp_path):
    path = _write(tmp_path, "rank: 8\nnetwork_dim: 16\n")
    with pytest.raises(ConfigError, match=r"setting 'rank' given twice \(as 'rank' and 'network_dim'\)"):
        load_job(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- rank\n- 8\n", "expected 'key: value' lines at the top level, got a list"),
        ("rank: [8\n", "not valid YAML"),
    ],
)
def test_unusable_files_are_refused_with_the_file_name(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_job(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_job(tmp_path / "missing.yaml")


def test_an_empty_file_gives_the_defaults_and_names_the_missing_paths(tmp_path):
    job = load_job(_write(tmp_path, "# nothing yet\n"))
    assert job.train == TrainConfig()
    assert job.missing() == ["train_data_dir", "base_model"]


def test_defaults_yaml_is_a_valid_config_at_the_defaults():
    job = build_job([("defaults", yaml.safe_load(defaults_yaml()))])
    assert job.train == TrainConfig() and job.paths == RunPaths()


def test_print_defaults_shows_every_setting_with_help_and_bounds():
    done = _cli("config", "--print-defaults")
    assert done.returncode == 0, done.stderr
    flat = " ".join(line.lstrip("# ") for line in done.stdout.splitlines())
    for spec in ALL_FIELDS:
        assert re.search(rf"^{spec.name}: ", done.stdout, re.M), spec.name
        assert spec.metadata["help"] in flat, spec.name
    assert "range: 1 .. 1024" in done.stdout and "one of: lora, locon, dora, loha, lokr" in done.stdout
    assert "lora_rank -> rank" in done.stdout


def test_train_help_shows_every_setting_with_help_and_bounds():
    done = _cli("train", "--help")
    assert done.returncode == 0, done.stderr
    for spec in ALL_FIELDS:
        assert f"\n{spec.name}: " in done.stdout, spec.name
        assert spec.metadata["help"] in done.stdout, spec.name
    assert "rank: 16 [1 .. 1024]" in done.stdout
    assert "torchrun --nproc_per_node" in done.stdout and "effective batch" in done.stdout


def test_config_check_prints_the_resolved_config(tmp_path):
    path = _write(tmp_path, "lora_rank: 4\ntrain_data_dir: data\n")
    done = _cli("config", "--check", str(path), "--set", "lr=0.001")
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert resolved["rank"] == 4 and resolved["learning_rate"] == 0.001 and resolved["train_data_dir"] == "data"
    assert "base_model is not set yet" in done.stderr


def test_train_with_a_bad_config_exits_2_with_the_message_and_no_traceback(tmp_path):
    path = _write(tmp_path, "train_data_dir: data\nbase_model: x.safetensors\nrank: 0\n")
    done = _cli("train", "--config", str(path))
    assert done.returncode == 2
    assert "rank must be between 1 and 1024, got 0" in done.stderr
    assert "Traceback" not in done.stderr
    typo = _cli("train", "--config", str(path), "--set", "rank=4", "--set", "batch_sise=2")
    assert typo.returncode == 2 and "did you mean 'batch_size'" in typo.stderr


def test_train_without_data_or_model_says_which_keys_to_set(tmp_path):
    done = _cli("train", "--set", "rank=4")
    assert done.returncode == 2
    assert "train_data_dir, base_model not set" in done.stderr and "--set train_data_dir=" in done.stderr
