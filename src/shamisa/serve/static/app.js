// The shamisa page: upload images to /api/score (a few at a time), list them by score, show a quality
// map from /api/map over an image, compare two, download the rows as CSV. Plain browser APIs only.
"use strict";

const CONCURRENT_UPLOADS = 3;
const CSV_COLUMNS = ["path", "score", "raw", "width", "height", "flags", "error"];
const $ = (id) => document.getElementById(id);

const items = [];          // {id, file, url, state: pending|done|error, row, mapUrl, selected}
const queue = [];
let active = 0;
let nextId = 0;

// ------------------------------------------------------------------------------------------ model card
fetch("/api/model").then((r) => r.json()).then((card) => {
  const m = card.metrics || {};
  const srcc = m.srcc_median !== undefined ? `, SRCC ${m.srcc_median}` : "";
  $("model-info").textContent = `model ${card.name}: ${card.encoder}, head fitted on ${card.dataset}${srcc} · ${card.device}`;
}).catch(() => { $("model-info").textContent = "model card unavailable"; });

// ------------------------------------------------------------------------------------------ adding files
function addFiles(fileList) {
  for (const file of fileList) {
    const item = { id: nextId++, file, url: URL.createObjectURL(file), state: "pending", row: null, mapUrl: null, selected: false };
    items.push(item);
    queue.push(item);
  }
  render();
  pump();
}

function pump() {
  while (active < CONCURRENT_UPLOADS && queue.length) {
    const item = queue.shift();
    active++;
    upload(item).finally(() => { active--; render(); pump(); });
  }
}

async function upload(item, attempt = 0) {
  const form = new FormData();
  form.append("file", item.file, item.file.name);
  let resp;
  try {
    resp = await fetch("/api/score", { method: "POST", body: form });
  } catch (e) {
    item.state = "error";
    item.row = { path: item.file.name, error: "the server did not answer" };
    return;
  }
  if (resp.status === 503 && attempt < 20) {  // the server's queue is full: wait as told, then retry
    const wait = Number(resp.headers.get("Retry-After") || "1");
    await new Promise((ok) => setTimeout(ok, 1000 * Math.max(1, wait)));
    return upload(item, attempt + 1);
  }
  let doc = null;
  try { doc = await resp.json(); } catch (e) { doc = null; }
  const row = doc && doc.results && doc.results[0];
  if (row && !row.error) {
    item.state = "done";
    item.row = row;
  } else {
    item.state = "error";
    const reason = row && row.error ? row.error : (doc && (doc.detail || doc.error)) || `HTTP ${resp.status}`;
    item.row = { path: item.file.name, score: null, raw: null, width: null, height: null, flags: [], error: String(reason) };
  }
}

// ------------------------------------------------------------------------------------------ the list
function sorted() {
  const rank = (it) => (it.state === "done" ? 0 : it.state === "pending" ? 1 : 2);
  return items.slice().sort((a, b) => rank(a) - rank(b)
    || (a.state === "done" ? b.row.score - a.row.score : 0) || a.id - b.id);
}

function render() {
  const done = items.filter((it) => it.state !== "pending").length;
  const failed = items.filter((it) => it.state === "error").length;
  $("progress").max = Math.max(1, items.length);
  $("progress").value = done;
  $("status").textContent = items.length === 0 ? "no images yet"
    : `${done} of ${items.length} scored` + (failed ? ` (${failed} failed)` : "") + (done < items.length ? "…" : "");
  $("status").dataset.done = String(done === items.length && items.length > 0);
  $("csv-btn").disabled = done === 0;
  $("clear-btn").disabled = items.length === 0 || active > 0;
  const selected = items.filter((it) => it.selected && it.state === "done");
  $("compare-btn").disabled = selected.length !== 2;

  const list = $("list");
  list.replaceChildren();
  sorted().forEach((it, i) => list.appendChild(rowElement(it, i + 1)));
}

function rowElement(it, rank) {
  const li = document.createElement("li");
  li.className = "item";
  li.dataset.state = it.state;
  li.dataset.name = it.file.name;
  li.dataset.id = String(it.id);
  const box = document.createElement("input");
  box.type = "checkbox";
  box.checked = it.selected;
  box.disabled = it.state !== "done";
  box.title = "select for side-by-side comparison";
  box.addEventListener("click", (ev) => { ev.stopPropagation(); it.selected = box.checked; render(); });
  const rankEl = document.createElement("span");
  rankEl.className = "rank";
  rankEl.textContent = it.state === "done" ? String(rank) : "";
  const img = document.createElement("img");
  img.src = it.url;
  img.alt = "";
  img.loading = "lazy";
  const text = document.createElement("div");
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = it.file.name;
  const meta = document.createElement("div");
  meta.className = "meta";
  const score = document.createElement("div");
  score.className = "score";
  if (it.state === "done") {
    li.dataset.score = String(it.row.score);
    score.textContent = it.row.score.toFixed(4);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = `${Math.round(100 * Math.max(0.02, it.row.score))}%`;
    score.appendChild(bar);
    meta.textContent = `${it.row.width}×${it.row.height} · raw ${it.row.raw.toFixed(2)}`
      + (it.row.flags.length ? ` · ${it.row.flags.join(", ")}` : "");
  } else if (it.state === "pending") {
    score.textContent = "scoring…";
    meta.textContent = `${Math.round(it.file.size / 1024)} KB`;
  } else {
    score.textContent = "error";
    meta.textContent = it.row.error;
  }
  text.append(name, meta);
  li.append(box, rankEl, img, text, score);
  if (it.state === "done") li.addEventListener("click", () => showMap(it));
  return li;
}

// ------------------------------------------------------------------------------------------ maps
async function fetchMap(it) {
  if (it.mapUrl) return it.mapUrl;
  const form = new FormData();
  form.append("file", it.file, it.file.name);
  const resp = await fetch("/api/map?format=heatmap", { method: "POST", body: form });
  if (!resp.ok) {
    let reason = `HTTP ${resp.status}`;
    try { const d = await resp.json(); reason = d.detail || d.error || reason; } catch (e) { /* keep */ }
    throw new Error(reason);
  }
  it.mapRange = [resp.headers.get("X-Map-Min"), resp.headers.get("X-Map-Max")];
  it.mapPatch = [resp.headers.get("X-Map-Patch"), resp.headers.get("X-Map-Stride")];
  it.mapUrl = URL.createObjectURL(await resp.blob());
  return it.mapUrl;
}

async function showMap(it) {
  $("compare-view").hidden = true;
  const view = $("map-view");
  view.hidden = false;
  view.dataset.loaded = "false";
  $("map-title").textContent = `${it.file.name}: score ${it.row.score.toFixed(4)}`;
  $("map-image").src = it.url;
  $("map-overlay").removeAttribute("src");
  $("map-note").textContent = "computing the quality map…";
  view.scrollIntoView({ behavior: "smooth", block: "start" });
  try {
    $("map-overlay").src = await fetchMap(it);
    $("legend-min").textContent = Number(it.mapRange[0]).toFixed(3);
    $("legend-max").textContent = Number(it.mapRange[1]).toFixed(3);
    $("map-note").textContent = `patches of ${it.mapPatch[0]} px every ${it.mapPatch[1]} px, each scored by the model`;
    view.dataset.loaded = "true";
  } catch (e) {
    $("map-note").textContent = `no map: ${e.message}`;
  }
  applyOpacity();
}

function applyOpacity() {
  $("map-overlay").style.opacity = String($("opacity").value / 100);
  document.querySelectorAll("#compare-view img.overlay").forEach((img) => {
    img.style.opacity = String($("compare-opacity").value / 100);
  });
}

async function showCompare() {
  const [a, b] = items.filter((it) => it.selected && it.state === "done");
  if (!a || !b) return;
  $("map-view").hidden = true;
  const view = $("compare-view");
  view.hidden = false;
  for (const [fig, it] of [[$("compare-a"), a], [$("compare-b"), b]]) {
    fig.querySelector("img.base").src = it.url;
    fig.querySelector("img.overlay").removeAttribute("src");
    fig.querySelector("figcaption").textContent = `${it.file.name}: ${it.row.score.toFixed(4)} (raw ${it.row.raw.toFixed(2)})`;
  }
  view.scrollIntoView({ behavior: "smooth", block: "start" });
  applyOpacity();
  for (const [fig, it] of [[$("compare-a"), a], [$("compare-b"), b]]) {
    fetchMap(it).then((url) => { fig.querySelector("img.overlay").src = url; }).catch(() => {});
  }
}

// ------------------------------------------------------------------------------------------ CSV
function csvCell(v) {
  if (v === null || v === undefined) return "";
  const s = Array.isArray(v) ? v.join(";") : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

function downloadCsv() {
  const rows = sorted().filter((it) => it.state !== "pending").map((it) => it.row);
  const text = [CSV_COLUMNS.join(",")].concat(rows.map((r) => CSV_COLUMNS.map((c) => csvCell(r[c])).join(","))).join("\n") + "\n";
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  a.download = "shamisa-scores.csv";
  document.body.appendChild(a);
  a.click();
  a.remove();
}

// ------------------------------------------------------------------------------------------ wiring
const drop = $("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (ev) => {
  ev.preventDefault();
  drop.classList.remove("over");
  if (ev.dataTransfer && ev.dataTransfer.files.length) addFiles(ev.dataTransfer.files);
});
$("file-input").addEventListener("change", (ev) => { addFiles(ev.target.files); ev.target.value = ""; });
$("opacity").addEventListener("input", applyOpacity);
$("compare-opacity").addEventListener("input", applyOpacity);
$("map-close").addEventListener("click", () => { $("map-view").hidden = true; });
$("compare-close").addEventListener("click", () => { $("compare-view").hidden = true; });
$("compare-btn").addEventListener("click", showCompare);
$("csv-btn").addEventListener("click", downloadCsv);
$("clear-btn").addEventListener("click", () => {
  for (const it of items) { URL.revokeObjectURL(it.url); if (it.mapUrl) URL.revokeObjectURL(it.mapUrl); }
  items.length = 0;
  $("map-view").hidden = true;
  $("compare-view").hidden = true;
  render();
});
render();
