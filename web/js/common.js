// Shared helpers of the LoRA Train extension's frontend: callback chaining, websocket events routed to a node,
// and number formatting. Display only: nothing here keeps training or download state.
import { api } from "../../../scripts/api.js";

/** Replace `target[name]` by a function that calls the original first, then `callback`, with the same `this`. */
export function chainCallback(target, name, callback) {
    const original = target[name];
    target[name] = function (...args) {
        const result = original?.apply(this, args);
        callback.apply(this, args);
        return result;
    };
}

/** True when a websocket event's `node` (the server's unique_id) names this graph node. */
export function isForNode(node, eventNodeId) {
    if (eventNodeId === undefined || eventNodeId === null) return false;
    const id = String(eventNodeId);
    if (id === String(node.id)) return true;
    // Inside a subgraph the server names the node by its path of ids ("12:5"); the node only knows its own id.
    const inSubgraph = node.graph && node.graph !== node.graph.rootGraph;
    return Boolean(inSubgraph && id.split(":").pop() === String(node.id));
}

/**
 * Listen to namespaced websocket events on behalf of one node: each handler gets the event's data when its `node`
 * field names this node. The listeners are removed when the node is removed from the graph.
 */
export function listenForNode(node, handlers) {
    const listeners = Object.entries(handlers).map(([type, handler]) => {
        const listener = (event) => {
            // Our events carry {node, ...}; ComfyUI's own "executing" carries the node id alone.
            const detail = event.detail;
            const nodeId = typeof detail === "object" && detail !== null ? detail.node : detail;
            if (isForNode(node, nodeId)) handler(detail);
        };
        api.addEventListener(type, listener);
        return [type, listener];
    });
    chainCallback(node, "onRemoved", () => {
        for (const [type, listener] of listeners) api.removeEventListener(type, listener);
    });
}

/** A URL for an image named like ComfyUI's `{filename, subfolder, type}` output entries. */
export function viewUrl(image) {
    const params = new URLSearchParams({
        filename: image.filename ?? "",
        subfolder: image.subfolder ?? "",
        type: image.type ?? "output",
    });
    return api.apiURL(`/view?${params}`);
}

/** 75 -> "1:15", 3725 -> "1:02:05"; unknown -> "–". */
export function formatDuration(seconds) {
    if (seconds === undefined || seconds === null || !Number.isFinite(seconds) || seconds < 0) return "–";
    const total = Math.round(seconds);
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, "0");
    return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 1536 -> "1.5 KiB". */
export function formatBytes(bytes) {
    if (!Number.isFinite(bytes) || bytes < 0) return "?";
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
        value /= 1024;
        unit += 1;
    }
    return `${value.toFixed(unit === 0 ? 0 : 1)} ${BYTE_UNITS[unit]}`;
}

/** Loss-sized numbers: 4 significant digits, exponent form when tiny or huge. */
export function formatNumber(value) {
    if (!Number.isFinite(value)) return "–";
    const magnitude = Math.abs(value);
    return magnitude !== 0 && (magnitude < 1e-3 || magnitude >= 1e5) ? value.toExponential(2) : value.toPrecision(4);
}

/** Add a display-only DOM widget (never saved into the workflow or sent with the prompt). */
export function addDisplayWidget(node, name, element, minHeight) {
    const widget = node.addDOMWidget(name, "lora_train_view", element, {
        serialize: false,
        hideOnZoom: false,
        getMinHeight: minHeight,
    });
    widget.serialize = false;
    return widget;
}
