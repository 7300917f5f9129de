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
  nextOffset: null, // of the last search's next page
  extraImage: null, // the picture of the "Combine with" part
  collections: [], // as GET /v1/collections listed them last
  tag: null, // the label the results are narrowed to (a facet clicked), or null
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
const DEDUP = 0.95; // cosine at which two hits count as near-duplicates

// --- collections ---------------------------------------------------------------------------
async function loadCollections() {
  const data = await apiJson("/v1/collections");
  state.collections = data.collections;
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
  showQueryImage(null);
  await search({ kind: "text", text, label: `“${text}”` });
}

async function searchImage(blob, label) {
  $("query").value = ""; // the image is the query now, not the text typed before
  showQueryImage(blob);
  await search({ kind: "image", blob, label });
}

async function moreLikeThis(hit) {
  // Same modality as the item: set the toggle so that a re-run keeps it.
  document.querySelector(`input[name=target][value=${hit.modality}]`).checked = true;
  $("query").value = "";
  showQueryImage(null);
  await search({ kind: "item", itemId: hit.id, label: `more like ${hit.id}` });
}

const base64Of = (blob) =>
  new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(new ApiError("Cannot read the image file."));
    reader.readAsDataURL(blob);
  });

async function partOf(q) {
  if (q.kind === "text") return { text: q.text };
  if (q.kind === "item") return { item_id: q.itemId };
  q.base64 = q.base64 || (await base64Of(q.blob));
  return { image_base64: q.base64 };
}

// The second part of a combined query, from the "Combine with" controls: a text or a
// picture, with a weight (negative pushes away); null when neither is given.
function extraPart() {
  const text = $("extra-text").value.trim();
  if (text) return { kind: "text", text };
  return state.extraImage ? { kind: "image", blob: state.extraImage, base64: null } : null;
}

// One search: the query (and the extra part), the options, and the page at `offset`;
// the first page replaces the results, later ones ("More results") are appended.
async function search(query, offset = 0) {
  state.last = query;
  const parts = [await partOf(query)];
  const extra = extraPart();
  if (extra) parts.push({ ...(await partOf(extra)), weight: Number($("extra-weight").value) });
  const body = { query: parts, k: k(), offset, target: target() };
  const minScore = $("min-score").value.trim();
  // Matching words (lexical, hybrid) is for a text query finding texts, without extras.
  const mode = target() === "text" && query.kind === "text" && !extra ? $("mode").value : "vector";
  if (mode !== "vector") body.mode = mode;
  if (minScore !== "" && mode !== "lexical") body.min_score = Number(minScore);
  if ($("dedup").checked && mode === "vector") body.dedup = DEDUP;
  // Pictures: their labels counted beside the results (a collection's label set), and
  // the results narrowed to the one clicked.
  if (target() === "image") body.facets = ["labels"];
  if (state.tag !== null) body.filter = { labels: state.tag };
  const data = await apiJson(searchPath("search"), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const label = extra ? `${query.label} combined with ${extra.text ? `“${extra.text}”` : "a picture"}` : query.label;
  render(data, label, offset > 0, minScore === "" ? null : Number(minScore));
  if (offset === 0) renderFacets(data.facets ? data.facets.labels || [] : []);
  if (offset === 0) remember(query);
  state.nextOffset = data.next_offset;
  $("more").hidden = data.next_offset === null;
}

function rerun() {
  if (state.last) search(state.last).catch(fail);
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
  $("more").hidden = true;
  $("summary").textContent = "";
  $("details").hidden = true;
  say("");
  remember(null);
  showExamples().catch(fail);
  $("query").focus();
}

async function searchWithItem(hit) {
  say(`Searching with ${hit.id} ...`);
  const blob = await (await api(searchPath(`items/${enc(hit.id)}/image`))).blob();
  await searchImage(blob, `the image ${hit.id}`);
}

function imageFrom(items) {
  for (const item of items || []) {
    if (item.kind === "file" && item.type.startsWith("image/")) return item.getAsFile();
  }
  return null;
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
    loadCollections().then(showExamples).catch(fail);
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
  $("more").addEventListener("click", () => {
    if (state.last && state.nextOffset !== null) search(state.last, state.nextOffset).catch(fail);
  });
  $("min-score").addEventListener("change", rerun);
  $("mode").addEventListener("change", rerun);
  $("dedup").addEventListener("change", rerun);
  $("extra-text").addEventListener("change", rerun);
  $("extra-weight").addEventListener("change", rerun);
  $("extra-image").addEventListener("change", (e) => {
    state.extraImage = e.target.files[0] || null;
    $("extra-text").value = "";
    $("extra-clear").hidden = !state.extraImage;
    rerun();
  });
  $("extra-clear").addEventListener("click", () => {
    state.extraImage = null;
    $("extra-image").value = "";
    $("extra-text").value = "";
    $("extra-clear").hidden = true;
    rerun();
  });
  $("k").addEventListener("input", () => ($("k-value").textContent = $("k").value));
  $("k").addEventListener("change", rerun);
  for (const radio of document.querySelectorAll("input[name=target]")) {
    radio.addEventListener("change", rerun);
  }
  $("collection").addEventListener("change", () => {
    state.tag = null; // another collection's labels
    if (state.last) rerun();
    else showExamples().catch(fail);
  });
  $("refresh-collections").addEventListener("click", () => loadCollections().catch(fail));
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => showPanel(tab.dataset.panel));
  }
  loadCollections().then(openLinked).catch(fail);
}

document.addEventListener("DOMContentLoaded", init);
