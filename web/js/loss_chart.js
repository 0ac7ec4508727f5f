// Draws a loss curve on a canvas: raw loss as faint dots and line, smoothed loss as a bold line, validation loss
// (when the run measures one) as green dots and line, x = step.
// Pure drawing: the caller owns the points and calls drawLossChart again when they change.

const COLORS = {
    raw: "rgba(140, 170, 255, 0.55)",
    smoothed: "#ffb347",
    validation: "#6ecd78",
    axis: "rgba(200, 200, 200, 0.35)",
    text: "rgba(220, 220, 220, 0.85)",
};
const PAD = { left: 46, right: 8, top: 8, bottom: 18 };

function niceRange(values) {
    let low = Math.min(...values);
    let high = Math.max(...values);
    if (!(high > low)) {
        const spread = Math.abs(low) * 0.1 || 1e-3;
        low -= spread;
        high += spread;
    }
    const margin = (high - low) * 0.06;
    return [low - margin, high + margin];
}

function polyline(ctx, points, x, y) {
    ctx.beginPath();
    points.forEach((point, index) => (index === 0 ? ctx.moveTo(x(point[0]), y(point[1])) : ctx.lineTo(x(point[0]), y(point[1]))));
    ctx.stroke();
}

/**
 * Draw `points` ({step, loss, smoothed, validation?}) for a run of `total` steps onto `canvas`, sized to its CSS box.
 * `formatValue` renders the y-axis labels.
 */
export function drawLossChart(canvas, points, total, formatValue) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(canvas.clientWidth, 50);
    const height = Math.max(canvas.clientHeight, 40);
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
        canvas.width = Math.round(width * ratio);
        canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    ctx.font = "10px sans-serif";
    ctx.fillStyle = COLORS.text;
    ctx.strokeStyle = COLORS.axis;
    ctx.lineWidth = 1;
    ctx.strokeRect(PAD.left, PAD.top, width - PAD.left - PAD.right, height - PAD.top - PAD.bottom);
    if (points.length === 0) {
        ctx.textAlign = "center";
        ctx.fillText("loss appears here while training", width / 2, height / 2);
        return;
    }
    const lastStep = points[points.length - 1].step;
    const xMax = Math.max(total || 0, lastStep, 1);
    const values = points.flatMap((p) => [p.loss, p.smoothed, p.validation]).filter(Number.isFinite);
    const [yMin, yMax] = niceRange(values.length ? values : [0, 1]);
    const plotW = width - PAD.left - PAD.right;
    const plotH = height - PAD.top - PAD.bottom;
    const x = (step) => PAD.left + (step / xMax) * plotW;
    const y = (value) => PAD.top + (1 - (value - yMin) / (yMax - yMin)) * plotH;

    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    ctx.fillText(formatValue(yMax), PAD.left - 4, PAD.top + 4);
    ctx.fillText(formatValue(yMin), PAD.left - 4, PAD.top + plotH - 4);
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    ctx.fillText("0", PAD.left, height - PAD.bottom + 3);
    ctx.fillText(`step ${xMax}`, PAD.left + plotW - 22, height - PAD.bottom + 3);

    const raw = points.filter((p) => Number.isFinite(p.loss)).map((p) => [p.step, p.loss]);
    const smoothed = points.filter((p) => Number.isFinite(p.smoothed)).map((p) => [p.step, p.smoothed]);
    const validation = points.filter((p) => Number.isFinite(p.validation)).map((p) => [p.step, p.validation]);
    ctx.save();
    ctx.beginPath();
    ctx.rect(PAD.left, PAD.top, plotW, plotH);
    ctx.clip();
    ctx.strokeStyle = COLORS.raw;
    ctx.fillStyle = COLORS.raw;
    polyline(ctx, raw, x, y);
    for (const [step, value] of raw) ctx.fillRect(x(step) - 1.5, y(value) - 1.5, 3, 3);
    ctx.strokeStyle = COLORS.smoothed;
    ctx.lineWidth = 2;
    polyline(ctx, smoothed, x, y);
    ctx.strokeStyle = COLORS.validation;
    ctx.fillStyle = COLORS.validation;
    polyline(ctx, validation, x, y);
    for (const [step, value] of validation) ctx.fillRect(x(step) - 2.5, y(value) - 2.5, 5, 5);
    ctx.restore();

    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillStyle = COLORS.raw;
    ctx.fillText("loss", PAD.left + 6, PAD.top + 3);
    ctx.fillStyle = COLORS.smoothed;
    ctx.fillText("smoothed", PAD.left + 36, PAD.top + 3);
    if (validation.length) {
        ctx.fillStyle = COLORS.validation;
        ctx.fillText("validation", PAD.left + 92, PAD.top + 3);
    }
}
