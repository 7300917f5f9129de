// The results of a search, as the page shows them: image tiles and text rows, their
// details, and what an empty or cut list means. Shares app.js's globals (plain scripts).
"use strict";

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

// What a hit's metadata names it, for a tile's label: its caption (or title) when it has
// one, else null (the tile shows the id).
const CAPTION_KEYS = ["caption", "title", "text", "alt", "description", "name"];
function captionOf(hit) {
  const meta = hit.metadata || {};
  for (const key of CAPTION_KEYS) {
    if (typeof meta[key] === "string" && meta[key].trim()) return meta[key].trim();
  }
  return null;
}

// The line above the results: how many for what, or why none (a min score that cut them).
function summarise(shown, got, label, tookMs, minScore) {
  const what = target() === "image" ? "image" : "text";
  if (!shown) {
    return minScore === null
      ? `No ${what}s in ${collection()} to match ${label}.`
      : `No ${what}s in ${collection()} scored ${minScore} or more for ${label}: ` +
          "lower or clear Min score to see the nearest ones.";
  }
  const cut = minScore !== null && got < k() ? ` Min score ${minScore} left out the rest.` : "";
  return `${plural(shown, what)} for ${label} (${tookMs.toFixed(1)} ms).${cut}`;
}

function render(data, label, append = false, minScore = null) {
  const results = $("results");
  let list = results.firstElementChild;
  if (!append || !list) {
    for (const url of state.urls) URL.revokeObjectURL(url);
    state.urls = [];
    results.replaceChildren();
    $("details").hidden = true;
    $("examples").hidden = true;
    list = document.createElement(target() === "image" ? "div" : "ol");
    list.className = target() === "image" ? "grid" : "list";
    results.append(list);
  }
  say("");
  const shown = list.children.length + data.results.length;
  $("summary").textContent = summarise(shown, data.results.length, label, data.took_ms, minScore);
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
      // Its caption when the metadata has one, else the whole id, wrapped: ids that share
      // a long prefix must still be told apart (the id is in the details either way).
      const caption = document.createElement("figcaption");
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = hit.score.toFixed(3);
      const name = document.createElement("span");
      const text = captionOf(hit);
      name.className = text ? "label" : "id";
      name.textContent = text || hit.id;
      caption.append(score, name);
      el.append(img, caption);
      const tags = (hit.metadata || {}).labels;
      if (Array.isArray(tags) && tags.length) {
        const list = document.createElement("span");
        list.className = "tags";
        for (const tag of tags.filter((t) => typeof t === "string")) {
          const one = document.createElement("span");
          one.className = "tag";
          one.textContent = tag;
          list.append(one);
        }
        el.append(list);
      }
      if (state.last && state.last.kind === "text") el.append(whyButton(hit, img));
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
    const like = document.createElement("button");
    like.type = "button";
    like.className = "more-like";
    like.textContent = "more like this";
    like.title = `Search with the stored ${hit.modality} ${hit.id}`;
    like.addEventListener("click", (e) => {
      e.stopPropagation();
      moreLikeThis(hit).catch(fail);
    });
    el.append(like);
    el.addEventListener("mouseenter", () => showDetails(hit));
    el.addEventListener("focus", () => showDetails(hit));
    el.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && e.target === el) el.click();
    });
    list.append(el);
  }
}

// "why?": the picture with the regions that carry its match with the text query in red
// (POST .../explain, as a PNG), shown in place of its thumbnail; a second click puts the
// thumbnail back.
function whyButton(hit, img) {
  const why = document.createElement("button");
  why.type = "button";
  why.className = "why";
  why.textContent = "why?";
  why.title = "Show which regions of the picture match the query";
  why.addEventListener("click", (e) => {
    e.stopPropagation();
    explainTile(hit, img, why).catch(fail);
  });
  return why;
}

async function explainTile(hit, img, why) {
  const tile = why.closest(".hit");
  if (tile.classList.contains("explained")) {
    tile.classList.remove("explained");
    why.textContent = "why?";
    await setThumbnail(img, hit);
    return;
  }
  const response = await api(searchPath("explain"), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ item_id: hit.id, text: state.last.text, format: "png" }),
  });
  const url = URL.createObjectURL(await response.blob());
  state.urls.push(url);
  img.src = url;
  tile.classList.add("explained");
  why.textContent = "picture";
}

// The labels of the pictures found (a label set's tags), with their counts over every
// picture the search keeps: a click narrows the results to one, a second click widens
// them again.
function renderFacets(counts) {
  const box = $("facets");
  box.replaceChildren();
  box.hidden = !counts.length && state.tag === null;
  for (const { value, count } of counts) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "facet";
    button.textContent = `${value} (${count})`;
    button.setAttribute("aria-pressed", String(state.tag === value));
    button.addEventListener("click", () => {
      state.tag = state.tag === value ? null : value;
      rerun();
    });
    box.append(button);
  }
}
