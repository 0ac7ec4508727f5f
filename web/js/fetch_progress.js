// Fetch LoRA node: one progress line under the widgets — status, bytes, speed, ETA and the mirror in use — from
// the "lora_train.fetch_progress" events the node sends. Display only: the download runs on the server.
import { app } from "../../../scripts/app.js";
import { addDisplayWidget, chainCallback, formatBytes, formatDuration, listenForNode } from "./common.js";

const NODE_TYPE = "LoraTrain_FetchLoRA";
const LINE_HEIGHT = 56;

/** "https://mirror.example/path/file" -> "mirror.example"; anything unparsable is shown as given. */
function mirrorHost(mirror) {
    if (!mirror) return "";
    try {
        return new URL(mirror).host || mirror;
    } catch {
        return mirror;
    }
}

/** The text of the progress line for one event. */
export function progressText(detail) {
    const parts = [detail.status ?? "…"];
    if (detail.file_count > 1) parts.push(`file ${detail.file_index + 1}/${detail.file_count}`);
    if (detail.total > 0) {
        const percent = Math.min(100, (100 * detail.downloaded) / detail.total).toFixed(0);
        parts.push(`${formatBytes(detail.downloaded)} / ${formatBytes(detail.total)} (${percent}%)`);
    } else if (detail.downloaded > 0) {
        parts.push(formatBytes(detail.downloaded));
    }
    if (detail.speed_bps > 0 && detail.status === "downloading") {
        parts.push(`${formatBytes(detail.speed_bps)}/s`, `ETA ${formatDuration(detail.eta_s)}`);
    }
    const host = mirrorHost(detail.mirror);
    return parts.join(" · ") + (host ? `\nfrom ${host}` : "");
}

app.registerExtension({
    name: "lora_train.fetch_progress",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (nodeData?.name !== NODE_TYPE) return;

        chainCallback(nodeType.prototype, "onNodeCreated", function () {
            const line = document.createElement("div");
            line.className = "lora-train-fetch-progress";
            Object.assign(line.style, {
                font: "11px sans-serif", color: "var(--input-text, #ddd)", whiteSpace: "pre-line",
                overflow: "hidden", textOverflow: "ellipsis",
            });
            this.loraFetchLine = line;
            addDisplayWidget(this, "lora_fetch_progress", line, () => LINE_HEIGHT);
            listenForNode(this, {
                executing: () => {
                    line.textContent = "starting…";
                    line.dataset.status = "starting";
                },
                "lora_train.fetch_progress": (detail) => {
                    line.textContent = progressText(detail);
                    line.dataset.status = detail.status ?? "";
                    line.dataset.downloaded = String(detail.downloaded ?? 0);
                    delete line.dataset.saved;
                },
            });
        });

        chainCallback(nodeType.prototype, "onExecuted", function (output) {
            const line = this.loraFetchLine;
            const name = output?.lora_name?.[0];
            if (!line || !name) return;
            // Keep the last progress line (bytes, mirror); add where the file is, and how it got there.
            const progress = line.dataset.status ? line.textContent : "";
            line.textContent = `${progress}\n${output?.status?.[0] ?? "done"}: loras/${name}`.trim();
            line.dataset.saved = name;
        });
    },
});
