// segany annotation tool: open an image, click/box to segment, pick a candidate, save labelled objects.
import { createDecoder, decodeOnServer } from "./decoder.js";
import { decodeRle, encodeRle } from "./rle.js";

const $ = (id) => document.getElementById(id);
const PALETTE = [
  [255, 99, 71], [46, 204, 113], [255, 193, 7], [155, 89, 182], [26, 188, 156], [241, 90, 150],
  [52, 152, 219], [230, 126, 34], [149, 165, 166], [192, 57, 43], [39, 174, 96], [142, 68, 173],
];
const CURRENT_COLOR = [79, 140, 255];

const state = {
  info: null, // server info
  decoder: null,
  image: null, // ImageBitmap
  imageId: null,
  fileName: "",
  width: 0,
  height: 0,
  points: [],
  labels: [],
  box: null,
  candidates: [], // [{mask, score, index}]
  chosen: 0,
  objects: [], // [{uid, label, color, mask, score, points, labels, box, area, source}]
  selected: null,
  hover: null, // mask of the hover preview
  proposals: null, // everything-mode masks
  undo: [],
  redo: [],
  nextUid: 1,
  decodeSeq: { click: 0, hover: 0 },
  lastMs: null,
  syncing: Promise.resolve(),
  // Zoom-in (RITM): after an object's first click, its clicks are answered on the server, on a crop
  // around the current mask. ?zoom=1 starts with it on.
  zoomIn: new URLSearchParams(location.search).get("zoom") === "1",
  zoomCrop: null, // [x0, y0, x1, y1] of the last zoomed answer
  // Edges tool: every click's answer comes from the server with its boundary fitted to the image's
  // edges (GrabCut, segany.refine). ?refine=1 starts with it on.
  refine: new URLSearchParams(location.search).get("refine") === "1",
};

const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const maskCache = new WeakMap(); // mask -> {fill canvas, edge canvas} keyed by colour

// -- helpers -------------------------------------------------------------------------------

function setStatus(text) {
  $("status").textContent = text;
}

let toastTimer = null;
function toast(text, kind = "error") {
  const el = $("toast");
  el.textContent = text;
  el.className = `toast ${kind === "info" ? "info" : ""}`;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.hidden = true), 4500);
}

function busy(text) {
  $("busy").hidden = !text;
  if (text) $("busy-text").textContent = text;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function maskArea(mask) {
  let n = 0;
  for (let i = 0; i < mask.length; i++) n += mask[i];
  return n;
}

function maskBBox(mask, w, h) {
  let x0 = w, y0 = h, x1 = -1, y1 = -1;
  for (let y = 0; y < h; y++) {
    const row = y * w;
    for (let x = 0; x < w; x++) {
      if (mask[row + x]) {
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        y1 = y;
      }
    }
  }
  return x1 < 0 ? null : [x0, y0, x1 + 1, y1 + 1];
}

/** An offscreen canvas with the mask filled (alpha) and its outline (opaque) in a colour. */
function maskLayer(mask, color, fillAlpha) {
  let perColor = maskCache.get(mask);
  if (!perColor) maskCache.set(mask, (perColor = new Map()));
  const key = `${color}|${fillAlpha}`;
  if (perColor.has(key)) return perColor.get(key);
  const { width: w, height: h } = state;
  const layer = new OffscreenCanvas(w, h);
  const data = new ImageData(w, h);
  const px = data.data;
  const [r, g, b] = color;
  const a = Math.round(fillAlpha * 255);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      if (!mask[i]) continue;
      const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 || !mask[i - 1] || !mask[i + 1] || !mask[i - w] || !mask[i + w];
      const o = i * 4;
      px[o] = edge ? 255 : r;
      px[o + 1] = edge ? 255 : g;
      px[o + 2] = edge ? 255 : b;
      px[o + 3] = edge ? 235 : a;
    }
  }
  layer.getContext("2d").putImageData(data, 0, 0);
  perColor.set(key, layer);
  return layer;
}

// -- drawing ---------------------------------------------------------------------------------

/** Fit the image in the stage (zoom 1), or re-apply the current zoom and pan. */
function fitCanvas(refit = true) {
  if (!state.image) return;
  const stage = $("stage").getBoundingClientRect();
  const fit = Math.min((stage.width - 32) / state.width, (stage.height - 32) / state.height, 4);
  if (refit || !state.zoom) {
    state.zoom = 1;
    state.pan = [(stage.width - state.width * fit) / 2, (stage.height - state.height * fit) / 2];
  }
  state.fitScale = fit;
  placeCanvas();
}

function placeCanvas() {
  const scale = state.fitScale * state.zoom;
  state.viewScale = scale;
  canvas.style.width = `${state.width * scale}px`;
  canvas.style.height = `${state.height * scale}px`;
  canvas.style.left = `${state.pan[0]}px`;
  canvas.style.top = `${state.pan[1]}px`;
  $("zoom").textContent = `${Math.round(scale * 100)}%`;
}

/** Zoom by `factor` keeping the image point under (cx, cy) (stage pixels) in place. */
function zoomAt(factor, cx, cy) {
  const old = state.fitScale * state.zoom;
  state.zoom = Math.min(Math.max(state.zoom * factor, 0.5), 32);
  const scale = state.fitScale * state.zoom;
  state.pan = [cx - ((cx - state.pan[0]) / old) * scale, cy - ((cy - state.pan[1]) / old) * scale];
  placeCanvas();
  draw();
}

function currentMask() {
  return state.candidates.length ? state.candidates[state.chosen].mask : null;
}

function draw() {
  if (!state.image) return;
  ctx.clearRect(0, 0, state.width, state.height);
  ctx.drawImage(state.image, 0, 0);
  if (!state.hideObjects) {
    state.objects.forEach((o) => {
      ctx.drawImage(maskLayer(o.mask, o.color, o.uid === state.selected ? 0.6 : 0.38), 0, 0);
    });
  }
  if (state.proposals) {
    state.proposals.forEach((p) => ctx.drawImage(maskLayer(p.mask, p.color, 0.42), 0, 0));
  }
  const mask = currentMask();
  if (mask) ctx.drawImage(maskLayer(mask, CURRENT_COLOR, 0.5), 0, 0);
  else if (state.hover) ctx.drawImage(maskLayer(state.hover, CURRENT_COLOR, 0.3), 0, 0);
  drawPrompts();
}

function drawPrompts() {
  const s = 1 / (state.viewScale || 1); // constant size on screen
  if (state.zoomCrop && state.points.length) {
    const [x0, y0, x1, y1] = state.zoomCrop;
    ctx.lineWidth = 1.5 * s;
    ctx.strokeStyle = "rgba(255, 214, 10, 0.9)";
    ctx.setLineDash([3 * s, 4 * s]);
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.setLineDash([]);
  }
  if (state.box || state.dragBox) {
    // Two tones so that the box shows on light and dark images alike.
    const [x0, y0, x1, y1] = state.dragBox || state.box;
    ctx.lineWidth = 4 * s;
    ctx.strokeStyle = "rgba(0, 0, 0, 0.75)";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.lineWidth = 2 * s;
    ctx.strokeStyle = "#fff";
    ctx.setLineDash([7 * s, 5 * s]);
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.setLineDash([]);
  }
  state.points.forEach(([x, y], i) => {
    ctx.beginPath();
    ctx.arc(x, y, 9 * s, 0, Math.PI * 2);
    ctx.fillStyle = "rgba(0, 0, 0, 0.55)";
    ctx.fill();
    ctx.beginPath();
    ctx.arc(x, y, 7 * s, 0, Math.PI * 2);
    ctx.fillStyle = state.labels[i] ? "#2ecc71" : "#ff4d5e";
    ctx.fill();
    ctx.lineWidth = 2 * s;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
    ctx.fillStyle = "#fff";
    ctx.fillRect(x - 3.5 * s, y - 1 * s, 7 * s, 2 * s);
    if (state.labels[i]) ctx.fillRect(x - 1 * s, y - 3.5 * s, 2 * s, 7 * s);
  });
}

function renderCandidates() {
  const box = $("candidates");
  box.innerHTML = "";
  if (!state.candidates.length) {
    box.innerHTML = '<div class="empty muted">Click on the image to segment an object.</div>';
    $("cand-hint").textContent = "";
  } else {
    $("cand-hint").textContent = state.candidates.length > 1 ? "keys 1–" + state.candidates.length : "";
    state.candidates.forEach((c, i) => {
      const button = document.createElement("button");
      button.className = "cand" + (i === state.chosen ? " active" : "");
      button.title = `Candidate ${i + 1}: predicted IoU ${c.score.toFixed(3)}`;
      const thumb = document.createElement("canvas");
      const tw = 160;
      const th = Math.max(1, Math.round((tw * state.height) / state.width));
      thumb.width = tw;
      thumb.height = th;
      const tctx = thumb.getContext("2d");
      tctx.drawImage(state.image, 0, 0, tw, th);
      tctx.fillStyle = "#000a";
      tctx.fillRect(0, 0, tw, th);
      tctx.drawImage(maskLayer(c.mask, CURRENT_COLOR, 0.85), 0, 0, tw, th);
      button.append(thumb);
      button.insertAdjacentHTML("beforeend", `<span class="score">${c.score.toFixed(3)}</span><kbd class="key">${i + 1}</kbd>`);
      button.onclick = () => choose(i);
      box.append(button);
    });
  }
  $("save-btn").disabled = !state.candidates.length;
  $("tool-cutout").disabled = !state.candidates.length && state.selected === null;
  $("tool-clear").disabled = !state.points.length && !state.box;
}

function renderObjects() {
  const list = $("objects");
  list.innerHTML = "";
  state.objects.forEach((o) => {
    const li = document.createElement("li");
    li.className = o.uid === state.selected ? "selected" : "";
    li.dataset.uid = o.uid;
    li.innerHTML = `<span class="swatch" style="background: rgb(${o.color.join(",")})"></span>
      <input value="" spellcheck="false" aria-label="label"><span class="meta">${o.area.toLocaleString()} px</span>
      <button class="del" title="Delete (Del)">×</button>`;
    const input = li.querySelector("input");
    input.value = o.label;
    input.onchange = () => {
      pushHistory();
      o.label = input.value.trim() || "object";
      rememberLabel(o.label);
      syncObjects();
    };
    li.onclick = (e) => {
      if (e.target.tagName === "BUTTON") return;
      state.selected = state.selected === o.uid ? null : o.uid;
      renderObjects();
      renderCandidates();
      draw();
    };
    li.querySelector(".del").onclick = () => deleteObject(o.uid);
    li.ondblclick = (e) => e.target.tagName !== "INPUT" && editObject(o.uid);
    li.title = "Click to select, double-click to edit its prompts";
    list.append(li);
  });
  $("object-count").textContent = state.objects.length;
  $("objects-empty").hidden = state.objects.length > 0;
  $("export-btn").disabled = !state.imageId;
}

function renderHistoryButtons() {
  $("tool-undo").disabled = !state.undo.length;
  $("tool-redo").disabled = !state.redo.length;
}

function rememberLabel(label) {
  const list = $("label-list");
  if ([...list.options].some((o) => o.value === label)) return;
  const option = document.createElement("option");
  option.value = label;
  list.append(option);
}

// -- history ---------------------------------------------------------------------------------

function snapshot() {
  return {
    points: state.points.map((p) => [...p]),
    labels: [...state.labels],
    box: state.box ? [...state.box] : null,
    objects: state.objects.map((o) => ({ ...o })),
    chosen: state.chosen,
  };
}

function pushHistory() {
  state.undo.push(snapshot());
  if (state.undo.length > 200) state.undo.shift();
  state.redo = [];
  renderHistoryButtons();
}

function restore(snap) {
  const objectsChanged =
    snap.objects.length !== state.objects.length || snap.objects.some((o, i) => o.uid !== state.objects[i].uid || o.label !== state.objects[i].label);
  state.points = snap.points;
  state.labels = snap.labels;
  state.box = snap.box;
  state.objects = snap.objects;
  if (!state.objects.some((o) => o.uid === state.selected)) state.selected = null;
  renderObjects();
  if (objectsChanged) syncObjects();
  decodePrompt(snap.chosen);
}

function undo() {
  if (!state.undo.length) return;
  state.redo.push(snapshot());
  restore(state.undo.pop());
  renderHistoryButtons();
  setStatus("Undone.");
}

function redo() {
  if (!state.redo.length) return;
  state.undo.push(snapshot());
  restore(state.redo.pop());
  renderHistoryButtons();
  setStatus("Redone.");
}

// -- decoding --------------------------------------------------------------------------------

/** Decode a prompt; null when a newer prompt of the same kind (click or hover) overtook it. */
async function runDecode(prompt, kind = "click") {
  const seq = ++state.decodeSeq[kind];
  const t0 = performance.now();
  const onServer = prompt.zoomIn || prompt.refine;
  const result = onServer ? await decodeOnServer(state.imageId, prompt) : await state.decoder.decode(prompt);
  void result.masks[0]?.mask; // the upsampled mask is part of the cost of a click
  state.lastMs = performance.now() - t0;
  $("latency").textContent = `decode ${state.lastMs.toFixed(1)} ms`;
  return seq === state.decodeSeq[kind] ? result : null;
}

async function decodePrompt(chosen = 0) {
  state.hover = null;
  if (!state.points.length && !state.box) {
    state.candidates = [];
    state.zoomCrop = null;
    state.chosen = 0;
    renderCandidates();
    draw();
    return;
  }
  try {
    // Zoom-in starts at an object's second click (the first is answered on the whole image).
    const zoomIn = state.zoomIn && state.points.length > 1;
    const prompt = { points: state.points, labels: state.labels, box: state.box, zoomIn, refine: state.refine };
    const result = await runDecode(prompt);
    if (!result) return;
    state.zoomCrop = zoomIn ? result.zoomCrop : null;
    state.candidates = result.masks;
    state.chosen = Math.min(chosen, result.masks.length - 1);
    draw();
    renderCandidates();
    document.body.dataset.masks = String(++state.drawn || (state.drawn = 1));
  } catch (e) {
    toast(`Segmentation failed: ${e.message}`);
  }
}

let hoverPending = null;
let hoverBusy = false;
async function hoverPreview(x, y) {
  if (state.points.length || state.box || state.proposals || !state.decoder || document.body.dataset.state !== "ready") return;
  hoverPending = [x, y];
  if (hoverBusy) return;
  hoverBusy = true;
  try {
    while (hoverPending && !state.points.length && !state.box) {
      const [hx, hy] = hoverPending;
      hoverPending = null;
      const result = await runDecode({ points: [[hx, hy]], labels: [1], box: null }, "hover");
      if (result && !state.points.length && !state.box) {
        state.hover = result.masks[0].mask;
        draw();
      }
      if (state.decoder.name === "server") await new Promise((r) => setTimeout(r, 120));
    }
  } catch (e) {
    console.warn("hover preview failed", e);
  } finally {
    hoverBusy = false;
  }
}

function choose(i) {
  if (i < 0 || i >= state.candidates.length) return;
  state.chosen = i;
  renderCandidates();
  draw();
}

/** Show a tool button (Zoom, Edges) as pressed or not. */
function renderToggle(id, on) {
  $(id).setAttribute("aria-pressed", String(on));
  $(id).classList.toggle("active", on);
}

function toggleZoomIn() {
  state.zoomIn = !state.zoomIn;
  renderToggle("tool-zoomin", state.zoomIn);
  setStatus(state.zoomIn ? "Zoom-in on: clicks after an object's first are answered on a crop around it (Z to turn off)." : "Zoom-in off.");
  if (state.points.length > 1) decodePrompt(state.chosen);
  else draw();
}

function toggleRefine() {
  state.refine = !state.refine;
  renderToggle("tool-refine", state.refine);
  setStatus(state.refine ? "Edges on: each answer's boundary is fitted to the image's edges on the server (R to turn off)." : "Edges off.");
  if (state.points.length || state.box) decodePrompt(state.chosen);
  else draw();
}

// -- objects ---------------------------------------------------------------------------------

function saveObject() {
  const mask = currentMask();
  if (!mask) return;
  pushHistory();
  const label = $("label-input").value.trim() || "object";
  rememberLabel(label);
  const uid = state.nextUid++;
  state.objects.push({
    uid,
    label,
    color: PALETTE[(uid - 1) % PALETTE.length],
    mask,
    score: state.candidates[state.chosen].score,
    points: state.points.map((p) => [...p]),
    labels: [...state.labels],
    box: state.box,
    area: maskArea(mask),
    source: state.box ? "box" : "click",
  });
  state.points = [];
  state.labels = [];
  state.box = null;
  state.candidates = [];
  renderObjects();
  renderCandidates();
  draw();
  syncObjects();
  setStatus(`Saved “${label}” (${state.objects.length} objects).`);
}

function deleteObject(uid) {
  const index = state.objects.findIndex((o) => o.uid === uid);
  if (index < 0) return;
  pushHistory();
  state.objects.splice(index, 1);
  if (state.selected === uid) state.selected = null;
  renderObjects();
  renderCandidates();
  draw();
  syncObjects();
}

/** Take a saved object back into the current prompt (its points and box), to refine and re-save. */
function editObject(uid) {
  const index = state.objects.findIndex((o) => o.uid === uid);
  if (index < 0) return;
  const o = state.objects[index];
  if (!o.points.length && !o.box) return toast("This object has no prompts to edit (automatic mask).", "info");
  pushHistory();
  state.objects.splice(index, 1);
  state.selected = null;
  state.points = o.points.map((p) => [...p]);
  state.labels = [...o.labels];
  state.box = o.box ? [...o.box] : null;
  $("label-input").value = o.label;
  renderObjects();
  syncObjects();
  decodePrompt();
  setStatus(`Editing “${o.label}”: add points, then Enter to save it again.`);
}

/** The server holds the saved objects (for export); send the whole list after each change. */
function syncObjects() {
  const imageId = state.imageId;
  const body = state.objects.map((o) => ({
    label: o.label,
    segmentation: encodeRle(o.mask, state.height, state.width),
    score: o.score ?? null,
    stability_score: o.stability ?? null,
    point_coords: o.points,
    point_labels: o.labels,
    box: o.box,
    source: o.source,
  }));
  state.syncing = state.syncing
    .then(() => api(`/api/images/${imageId}/annotations`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) }))
    .then(() => (document.body.dataset.synced = String(body.length)))
    .catch((e) => toast(`Could not save objects on the server: ${e.message}`));
  return state.syncing;
}

function cutout() {
  let mask = currentMask();
  let name = $("label-input").value.trim() || "object";
  if (!mask && state.selected !== null) {
    const o = state.objects.find((x) => x.uid === state.selected);
    mask = o.mask;
    name = o.label;
  }
  if (!mask) return toast("Nothing to cut out: segment or select an object first.", "info");
  const bbox = maskBBox(mask, state.width, state.height);
  if (!bbox) return toast("The mask is empty.", "info");
  const [x0, y0, x1, y1] = bbox;
  const full = new OffscreenCanvas(state.width, state.height);
  const fctx = full.getContext("2d");
  fctx.drawImage(state.image, 0, 0);
  const data = fctx.getImageData(0, 0, state.width, state.height);
  for (let i = 0; i < mask.length; i++) if (!mask[i]) data.data[i * 4 + 3] = 0;
  fctx.putImageData(data, 0, 0);
  const out = document.createElement("canvas");
  out.width = x1 - x0;
  out.height = y1 - y0;
  out.getContext("2d").drawImage(full, x0, y0, out.width, out.height, 0, 0, out.width, out.height);
  out.toBlob((blob) => download(blob, `${stem(state.fileName)}_${name.replace(/[^\w.-]+/g, "_")}.png`), "image/png");
  setStatus(`Cut-out ${out.width}×${out.height} px saved.`);
}

function stem(name) {
  return name.replace(/\.[^.]+$/, "") || "image";
}

function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 5000);
}

async function exportAs(format) {
  $("export-menu").hidden = true;
  if (!state.imageId) return;
  await state.syncing;
  const response = await fetch(`/api/images/${state.imageId}/export?format=${format}`);
  if (!response.ok) return toast(`Export failed: ${(await response.json()).error}`);
  const ext = format === "png" ? "png" : "json";
  download(await response.blob(), `${stem(state.fileName)}_${format === "png" ? "objects" : format}.${ext}`);
  setStatus(`Exported ${state.objects.length} objects as ${format.toUpperCase()}.`);
}

// -- everything mode -------------------------------------------------------------------------

async function everything() {
  if (!state.imageId || state.proposals) return;
  $("auto-card").hidden = false;
  $("auto-progress").style.width = "0%";
  $("auto-status").textContent = "Starting…";
  $("auto-add-all").disabled = true;
  $("tool-everything").classList.add("active");
  try {
    const job = await api(`/api/images/${state.imageId}/everything`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: "{}",
    });
    let status = job;
    while (status.status === "queued" || status.status === "running") {
      await new Promise((r) => setTimeout(r, 400));
      status = await api(`/api/jobs/${job.job_id}`);
      $("auto-progress").style.width = `${Math.round(status.progress * 100)}%`;
      const what = status.progress > 0 ? `${Math.round(status.progress * 100)}%` : "encoding";
      $("auto-status").textContent = `${status.status} · ${what} · ${status.seconds.toFixed(1)} s`;
    }
    if (status.status !== "done") throw new Error(status.error || status.status);
    const result = await api(`/api/jobs/${job.job_id}/result`);
    state.proposals = result.annotations
      .map((a, i) => ({ ...a, mask: decodeRle(a.segmentation), color: PALETTE[i % PALETTE.length] }))
      .sort((a, b) => b.area - a.area);
    $("auto-progress").style.width = "100%";
    $("auto-count").textContent = state.proposals.length;
    $("auto-status").textContent = `${state.proposals.length} masks in ${status.seconds.toFixed(1)} s`;
    $("auto-add-all").disabled = !state.proposals.length;
    draw();
  } catch (e) {
    toast(`Everything mode failed: ${e.message}`);
    closeEverything();
  }
}

function keepProposals(list) {
  if (!list.length) return;
  pushHistory();
  for (const p of list) {
    const uid = state.nextUid++;
    state.objects.push({
      uid, label: $("label-input").value.trim() || "object", color: PALETTE[(uid - 1) % PALETTE.length], mask: p.mask,
      score: p.predicted_iou, stability: p.stability_score, points: p.point_coords || [], labels: [], box: null, area: maskArea(p.mask), source: "auto",
    });
  }
  const kept = new Set(list);
  state.proposals = state.proposals.filter((p) => !kept.has(p));
  $("auto-count").textContent = state.proposals.length;
  $("auto-add-all").disabled = !state.proposals.length;
  renderObjects();
  draw();
  syncObjects();
}

function closeEverything() {
  state.proposals = null;
  $("auto-card").hidden = true;
  $("tool-everything").classList.remove("active");
  draw();
}

// -- images ----------------------------------------------------------------------------------

// What the page draws: the file itself when the browser can show it as the model sees it;
// otherwise (TIFF, 16-bit or float images, or a file this browser cannot decode) the server's
// 8-bit rendering.
async function displayBitmap(file, info) {
  if (info.view.endsWith("/file")) {
    try {
      return await createImageBitmap(file, { imageOrientation: "from-image" });
    } catch (e) {
      console.info(`decoding ${file.name} in the browser failed (${e}); using the server's rendering`);
    }
  }
  const response = await fetch(`/api/images/${info.image_id}/view.png`);
  if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
  return createImageBitmap(await response.blob());
}

async function openFile(file) {
  if (!file) return;
  if (!state.info.limits.content_types.includes(file.type)) {
    return toast(`Cannot open ${file.name}: ${file.type || "unknown type"} (use JPEG, PNG, WebP, BMP or TIFF).`);
  }
  document.body.dataset.state = "loading";
  busy("Uploading…");
  try {
    const form = new FormData();
    form.append("file", file, file.name);
    const info = await api("/api/images", { method: "POST", body: form });
    const bitmap = await displayBitmap(file, info);
    if (bitmap.width !== info.width || bitmap.height !== info.height) {
      throw new Error(`browser decoded ${bitmap.width}×${bitmap.height}, server ${info.width}×${info.height}`);
    }
    closeEverything();
    Object.assign(state, {
      image: bitmap, imageId: info.image_id, fileName: info.file_name, width: info.width, height: info.height,
      points: [], labels: [], box: null, candidates: [], objects: [], selected: null, hover: null, undo: [], redo: [],
    });
    canvas.width = info.width;
    canvas.height = info.height;
    canvas.hidden = false;
    fitCanvas();
    draw();
    $("image-name").textContent = `${info.file_name} · ${info.width}×${info.height}`;
    renderObjects();
    renderCandidates();
    renderHistoryButtons();
    busy("Encoding image…");
    setStatus("Encoding image on the server…");
    const t0 = performance.now();
    await state.decoder.setImage(info.image_id, { ...info, img_size: state.info.img_size });
    busy(null);
    document.body.dataset.state = "ready";
    document.body.dataset.imageId = info.image_id;
    $("tool-everything").disabled = false;
    setStatus(`Ready: ${((performance.now() - t0) / 1000).toFixed(1)} s to encode. Hover to preview, click to segment.`);
  } catch (e) {
    busy(null);
    document.body.dataset.state = state.imageId ? "ready" : "empty";
    toast(`Could not open ${file.name}: ${e.message}`);
    setStatus("Open failed.");
  }
}

// -- input -----------------------------------------------------------------------------------

function imageXY(e) {
  const rect = canvas.getBoundingClientRect();
  const x = ((e.clientX - rect.left) / rect.width) * state.width;
  const y = ((e.clientY - rect.top) / rect.height) * state.height;
  return [Math.min(Math.max(x, 0), state.width - 1), Math.min(Math.max(y, 0), state.height - 1)];
}

let press = null;
canvas.addEventListener("contextmenu", (e) => e.preventDefault());
let spaceDown = false;
let panning = null;
$("stage").addEventListener("mousedown", (e) => {
  if (!state.image || !(e.button === 1 || (e.button === 0 && spaceDown))) return;
  e.preventDefault();
  panning = { x: e.clientX, y: e.clientY, pan: [...state.pan] };
  $("stage").classList.add("panning");
});
$("stage").addEventListener(
  "wheel",
  (e) => {
    if (!state.image) return;
    e.preventDefault();
    const rect = $("stage").getBoundingClientRect();
    zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - rect.left, e.clientY - rect.top);
  },
  { passive: false },
);
canvas.addEventListener("mousedown", (e) => {
  if (document.body.dataset.state !== "ready" || panning || e.button === 1) return;
  press = { x: e.clientX, y: e.clientY, start: imageXY(e), button: e.button, shift: e.shiftKey };
});
window.addEventListener("mousemove", (e) => {
  if (!state.image) return;
  if (panning) {
    state.pan = [panning.pan[0] + e.clientX - panning.x, panning.pan[1] + e.clientY - panning.y];
    placeCanvas();
    return;
  }
  if (press && press.button === 0 && Math.hypot(e.clientX - press.x, e.clientY - press.y) > 5) {
    const [x, y] = imageXY(e);
    const [sx, sy] = press.start;
    state.dragBox = [Math.min(sx, x), Math.min(sy, y), Math.max(sx, x), Math.max(sy, y)];
    draw();
    return;
  }
  if (e.target !== canvas) return;
  const [x, y] = imageXY(e);
  $("cursor").textContent = `x ${Math.round(x)}  y ${Math.round(y)}`;
  hoverPreview(x, y);
});
window.addEventListener("mouseup", (e) => {
  if (panning) {
    panning = null;
    $("stage").classList.remove("panning");
    return;
  }
  if (!press) return;
  const p = press;
  press = null;
  if (state.dragBox) {
    pushHistory();
    state.box = state.dragBox;
    state.dragBox = null;
    decodePrompt();
    return;
  }
  if (e.target !== canvas) return;
  const [x, y] = imageXY(e);
  if (state.proposals) {
    // Everything mode: keep the smallest proposal under the cursor.
    const i = Math.round(y) * state.width + Math.round(x);
    const hit = [...state.proposals].reverse().find((q) => q.mask[i]);
    if (hit) keepProposals([hit]);
    return;
  }
  pushHistory();
  state.points.push([x, y]);
  state.labels.push(p.button === 2 || p.shift ? 0 : 1);
  decodePrompt();
});
canvas.addEventListener("mouseleave", () => {
  hoverPending = null;
  if (state.hover) {
    state.hover = null;
    draw();
  }
});

function clearPrompts() {
  if (!state.points.length && !state.box) return;
  pushHistory();
  state.points = [];
  state.labels = [];
  state.box = null;
  decodePrompt();
}

document.addEventListener("keydown", (e) => {
  const typing = e.target.tagName === "INPUT";
  if (e.key === " " && !typing) {
    e.preventDefault();
    spaceDown = true;
    $("stage").classList.add("can-pan");
    return;
  }
  if (typing) {
    if (e.key === "Enter") {
      e.target.blur();
      if (e.target.id === "label-input") saveObject();
    } else if (e.key === "Escape") e.target.blur();
    return;
  }
  const mod = e.ctrlKey || e.metaKey;
  if (mod && e.key.toLowerCase() === "z") {
    e.preventDefault();
    e.shiftKey ? redo() : undo();
  } else if (mod && e.key.toLowerCase() === "y") {
    e.preventDefault();
    redo();
  } else if (mod) {
    return;
  } else if (e.key === "Enter" || e.key === "s" || e.key === "S") {
    e.preventDefault();
    saveObject();
  } else if (e.key === "Escape") {
    if (!$("help").hidden) $("help").hidden = true;
    else if (state.proposals) closeEverything();
    else clearPrompts();
  } else if (/^[1-4]$/.test(e.key)) {
    choose(Number(e.key) - 1);
  } else if (e.key === "e" || e.key === "E") {
    everything();
  } else if (e.key === "x" || e.key === "X") {
    cutout();
  } else if (e.key === "l" || e.key === "L") {
    e.preventDefault();
    $("label-input").select();
  } else if ((e.key === "Delete" || e.key === "Backspace") && state.selected !== null) {
    deleteObject(state.selected);
  } else if (e.key === "o" || e.key === "O") {
    $("file-input").click();
  } else if (e.key === "z" || e.key === "Z") {
    toggleZoomIn();
  } else if (e.key === "r" || e.key === "R") {
    toggleRefine();
  } else if (e.key === "v" || e.key === "V") {
    state.hideObjects = !state.hideObjects;
    setStatus(state.hideObjects ? "Saved objects hidden (V to show)." : "Saved objects shown.");
    draw();
  } else if (e.key === "f" || e.key === "F" || e.key === "0") {
    fitCanvas(true);
    draw();
  } else if (e.key === "+" || e.key === "=" || e.key === "-") {
    const rect = $("stage").getBoundingClientRect();
    zoomAt(e.key === "-" ? 1 / 1.25 : 1.25, rect.width / 2, rect.height / 2);
  } else if (e.key === "Tab" && state.candidates.length > 1) {
    e.preventDefault();
    choose((state.chosen + (e.shiftKey ? state.candidates.length - 1 : 1)) % state.candidates.length);
  } else if (e.key === "?" || e.key === "h" || e.key === "H") {
    $("help").hidden = !$("help").hidden;
  }
});

document.addEventListener("keyup", (e) => {
  if (e.key === " ") {
    spaceDown = false;
    $("stage").classList.remove("can-pan");
  }
});

$("open-btn").onclick = () => $("file-input").click();
$("file-input").onchange = (e) => {
  openFile(e.target.files[0]);
  e.target.value = "";
};
$("save-btn").onclick = saveObject;
$("tool-undo").onclick = undo;
$("tool-redo").onclick = redo;
$("tool-clear").onclick = clearPrompts;
$("tool-cutout").onclick = cutout;
$("tool-zoomin").onclick = toggleZoomIn;
$("tool-refine").onclick = toggleRefine;
$("tool-everything").onclick = () => (state.proposals ? closeEverything() : everything());
$("auto-add-all").onclick = () => keepProposals([...state.proposals]);
$("auto-close").onclick = closeEverything;
$("help-btn").onclick = () => ($("help").hidden = false);
$("help-close").onclick = () => ($("help").hidden = true);
$("export-btn").onclick = () => ($("export-menu").hidden = !$("export-menu").hidden);
document.querySelectorAll("#export-menu button").forEach((b) => (b.onclick = () => exportAs(b.dataset.format)));
document.addEventListener("click", (e) => {
  if (!e.target.closest(".menu")) $("export-menu").hidden = true;
});
window.addEventListener("resize", () => {
  fitCanvas(false);
  draw();
});
const stageEl = $("stage");
stageEl.addEventListener("dragover", (e) => {
  e.preventDefault();
  $("dropzone").classList.add("over");
});
stageEl.addEventListener("dragleave", () => $("dropzone").classList.remove("over"));
stageEl.addEventListener("drop", (e) => {
  e.preventDefault();
  $("dropzone").classList.remove("over");
  openFile(e.dataTransfer.files[0]);
});
window.addEventListener("paste", (e) => {
  const file = [...(e.clipboardData?.files || [])][0];
  if (file) openFile(file);
});

// -- start -----------------------------------------------------------------------------------

async function start() {
  try {
    state.info = await api("/api/info");
  } catch (e) {
    toast(`Server unreachable: ${e.message}`);
    return;
  }
  state.decoder = await createDecoder(state.info.wasm_assets);
  const pill = $("backend");
  pill.textContent = `decoder: ${state.decoder.name}`;
  pill.className = `pill ${state.decoder.name === "server" ? "warn" : "ok"}`;
  pill.title = state.decoder.reason ? `Decoding on the server: ${state.decoder.reason}` : "Clicks are decoded in this browser";
  document.body.dataset.decoder = state.decoder.name === "server" ? "server" : "wasm";
  renderToggle("tool-zoomin", state.zoomIn);
  renderToggle("tool-refine", state.refine);
  setStatus(`Model ${state.info.model} on ${state.info.device}. Open an image to start.`);
}

// Hooks for tests and benchmarks.
window.segany = {
  state,
  render() {
    draw();
    renderCandidates();
    renderObjects();
  },
  currentMask: () => {
    const m = currentMask();
    return m ? Array.from(m) : null;
  },
  /** Decode n clicks at random positions; returns per-click latencies in ms. */
  async benchDecode(n = 50, seed = 1) {
    let s = seed;
    const rand = () => ((s = (s * 16807) % 2147483647) / 2147483647);
    const total = [];
    const run = [];
    for (let i = 0; i < n; i++) {
      const prompt = { points: [[rand() * state.width, rand() * state.height]], labels: [1], box: null };
      const t0 = performance.now();
      const result = await state.decoder.decode(prompt);
      void result.masks[0].mask; // what a click needs before it can paint
      total.push(performance.now() - t0);
      run.push(state.decoder.lastRunMs ?? null);
    }
    return { total, run };
  },
};

start();
