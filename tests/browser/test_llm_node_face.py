"""The Train LLM LoRA node in the real frontend: everyday settings shown, advanced ones folded, and the same live
view as Train LoRA, drawing the server's progress events addressed to it."""

from __future__ import annotations

import pytest

from tests.browser.browser import frontend

pytestmark = [pytest.mark.host, pytest.mark.browser]

EVERYDAY = {"train_data", "text", "output_name", "steps", "learning_rate", "rank", "alpha", "batch_size", "max_length",
            "seed", "control_after_generate"}  # fmt: skip
ADVANCED = {"network", "targets", "lr_scheduler", "max_grad_norm", "use_default_template"}

ADD_NODE_AND_SEND_PROGRESS_JS = """
() => {
    const node = LiteGraph.createNode("LoraTrain_TrainLLMLoRA");
    app.graph.add(node);
    const names = (shown) => node.widgets
        .filter((w) => node.isWidgetVisible(w) === shown && w.name !== "lora_train_view").map((w) => w.name);
    const view = node.loraTrainView;
    for (const step of [1, 2, 3]) {  // what the server sends while it trains (lora_train.host.llm_train.progress)
        const detail = { node: String(node.id), step, total: 3, loss: 4 / step, smoothed_loss: 4 / step, lr: 1e-4,
                         elapsed_s: step, eta_s: 3 - step };
        app.api.dispatchEvent(new CustomEvent("lora_train.train_progress", { detail }));
    }
    return { shown: names(true), folded: names(false), hasView: !!view, points: view?.points.length ?? 0,
             stats: view?.stats.textContent ?? "" };
}
"""


def test_the_llm_node_folds_advanced_settings_and_draws_its_progress(comfy, chromium):
    with frontend(chromium, comfy.url) as page:
        state = page.evaluate(ADD_NODE_AND_SEND_PROGRESS_JS)
    assert set(state["shown"]) == EVERYDAY, state["shown"]
    assert set(state["folded"]) == ADVANCED, state["folded"]
    assert state["hasView"] and state["points"] == 3
    assert "step 3 / 3" in state["stats"]
