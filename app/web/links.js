// The page's address says what it shows: `/?q=a+red+car&collection=photos&target=text`
// opens with that search, and every text search rewrites the address, so a search can be
// linked or bookmarked. A visit without `?q=` gets a few example queries to click: captions
// the collection holds (its texts nearest "a photo"), or generic ones when it has none.
// Shares app.js's globals (plain scripts).
"use strict";

const GENERIC_EXAMPLES = ["a dog on a beach", "a red car in the street", "a plate of food"];
const EXAMPLE_PROBE = "a photo";
const EXAMPLE_MAX_CHARS = 90;

async function openLinked() {
  const link = new URLSearchParams(location.search);
  const name = link.get("collection");
  if (name && [...$("collection").options].some((o) => o.value === name && !o.disabled)) {
    $("collection").value = name;
  }
  const wanted = link.get("target");
  if (wanted === "image" || wanted === "text") {
    document.querySelector(`input[name=target][value=${wanted}]`).checked = true;
  }
  const q = (link.get("q") || "").trim();
  if (q) {
    $("query").value = q;
    await searchText(q);
  } else {
    await showExamples();
  }
}

// Write the shown search into the address (replacing it: Back leaves the page as before).
function remember(query) {
  const link = new URLSearchParams();
  if (query && query.kind === "text") {
    link.set("q", query.text);
    if (collection()) link.set("collection", collection());
    if (target() !== "image") link.set("target", target());
  }
  const search = link.toString();
  history.replaceState(null, "", location.pathname + (search ? `?${search}` : ""));
}

async function exampleQueries() {
  const chosen = (state.collections || []).find((c) => c.name === collection());
  if (!chosen || !chosen.counts.text) return GENERIC_EXAMPLES;
  try {
    const data = await apiJson(searchPath("search"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text: EXAMPLE_PROBE, target: "text", k: 12 }),
    });
    const texts = data.results
      .map((h) => (h.text || "").trim())
      .filter((t) => t && t.length <= EXAMPLE_MAX_CHARS);
    const distinct = [...new Set(texts)].slice(0, 3);
    return distinct.length ? distinct : GENERIC_EXAMPLES;
  } catch (_) {
    return GENERIC_EXAMPLES; // reads need a key not given yet, say: examples still help
  }
}

async function showExamples() {
  const box = $("examples");
  if (state.last || !collection()) {
    box.hidden = true;
    return;
  }
  const examples = await exampleQueries();
  if (state.last) return; // a search started meanwhile: its results are what to show
  box.replaceChildren("Try: ");
  for (const text of examples) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "example";
    button.textContent = text;
    button.addEventListener("click", () => {
      $("query").value = text;
      searchText(text).catch(fail);
    });
    box.append(button, " ");
  }
  box.hidden = false;
}
