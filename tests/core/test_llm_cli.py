"""`python -m lora_train train --config llm.yaml` with `model_type: causal_lm`, as a user runs it: an adapter folder
peft loads, `--merge`, the log; bad input exits 2 with a message naming the problem and writes nothing."""

import subprocess
import sys

import pytest
import yaml

from lora_train.cli.config import LlmJob, TrainJob, build_job, defaults_yaml, load_job
from tests.conftest import REPO_ROOT
from tests.llm import MEMORISABLE, tiny_model, write_jsonl


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lora_train", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300, env=env)  # fmt: skip


def _config(tmp_path, model, data, **extra) -> str:
    values = {"model_type": "causal_lm", "base_model": str(model), "train_data": str(data),
              "output_dir": str(tmp_path / "out"), "output_name": "pirate", "steps": 4, "rank": 4,
              "batch_size": 2, "log_every": 2, **extra}  # fmt: skip
    path = tmp_path / "llm.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("cli_models"), "llama")


def test_cli_trains_an_adapter_folder_and_a_merged_model(tmp_path, model):
    from peft import PeftConfig

    data = write_jsonl(tmp_path / "train.jsonl", MEMORISABLE)
    done = _cli("train", "--config", _config(tmp_path, model, data), "--merge")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert done.stdout.split() == [str(out / "pirate"), str(out / "pirate_merged")]
    assert PeftConfig.from_pretrained(str(out / "pirate")).r == 4
    assert (out / "pirate_merged" / "config.json").is_file() and (out / "pirate_merged" / "tokenizer.json").is_file()
    log_text = (out / "pirate.log").read_text()
    assert "step 4/4 loss" in log_text and "4 examples -> 4 rows" in log_text
    assert sorted(p.name for p in out.iterdir()) == ["pirate", "pirate.log", "pirate_merged"]  # nothing left over


@pytest.mark.parametrize(
    ("records", "extra", "message"),
    [
        ([MEMORISABLE[0], "{not json"], {}, "line 2 is not valid JSON"),
        ([MEMORISABLE[0], ""], {}, "line 2 is empty"),
        ([{"instruction": "x", "output": "y " * 300}], {"max_length": 32}, "longer than max_length=32: line 1"),
        (MEMORISABLE, {"chat_template": "missing.jinja"}, "chat_template file 'missing.jinja' does not exist"),
        (MEMORISABLE, {"quantization": "8bit"}, "quantization must be one of none, 4bit; got '8bit'"),
    ],
)
def test_cli_bad_input_exits_2_naming_it_and_writes_nothing(tmp_path, model, records, extra, message, capsys):
    from lora_train.cli import main

    data = write_jsonl(tmp_path / "train.jsonl", records)
    assert main(["train", "--config", _config(tmp_path, model, data, **extra), "--cpu"]) == 2  # in process: faster
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_remote_code_checkpoint(tmp_path):
    from lora_train.dev.tiny_llm import write_remote_code_checkpoint

    folder = write_remote_code_checkpoint(tmp_path / "chatglm3-6b")
    data = write_jsonl(tmp_path / "train.jsonl", MEMORISABLE)
    done = _cli("train", "--config", _config(tmp_path, folder, data))
    assert done.returncode == 2
    assert "remote-code checkpoint" in done.stderr and "remote code must never run" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_model_type_selects_the_job_and_its_keys(tmp_path):
    job = build_job([("f.yaml", {"model_type": "causal_lm", "lora_r": 8, "cutoff_len": 256})])
    assert isinstance(job, LlmJob) and (job.train.rank, job.train.max_length) == (8, 256)
    assert isinstance(build_job([("f.yaml", {"model_type": "diffusion", "rank": 4})]), TrainJob)
    assert isinstance(build_job([("f.yaml", {"rank": 4})]), TrainJob)  # the image job stays the default
    with pytest.raises(ValueError, match="unknown setting 'resolution'"):  # an image key in an LLM job
        build_job([("f.yaml", {"model_type": "causal_lm", "resolution": 512})])
    with pytest.raises(ValueError, match="model_type must be one of diffusion, causal_lm; got 'causal'"):
        build_job([("f.yaml", {"model_type": "causal"})])
    assert load_job(None, ["model_type=causal_lm", "packing=true"]).train.packing is True


def test_example_llm_config_is_a_valid_causal_lm_job():
    job = load_job(REPO_ROOT / "configs" / "example_llm.yaml")
    assert isinstance(job, LlmJob) and job.missing() == []
    assert (job.train.rank, job.train.alpha, job.train.targets) == (16, 32.0, "all_linear")


def test_llm_defaults_print_as_a_valid_config():
    job = build_job([("defaults", yaml.safe_load(defaults_yaml("causal_lm")))])
    assert isinstance(job, LlmJob)
    assert job.missing() == ["base_model", "train_data", "output_dir"]
    done = _cli("config", "--print-defaults", "--model-type", "causal_lm")
    assert done.returncode == 0 and "max_length: 1024" in done.stdout and "model_type: causal_lm" in done.stdout


def test_two_cpu_ranks_match_one_process_with_the_doubled_batch(tmp_path, model):
    import re

    import torch
    from safetensors.torch import load_file

    from lora_train.llm import ADAPTER_WEIGHTS, LlmPaths, LlmTrainConfig, train_causal_lm

    # 5 records, global batch 4: every epoch ends with a batch of 1, where rank 1 holds no rows at all.
    records = [*MEMORISABLE, {"instruction": "the fox", "output": "jumps over the lazy dog"}]
    data = write_jsonl(tmp_path / "train.jsonl", records)
    settings = {"steps": 4, "rank": 4, "dropout": 0.0, "learning_rate": 1e-2, "log_every": 1}
    config = _config(tmp_path, model, data, **settings)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lora_train", "train", "--config", config, "--cpu"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["pirate", "pirate.log"], "only rank 0 writes"
    log_text = (out / "pirate.log").read_text()
    assert "effective batch 4 (batch_size 2 x gradient_accumulation 1 x 2 processes)" in log_text
    distributed = load_file(str(out / "pirate" / ADAPTER_WEIGHTS))

    single_cfg = LlmTrainConfig(output_name="pirate", batch_size=4, **settings)
    single = train_causal_lm(single_cfg, LlmPaths(base_model=str(model), train_data=str(data),
                                                  output_dir=str(tmp_path / "single")))  # fmt: skip
    expected = load_file(str(single.adapter_dir / ADAPTER_WEIGHTS))
    assert distributed.keys() == expected.keys()
    for key, tensor in expected.items():
        torch.testing.assert_close(distributed[key], tensor, rtol=1e-4, atol=1e-6, msg=key)
    logged = [float(x) for x in re.findall(r"step \d+/\d+ loss ([0-9.]+)", log_text)]
    assert logged == pytest.approx([loss for _, loss in single.loss_history], rel=1e-5)
    ups = [k for k in expected if "lora_B" in k]
    assert max(float(expected[k].abs().max()) for k in ups) > 1e-3  # the weights moved: the comparison can fail
