"""Data-parallel training: 2 CPU ranks (gloo, launched by torchrun) equal one process with the doubled batch."""

import re
import shutil
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from lora_train.dataset.loading import load_dataset
from lora_train.dev.tiny_models import TINY_SD15_NAME
from lora_train.training import tensorboard_available
from lora_train.training.distributed import SINGLE_PROCESS, Distributed, DistributedError, from_environment
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.host

# SGD keeps the comparison at float-rounding level: the update is linear in the gradient. (Adam divides by
# sqrt(v) + eps, so coordinates whose gradient is at rounding level differ by up to lr after a different
# summation order; that is true of DistributedDataParallel as well.)
JOB = {
    "lora_rank": 4,
    "alpha": 4,
    "batch_size": 2,
    "steps": 4,
    "resolution": 64,
    "optimizer": "sgd",
    "learning_rate": 0.5,
    "log_every": 1,
    "seed": 5,
}


def test_rows_of_a_global_batch_are_split_without_overlap_and_weighted_to_the_global_mean():
    ranks = [Distributed(rank=r, world_size=3) for r in range(3)]
    for rows in (7, 3, 2):
        parts = [d.rows(rows) for d in ranks]
        assert sorted(row for part in parts for row in part) == list(range(rows))
        weights = [d.loss_weight(len(p), rows) for d, p in zip(ranks, parts, strict=True)]
        assert sum(weights) / 3 == pytest.approx(1.0)
    assert Distributed(rank=2, world_size=3).rows(2) == []  # a short last batch can leave a rank empty
    assert SINGLE_PROCESS.rows(4) == [0, 1, 2, 3] and SINGLE_PROCESS.loss_weight(4, 4) == 1.0


def test_launcher_environment_is_read_and_checked():
    assert from_environment({}) is SINGLE_PROCESS
    assert from_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == Distributed(1, 2, 1)
    with pytest.raises(DistributedError, match="RANK=2 is not within WORLD_SIZE=2"):
        from_environment({"RANK": "2", "WORLD_SIZE": "2"})


GRADIENT_WORKER = """
import os, sys
import torch
sys.path.insert(0, sys.argv[1])
from lora_train.training.distributed import from_environment

dist = from_environment()
torch.distributed.init_process_group("gloo")
torch.manual_seed(0)
layer = torch.nn.Linear(3, 2)
inputs = torch.randn(3, 3)
rows = dist.rows(3)  # rank 0: rows 0, 2; rank 1: row 1
loss = layer(inputs[rows]).pow(2).mean() * dist.loss_weight(len(rows), 3)
loss.backward()
layer.bias.grad = torch.ones(2) if dist.rank == 0 else None  # a missing gradient counts as zeros
dist.average_gradients(layer.parameters())
torch.save({n: p.grad for n, p in layer.named_parameters()}, os.path.join(sys.argv[2], f"grads{dist.rank}.pt"))
torch.distributed.destroy_process_group()
"""


def test_gradients_averaged_over_two_gloo_ranks_equal_the_full_batch_gradient(host, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(GRADIENT_WORKER, encoding="utf-8")
    cmd = [str(host.python), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           str(REPO_ROOT), str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    layer(torch.randn(3, 3)).pow(2).mean().backward()
    for rank in (0, 1):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        torch.testing.assert_close(grads["weight"], layer.weight.grad)
        torch.testing.assert_close(grads["bias"], torch.full((2,), 0.5))


def _train_in_process(tiny_checkpoint, data, out, **changes):
    from lora_train.cli.config import load_job
    from lora_train.host.comfy_adapter import ComfyHost
    from lora_train.training import train_lora

    job = load_job(None, [f"{k}={v}" for k, v in {**JOB, **changes}.items()])
    model, clip, vae = tiny_checkpoint
    with torch.inference_mode():
        return train_lora(job.train, load_dataset(data), ComfyHost(model, clip, vae), out)


def _logged_losses(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"step \d+/\d+ loss ([0-9.]+)", log)]


def test_two_cpu_ranks_match_one_process_with_the_doubled_batch(
    host, tiny_checkpoint, tiny_models_dir, style_dataset_dir, tmp_path
):
    # 5 images, global batch 4: every epoch has a short batch of 1, where rank 1 holds no rows at all.
    data = tmp_path / "data"
    data.mkdir()
    for image in sorted(style_dataset_dir.glob("*.png"))[:5]:
        shutil.copy(image, data / image.name)
        shutil.copy(image.with_suffix(".txt"), data / image.with_suffix(".txt").name)
    out = tmp_path / "ddp"
    config = tmp_path / "job.yaml"
    config.write_text("".join(f"{k}: {v}\n" for k, v in JOB.items()), encoding="utf-8")
    checkpoint = tiny_models_dir / "checkpoints" / TINY_SD15_NAME
    cmd = [
        str(host.python), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "lora_train", "train", "--config", str(config), "--comfyui", str(host.comfyui), "--cpu",
        "--set", f"train_data_dir={data}", "--set", f"base_model={checkpoint}", "--set", f"output_dir={out}",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # Only rank 0 writes: the LoRA, the log and (the CLI's default when the package is there) one TensorBoard run.
    board = ["tensorboard"] if tensorboard_available() else []
    assert sorted(p.name for p in out.iterdir()) == ["my_lora.log", "my_lora.safetensors", *board], (
        "only rank 0 writes"
    )
    assert len(list(out.glob("tensorboard/*/events.out.tfevents.*"))) == len(board), "one writer, not one per rank"
    log = (out / "my_lora.log").read_text(encoding="utf-8")
    assert "effective batch 4 (batch_size 2 x gradient_accumulation 1 x 2 processes)" in log
    assert log.count("step 4/4 loss") == 1, "only rank 0 logs progress"
    distributed = load_file(out / "my_lora.safetensors")

    single = _train_in_process(tiny_checkpoint, data, tmp_path / "single", batch_size=4)
    assert distributed.keys() == single.lora_tensors.keys()
    ups = [k for k in distributed if k.endswith("lora_up.weight")]
    assert max(float(distributed[k].abs().max()) for k in ups) > 1e-3, "training should have moved the weights"
    for key, tensor in single.lora_tensors.items():
        torch.testing.assert_close(distributed[key], tensor, rtol=1e-4, atol=1e-6, msg=key)
    assert _logged_losses(log) == pytest.approx([loss for _, loss in single.loss_history], rel=1e-5)

    # The comparison can fail: the same run without doubling the batch is far from the 2-rank result.
    undoubled = _train_in_process(tiny_checkpoint, data, tmp_path / "undoubled", batch_size=2)
    worst = max(float((distributed[k] - undoubled.lora_tensors[k]).abs().max()) for k in ups)
    assert worst > 1e-4, worst


def test_config_error_on_every_rank_fails_the_launch(host, tmp_path):
    cmd = [
        str(host.python), "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "lora_train", "train", "--set", "train_data_dir=x", "--set", "base_model=y", "--set", "rank=0",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "rank must be between 1 and 1024, got 0" in done.stderr
