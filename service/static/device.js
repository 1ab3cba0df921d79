// The demo page's device mode: the browser runs the server's own model files with LiteRT.js
// (@litertjs/core, vendored by scripts/vendor-web.sh; its WebAssembly CPU path, so it works
// without a GPU), with the pre- and post-processing of handpipe.js. Nothing is sent to the
// server per frame: the files are fetched once, from the server's read-only routes
//   GET /models/{name}/{version}/files/{path}   the version's .tflite (and embedder copy)
//   GET /hand_models, /hand_models/{file}       MediaPipe's palm and landmark models
// and checked against the sha256 the server states.
"use strict";
import * as hp from "./handpipe.js";

const VENDOR = new URL("./vendor/litertjs/", import.meta.url);
let runtimePromise = null;

/** LiteRT.js, loaded once per page (its CPU WebAssembly build; no WebGPU is asked for). */
function runtime() {
  if (!runtimePromise) {
    runtimePromise = (async () => {
      let lib;
      try {
        lib = await import(new URL("core/index.js", VENDOR).href);
      } catch (err) {
        throw new Error("the browser runtime is not installed on this server (run scripts/vendor-web.sh; " + err.message + ")");
      }
      await lib.loadLiteRt(new URL("wasm/", VENDOR).href);
      return lib;
    })();
    runtimePromise.catch(() => { runtimePromise = null; });
  }
  return runtimePromise;
}

async function sha256Hex(bytes) {
  if (!(globalThis.crypto && crypto.subtle)) return null; // not a secure context: cannot check
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A file's bytes, refused unless its sha256 is the one the server states (and ``expected``). */
async function fetchChecked(url, expected) {
  const resp = await fetch(url);
  if (!resp.ok) {
    let message = resp.status + " " + resp.statusText;
    try { const body = await resp.json(); message = (body.error && (body.error.message || body.error)) || message; } catch (_) { /* not JSON */ }
    throw new Error(url + ": " + message);
  }
  const bytes = new Uint8Array(await resp.arrayBuffer());
  const stated = expected || resp.headers.get("X-Content-SHA256");
  const got = await sha256Hex(bytes);
  if (stated && got && got !== stated) throw new Error(url + ": sha256 " + got + ", expected " + stated);
  return bytes;
}

/** What the page needs to know of a model's input contract (GET /models' "input"). */
export function contractOf(model) {
  const inp = model.input || model.input_contract || {};
  if (inp.type === "hand_features") return { kind: "hand_features", features: inp.kind, size: inp.size, embedder: inp.embedder || null, handModels: inp.hand_models || {} };
  return { kind: "image", width: inp.width, height: inp.height, channels: inp.channels || (inp.color_mode === "grayscale" ? 1 : 3), crop: inp.crop || null };
}

/** Whether a contract needs MediaPipe's hand models. */
export function needsHands(contract) {
  return contract.kind === "hand_features" || contract.crop === "hand";
}

/** The served .tflite of a model: the runtime's file when LiteRT serves it, else a float32
 * .tflite among its formats (the device cannot feed an integer input without its scales). */
function tfliteOf(model) {
  if (typeof model.file === "string" && model.file.endsWith(".tflite")) return { path: model.file, sha256: model.sha256 };
  const formats = Object.values(model.formats || {});
  const fp32 = formats.find((f) => f.path && f.path.endsWith(".tflite") && (f.precision || "").startsWith("fp32"))
    || formats.find((f) => f.path && f.path.endsWith(".tflite"));
  if (!fp32) throw new Error("model " + model.name + " has no .tflite for the browser");
  return { path: fp32.path, sha256: null };
}

/** The .tflite with a batch of one: LiteRT.js (2.5) runs a model only at the shapes it was
 * compiled for and cannot resize an input, so an exported file whose signature says any batch
 * (shape_signature [-1, ...], as Keras exports) is refused. Read as the TFLite flatbuffer schema
 * (Model.subgraphs[].tensors[].shape_signature), each leading -1 becomes 1 in a copy; nothing
 * else changes (the graph and weights are the server's, as checked by their sha256). */
export function withBatchOfOne(bytes) {
  const out = new Uint8Array(bytes), view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  const u32 = (at) => view.getUint32(at, true);
  const field = (table, index) => {
    const vtable = table - view.getInt32(table, true);
    if (4 + 2 * index >= view.getUint16(vtable, true)) return 0;
    const off = view.getUint16(vtable + 4 + 2 * index, true);
    return off ? table + off : 0;
  };
  const vector = (table, index) => {
    const at = field(table, index);
    if (!at) return null;
    const start = at + u32(at);
    return { length: u32(start), start: start + 4 };
  };
  const tables = (table, index) => {
    const v = vector(table, index);
    return v ? Array.from({ length: v.length }, (_, i) => v.start + 4 * i + u32(v.start + 4 * i)) : [];
  };
  const model = u32(0);
  let changed = 0;
  for (const subgraph of tables(model, 2)) {
    for (const tensor of tables(subgraph, 0)) {
      const sig = vector(tensor, 7);
      if (sig && sig.length > 0 && view.getInt32(sig.start, true) === -1) {
        view.setInt32(sig.start, 1, true);
        changed += 1;
      }
    }
  }
  return { bytes: out, changed };
}

function outputsOf(tensors) {
  const arrays = tensors.map((t) => Float32Array.from(t.toTypedArray()));
  for (const t of tensors) t.delete();
  return arrays;
}

export class DeviceRunner {
  /** Fetch and compile what ``model`` needs (from the server that lists it at ``apiRoot``). */
  static async create(apiRoot, model) {
    const lib = await runtime();
    const contract = contractOf(model);
    const base = apiRoot + "models/" + encodeURIComponent(model.name) + "/" + model.version + "/files/";
    const compile = (bytes) => lib.loadAndCompile(withBatchOfOne(bytes).bytes, { accelerator: "wasm" });
    const runner = new DeviceRunner(lib, model, contract);
    if (needsHands(contract)) {
      const index = await (await fetch(apiRoot + "hand_models")).json();
      if (!index.available) throw new Error("this server has no hand models to send (scripts/fetch-hand-models.sh)");
      const want = contract.handModels || {};
      for (const [name, digest] of Object.entries(want)) {
        if (index.files[name] && index.files[name] !== digest) throw new Error("the server's " + name + " is not the one " + model.name + " was trained with");
      }
      runner.palm = await compile(await fetchChecked(apiRoot + "hand_models/" + index.palm, index.files[index.palm]));
      runner.landmark = await compile(await fetchChecked(apiRoot + "hand_models/" + index.landmark, index.files[index.landmark]));
      runner.handFiles = [index.palm, index.landmark];
    }
    const head = tfliteOf(model);
    runner.model = await compile(await fetchChecked(base + head.path, head.sha256));
    runner.files = [head.path];
    const input = runner.model.getInputDetails()[0];
    if (input.dtype !== "float32") throw new Error(head.path + " takes " + input.dtype + " input; the browser runs float32 models only");
    runner.inputShape = Array.from(input.shape);
    if (contract.kind === "hand_features" && contract.features === "embedder") {
      if (!contract.embedder) throw new Error("the contract names no embedder file");
      runner.embedder = await compile(await fetchChecked(base + contract.embedder));
      runner.files.push(contract.embedder);
    }
    return runner;
  }

  constructor(lib, model, contract) {
    this.lib = lib;
    this.info = model;
    this.contract = contract;
  }

  async _run(compiled, inputs) {
    const tensors = inputs.map(([data, shape]) => new this.lib.Tensor(data, shape));
    try {
      return outputsOf(await compiled.run(tensors));
    } finally {
      for (const t of tensors) t.delete();
    }
  }

  /** hands.HandDetector.hands: every hand the landmark model confirms, largest first. */
  async hands(img) {
    const lb = hp.palmInput(img);
    const out = await this._run(this.palm, [[lb.tensor, [1, hp.PALM_SIZE, hp.PALM_SIZE, 3]]]);
    const boxes = out.find((o) => o.length % 18 === 0 && o.length > 2016), logits = out.find((o) => o.length === 2016);
    let regions = hp.decodePalms(boxes, logits, lb).map(hp.palmRegion);
    if (!regions.length) regions = [{ cx: img.width / 2, cy: img.height / 2, side: Math.max(img.width, img.height), angle: 0 }];
    const found = [];
    for (const region of regions) {
      const m = hp.regionAffine(region);
      const outputs = await this._run(this.landmark, [[hp.regionInput(img, m), [1, hp.LANDMARK_SIZE, hp.LANDMARK_SIZE, 3]]]);
      const hand = hp.handFromOutputs(outputs, m, img.width, img.height);
      if (hand) found.push(hand);
    }
    return found.sort((a, b) => b.area - a.area);
  }

  /** The frame's largest hand as the four landmark tensors of the Open Inference Protocol
   * (handserve.hand_pipeline.LANDMARK_TENSORS: MediaPipe HandLandmarker's fields), or null. */
  async landmarks(frame) {
    const img = hp.draft(frame, hp.DETECT_SIZE);
    const hands = await this.hands(img);
    if (!hands.length) return { noHand: true, scale: frame.width / img.width };
    const hand = hands[0];
    return {
      hand,
      scale: frame.width / img.width,
      tensors: {
        image_landmarks: [[1, 21, 3], hand.imageLandmarks.flat()],
        world_landmarks: [[1, 21, 3], hand.worldLandmarks.flat()],
        handedness: [[1, 1], [hand.handedness]],
        image_size: [[1, 2], [img.width, img.height]],
      },
    };
  }

  /** One frame (RGB) as the server would read it from the JPEG it is sent: {scores, hand,
   * cropBox, pixels (what the model received, for an image model), noHand}. */
  async classify(frame) {
    const c = this.contract;
    if (c.kind === "hand_features") {
      const img = hp.draft(frame, hp.DETECT_SIZE);
      const hands = await this.hands(img);
      if (!hands.length) return { noHand: true, scale: frame.width / img.width };
      const hand = hands[0];
      let features;
      if (c.features === "landmarks") {
        features = hp.landmarkFeatures(hand);
      } else {
        const e = hp.embedderInputs(hand);
        const byName = Object.fromEntries(this.embedder.getInputDetails().map((d) => [d.name, d]));
        const order = this.embedder.getInputDetails().map((d) => d.name);
        const shapes = { hand: [1, 21, 3], handedness: [1, 1], world_hand: [1, 21, 3] };
        if (!order.every((n) => n in shapes)) throw new Error("not MediaPipe's gesture embedder: inputs " + Object.keys(byName));
        [features] = await this._run(this.embedder, order.map((n) => [e[n], shapes[n]]));
      }
      const [scores] = await this._run(this.model, [[Float32Array.from(features), [1, features.length]]]);
      return { scores, hand, scale: frame.width / img.width };
    }
    const spec = { width: c.width, height: c.height, channels: c.channels };
    const decodeSize = c.crop === "hand" ? [Math.max(spec.width, hp.DETECT_SIZE[0]), Math.max(spec.height, hp.DETECT_SIZE[1])] : [spec.width, spec.height];
    let img = hp.draft(frame, decodeSize);
    const scale = frame.width / img.width;
    let hand = null, cropBox = null;
    if (c.crop === "hand" && Math.min(img.width, img.height) >= hp.MIN_DETECT_SIDE) {
      const hands = await this.hands(img);
      if (!hands.length) return { noHand: true, scale };
      hand = hands[0];
      const sq = hp.squareAround(hand.box, [img.width, img.height]);
      cropBox = sq.box;
      if (!sq.whole) img = hp.crop(img, sq.box);
    }
    const pixels = hp.toModelPixels(img, spec);
    // handserve.runtimes.LiteRTRuntime.quantize: a grey image for a file that takes RGB (the
    // mobile files of a grayscale model compute the luma in their graph) gets its channel 3 times.
    const channels = this.inputShape[this.inputShape.length - 1];
    let input = Float32Array.from(pixels.data);
    if (spec.channels === 1 && channels === 3) input = Float32Array.from({ length: input.length * 3 }, (_, i) => input[Math.floor(i / 3)]);
    const [scores] = await this._run(this.model, [[input, [1, spec.height, spec.width, channels]]]);
    return { scores, hand, cropBox, pixels, scale };
  }
}
