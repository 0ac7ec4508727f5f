"""The nodes' web side in a real browser: the Train LoRA node's live chart fills from the server's progress events
while the example workflow trains; the example UI workflows match their API-format twins."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from lora_train.dev.tiny_models import TINY_SD15_NAME
from tests.browser import examples
from tests.browser.browser import frontend

pytestmark = [pytest.mark.host, pytest.mark.browser]

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "train_node.png"
TRAIN_NODE = 3  # the Train LoRA node's id in example_workflows/train_lora_from_folder.json
LORA_NAME = "browser_view_lora"
# The host test's tiny profile, with an own output name: a graph that ComfyUI had cached would send no progress.
# A validation loss every 4 steps (two of the eight images held out) puts its green line on the chart.
VALIDATE_EVERY = 4
PROFILE = examples.TINY_PROFILE | {
    "LoraTrain_TrainLoRA": examples.TINY_PROFILE["LoraTrain_TrainLoRA"]
    | {"output_name": LORA_NAME, "validation_split": 0.25, "validate_every": VALIDATE_EVERY},
}
TRAIN_STEPS = examples.TINY_PROFILE["LoraTrain_TrainLoRA"]["steps"]
LOG_EVERY = examples.TINY_PROFILE["LoraTrain_TrainLoRA"]["log_every"]

LOAD_AND_QUEUE_JS = """
async ({ graph, profile }) => {
    await app.loadGraphData(graph);
    for (const node of app.graph.nodes) {
        for (const [name, value] of Object.entries(profile[node.type] ?? {})) {
            const widget = node.widgets?.find((w) => w.name === name);
            if (widget) widget.value = value;
        }
    }
    await app.queuePrompt(0, 1);
}
"""

VIEW_STATE_JS = """
(nodeId) => {
    const node = app.graph.getNodeById(nodeId);
    const view = node.loraTrainView;
    const chart = view.chart.getContext("2d").getImageData(0, 0, view.chart.width, view.chart.height).data;
    let smoothedPixels = 0; // the smoothed line's orange (#ffb347)
    let validationPixels = 0; // the validation line's green (#6ecd78)
    for (let i = 0; i < chart.length; i += 4) {
        if (chart[i] > 230 && chart[i + 1] > 150 && chart[i + 1] < 210 && chart[i + 2] < 110) smoothedPixels += 1;
        if (chart[i] < 140 && chart[i + 1] > 180 && chart[i + 2] > 90 && chart[i + 2] < 150) validationPixels += 1;
    }
    return {
        points: view.points,
        dataset: { ...view.root.dataset },
        stats: view.stats.textContent,
        smoothedPixels,
        validationPixels,
        samplesSeen: view.samplesSeen,
        sampleLoaded: view.sample.complete && view.sample.naturalWidth > 0,
        outputImages: app.nodeOutputs[String(nodeId)]?.images ?? [],
    };
}
"""

# What a node's executed images look like once the frontend shows them on the node.
PREVIEW_SHOWN_JS = "(id) => (app.graph.getNodeById(id).imgs ?? []).some((img) => img.complete && img.naturalWidth > 0)"


def _screenshot_node(page, node_id: int, path: Path) -> None:
    """Bring the node's live view to the top-left of the canvas at 100% zoom, then save that part of the page."""
    box = page.evaluate(
        """(nodeId) => {
            const node = app.graph.getNodeById(nodeId);
            const widget = node.widgets.find((w) => w.name === "lora_train_view");
            const shown = node.widgets.filter((w) => node.isWidgetVisible?.(w) ?? true);
            const above = shown[Math.max(0, shown.indexOf(widget) - 3)]; // a few widgets above the live view
            const top = node.pos[1] + above.y - 20;
            const left = 320; // right of the frontend's floating workflow menu
            app.canvas.ds.scale = 1;
            app.canvas.ds.offset = [left - node.pos[0], 100 - top];
            app.canvas.setDirty(true, true);
            app.canvas.draw(true, true);
            const canvas = app.canvas.canvas.getBoundingClientRect();
            return { x: canvas.left + left - 10, y: canvas.top + 90, width: node.size[0] + 20,
                     height: node.pos[1] + node.size[1] - top + 20 };
        }""",
        node_id,
    )
    page.wait_for_function("() => new Promise((resolve) => requestAnimationFrame(() => resolve(true)))")
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), clip=box)


@pytest.fixture(scope="module")
def trained_page(comfy, chromium, style_dataset_dir):
    """The frontend after queueing the training example (tiny profile) and waiting for the node to finish."""
    graph = examples.substitute(
        examples.load_ui("train_lora_from_folder"),
        {examples.DATASET_DIR: str(style_dataset_dir), examples.CHECKPOINT: TINY_SD15_NAME},
    )
    with frontend(chromium, comfy.url) as page:
        page.evaluate(LOAD_AND_QUEUE_JS, {"graph": graph, "profile": PROFILE})
        page.wait_for_function(
            "(id) => app.graph.getNodeById(id).loraTrainView.root.dataset.status === 'done'", arg=TRAIN_NODE,
            timeout=300_000,
        )  # fmt: skip
        page.wait_for_function(PREVIEW_SHOWN_JS, arg=TRAIN_NODE, timeout=60_000)
        yield page


def test_train_node_chart_receives_a_point_per_progress_event(trained_page):
    state = trained_page.evaluate(VIEW_STATE_JS, TRAIN_NODE)
    assert [p["step"] for p in state["points"]] == list(range(LOG_EVERY, TRAIN_STEPS + 1, LOG_EVERY))
    assert all(p["loss"] > 0 and p["smoothed"] > 0 for p in state["points"])
    assert state["dataset"]["points"] == str(len(state["points"]))
    assert state["smoothedPixels"] > 50, "the smoothed loss line was not drawn on the chart"
    validated = [p["step"] for p in state["points"] if p.get("validation") is not None]
    assert validated == list(range(VALIDATE_EVERY, TRAIN_STEPS + 1, VALIDATE_EVERY))
    assert state["validationPixels"] > 20, "the validation loss line was not drawn on the chart"
    assert "best val" in state["stats"]
    assert f"step {TRAIN_STEPS} / {TRAIN_STEPS}" in state["stats"]
    assert f"saved {LORA_NAME}.safetensors" in state["stats"]


def test_train_node_shows_the_loss_chart_and_samples_it_was_sent(trained_page):
    state = trained_page.evaluate(VIEW_STATE_JS, TRAIN_NODE)
    assert state["outputImages"] and state["outputImages"][0]["filename"].startswith("lora_train_loss")
    assert trained_page.evaluate(PREVIEW_SHOWN_JS, TRAIN_NODE), "the loss chart image did not appear on the node"
    if state["samplesSeen"]:  # once the node sends lora_train.train_sample
        assert state["sampleLoaded"], "a sample event arrived but its image did not load"
    ARTIFACTS.mkdir(exist_ok=True)
    trained_page.screenshot(path=str(ARTIFACTS / "train_view_page.png"))
    _screenshot_node(trained_page, TRAIN_NODE, ARTIFACTS / "train_node.png")
    assert (ARTIFACTS / "train_node.png").stat().st_size > 5_000
    if os.environ.get("LORA_TRAIN_WRITE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(ARTIFACTS / "train_node.png", DOCS_SCREENSHOT)


def test_sample_event_shows_its_image_on_the_addressed_node_only(trained_page):
    # The frontend half of lora_train.train_sample, fed a real image the server serves (the loss chart).
    result = trained_page.evaluate(
        """async (nodeId) => {
            const { api } = window.comfyAPI.api;
            const view = app.graph.getNodeById(nodeId).loraTrainView;
            const image = app.nodeOutputs[String(nodeId)].images[0];
            api.dispatchCustomEvent("lora_train.train_sample", { node: "9999", step: 5, image });
            const ignored = view.samplesSeen;
            const loaded = new Promise((resolve) => view.sample.addEventListener("load", resolve, { once: true }));
            api.dispatchCustomEvent("lora_train.train_sample", { node: String(nodeId), step: 12, image });
            await loaded;
            return { ignored, seen: view.samplesSeen, width: view.sample.naturalWidth, ...view.root.dataset };
        }""",
        TRAIN_NODE,
    )
    assert result["ignored"] == 0
    assert result["seen"] == 1 and result["sampleStep"] == "12" and result["sampleLoaded"] == "true"
    assert result["width"] == 640  # the served PNG, decoded


def test_removed_node_stops_listening(trained_page):
    points_after_removal = trained_page.evaluate(
        """(nodeId) => {
            const { api } = window.comfyAPI.api;
            const node = app.graph.getNodeById(nodeId);
            const view = node.loraTrainView;
            const before = view.points.length;
            app.graph.remove(node);
            const progress = { step: 1, total: 2, loss: 1, smoothed_loss: 1, lr: 1e-4, eta_s: 1, elapsed_s: 1 };
            api.dispatchCustomEvent("lora_train.train_progress", { node: String(nodeId), ...progress });
            return [before, view.points.length];
        }""",
        TRAIN_NODE,
    )
    assert points_after_removal[0] > 0 and points_after_removal[1] == points_after_removal[0]


def test_fetch_node_shows_bytes_and_mirror_of_its_download(comfy, page, trained_page, tmp_path):
    if not page.evaluate("Boolean(window.LiteGraph.registered_node_types.LoraTrain_FetchLoRA)"):
        pytest.skip("the Fetch LoRA node (nodes/fetch.py, branch fetch) is not in this checkout yet")
    with examples.serve_folder(tmp_path / "releases") as base_url:
        examples.publish_release(comfy.models_dir / "loras" / f"{LORA_NAME}.safetensors", tmp_path / "releases",
                                 base_url, "browser_style")  # fmt: skip
        graph = examples.substitute(
            examples.load_ui("fetch_lora_and_sample"),
            {examples.MANIFEST_URL: f"{base_url}browser_style/manifest.json", examples.CHECKPOINT: TINY_SD15_NAME},
        )
        profile = PROFILE | {"LoraTrain_FetchLoRA": {"allow_private_addresses": True}}
        page.evaluate(LOAD_AND_QUEUE_JS, {"graph": graph, "profile": profile})
        page.wait_for_function("Boolean(app.graph.getNodeById(2).loraFetchLine.dataset.saved)", timeout=120_000)
    line = page.evaluate(
        "(() => { const l = app.graph.getNodeById(2).loraFetchLine; return [l.textContent, {...l.dataset}]; })()"
    )
    size = (tmp_path / "releases" / "browser_style" / "browser_style_v1.safetensors").stat().st_size
    assert line[1]["status"] == "done" and line[1]["downloaded"] == str(size)
    assert f"from {base_url.split('/')[2]}" in line[0] and "(100%)" in line[0]
    assert line[0].endswith("loras/browser_style_v1.safetensors")


def _differences(queued: dict, api: dict, object_info: dict) -> list[str]:
    """How the prompt the frontend queues for a UI workflow differs from the API-format file (empty: the same),
    over the inputs the server reads (the frontend adds display-only ones, e.g. PreviewAny's `preview`)."""
    problems = [f"node {k} only in the UI workflow" for k in queued.keys() - api.keys()]
    problems += [f"node {k} only in the API workflow" for k in api.keys() - queued.keys()]
    for node_id in queued.keys() & api.keys():
        ui_node, api_node = queued[node_id], api[node_id]
        if ui_node["class_type"] != api_node["class_type"]:
            problems.append(f"node {node_id}: {ui_node['class_type']} != {api_node['class_type']}")
        declared = object_info[api_node["class_type"]]["input"]
        names = {*declared.get("required", {}), *declared.get("optional", {})}
        for name in sorted((ui_node["inputs"].keys() | api_node["inputs"].keys()) & names):
            ui_value, api_value = ui_node["inputs"].get(name), api_node["inputs"].get(name)
            if ui_value != api_value:
                problems.append(f"node {node_id} input {name}: UI {ui_value!r}, API {api_value!r}")
    return sorted(problems)


@pytest.fixture(scope="module")
def page(comfy, chromium):
    with frontend(chromium, comfy.url) as page:
        yield page


@pytest.mark.parametrize("name", list(examples.BUILDERS))
def test_ui_example_queues_the_same_graph_as_its_api_twin(comfy, page, name):
    missing = page.evaluate(
        "(types) => types.filter((t) => !window.LiteGraph.registered_node_types[t])",
        sorted({node["class_type"] for node in examples.load_api(name).values()}),
    )
    if missing:
        pytest.skip(f"node types not registered on this server: {', '.join(missing)}")
    prompt = page.evaluate(
        "async (graph) => { await app.loadGraphData(graph); return (await app.graphToPrompt()).output; }",
        examples.load_ui(name),
    )
    problems = _differences(prompt, examples.load_api(name), comfy.get_json("/object_info"))
    assert not problems, (
        f"example_workflows/{name}.json and api/{name}.json differ (rebuild both with "
        f"`python -m tests.browser.build_examples`): {problems}"
    )
