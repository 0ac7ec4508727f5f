"""Train -> publish -> two loopback mirrors (the first answers 403 expired) -> Fetch LoRA by manifest -> sample.

The fetched release must load with zero keys not loaded and sample exactly like the file it was published from.
"""

import io
import json

import numpy as np
import pytest
from PIL import Image

from lora_train.dev.http_server import FaultServer, Route
from lora_train.dev.workflows import CKPT, lora_loader_sample, sample_nodes, train_and_sample
from lora_train.fetch.config import FetchConfig
from lora_train.release.publish import PublishConfig, publish_lora

pytestmark = pytest.mark.host
EXPIRED = (403, {"Content-Type": "application/xml"}, b"<Error><Code>AccessDenied</Code>Request has expired</Error>")


def _image(comfy, result, node) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(comfy.view(result.outputs[node]["images"][0]))), dtype=np.int16)


def test_published_release_fetched_through_a_dead_mirror_samples_like_the_original(comfy, style_dataset_dir, tmp_path):
    comfy.run_workflow(train_and_sample(str(style_dataset_dir), output_name="round_trip", steps=4))
    original = comfy.models_dir / "loras" / "round_trip.safetensors"

    with FaultServer() as server:
        cfg = PublishConfig(
            name="roundtrip_style",
            trigger_words=["redstyle"],
            data_source="generated red shapes",
            mirrors=[server.url("/a/"), server.url("/b/")],
        )
        release = publish_lora(cfg, original, tmp_path / "releases")
        weights = release.weights_path.name
        server.add(f"/a/{weights}", Route(script=[EXPIRED] * 10))
        server.add(f"/b/{weights}", Route(file=release.weights_path))
        manifest_url = server.add(
            "/manifest.json", Route(body=release.manifest_path.read_bytes(), content_type="application/json")
        )

        fetch = FetchConfig(urls=manifest_url, allow_private_addresses=True).to_widgets()
        workflow = {
            "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
            "fetch": {
                "class_type": "LoraTrain_FetchLoRA",
                "inputs": {
                    **fetch,
                    "model": ["ckpt", 0],
                    "clip": ["ckpt", 1],
                    "strength_model": 1.0,
                    "strength_clip": 1.0,
                },
            },
        }
        workflow |= sample_nodes("fetched", ["fetch", 1], ["fetch", 2], ["ckpt", 2])
        log_start = len(comfy.log_text())
        fetched = comfy.run_workflow(workflow)
        assert [s.status for s in server.seen(f"/a/{weights}")] == [403], "the expired mirror was not tried first"
        assert [s.status for s in server.seen(f"/b/{weights}")] == [200]

    assert fetched.outputs["fetch"]["lora_name"] == [weights]
    assert (comfy.models_dir / "loras" / weights).is_file()
    assert "lora key not loaded" not in comfy.log_text()[log_start:]
    reference = comfy.run_workflow(lora_loader_sample("round_trip.safetensors"))
    assert np.array_equal(_image(comfy, fetched, "fetched_save"), _image(comfy, reference, "loader_save"))
    manifest = json.loads(release.manifest_path.read_text())
    assert manifest["releases"][0]["files"][0]["sha256"] == release.sha256
