"""The issue's round trip in a real ComfyUI: Train LoRA -> Publish LoRA node uploading to two destinations (S3 with
presigned links, on moto behind the expiry proxy; a web folder) -> the S3 links expire -> Fetch LoRA by the
manifest falls back to the folder -> the sampled image equals the one sampled with the trained file."""

from __future__ import annotations

import datetime
import io

import numpy as np
import pytest
from PIL import Image

from lora_train.dev.storage_servers import moto_s3
from lora_train.dev.workflows import CKPT, lora_loader_sample, sample_nodes, train_and_sample
from lora_train.fetch import FetchConfig
from lora_train.release import load_manifest
from tests.core.test_upload import static_site
from tests.host.test_publish_node import publish_workflow

pytestmark = pytest.mark.host


def _image(comfy, result, node) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(comfy.view(result.outputs[node]["images"][0]))), dtype=np.int16)


def test_publish_to_s3_and_a_folder_then_fetch_falls_back_when_the_s3_link_expires(
    start_server, style_dataset_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHOSTTEST")  # the server process reads them at start
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    site = tmp_path / "site"
    with moto_s3() as s3, static_site(site) as base:
        comfy = start_server("upload_round_trip")
        comfy.run_workflow(train_and_sample(str(style_dataset_dir), output_name="upload_rt", steps=4))
        destinations = f"s3://releases/rt?endpoint={s3.endpoint}&expires=1h\n{site}?url={base}"
        published = comfy.run_workflow(
            publish_workflow(
                "upload_rt.safetensors",
                name="uploadrt_style",
                destinations=destinations,
                output_dir=str(tmp_path / "rel"),
            )
        )
        text = published.outputs["1"]["text"][0]
        assert "uploaded and verified 6 file(s)" in text, text
        release_dir = tmp_path / "rel" / "uploadrt_style"
        urls = load_manifest(release_dir / "manifest.json").releases[0].files[0].urls
        assert urls[0].startswith(f"{s3.endpoint}/releases/rt/uploadrt_style_v1.safetensors?") and urls[1].startswith(
            base
        )

        s3.proxy.offset = datetime.timedelta(hours=2)  # every presigned link is now an hour past its expiry
        fetch = FetchConfig(urls=base + "manifest.json", allow_private_addresses=True).to_widgets()
        workflow = {
            "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
            "fetch": {"class_type": "LoraTrain_FetchLoRA", "inputs": {**fetch, "model": ["ckpt", 0],
                      "clip": ["ckpt", 1], "strength_model": 1.0, "strength_clip": 1.0}},
        }  # fmt: skip
        workflow |= sample_nodes("fetched", ["fetch", 1], ["fetch", 2], ["ckpt", 2])
        fetched = comfy.run_workflow(workflow)
        assert s3.proxy.expired_answers == 1, "the expired S3 link was tried first"

    assert fetched.outputs["fetch"]["lora_name"] == ["uploadrt_style_v1.safetensors"]
    assert fetched.outputs["fetch"]["signature"][0].startswith("unsigned")
    reference = comfy.run_workflow(lora_loader_sample("upload_rt.safetensors"))
    assert np.array_equal(_image(comfy, fetched, "fetched_save"), _image(comfy, reference, "loader_save"))
