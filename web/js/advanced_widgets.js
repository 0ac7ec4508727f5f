// Node faces: on every LoRA Train node, the settings the server marks advanced are folded away until the node's menu
// "Show Advanced" unfolds them. Frontends that fold V1 advanced inputs themselves do the same; this one (1.32) reads
// the flag only from the widget's options and still gives hidden widgets their height, so a folded widget also
// takes no space. A folded widget keeps its value, its position in saved workflows and its place in the prompt.
import { app } from "../../../scripts/app.js";
import { chainCallback } from "./common.js";

const FOLDED_HEIGHT = -4; // the frontend adds 4 px of margin to every widget's height

function foldable(widget, node) {
    widget.advanced = true;
    const computeSize = widget.computeSize?.bind(widget);
    widget.computeSize = (width) => {
        if (!node.showAdvanced) return [0, FOLDED_HEIGHT];
        return computeSize ? computeSize(width) : [width ?? node.size[0], window.LiteGraph.NODE_WIDGET_HEIGHT];
    };
}

/** Fold `node`'s advanced widgets (and the widgets linked to them, such as seed's control_after_generate). */
export function foldAdvancedWidgets(node) {
    for (const widget of node.widgets ?? []) {
        if (!widget.options?.advanced || widget.advanced) continue;
        foldable(widget, node);
        for (const linked of widget.linkedWidgets ?? []) foldable(linked, node);
    }
}

app.registerExtension({
    name: "lora_train.advanced_widgets",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!nodeData?.name?.startsWith("LoraTrain_")) return;
        chainCallback(nodeType.prototype, "onNodeCreated", function () {
            foldAdvancedWidgets(this);
            this.setSize([this.size[0], this.computeSize()[1]]);
        });
    },
});
