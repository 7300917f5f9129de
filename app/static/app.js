// The xmodal page: search by text or image, collections, jobs and fine-tuning reports.
// Plain browser JavaScript, no build step; everything goes through the public /v1 API.
"use strict";

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;
const KEY_STORAGE = "xmodal.apiKey"; // sessionStorage only: gone when the tab closes

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  last: null, // the last query, re-run when k or the target changes
  urls: [], // object URLs of the shown results, revoked on the next render
  reportJob: null,
  polling: null,
};

class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.key) headers.set("Authorization", `Bearer ${state.key}`);
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch (err) {
    throw new ApiError(`Cannot reach the server: ${err.message}`);
  }
  if (!response.ok) {
    let message = `The server answered ${response.status} ${response.statusText}.`;
    try {
      const body = await response.json();
      if (body.error) message = `${body.error.message} (${response.status} ${body.error.code})`;
    } catch (_) {
      // not our JSON error shape: keep the status line
    }
    if (response.status === 401) message += " Enter a valid API key above.";
    throw new ApiError(message);
  }
  return response;
}

const apiJson = async (path, options) => (await api(path, options)).json();

function say(text, kind = "info") {
  const status = $("status");
  status.textContent = text;
  status.className = text ? kind : "";
  status.setAttribute("role", kind === "error" ? "alert" : "status");
}

const fail = (err) => say(err.message || String(err), "error");

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

const collection = () => $("collection").value;
const target = () => document.querySelector("input[name=target]:checked").value;
const k = () => Number($("k").value);

// --- collections ---------------------------------------------------------------------------
async function loadCollections() {
  const data = await apiJson("/v1/collections");
  const select = $("collection");
  const previous = select.value;
  select.replaceChildren();
  for (const c of data.collections) {
    const option = document.createElement("option");
    option.value = c.name;
    const counts = `${plural(c.counts.image || 0, "image")}, ${plural(c.counts.text || 0, "text")}`;
    option.textContent = `${c.name} (${counts})`;
    if (c.error) {
      option.disabled = true;
      option.textContent = `${c.name} (cannot serve)`;
    }
    select.append(option);
  }
  if (data.collections.some((c) => c.name === previous)) select.value = previous;
  const body = $("collections-body");
  body.replaceChildren();
  for (const c of data.collections) {
    const row = body.insertRow();
    for (const value of [c.name, c.counts.image || 0, c.counts.text || 0, c.index, c.model]) {
      row.insertCell().textContent = value;
    }
    if (c.error) row.title = c.error; // a collection whose index cannot be built
  }
  if (!data.collections.length) {
    say("No collections yet: create one and add images or texts through the API.");
  }
}

// --- search --------------------------------------------------------------------------------
function searchPath(suffix) {
  if (!collection()) throw new ApiError("Pick a collection first.");
  return `/v1/collections/${enc(collection())}/${suffix}`;
}

async function searchText(text) {
  text = text.trim();
  if (!text) {
    say("Type something to search for, or give an image.", "error");
    return;
  }
  state.last = { kind: "text", text };
  showQueryImage(null);
  const data = await apiJson(searchPath("search"), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text, k: k(), target: target() }),
  });
  render(data, `“${text}”`);
}

async function searchImage(blob, label) {
  state.last = { kind: "image", blob, label };
  $("query").value = ""; // the image is the query now, not the text typed before
  showQueryImage(blob);
  const form = new FormData();
  form.append("file", blob, "query");
  form.append("k", String(k()));
  form.append("target", target());
  const data = await apiJson(searchPath("search/image"), { method: "POST", body: form });
  render(data, label);
}

function rerun() {
  const last = state.last;
  if (!last) return;
  const run = last.kind === "text" ? searchText(last.text) : searchImage(last.blob, last.label);
  run.catch(fail);
}

function showQueryImage(blob) {
  const img = $("query-image");
  if (img.src) URL.revokeObjectURL(img.src);
  $("query-image-box").hidden = !blob;
  if (blob) img.src = URL.createObjectURL(blob);
  else img.removeAttribute("src");
}

function clearImageQuery() {
  showQueryImage(null);
  if (state.last && state.last.kind === "image") state.last = null;
  $("results").replaceChildren();
  $("summary").textContent = "";
  $("details").hidden = true;
  say("");
  $("query").focus();
}

async function searchWithItem(hit) {
  say(`Searching with ${hit.id} ...`);
  const blob = await (await api(searchPath(`items/${enc(hit.id)}/image`))).blob();
  await searchImage(blob, `the image ${hit.id}`);
}

function describe(hit) {
  const meta = Object.keys(hit.metadata || {}).length
    ? JSON.stringify(hit.metadata, null, 2)
    : "(no metadata)";
  return `id: ${hit.id}\nscore: ${hit.score.toFixed(4)}\nmodality: ${hit.modality}\n${meta}`;
}

function showDetails(hit) {
  $("details").hidden = false;
  $("details-title").textContent = hit.id;
  $("details-body").textContent = describe(hit);
}

async function setThumbnail(img, hit) {
  const path = searchPath(`items/${enc(hit.id)}/thumbnail?size=256`);
  if (!state.key) {
    img.src = path; // the browser caches it (ETag)
    return;
  }
  // An <img> cannot send the Authorization header: fetch it, then show the bytes.
  const url = URL.createObjectURL(await (await api(path)).blob());
  state.urls.push(url);
  img.src = url;
}

function render(data, label) {
  for (const url of state.urls) URL.revokeObjectURL(url);
  state.urls = [];
  const results = $("results");
  results.replaceChildren();
  $("details").hidden = true;
  const what = target() === "image" ? "image" : "text";
  say("");
  $("summary").textContent = data.results.length
    ? `${plural(data.results.length, what)} for ${label} (${data.took_ms.toFixed(1)} ms)`
    : `No ${what}s in ${collection()} to match ${label}.`;
  const list = document.createElement(target() === "image" ? "div" : "ol");
  list.className = target() === "image" ? "grid" : "list";
  for (const hit of data.results) {
    const el = document.createElement(hit.modality === "image" ? "figure" : "li");
    el.className = `hit ${hit.modality}-hit`;
    el.dataset.id = hit.id;
    el.dataset.score = String(hit.score);
    el.title = describe(hit);
    el.tabIndex = 0;
    if (hit.modality === "image") {
      const img = document.createElement("img");
      img.alt = hit.id;
      img.loading = "lazy";
      setThumbnail(img, hit).catch(fail);
      // The whole id, wrapped: ids that share a long prefix must still be told apart.
      const caption = document.createElement("figcaption");
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(3);
      const id = document.createElement("span");
      id.className = "id";
      id.textContent = hit.id;
      caption.append(score, id);
      el.append(img, caption);
      el.addEventListener("click", () => searchWithItem(hit).catch(fail));
    } else {
      const text = document.createElement("span");
      text.className = "caption";
      text.textContent = hit.text || hit.id;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(3);
      el.append(text, score);
      el.addEventListener("click", () => {
        $("query").value = hit.text || "";
        searchText(hit.text || "").catch(fail);
      });
    }
    el.addEventListener("mouseenter", () => showDetails(hit));
    el.addEventListener("focus", () => showDetails(hit));
    el.addEventListener("keydown", (e) => {
      if (e.key === "Enter") el.click();
    });
    list.append(el);
  }
  results.append(list);
}

function imageFrom(items) {
  for (const item of items || []) {
    if (item.kind === "file" && item.type.startsWith("image/")) return item.getAsFile();
  }
  return null;
}

// --- jobs and fine-tuning reports ----------------------------------------------------------
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
  $("report-title").textContent = `Fine-tuning ${job.id}: ${job.state}${phase}` +
    (detail.version ? ` → ${detail.version}` : "");
  drawLoss(detail.loss_curve || []);
  const tbody = $("recall-table").tBodies[0];
  tbody.replaceChildren();
  const base = detail.base_metrics || {};
  const result = detail.result_metrics || {};
  for (const name of Object.keys(base)) {
    if (name === "pairs") continue;
    const row = tbody.insertRow();
    const [label, higherIsBetter] = metricLabel(name);
    row.dataset.metric = name;
    row.insertCell().textContent = label;
    row.insertCell().textContent = fmt(base[name], 2);
    row.insertCell().textContent = name in result ? fmt(result[name], 2) : "";
    const change = row.insertCell();
    if (name in result) {
      const delta = Number((result[name] - base[name]).toFixed(2)); // as shown: no "-0.00"
      change.textContent = `${delta > 0 ? "+" : ""}${fmt(delta, 2)}`;
      const better = higherIsBetter ? delta > 0 : delta < 0;
      change.className = delta === 0 ? "same" : better ? "better" : "worse";
    }
  }
}

function drawLoss(points) {
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
    text(W / 2, H / 2, "the loss curve appears once training has run a few steps", "middle");
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

// --- wiring ------------------------------------------------------------------------------
function showPanel(id) {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.classList.toggle("active", tab.dataset.panel === id);
  }
  for (const panel of document.querySelectorAll(".panel")) panel.hidden = panel.id !== id;
  say(""); // a message belonged to the panel left behind
  clearInterval(state.polling);
  state.polling = null;
  if (id === "jobs-panel") {
    loadJobs().catch(fail);
    state.polling = setInterval(() => loadJobs().catch(fail), 1000);
  } else if (id === "collections-panel") {
    loadCollections().catch(fail);
  }
}

function init() {
  $("api-key").value = state.key;
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.key = $("api-key").value.trim();
    if (state.key) sessionStorage.setItem(KEY_STORAGE, state.key);
    else sessionStorage.removeItem(KEY_STORAGE);
    say(state.key ? "Key set for this tab." : "Key cleared.");
    loadCollections().catch(fail);
  });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    searchText($("query").value).catch(fail);
  });
  $("clear-image").addEventListener("click", clearImageQuery);
  $("image-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) searchImage(file, file.name).catch(fail);
    e.target.value = "";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (!file || !file.type.startsWith("image/")) {
      say("Drop an image file (JPEG, PNG, WebP, GIF, BMP or TIFF).", "error");
      return;
    }
    searchImage(file, file.name).catch(fail);
  });
  document.addEventListener("paste", (e) => {
    const file = imageFrom(e.clipboardData && e.clipboardData.items);
    if (file) searchImage(file, "the pasted image").catch(fail);
  });
  $("k").addEventListener("input", () => ($("k-value").textContent = $("k").value));
  $("k").addEventListener("change", rerun);
  for (const radio of document.querySelectorAll("input[name=target]")) {
    radio.addEventListener("change", rerun);
  }
  $("collection").addEventListener("change", rerun);
  $("refresh-collections").addEventListener("click", () => loadCollections().catch(fail));
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => showPanel(tab.dataset.panel));
  }
  loadCollections().catch(fail);
}

document.addEventListener("DOMContentLoaded", init);
