// Train LoRA node: a live view of the run under the widgets — loss chart (raw + smoothed, x = step), step/total,
// learning rate, ETA and the latest sample image. It only shows what the server sends ("lora_train.train_progress",
// "lora_train.train_sample"); the training itself runs on the server, with or without this page open.
import { app } from "../../../scripts/app.js";
import { addDisplayWidget, chainCallback, formatDuration, formatNumber, listenForNode, viewUrl } from "./common.js";
import { foldAdvancedWidgets } from "./advanced_widgets.js";
import { drawLossChart } from "./loss_chart.js";

// Train LoRA, and Train LLM LoRA (same progress events, no samples).
const NODE_TYPES = new Set(["LoraTrain_TrainLoRA", "LoraTrain_TrainLLMLoRA"]);
const CHART_HEIGHT = 140;
const STATS_HEIGHT = 52;
const SAMPLE_HEIGHT = 200;

function element(tag, className, style = {}) {
    const el = document.createElement(tag);
    el.className = className;
    Object.assign(el.style, style);
    return el;
}

/** The DOM widget's contents and the points it shows; one per Train LoRA node. */
class TrainView {
    constructor(node) {
        this.node = node;
        this.points = [];
        this.total = 0;
        this.root = element("div", "lora-train-view", {
            display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%",
            font: "11px sans-serif", color: "var(--input-text, #ddd)", overflow: "hidden",
        });
        this.stats = element("div", "lora-train-stats", { minHeight: `${STATS_HEIGHT - 8}px`, whiteSpace: "pre-line" });
        this.chart = element("canvas", "lora-train-chart", {
            width: "100%", height: `${CHART_HEIGHT}px`, flex: "none",
            background: "var(--comfy-input-bg, #222)", borderRadius: "4px",
        });
        this.sample = element("img", "lora-train-sample", {
            display: "none", width: "100%", height: `${SAMPLE_HEIGHT - 16}px`, objectFit: "contain", flex: "none",
        });
        this.sample.alt = "latest training sample";
        this.sampleCaption = element("div", "lora-train-sample-caption", { textAlign: "center", opacity: "0.75" });
        this.root.append(this.stats, this.chart, this.sample, this.sampleCaption);
        this.sample.addEventListener("load", () => {
            this.root.dataset.sampleLoaded = "true";
            this.fitNode();
        });
        this.resizeObserver = new ResizeObserver(() => this.draw());
        this.resizeObserver.observe(this.chart);
        this.reset();
    }

    minHeight() {
        return STATS_HEIGHT + CHART_HEIGHT + (this.sample.style.display === "none" ? 0 : SAMPLE_HEIGHT);
    }

    /** A new run starts on this node: forget the last one's points and sample. */
    reset() {
        this.points = [];
        this.best = undefined;
        this.total = 0;
        this.samplesSeen = 0;
        this.sample.style.display = "none";
        this.sample.removeAttribute("src");
        this.sampleCaption.textContent = "";
        delete this.root.dataset.sampleLoaded;
        delete this.root.dataset.sampleStep;
        this.root.dataset.status = "idle";
        this.stats.textContent = "Queue the workflow: the loss, learning rate and ETA show here while it trains.";
        this.update();
    }

    onProgress(detail) {
        const last = this.points[this.points.length - 1];
        if (last && detail.step <= last.step) this.reset(); // a re-queued run whose start we did not see
        this.total = detail.total;
        const validation = Number.isFinite(detail.validation_loss) ? detail.validation_loss : undefined;
        this.points.push({ step: detail.step, loss: detail.loss, smoothed: detail.smoothed_loss, validation });
        if (validation !== undefined && !(validation >= this.best?.loss)) {
            this.best = { step: detail.step, loss: validation }; // the earliest of equal losses stays best
        }
        this.root.dataset.status = "training";
        const lr = Number.isFinite(detail.lr) ? detail.lr.toExponential(2) : "–";
        const best = this.best ? ` · best val ${formatNumber(this.best.loss)} @ ${this.best.step}` : "";
        this.stats.textContent =
            `step ${detail.step} / ${detail.total} · loss ${formatNumber(detail.loss)}` +
            ` · smoothed ${formatNumber(detail.smoothed_loss)}${best}\n` +
            `lr ${lr} · elapsed ${formatDuration(detail.elapsed_s)} · ETA ${formatDuration(detail.eta_s)}`;
        this.update();
    }

    onSample(detail) {
        if (!detail.image?.filename) return;
        this.samplesSeen += 1;
        const firstSample = this.sample.style.display === "none";
        this.sample.style.display = "block";
        delete this.root.dataset.sampleLoaded; // until the new image has loaded
        this.sample.src = viewUrl(detail.image);
        this.sampleCaption.textContent = `sample at step ${detail.step}`;
        this.root.dataset.sampleStep = String(detail.step);
        if (firstSample) this.fitNode();
    }

    onExecuted(output) {
        this.root.dataset.status = "done";
        const loraName = output?.lora_name?.[0];
        if (!loraName) return;
        // Keep the last progress lines (step, loss, lr, time); add the saved file.
        const progress = this.points.length ? this.stats.textContent : "";
        this.stats.textContent = `${progress}\nsaved ${loraName}`.trim();
    }

    update() {
        this.root.dataset.points = String(this.points.length);
        this.root.dataset.step = String(this.points[this.points.length - 1]?.step ?? 0);
        this.draw();
    }

    draw() {
        drawLossChart(this.chart, this.points, this.total, formatNumber);
    }

    /** Grow the node when the sample image first appears, so nothing is clipped. */
    fitNode() {
        const wanted = this.node.computeSize();
        this.node.setSize([Math.max(this.node.size[0], wanted[0]), Math.max(this.node.size[1], wanted[1])]);
        this.node.setDirtyCanvas(true, true);
    }

    dispose() {
        this.resizeObserver.disconnect();
    }
}

app.registerExtension({
    name: "lora_train.train_view",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (!NODE_TYPES.has(nodeData?.name)) return;

        chainCallback(nodeType.prototype, "onNodeCreated", function () {
            foldAdvancedWidgets(this); // before sizing the node (whichever extension runs first)
            const view = new TrainView(this);
            this.loraTrainView = view;
            addDisplayWidget(this, "lora_train_view", view.root, () => view.minHeight());
            listenForNode(this, {
                executing: () => view.reset(),
                "lora_train.train_progress": (detail) => view.onProgress(detail),
                "lora_train.train_sample": (detail) => view.onSample(detail),
            });
            chainCallback(this, "onRemoved", () => view.dispose());
            const wanted = this.computeSize();
            this.setSize([Math.max(this.size[0], 360), wanted[1]]);
        });

        chainCallback(nodeType.prototype, "onExecuted", function (output) {
            this.loraTrainView?.onExecuted(output);
        });
    },
});
