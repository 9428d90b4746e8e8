// cnn-stack page: draw or drop an image, classify it over the server's REST API, show the top-k, what the
// model saw, the class activation map (when the server explains), and the server's live counters.
// Vanilla JS, no build step, nothing from the network but this server (relative URLs: works behind a prefix).
"use strict";

const $ = (id) => document.getElementById(id);
const pad = $("pad"), ctx = pad.getContext("2d");
const state = { models: [], model: "", version: "", last: null, drawn: false, timer: 0, seq: 0 };

// ------------------------------------------------------------------------------------------ helpers

async function api(path, options = {}) {
  const r = await fetch(path, options);
  let body = null;
  const type = r.headers.get("content-type") || "";
  if (type.includes("application/json")) body = await r.json();
  else body = { error: (await r.text()).slice(0, 300) };
  return { status: r.status, ok: r.ok, body };
}

function setStatus(el, text, error = false) {
  el.textContent = text;
  el.classList.toggle("error", error);
}

function modelPath(kind) {
  const m = encodeURIComponent(state.model);
  const v = state.version ? `/versions/${encodeURIComponent(state.version)}` : "";
  const k = Math.max(1, Math.min(20, parseInt($("topk").value, 10) || 5));
  return `v1/models/${m}${v}/${kind}?top_k=${k}`;
}

// ------------------------------------------------------------------------------------------ models

async function loadModels() {
  const r = await api("v1/models");
  const sel = $("model");
  sel.textContent = "";
  if (!r.ok) { setStatus($("status"), r.body.error || `HTTP ${r.status}`, true); return; }
  state.models = r.body.models || [];
  for (const m of state.models) sel.add(new Option(m.name, m.name));
  if (!state.models.length) { setStatus($("status"), "The server has no ready model.", true); return; }
  sel.value = r.body.default_model || state.models[0].name;
  pickModel();
}

function pickModel() {
  state.model = $("model").value;
  const m = state.models.find((x) => x.name === state.model);
  const vs = $("version");
  vs.textContent = "";
  vs.add(new Option("newest", ""));
  for (const v of (m ? m.versions : [])) vs.add(new Option(v, v));
  state.version = "";
  if (state.last) classify(state.last);
}

// ------------------------------------------------------------------------------------------ drawing

function clearPad() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, pad.width, pad.height);
  state.drawn = false;
  state.last = null;
}

function padPoint(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}

let stroke = null;
pad.addEventListener("pointerdown", (e) => {
  e.preventDefault();
  pad.setPointerCapture(e.pointerId);
  clearTimeout(state.timer);  // another stroke of the same digit: send once, after the last one
  if (!state.drawn) clearPad();
  stroke = { id: e.pointerId, at: padPoint(e) };
  ctx.fillStyle = "#fff";
  ctx.beginPath();
  ctx.arc(stroke.at[0], stroke.at[1], width(e) / 2, 0, 2 * Math.PI);
  ctx.fill();
  state.drawn = true;
});
pad.addEventListener("pointermove", (e) => {
  if (!stroke || e.pointerId !== stroke.id) return;
  e.preventDefault();
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  ctx.strokeStyle = "#fff";
  ctx.lineCap = ctx.lineJoin = "round";
  for (const ev of (events.length ? events : [e])) {
    const p = padPoint(ev);
    ctx.lineWidth = width(ev);
    ctx.beginPath();
    ctx.moveTo(stroke.at[0], stroke.at[1]);
    ctx.lineTo(p[0], p[1]);
    ctx.stroke();
    stroke.at = p;
  }
});
const endStroke = (e) => {
  if (!stroke || e.pointerId !== stroke.id) return;
  stroke = null;
  clearTimeout(state.timer);
  state.timer = setTimeout(sendPad, 250);  // a digit of several strokes is sent once the hand pauses
};
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function width(e) {  // pen pressure when there is one; mouse and finger report 0.5 while pressed
  const p = e.pointerType === "pen" && e.pressure > 0 ? e.pressure : 0.5;
  return pad.width * (0.075 + 0.05 * p);
}

function sendPad() {
  if (!state.drawn) return;
  pad.toBlob((blob) => classify({ blob, type: "image/png", name: "drawing.png" }), "image/png");
}

// ------------------------------------------------------------------------------------------ photos

function showPhoto(file) {
  const url = URL.createObjectURL(file);
  const img = new Image();
  img.onload = () => {
    clearPad();
    const s = Math.min(pad.width / img.width, pad.height / img.height);
    const w = img.width * s, h = img.height * s;
    ctx.drawImage(img, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
  };
  img.src = url;
  classify({ blob: file, type: file.type || "image/jpeg", name: file.name });
}

$("file").addEventListener("change", (e) => { if (e.target.files[0]) showPhoto(e.target.files[0]); e.target.value = ""; });
document.addEventListener("dragover", (e) => { e.preventDefault(); document.body.classList.add("dragging"); });
document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) document.body.classList.remove("dragging"); });
document.addEventListener("drop", (e) => {
  e.preventDefault();
  document.body.classList.remove("dragging");
  const f = [...(e.dataTransfer.files || [])].find((x) => /^image\/(png|jpeg)$/.test(x.type));
  if (f) showPhoto(f); else setStatus($("status"), "Drop a PNG or JPEG image.", true);
});

// ------------------------------------------------------------------------------------------ results

async function classify(input) {
  state.last = input;
  if (!state.model) return;
  const seq = ++state.seq;
  setStatus($("status"), "Classifying…");
  const opts = { method: "POST", headers: { "Content-Type": input.type }, body: input.blob };
  const t0 = performance.now();
  const r = await api(modelPath("classify") + "&return_input=true", opts);
  if (seq !== state.seq) return;  // a newer drawing is on its way
  if (!r.ok) { setStatus($("status"), r.body.error || `HTTP ${r.status}`, true); $("bars").textContent = ""; return; }
  const res = r.body.results[0];
  setStatus($("status"), `${r.body.model_name} v${r.body.model_version}: ${res.top_k[0].label} ` +
            `(${(100 * res.top_k[0].probability).toFixed(1)} %), ${(performance.now() - t0).toFixed(0)} ms round trip`);
  drawBars(res.top_k);
  if (res.model_input) drawInput(res.model_input);
  else setStatus($("seen-caption"), "the server did not return its model input");
  explain(input, seq);
}

function drawBars(topk) {
  const ol = $("bars");
  ol.textContent = "";
  topk.forEach((p, i) => {
    const li = document.createElement("li");
    if (i === 0) li.className = "top";
    const pct = 100 * p.probability;
    li.innerHTML = `<span class="label"></span><span class="track" role="meter" aria-valuemin="0" aria-valuemax="100">` +
                   `<span class="fill"></span></span><span class="num"></span>`;
    li.querySelector(".label").textContent = p.label;
    if (i === 0) {  // said in words too, not by colour alone
      const tag = document.createElement("span");
      tag.className = "tag";
      tag.textContent = "top";
      li.querySelector(".label").append(" ", tag);
    }
    li.querySelector(".track").setAttribute("aria-valuenow", pct.toFixed(1));
    li.querySelector(".track").setAttribute("aria-label", `${p.label}: ${pct.toFixed(1)} percent`);
    li.querySelector(".fill").style.width = `${Math.max(0.5, pct)}%`;
    li.querySelector(".num").textContent = `${pct.toFixed(1)} %`;
    ol.appendChild(li);
  });
}

function drawGray(canvas, h, w, pixel) {  // pixel(i) -> [r, g, b] in 0..255
  canvas.width = w; canvas.height = h;
  const c = canvas.getContext("2d"), img = c.createImageData(w, h);
  for (let i = 0; i < h * w; i++) {
    const [r, g, b] = pixel(i);
    img.data.set([r, g, b, 255], 4 * i);
  }
  c.putImageData(img, 0, 0);
}

function minmax(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return [lo, hi > lo ? hi - lo : 1];
}

function drawInput(mi) {  // {shape: [C, H, W], data: [...]} as the model received it (normalised floats)
  const [c, h, w] = mi.shape, d = mi.data, [lo, span] = minmax(d);
  const at = (ch, i) => Math.round(255 * (d[ch * h * w + i] - lo) / span);
  drawGray($("seen"), h, w, c === 3 ? (i) => [at(0, i), at(1, i), at(2, i)] : (i) => { const v = at(0, i); return [v, v, v]; });
  setStatus($("seen-caption"), `model input ${c}×${h}×${w} after preprocessing (min-max scaled for display)`);
}

async function explain(input, seq) {
  const opts = { method: "POST", headers: { "Content-Type": input.type }, body: input.blob };
  const r = await api(modelPath("explain"), opts);
  if (seq !== state.seq) return;
  const ov = $("overlay"), heat = $("heat");
  if (r.status === 501 || r.status === 404 && !r.body.results) {
    ov.hidden = true; heat.hidden = true;
    setStatus($("explain-status"), "This server or model does not explain its answers (HTTP " + r.status + ").");
    setStatus($("cam-caption"), "class activation map: not available");
    return;
  }
  if (!r.ok) { setStatus($("explain-status"), r.body.error || `HTTP ${r.status}`, true); return; }
  const res = r.body.results[0], hm = res.heatmaps && res.heatmaps[0];
  if (!hm) { setStatus($("explain-status"), "The server sent no heatmap."); return; }
  const [lo, span] = minmax(hm.values);
  drawGray(heat, hm.height, hm.width, (i) => { const v = Math.round(255 * (hm.values[i] - lo) / span); return [v, v, v]; });
  if (hm.overlay_png) { ov.src = "data:image/png;base64," + hm.overlay_png; ov.hidden = false; heat.hidden = true; }
  else { ov.hidden = true; heat.hidden = false; }
  setStatus($("cam-caption"), `evidence for "${hm.label}" (${r.body.method}; brighter = more)`);
  setStatus($("explain-status"), "");
}

// ------------------------------------------------------------------------------------------ live panel

async function live() {
  try {
    const r = await api("v1/stats/live");
    if (r.ok) {
      const s = r.body, ms = (x) => (x == null ? "–" : `${x.toFixed(x < 10 ? 2 : 0)} ms`);
      $("live-rps").textContent = s.requests_per_s.toFixed(1);
      $("live-p50").textContent = ms(s.latency_ms.p50);
      $("live-p99").textContent = ms(s.latency_ms.p99);
      $("live-inflight").textContent = s.in_flight;
      $("live-total").textContent = s.requests_total;
      $("live-window").textContent = s.window_s.toFixed(0);
    }
  } catch (e) { /* the server may be restarting; try again next tick */ }
}

// ------------------------------------------------------------------------------------------ wiring

$("model").addEventListener("change", pickModel);
$("version").addEventListener("change", () => { state.version = $("version").value; if (state.last) classify(state.last); });
$("topk").addEventListener("change", () => { if (state.last) classify(state.last); });
$("clear").addEventListener("click", () => { clearPad(); $("bars").textContent = ""; setStatus($("status"), "Draw something to start."); });
$("run").addEventListener("click", () => (state.last ? classify(state.last) : sendPad()));
clearPad();
loadModels();
live();
setInterval(live, 2000);
