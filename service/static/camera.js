// The demo page's camera mode: fingerspell to the webcam and watch the letters become text.
//
// Frames are read from the camera into a canvas and classified one at a time, in one of three
// ways (the page says which runs):
//   server  each frame as a JPEG to POST /predict; at most one request in flight and at most
//           MAX_FPS a second: a frame that comes while a request runs is dropped, never queued;
//           the server crops the hand or finds its landmarks as the model's contract says.
//   device  the browser runs the server's own files (device.js, LiteRT.js); nothing is sent.
//   both    the same frame both ways; where both found a hand, whether they agree.
// The letter shown is the top class of the scores smoothed over frames; a letter held steady
// (the same top class, over the minimum confidence, for the hold time) is appended to the text.
// Nothing leaves the browser unless a mode that sends frames runs.
// Element ids and data-* attributes are stable: tests/service/test_demo_camera.py drives them.
"use strict";
import * as hp from "./handpipe.js";
import { DeviceRunner, contractOf, needsHands } from "./device.js";

// The cap on frames a second, in every mode (one frame in flight at most): enough to read a
// letter, and it leaves the CPU to the rest of the page; ?camera_fps=N changes it (benchmarks).
const MAX_FPS = Number(new URLSearchParams(location.search).get("camera_fps")) || 15;
const SMOOTHING = 0.5;       // weight of the newest frame in the running mean of the scores
const JPEG_QUALITY = 0.92;   // the frames sent: about 40 kB at 640×480
const CONNECTIONS = [[0, 1], [1, 2], [2, 3], [3, 4], [0, 5], [5, 6], [6, 7], [7, 8], [5, 9], [9, 10], [10, 11],
  [11, 12], [9, 13], [13, 14], [14, 15], [15, 16], [13, 17], [17, 18], [18, 19], [19, 20], [0, 17]];

const root = location.pathname.replace(/\/demo(\/[^/]*)?$/, "/").replace(/[^/]*$/, "");
const $ = (id) => document.getElementById(id);
const panel = $("camera-panel"), video = $("camera-video"), view = $("camera-view"), vctx = view.getContext("2d");
const preview = $("camera-input"), pctx = preview.getContext("2d");
const modeSelect = $("camera-mode"), messageEl = $("camera-message");
const letterEl = $("camera-letter"), confEl = $("camera-confidence"), textEl = $("camera-text");
const latencyEl = $("camera-latency"), rateEl = $("camera-rate"), agreeEl = $("camera-agreement"), runningEl = $("camera-running");
const frame = document.createElement("canvas"), fctx = frame.getContext("2d", { willReadFrequently: true });

let stream = null, running = false, models = [], device = null, deviceKey = "", deviceLoading = null;
let overlay = null;              // {hand, cropBox, scale} of the last frame, drawn over the picture
let smoothed = null;             // running mean of the scores, by class index
let hold = { label: null, since: 0, appended: false };
const counts = { server: 0, device: 0, both: 0, agree: 0, noHand: 0 };
const stamps = [];               // finish times of the last frames, for the frame rate
const timings = [];              // frame-to-letter milliseconds of the last 1000 frames (benchmarks)

// ------------------------------------------------------------------------------ messages
function say(text, kind) {
  messageEl.textContent = text || "";
  messageEl.dataset.kind = kind || "";
  messageEl.hidden = !text;
}

function cameraRefusal(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return ["no_permission", "The camera was not allowed. Allow it for this site (the camera icon in the address bar) and press Start camera again."];
  }
  if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") {
    return ["no_camera", "No camera was found. Connect one, or use Upload or Draw above."];
  }
  if (name === "NotReadableError" || name === "TrackStartError") {
    return ["camera_busy", "The camera is in use by another application, or the system refused it."];
  }
  return ["no_camera", "The camera could not start: " + ((err && err.message) || err)];
}

// ------------------------------------------------------------------------------ models
async function loadModels() {
  const resp = await fetch(root + "models", { headers: { Accept: "application/json" } });
  const body = await resp.json();
  models = Array.isArray(body) ? body : (body.models || []);
}

function currentModel() {
  const name = $("model-select").value;
  const model = models.find((m) => m.name === name);
  const version = $("version-select").value;
  if (model && version && String(model.version) !== version) {
    return null; // device mode runs the served version; another version is for upload and draw
  }
  return model;
}

async function deviceFor(model) {
  const key = model.name + "/" + model.version;
  if (device && deviceKey === key) return device;
  if (deviceLoading && deviceLoading.key === key) return deviceLoading.promise;
  const promise = DeviceRunner.create(root, model);
  deviceLoading = { key, promise };
  try {
    device = await promise;
    deviceKey = key;
    panel.dataset.deviceFiles = device.files.concat(device.handFiles || []).join(" ");
    return device;
  } finally {
    deviceLoading = null;
  }
}

// ------------------------------------------------------------------------------ server
async function serverClassify(blob, model) {
  const form = new FormData();
  form.append("file", blob, "frame.jpg");
  form.append("model", model.name);
  form.append("version", String(model.version));
  form.append("top_k", String(model.labels.length)); // every score, for the smoothing
  const resp = await fetch(root + "predict", { method: "POST", body: form, headers: { Accept: "application/json" } });
  let body = null;
  try { body = await resp.json(); } catch (_) { /* not JSON */ }
  if (resp.ok) {
    const scores = new Float32Array(model.labels.length);
    for (const p of body.predictions) scores[p.index] = p.score;
    return { scores };
  }
  const code = body && body.error && body.error.code;
  if (code === "no_hand") return { noHand: true };
  const message = (body && body.error && (body.error.message || body.error)) || resp.statusText;
  throw Object.assign(new Error(message), { code: code || "http_" + resp.status, status: resp.status });
}

/** A hand found here, sent as its landmarks (a few hundred bytes, no picture) to the Open
 * Inference Protocol: the path of a phone app (docs/mobile.md), for hand-feature models. */
async function landmarksClassify(found, model) {
  if (found.noHand) return { noHand: true };
  const inputs = Object.entries(found.tensors).map(([name, [shape, data]]) => ({ name, shape, datatype: "FP32", data }));
  const url = root + "v2/models/" + encodeURIComponent(model.name) + "/versions/" + model.version + "/infer";
  const resp = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify({ inputs, outputs: [{ name: "probabilities" }] }),
  });
  let body = null;
  try { body = await resp.json(); } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    const message = (body && (body.error && (body.error.message || body.error))) || resp.statusText;
    throw Object.assign(new Error(message), { code: "http_" + resp.status, status: resp.status });
  }
  const out = body.outputs.find((o) => o.name === "probabilities") || body.outputs[0];
  return { scores: Float32Array.from(out.data) };
}

function jpeg() {
  return new Promise((resolve) => frame.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
}

// ------------------------------------------------------------------------------ results
function argmax(scores) {
  let best = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i] > scores[best]) best = i;
  return best;
}

function append(label) {
  const lower = String(label).toLowerCase();
  if (lower === "space") textEl.textContent += " ";
  else if (lower === "del" || lower === "delete") textEl.textContent = textEl.textContent.slice(0, -1);
  else if (lower !== "nothing") textEl.textContent += String(label);
  textEl.dataset.text = textEl.textContent;
}

function showResult(model, result, started) {
  const now = performance.now();
  latencyEl.textContent = Math.round(now - started) + " ms";
  latencyEl.dataset.ms = String(Math.round(now - started));
  timings.push(now - started);
  if (timings.length > 1000) timings.shift();
  stamps.push(now);
  while (stamps.length && now - stamps[0] > 2000) stamps.shift();
  const rate = stamps.length > 1 ? (stamps.length - 1) / ((stamps[stamps.length - 1] - stamps[0]) / 1000) : 0;
  rateEl.textContent = rate.toFixed(1) + " frames/s";
  rateEl.dataset.fps = rate.toFixed(2);
  if (!result || result.noHand) {
    counts.noHand += 1;
    smoothed = null;
    hold = { label: null, since: 0, appended: false };
    letterEl.textContent = "–";
    letterEl.dataset.label = "";
    confEl.textContent = "";
    say("No hand in view: hold your hand up, inside the picture.", "no_hand");
    return;
  }
  if (messageEl.dataset.kind === "no_hand" || messageEl.dataset.kind === "server") say("");
  const scores = result.scores;
  if (!smoothed || smoothed.length !== scores.length) smoothed = Float32Array.from(scores);
  else for (let i = 0; i < scores.length; i++) smoothed[i] = SMOOTHING * scores[i] + (1 - SMOOTHING) * smoothed[i];
  const best = argmax(smoothed), label = model.labels[best], conf = smoothed[best];
  letterEl.textContent = label;
  letterEl.dataset.label = label;
  letterEl.dataset.raw = model.labels[argmax(scores)];
  confEl.textContent = (conf * 100).toFixed(0) + "%";
  confEl.dataset.score = conf.toFixed(4);
  const holdMs = Number($("camera-hold").value) || 800;
  const minConf = (Number($("camera-min-confidence").value) || 0) / 100;
  if (conf < minConf) { hold = { label: null, since: 0, appended: false }; return; }
  if (label !== hold.label) { hold = { label, since: now, appended: false }; return; }
  if (!hold.appended && now - hold.since >= holdMs) { append(label); hold.appended = true; }
}

function showAgreement(model, server, local) {
  if (!server || !local) return;
  if (server.noHand || local.noHand) {
    agreeEl.dataset.last = server.noHand && local.noHand ? "both_no_hand" : "one_no_hand";
  } else {
    counts.both += 1;
    const a = model.labels[argmax(server.scores)], b = model.labels[argmax(local.scores)];
    if (a === b) counts.agree += 1;
    agreeEl.dataset.last = a === b ? "agree" : "disagree";
    agreeEl.dataset.lastServer = a;
    agreeEl.dataset.lastDevice = b;
  }
  agreeEl.dataset.both = String(counts.both);
  agreeEl.dataset.agree = String(counts.agree);
  agreeEl.textContent = counts.both
    ? "Server and device agree on " + counts.agree + " of " + counts.both + " frames (" + (100 * counts.agree / counts.both).toFixed(1) + "%)"
      + (agreeEl.dataset.last === "disagree" ? "; this frame: server " + agreeEl.dataset.lastServer + ", device " + agreeEl.dataset.lastDevice : "")
    : "";
}

function drawPreview(pixels) {
  if (!pixels) { pctx.clearRect(0, 0, preview.width, preview.height); preview.dataset.shown = ""; return; }
  const { width, height, channels, data } = pixels, rgba = new ImageData(width, height);
  for (let i = 0; i < width * height; i++) {
    for (let c = 0; c < 3; c++) rgba.data[i * 4 + c] = data[i * channels + (channels === 1 ? 0 : c)];
    rgba.data[i * 4 + 3] = 255;
  }
  const tmp = document.createElement("canvas");
  tmp.width = width; tmp.height = height;
  tmp.getContext("2d").putImageData(rgba, 0, 0);
  pctx.imageSmoothingEnabled = false;
  pctx.clearRect(0, 0, preview.width, preview.height);
  pctx.drawImage(tmp, 0, 0, preview.width, preview.height);
  preview.dataset.shown = width + "x" + height;
}

/** A hand-feature head receives the hand's landmarks, not pixels: they are drawn, the hand
 * fitted into the square (white bones, red joints on black), where this page found the hand. */
function drawHandPreview(hand) {
  if (!hand) { drawPreview(null); return; }
  const pts = hand.landmarks, [l, t, r, b] = hand.box;
  const side = Math.max(r - l, b - t) * 1.15 || 1, size = preview.width;
  const cx = (l + r) / 2, cy = (t + b) / 2, k = size / side;
  const at = ([x, y]) => [(x - cx) * k + size / 2, (y - cy) * k + size / 2];
  pctx.fillStyle = "#000";
  pctx.fillRect(0, 0, size, preview.height);
  pctx.strokeStyle = "#fff"; pctx.lineWidth = 2;
  for (const [i, j] of CONNECTIONS) {
    const [x0, y0] = at(pts[i]), [x1, y1] = at(pts[j]);
    pctx.beginPath(); pctx.moveTo(x0, y0); pctx.lineTo(x1, y1); pctx.stroke();
  }
  pctx.fillStyle = "#ef4444";
  for (const p of pts) { const [x, y] = at(p); pctx.beginPath(); pctx.arc(x, y, 2.5, 0, 2 * Math.PI); pctx.fill(); }
  preview.dataset.shown = "landmarks";
}

// ------------------------------------------------------------------------------ drawing
function paint() {
  if (!stream) return;
  if (video.videoWidth) {
    if (view.width !== video.videoWidth) { view.width = video.videoWidth; view.height = video.videoHeight; }
    vctx.drawImage(video, 0, 0);
    const o = overlay;
    if (o && o.cropBox) {
      const s = o.scale, [x0, y0, x1, y1] = o.cropBox;
      vctx.strokeStyle = "#f5b400"; vctx.lineWidth = 3; vctx.setLineDash([8, 6]);
      vctx.strokeRect(x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s);
      vctx.setLineDash([]);
    }
    if (o && o.hand) {
      const s = o.scale, pts = o.hand.landmarks, [l, t, r, b] = o.hand.box;
      vctx.strokeStyle = "#2463eb"; vctx.lineWidth = 3;
      vctx.strokeRect(l * s, t * s, (r - l) * s, (b - t) * s);
      vctx.strokeStyle = "#22c55e"; vctx.lineWidth = 2;
      for (const [i, j] of CONNECTIONS) {
        vctx.beginPath(); vctx.moveTo(pts[i][0] * s, pts[i][1] * s); vctx.lineTo(pts[j][0] * s, pts[j][1] * s); vctx.stroke();
      }
      vctx.fillStyle = "#ef4444";
      for (const [x, y] of pts) { vctx.beginPath(); vctx.arc(x * s, y * s, 3.5, 0, 2 * Math.PI); vctx.fill(); }
    }
  }
  requestAnimationFrame(paint);
}

// ------------------------------------------------------------------------------ the loop
async function step(mine) {
  const model = currentModel();
  if (!model) { say("Pick the served version (or “latest”) for the camera.", "model"); return; }
  const mode = modeSelect.value;
  const w = video.videoWidth, h = video.videoHeight;
  if (!w) return;
  if (frame.width !== w) { frame.width = w; frame.height = h; }
  const started = performance.now();
  fctx.drawImage(video, 0, 0, w, h);
  const contract = contractOf(model);
  let rgb = null;
  const pixelsOf = () => rgb || (rgb = hp.fromRGBA(fctx.getImageData(0, 0, w, h).data, w, h));
  let local = null, server = null;
  if (mode === "landmarks" && contract.kind !== "hand_features") {
    say("Sending landmarks needs a model that reads them (a hand-feature head); pick one, or another mode.", "model");
    return "backoff";
  }
  const useDevice = mode === "device" || mode === "both", useServer = mode !== "device";
  let found = null;
  if (mode === "landmarks") {
    try {
      found = await (await deviceFor(model)).landmarks(pixelsOf());
    } catch (err) {
      say("Finding the hand here failed: " + err.message, "device");
      return "backoff";
    }
  }
  const deviceJob = useDevice ? deviceFor(model).then((d) => d.classify(pixelsOf())) : null;
  const serverJob = !useServer ? null
    : mode === "landmarks" ? landmarksClassify(found, model)
    : jpeg().then((blob) => serverClassify(blob, model));
  if (deviceJob) {
    try {
      local = await deviceJob;
      counts.device += 1;
    } catch (err) {
      say("Device mode failed: " + err.message, "device");
      panel.dataset.deviceError = err.message;
      if (serverJob) await serverJob.catch(() => null);
      return "backoff";
    }
  }
  if (serverJob) {
    try {
      server = await serverJob;
      counts.server += 1;
    } catch (err) {
      say("The server refused the frame (" + (err.code || "error") + "): " + err.message, "server");
      return "backoff";
    }
  }
  if (!running || mine !== generation) return; // stopped while this frame ran: its answer is not shown
  runningEl.textContent = {
    server: "Running on the server", device: "Running on this device",
    both: "Running on the server and on this device",
    landmarks: "Hand found on this device, letter read on the server (landmarks sent)",
  }[mode];
  runningEl.dataset.mode = mode;
  panel.dataset.frames = String(counts.server + counts.device);
  panel.dataset.serverFrames = String(counts.server);
  panel.dataset.deviceFrames = String(counts.device);
  if (found) {
    overlay = found.noHand ? null : { hand: found.hand, cropBox: null, scale: found.scale };
    drawHandPreview(overlay && overlay.hand);
  } else if (local) {
    overlay = { hand: local.hand || null, cropBox: local.cropBox || null, scale: local.scale || 1 };
    if (contract.kind === "hand_features") drawHandPreview(overlay.hand);
    else drawPreview(local.pixels);
  } else if (contract.kind === "image" && contract.crop !== "hand") {
    overlay = null; // the whole frame is the model's input: shown as the model receives it
    drawPreview(hp.toModelPixels(hp.draft(pixelsOf(), [contract.width, contract.height]), contract));
  } else {
    overlay = null;
    drawPreview(null);
  }
  // The hand found here, in the picture's pixels (the tests read it; the server's is not drawn).
  if (overlay && overlay.hand) panel.dataset.handBox = overlay.hand.box.map((v) => (v * overlay.scale).toFixed(1)).join(",");
  if (mode === "both") showAgreement(model, server, local);
  showResult(model, server || local, started);
}

// Each start runs a loop of its own: one left over from a Stop that came while its frame ran
// ends when it wakes (so a quick Stop and Start never runs two frames at a time).
let generation = 0;

async function loop(mine) {
  while (running && mine === generation) {
    const t0 = performance.now();
    let outcome;
    try {
      outcome = await step(mine);
    } catch (err) {
      say("Frame failed: " + err.message, "error");
      outcome = "backoff";
    }
    const wait = outcome === "backoff" ? 1000 : Math.max(0, 1000 / MAX_FPS - (performance.now() - t0));
    await new Promise((r) => setTimeout(r, wait));
  }
}

// ------------------------------------------------------------------------------ start, stop
async function start() {
  if (running) return;
  say("");
  if (!window.isSecureContext || !(navigator.mediaDevices && navigator.mediaDevices.getUserMedia)) {
    panel.dataset.state = "error";
    say("This page cannot use a camera here: browsers give the camera only to pages served over HTTPS or from localhost (docs/service.md, “Camera demo”).", "insecure");
    return;
  }
  panel.dataset.state = "starting";
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 }, facingMode: "user" }, audio: false });
  } catch (err) {
    const [code, text] = cameraRefusal(err);
    panel.dataset.state = "error";
    panel.dataset.error = code;
    say(text, code);
    return;
  }
  video.srcObject = stream;
  await video.play().catch(() => {});
  await loadModels().catch(() => {});
  running = true;
  generation += 1;
  delete panel.dataset.handBox;
  panel.dataset.state = "running";
  $("camera-start").disabled = true;
  $("camera-stop").disabled = false;
  requestAnimationFrame(paint);
  loop(generation);
}

function stop() {
  running = false;
  if (stream) for (const track of stream.getTracks()) track.stop();
  stream = null;
  video.srcObject = null;
  overlay = null;
  panel.dataset.state = "off";
  runningEl.textContent = "Stopped: nothing is sent.";
  runningEl.dataset.mode = "";
  $("camera-start").disabled = false;
  $("camera-stop").disabled = true;
}

function resetCounts() {
  for (const k of Object.keys(counts)) counts[k] = 0;
  timings.length = 0;
  agreeEl.textContent = "";
  for (const k of ["both", "agree", "last", "lastServer", "lastDevice"]) delete agreeEl.dataset[k];
  smoothed = null;
}

$("camera-start").addEventListener("click", start);
$("camera-stop").addEventListener("click", stop);
modeSelect.addEventListener("change", () => {
  resetCounts();
  const model = currentModel();
  if (model && modeSelect.value !== "server") {
    say("Loading the model into the browser…", "loading");
    deviceFor(model).then(() => messageEl.dataset.kind === "loading" && say(""), (err) => say("Device mode failed: " + err.message, "device"));
  }
});
$("model-select").addEventListener("change", () => { resetCounts(); textEl.textContent = ""; textEl.dataset.text = ""; });
$("camera-space").addEventListener("click", () => append("space"));
$("camera-backspace").addEventListener("click", () => append("del"));
$("camera-clear-text").addEventListener("click", () => { textEl.textContent = ""; textEl.dataset.text = ""; });
document.addEventListener("keydown", (e) => {
  if (!running || /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(e.target.tagName)) return;
  if (e.key === " ") { e.preventDefault(); append("space"); }
  else if (e.key === "Backspace") { e.preventDefault(); append("del"); }
});
panel.dataset.state = "off";
panel.dataset.ready = "true";
// For the tests and the benchmark: the counters, read-only.
window.handserveCamera = { counts, timings, needsHands, contractOf };
