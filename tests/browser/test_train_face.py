"""The Train LoRA node's face in the real frontend: the everyday settings shown, the rest folded behind
"Show Advanced"; a workflow saved by the first release keeps every value it stored."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from lora_train.dev.tiny_models import TINY_SD15_NAME
from tests.browser import examples
from tests.browser.browser import frontend

pytestmark = [pytest.mark.host, pytest.mark.browser]

LEGACY = Path(__file__).resolve().parent / "legacy" / "train_lora_from_folder_first_release.json"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
DOCS_FACE_SCREENSHOT = REPO_ROOT / "docs" / "train_node_face.png"
TRAIN_NODE = 3
EVERYDAY = {"network", "rank", "alpha", "learning_rate", "steps", "batch_size", "optimizer", "resolution",
            "trigger_word", "sample_every", "sample_prompts", "mixed_precision", "gradient_checkpointing",
            "output_name", "save_steps", "captions"}  # fmt: skip
# Values a first-release user could have saved (none of them the default).
SAVED = {"rank": 7, "text_encoder_lr": 2e-05, "seed": 1234, "sample_seed": 9, "keep_last": 5, "log_every": 3,
         "output_name": "old_lora", "captions": "an old caption"}  # fmt: skip

VISIBLE_WIDGETS_JS = """
(nodeId) => {
    const node = app.graph.getNodeById(nodeId);
    const names = (shown) => node.widgets
        .filter((w) => node.isWidgetVisible(w) === shown && w.name !== "lora_train_view").map((w) => w.name);
    const folded = names(false);
    node.showAdvanced = true; // what the node menu's "Show Advanced" sets
    const unfolded = names(true);
    node.showAdvanced = false;
    return { shown: names(true), folded, unfolded };
}
"""


@pytest.fixture(scope="module")
def page(comfy, chromium):
    with frontend(chromium, comfy.url) as page:
        yield page


def _placed(graph: dict, dataset_dir) -> dict:
    return examples.substitute(graph, {examples.DATASET_DIR: str(dataset_dir), examples.CHECKPOINT: TINY_SD15_NAME})


def _legacy_graph(style_dataset_dir) -> dict:
    """The first-release UI workflow, with SAVED written into its widget values by their first-release position."""
    graph = _placed(json.loads(LEGACY.read_text()), style_dataset_dir)
    node = next(n for n in graph["nodes"] if n["id"] == TRAIN_NODE)
    names = [i["name"] for i in node["inputs"] if i.get("widget")]
    values = node["widgets_values"]
    for name, value in SAVED.items():
        index = names.index(name)
        index += 1 if index > names.index("seed") else 0  # seed's control_after_generate value follows it
        values[index] = value
    return graph


def test_the_face_shows_the_everyday_settings_and_show_advanced_unfolds_the_rest(page, style_dataset_dir):
    graph = _placed(examples.load_ui("train_lora_from_folder"), style_dataset_dir)
    page.evaluate("async (graph) => { await app.loadGraphData(graph); }", graph)
    widgets = page.evaluate(VISIBLE_WIDGETS_JS, TRAIN_NODE)
    assert set(widgets["shown"]) == EVERYDAY
    assert {"seed", "control_after_generate", "validation_split", "ema_decay", "tensorboard"} <= set(widgets["folded"])
    assert set(widgets["unfolded"]) == set(widgets["shown"]) | set(widgets["folded"])
    _screenshot_whole_node(page, TRAIN_NODE, ARTIFACTS / "train_node_face.png")
    assert (ARTIFACTS / "train_node_face.png").stat().st_size > 5_000
    if os.environ.get("LORA_TRAIN_WRITE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(ARTIFACTS / "train_node_face.png", DOCS_FACE_SCREENSHOT)


def _screenshot_whole_node(page, node_id: int, path: Path) -> None:
    """The whole node at 100% zoom, moved to the top-left of the canvas."""
    box = page.evaluate(
        """(nodeId) => {
            const node = app.graph.getNodeById(nodeId);
            node.setSize([node.size[0], node.computeSize()[1]]); // as tall as its shown widgets need
            const left = 320, top = 100; // right of the frontend's floating workflow menu
            const title = window.LiteGraph.NODE_TITLE_HEIGHT;
            app.canvas.ds.scale = 1;
            app.canvas.ds.offset = [left - node.pos[0], top + title - node.pos[1]];
            app.canvas.setDirty(true, true);
            app.canvas.draw(true, true);
            const canvas = app.canvas.canvas.getBoundingClientRect();
            return { x: canvas.left + left - 10, y: canvas.top + top - 10, width: node.size[0] + 20,
                     height: node.size[1] + title + 20 };
        }""",
        node_id,
    )
    page.wait_for_function("() => new Promise((resolve) => requestAnimationFrame(() => resolve(true)))")
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), clip=box)


def test_a_first_release_workflow_queues_every_value_it_saved(page, style_dataset_dir):
    prompt = page.evaluate(
        "async (graph) => { await app.loadGraphData(graph); return (await app.graphToPrompt()).output; }",
        _legacy_graph(style_dataset_dir),
    )
    inputs = prompt[str(TRAIN_NODE)]["inputs"]
    assert {name: inputs[name] for name in SAVED} == SAVED
    # Settings added since: at their defaults.
    assert inputs["validation_split"] == 0 and inputs["ema_decay"] == 0 and inputs["tensorboard"] is False
    assert inputs["dataset"] == ["2", 0] and inputs["model"] == ["1", 0]
