"""The Train LoRA node's face: about 15 everyday widgets, the rest folded as advanced; widget positions of the first
release kept, so saved workflows load their values onto the same widgets."""

import json
from pathlib import Path

from lora_train.training import TrainConfig

LEGACY_WORKFLOW = (
    Path(__file__).resolve().parent.parent / "browser" / "legacy" / "train_lora_from_folder_first_release.json"
)
EVERYDAY = {"network", "rank", "alpha", "learning_rate", "steps", "batch_size", "optimizer", "resolution",
            "trigger_word", "sample_every", "sample_prompts", "mixed_precision", "gradient_checkpointing",
            "output_name", "save_steps"}  # fmt: skip


def _node_inputs():
    # Loaded as ComfyUI loads the extension (under its folder's name): a plain `import nodes` would take the name
    # ComfyUI's own nodes module has, for every later in-process host test.
    from tests.conftest import load_extension

    return load_extension().NODE_CLASS_MAPPINGS["LoraTrain_TrainLoRA"].INPUT_TYPES()


def _first_release_widgets() -> list[str]:
    """The Train LoRA widget names in a workflow saved by the first release, in their saved order."""
    workflow = json.loads(LEGACY_WORKFLOW.read_text())
    node = next(n for n in workflow["nodes"] if n["type"] == "LoraTrain_TrainLoRA")
    return [i["name"] for i in node["inputs"] if i.get("widget")]


def _widgets(section: dict) -> dict:
    return {name: spec for name, spec in section.items() if name in TrainConfig.comfy_inputs() or name == "captions"}


def test_the_face_shows_the_everyday_settings_and_folds_the_rest():
    inputs = _node_inputs()
    widgets = {**_widgets(inputs["required"]), **_widgets(inputs["optional"])}
    shown = {name for name, spec in widgets.items() if not spec[1].get("advanced")}
    assert shown == EVERYDAY | {"captions"}
    assert len(widgets) > 50, "the other settings are still there, folded"


def test_widget_positions_of_the_first_release_are_kept():
    inputs = _node_inputs()
    order = list(_widgets(inputs["required"])) + list(_widgets(inputs["optional"]))
    legacy = _first_release_widgets()
    assert order[: len(legacy)] == legacy, "a first-release workflow's values would land on other widgets"
    added = order[len(legacy) :]
    assert {"validation_split", "ema_decay", "masked_loss", "tensorboard"} <= set(added)
    assert all(name in inputs["optional"] for name in added), "settings added later must be optional"


def test_regularisation_and_validation_datasets_are_optional_inputs():
    optional = _node_inputs()["optional"]
    assert optional["reg_dataset"][0] == optional["validation_dataset"][0] == "LORA_DATASET"
