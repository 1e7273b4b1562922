// OpenCIR search page: pick or upload a reference, describe a change, browse the top-k.
// Plain JavaScript, no dependencies; every element is built with the DOM API (no innerHTML).
"use strict";

const PAGE_SIZE = 48;
const HISTORY_SIZE = 8;

const state = {
  info: null,
  reference: null, // {kind: "id", id, name, url} | {kind: "upload", file, name, url}
  history: [],
  offset: 0,
  busy: false,
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(body, status) {
    super((body && body.detail) || `request failed (${status})`);
    this.code = body && body.code;
    this.status = status;
  }
}

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(body, response.status);
  return body;
}

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function say(text, isError = false) {
  const message = $("message");
  message.textContent = text;
  message.classList.toggle("error", isError);
  message.setAttribute("role", isError ? "alert" : "status");
}

// ---------------------------------------------------------------- startup

async function waitForIndex() {
  for (;;) {
    try {
      return await api("/info");
    } catch (error) {
      if (error.status !== 503) throw error;
      $("index-info").textContent = `Waiting for the index: ${error.message}`;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

async function start() {
  bindEvents();
  try {
    state.info = await waitForIndex();
  } catch (error) {
    $("index-info").textContent = `Cannot reach the index: ${error.message}`;
    return;
  }
  const { count, model, max_text_chars: maxChars, default_k: k } = state.info;
  $("index-info").textContent = `${count.toLocaleString()} images · model ${model}`;
  $("text").maxLength = maxChars;
  selectK(k);
  await loadGallery(0);
}

function selectK(k) {
  const select = $("k");
  if (![...select.options].some((o) => Number(o.value) === k)) {
    select.append(el("option", { text: String(k), value: String(k) }));
  }
  select.value = String(k);
}

// ---------------------------------------------------------------- gallery

async function loadGallery(offset) {
  const total = state.info.count;
  offset = Math.max(0, Math.min(offset, Math.max(0, total - 1)));
  offset -= offset % PAGE_SIZE;
  let page;
  try {
    page = await api(`/gallery?offset=${offset}&limit=${PAGE_SIZE}`);
  } catch (error) {
    say(error.message, true);
    return;
  }
  state.offset = offset;
  const pages = Math.max(1, Math.ceil(page.total / PAGE_SIZE));
  $("page-label").textContent = `Page ${offset / PAGE_SIZE + 1} of ${pages}`;
  $("prev-page").disabled = offset === 0;
  $("next-page").disabled = offset + PAGE_SIZE >= page.total;
  const list = $("gallery");
  list.replaceChildren(...page.items.map(galleryTile));
  if (!page.items.length) list.append(el("li", { class: "empty", text: "The gallery is empty." }));
  markSelected();
}

function galleryTile(item) {
  const label = describe(item);
  const button = el("button", { type: "button", class: "tile", title: label, "data-id": item.id }, [
    el("img", { class: "thumb", src: item.thumbnail_url, alt: label, loading: "lazy" }),
  ]);
  button.setAttribute("aria-label", `Use ${label} as the reference`);
  button.addEventListener("click", () => {
    setReference({ kind: "id", id: item.id, name: item.name, url: item.image_url });
    $("text").focus();
  });
  return el("li", {}, [button]);
}

function describe(item) {
  const alt = item.metadata && (item.metadata.alt_text || item.metadata.caption);
  return alt ? `${item.name} — ${alt}` : item.name;
}

function caption(item) {
  const text = item.metadata && (item.metadata.alt_text || item.metadata.caption);
  return text ? [el("span", { class: "caption", text })] : [];
}

function markSelected() {
  const id = state.reference && state.reference.kind === "id" ? String(state.reference.id) : null;
  for (const tile of document.querySelectorAll(".tile[data-id]")) {
    const selected = tile.dataset.id === id;
    tile.classList.toggle("selected", selected);
    tile.setAttribute("aria-pressed", String(selected));
  }
}

function toggleGallery(open) {
  const section = $("gallery-section");
  const show = open ?? section.hidden;
  section.hidden = !show;
  const toggle = $("toggle-gallery");
  toggle.setAttribute("aria-expanded", String(show));
  toggle.textContent = show ? "Hide gallery" : "Browse gallery";
  if (show) section.scrollIntoView({ block: "nearest", behavior: "smooth" });
}

// ---------------------------------------------------------------- reference

function setReference(reference) {
  if (state.reference && !sameReference(state.reference, reference)) {
    state.history = [state.reference, ...state.history.filter((r) => !sameReference(r, state.reference))]
      .filter((r) => !sameReference(r, reference))
      .slice(0, HISTORY_SIZE);
  }
  state.reference = reference;
  const img = $("reference-img");
  img.src = reference.url;
  img.alt = `Reference: ${reference.name}`;
  img.hidden = false;
  $("reference-placeholder").hidden = true;
  const name = $("reference-name");
  name.replaceChildren(
    reference.kind === "upload" ? "Uploaded " : "Gallery #" + reference.id + " ",
    el("strong", { text: reference.name }),
  );
  renderHistory();
  markSelected();
}

function sameReference(a, b) {
  return a.kind === b.kind && (a.kind === "id" ? a.id === b.id : a.file === b.file);
}

function renderHistory() {
  $("history-block").hidden = state.history.length === 0;
  $("history").replaceChildren(
    ...state.history.map((ref) => {
      const button = el("button", { type: "button", title: ref.name }, [
        el("img", { src: ref.url, alt: `Back to ${ref.name}` }),
      ]);
      button.addEventListener("click", () => setReference(ref));
      return el("li", {}, [button]);
    }),
  );
}

function useUpload(file) {
  if (!file) return;
  const limit = state.info ? state.info.max_upload_bytes : Infinity;
  if (file.size > limit) {
    say(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; the limit is ${(limit / 2 ** 20).toFixed(1)} MB.`, true);
    return;
  }
  setReference({ kind: "upload", file, name: file.name, url: URL.createObjectURL(file) });
  say("");
  $("text").focus();
}

// ---------------------------------------------------------------- search

async function search(event) {
  if (event) event.preventDefault();
  if (state.busy) return;
  const text = $("text").value.trim();
  if (!state.reference) return say("Pick a reference image first (gallery or upload).", true);
  if (!text) {
    $("text").focus();
    return say("Describe what should change, e.g. “make it blue”.", true);
  }
  const form = new FormData();
  form.append("text", text);
  form.append("k", $("k").value);
  if (state.reference.kind === "id") form.append("id", String(state.reference.id));
  else form.append("image", state.reference.file, state.reference.file.name);
  setBusy(true);
  try {
    const started = performance.now();
    const result = await api("/search", { method: "POST", body: form });
    renderResults(result, performance.now() - started);
    say("");
    toggleGallery(false);
  } catch (error) {
    say(error.message, true);
  } finally {
    setBusy(false);
  }
}

function setBusy(busy) {
  state.busy = busy;
  const button = $("search-button");
  button.disabled = busy;
  button.textContent = busy ? "Searching…" : "Search";
  $("results").classList.toggle("busy", busy);
  $("results-section").setAttribute("aria-busy", String(busy));
}

function renderResults(result, elapsed) {
  const { results, query } = result;
  const truncated = query.text_truncated ? " (text cut to the model's window)" : "";
  $("summary").textContent =
    `Top ${results.length} for “${query.text}”${truncated} · ${Math.round(elapsed)} ms`;
  const list = $("results");
  list.replaceChildren(...results.map(resultTile));
  if (!results.length) list.append(el("li", { class: "empty", text: "No results." }));
}

function resultTile(hit) {
  const label = describe(hit);
  const percent = Math.max(0, Math.min(1, hit.score)) * 100; // cosine similarity as a bar
  const bar = el("div", { class: "bar" }, [el("span")]);
  bar.firstChild.style.width = `${percent.toFixed(1)}%`;
  const button = el("button", { type: "button", class: "tile result", title: label }, [
    el("img", { class: "thumb", src: hit.thumbnail_url, alt: label, loading: "lazy" }),
    el("div", { class: "meta" }, [
      el("div", { class: "line" }, [
        el("span", { class: "rank", text: `#${hit.rank}` }),
        el("span", { class: "score", text: hit.score.toFixed(3) }),
      ]),
      bar,
      el("span", { class: "name", text: hit.name }),
      ...caption(hit),
    ]),
  ]);
  button.setAttribute("aria-label", `Rank ${hit.rank}, score ${hit.score.toFixed(3)}: ${label}. Use as the next reference`);
  button.addEventListener("click", () => {
    setReference({ kind: "id", id: hit.id, name: hit.name, url: hit.image_url });
    const text = $("text");
    text.focus();
    text.select();
    say(`Now refining from ${hit.name}: describe the next change.`);
  });
  return el("li", {}, [button]);
}

// ---------------------------------------------------------------- keyboard & events

function moveFocus(event) {
  const keys = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: "up", ArrowDown: "down" };
  if (!(event.key in keys) || !event.target.classList.contains("tile")) return;
  const grid = event.target.closest(".grid");
  const tiles = [...grid.querySelectorAll(".tile")];
  const index = tiles.indexOf(event.target);
  const step = keys[event.key];
  let next = index;
  if (typeof step === "number") next = index + step;
  else {
    const top = event.target.getBoundingClientRect().top;
    const perRow = tiles.filter((t) => t.getBoundingClientRect().top === top).length || 1;
    next = index + (step === "down" ? perRow : -perRow);
  }
  if (tiles[next]) {
    event.preventDefault();
    tiles[next].focus();
  }
}

function bindEvents() {
  $("search-form").addEventListener("submit", search);
  $("upload").addEventListener("change", (event) => useUpload(event.target.files[0]));
  $("toggle-gallery").addEventListener("click", () => toggleGallery());
  $("prev-page").addEventListener("click", () => loadGallery(state.offset - PAGE_SIZE));
  $("next-page").addEventListener("click", () => loadGallery(state.offset + PAGE_SIZE));
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName);
    if (event.key === "/" && !typing) {
      event.preventDefault();
      $("text").focus();
    }
    moveFocus(event);
  });
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    useUpload(event.dataTransfer.files[0]);
  });
}

document.addEventListener("DOMContentLoaded", start);
