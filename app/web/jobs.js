// The Jobs tab: jobs followed live, and a fine-tuning job's report (loss curve, metrics).
// Loaded after app.js, whose helpers ($, api, apiJson, state, fail, enc) it uses.
"use strict";

function fmt(value, digits = 1) {
  return value === null || value === undefined ? "" : Number(value).toFixed(digits);
}

async function loadJobs() {
  const data = await apiJson("/v1/jobs");
  const body = $("jobs-body");
  body.replaceChildren();
  for (const job of data.jobs) {
    const row = body.insertRow();
    row.dataset.id = job.id;
    row.className = `job ${job.state}`;
    row.insertCell().textContent = job.id;
    row.insertCell().textContent = job.kind;
    row.insertCell().textContent = job.state;
    row.insertCell().append(...progressOf(job));
    const eta = job.eta_seconds ? `, ${fmt(job.eta_seconds, 0)} s left` : "";
    row.insertCell().textContent = job.items_per_second ? `${fmt(job.items_per_second)}/s${eta}` : "";
    row.insertCell().textContent = job.message || "";
    if (job.kind === "finetune") {
      row.classList.add("clickable");
      row.addEventListener("click", () => {
        state.reportJob = job.id;
        loadReport().catch(fail);
      });
    }
  }
  if (state.reportJob) await loadReport();
}

// A bar only where there is a total to fill; a job still counting gets a moving one, and a
// finished job with nothing to do says so (an activation with no collections, say).
function progressOf(job) {
  const finished = !["queued", "running"].includes(job.state);
  if (job.total) {
    const bar = document.createElement("progress");
    bar.max = job.total;
    bar.value = Math.min(job.total, job.done + job.failed);
    return [bar, ` ${job.done + job.failed}/${job.total}`];
  }
  if (!finished) {
    const bar = document.createElement("progress"); // no value: indeterminate
    return job.state === "running" ? [bar, job.done ? ` ${job.done} so far` : ""] : [""];
  }
  return [job.done ? `${job.done} done` : "nothing to do"];
}

// The report's metrics in words. Recall@K and MRR: higher is better; median rank: lower.
const METRIC_NAMES = {
  r1: "Recall@1", r5: "Recall@5", r10: "Recall@10", mrr: "mean reciprocal rank",
  median_rank: "median rank",
};
const DIRECTIONS = { t2i: "text → image", i2t: "image → text" };

function metricLabel(name) {
  const [direction, ...rest] = name.split("_");
  const metric = METRIC_NAMES[rest.join("_")];
  if (!DIRECTIONS[direction] || !metric) return [name, true];
  const lowerIsBetter = metric === "median rank";
  const label = `${DIRECTIONS[direction]} ${metric}${lowerIsBetter ? " (lower is better)" : ""}`;
  return [label, !lowerIsBetter];
}

async function loadReport() {
  const job = await apiJson(`/v1/jobs/${enc(state.reportJob)}`);
  const detail = job.detail || {};
  $("report").hidden = false;
  const phase = detail.phase ? `, ${detail.phase}` : "";
  const method = (job.params && job.params.method) || "";
  const target = job.params && job.params.target_source;
  $("report-title").textContent =
    `Fine-tuning ${job.id} (${method}${target ? `, target ${target}` : ""}): ${job.state}${phase}` +
    (detail.version ? ` → ${detail.version}` : "");
  drawLoss(
    detail.loss_curve || [],
    CLOSED_FORM.has(method)
      ? `${method} is fitted in closed form: no training steps, no loss curve`
      : "the loss curve appears once training has run a few steps",
  );
  const tbody = $("recall-table").tBodies[0];
  tbody.replaceChildren();
  const base = detail.base_metrics || {};
  const result = detail.result_metrics || {};
  for (const name of Object.keys(base)) {
    if (name === "pairs") continue;
    const [label, higherIsBetter] = metricLabel(name);
    addRow(tbody, name, label, base[name], result[name], higherIsBetter);
  }
  // A distilled query encoder is also judged by how fast it encodes texts.
  const speed = detail.speed;
  if (speed) {
    addRow(tbody, "texts_per_second", "texts encoded per second (batches of 256)",
      speed.base_texts_per_second, speed.result_texts_per_second, true);
    addRow(tbody, "single_text_ms", "one query text, ms (lower is better)",
      speed.base_single_text_ms, speed.result_single_text_ms, false);
  }
}

function addRow(tbody, name, label, before, after, higherIsBetter) {
  const row = tbody.insertRow();
  row.dataset.metric = name;
  row.insertCell().textContent = label;
  row.insertCell().textContent = fmt(before, 2);
  row.insertCell().textContent = after === undefined ? "" : fmt(after, 2);
  const change = row.insertCell();
  if (after !== undefined) {
    const delta = Number((after - before).toFixed(2)); // as shown: no "-0.00"
    change.textContent = `${delta > 0 ? "+" : ""}${fmt(delta, 2)}`;
    const better = higherIsBetter ? delta > 0 : delta < 0;
    change.className = delta === 0 ? "same" : better ? "better" : "worse";
  }
}

// Methods fitted without gradient steps.
const CLOSED_FORM = new Set(["cca", "subspace_alignment"]);

function drawLoss(points, empty) {
  const svg = $("loss-chart");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const W = 600, H = 220, pad = 36;
  const text = (x, y, s, anchor = "start") => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", x);
    t.setAttribute("y", y);
    t.setAttribute("text-anchor", anchor);
    t.textContent = s;
    svg.append(t);
  };
  if (points.length < 2) {
    text(W / 2, H / 2, empty, "middle");
    return;
  }
  const losses = points.map((p) => p.loss);
  const lo = Math.min(...losses), hi = Math.max(...losses);
  const first = points[0].step, last = points[points.length - 1].step;
  const x = (s) => pad + ((s - first) / Math.max(1, last - first)) * (W - 2 * pad);
  const y = (l) => H - pad - ((l - lo) / Math.max(1e-9, hi - lo)) * (H - 2 * pad);
  const axis = document.createElementNS(ns, "path");
  axis.setAttribute("d", `M${pad},${pad} V${H - pad} H${W - pad}`);
  axis.setAttribute("class", "axis");
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.map((p) => `${x(p.step).toFixed(1)},${y(p.loss).toFixed(1)}`).join(" "));
  line.setAttribute("class", "loss");
  svg.append(axis, line);
  text(pad - 4, pad + 4, hi.toFixed(3), "end");
  text(pad - 4, H - pad, lo.toFixed(3), "end");
  text(pad, H - pad + 16, `step ${first}`);
  text(W - pad, H - pad + 16, `step ${last}`, "end");
  text(W / 2, 16, "training loss", "middle");
}

