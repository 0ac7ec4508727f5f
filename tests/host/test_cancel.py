"""The Cancel button (POST /interrupt) stops a training run in a real ComfyUI within a step."""

import pytest

from lora_train.dev.workflows import smoke_workflow, train_and_sample

pytestmark = pytest.mark.host


def test_interrupt_stops_training_and_the_server_keeps_working(comfy, style_dataset_dir):
    reported = []
    interrupted_after = []

    def on_event(event):
        if event["type"] == "lora_train.train_progress":
            reported.append(event["data"]["step"])
            if len(reported) == 2:
                comfy.interrupt()
                interrupted_after.append(event["data"]["step"])

    workflow = train_and_sample(str(style_dataset_dir), steps=5000, log_every=1, output_name="cancelled")
    result = comfy.run_workflow(workflow, on_event=on_event)
    assert result.events_of("execution_interrupted"), "the run was not interrupted"
    assert max(reported) <= interrupted_after[0] + 1, f"steps went on after Cancel: {reported}"
    assert not (comfy.models_dir / "loras" / "cancelled.safetensors").exists()
    # The same server still samples afterwards (the model was handed back intact).
    assert comfy.run_workflow(smoke_workflow())
