// The demo page's device mode, pre- and post-processing: the browser's copy of what the server
// does to an image before and after a model runs, so that the same files (served by the server
// under /models/{name}/{version}/files/ and /hand_models/) give the server's answers here.
// Every function names the Python it follows; change them together:
//   handserve/images.py   open_image (JPEG draft scale), to_array (colour mode, resize)
//   handserve/hands.py    palm detection, the hand's region, landmarks, the crop rule
//   handserve/hand_features.py  landmark features, the gesture embedder's inputs
// Pillow's resampling is reproduced (its fixed-point bilinear filter, `reduce`, the affine
// transform), since a pixel model's answer may turn on a few grey levels. No DOM, no runtime:
// images are {data: Uint8Array, width, height, channels} and tensors Float32Arrays.
"use strict";

// ---------------------------------------------------------------------------- small helpers
/** Python's round(): halves to even (square_around and the palm letterbox use it). */
export function pyRound(x) {
  const r = Math.round(x);
  return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

/** RGBA canvas pixels to an RGB image. */
export function fromRGBA(rgba, width, height) {
  const data = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < data.length; i += 3, j += 4) {
    data[i] = rgba[j]; data[i + 1] = rgba[j + 1]; data[i + 2] = rgba[j + 2];
  }
  return { data, width, height, channels: 3 };
}

/** Pillow's RGB to L ("L24": ITU-R 601-2 luma in 16-bit fixed point). */
export function toGray(img) {
  if (img.channels === 1) return img;
  const n = img.width * img.height, src = img.data, data = new Uint8Array(n);
  for (let i = 0, j = 0; i < n; i++, j += 3) {
    data[i] = (src[j] * 19595 + src[j + 1] * 38470 + src[j + 2] * 7471 + 0x8000) >>> 16;
  }
  return { data, width: img.width, height: img.height, channels: 1 };
}

/** A rectangle of an image (Pillow's Image.crop; the box lies inside the image here). */
export function crop(img, [x0, y0, x1, y1]) {
  const w = x1 - x0, h = y1 - y0, c = img.channels, data = new Uint8Array(w * h * c);
  for (let y = 0; y < h; y++) {
    const from = ((y0 + y) * img.width + x0) * c;
    data.set(img.data.subarray(from, from + w * c), y * w * c);
  }
  return { data, width: w, height: h, channels: c };
}

// ------------------------------------------------------------------ Pillow's resampling
const PRECISION_BITS = 32 - 8 - 2;

/** Pillow's precompute_coeffs for the bilinear (triangle) filter, as 8-bit fixed point. */
function coeffs(inSize, in0, in1, outSize) {
  const scale = (in1 - in0) / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = 1.0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2), kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      const w = t < 1.0 ? 1.0 - t : 0.0;
      k[x] = w; ww += w;
    }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0.0 ? k[x] / ww : 0.0;
      kk[xx * ksize + x] = Math.trunc(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
    }
    for (let x = xmax; x < ksize; x++) kk[xx * ksize + x] = 0;
    bounds[xx * 2] = xmin; bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(ss) {
  const v = Math.floor(ss / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** Pillow's Image.resize(size, BILINEAR, box) with no reducing gap (ImagingResample). */
export function resampleBilinear(img, outW, outH, box = [0, 0, img.width, img.height]) {
  const c = img.channels, [bx0, by0, bx1, by1] = box;
  let cur = img;
  const needH = outW !== img.width || bx0 !== 0 || bx1 !== outW;
  const needV = outH !== img.height || by0 !== 0 || by1 !== outH;
  const vert = coeffs(img.height, by0, by1, outH);
  const yFirst = vert.bounds[0];
  const yLast = vert.bounds[(outH - 1) * 2] + vert.bounds[(outH - 1) * 2 + 1];
  if (needH) {
    const hc = coeffs(img.width, bx0, bx1, outW);
    const rows = needV ? yLast - yFirst : img.height, first = needV ? yFirst : 0;
    const data = new Uint8Array(outW * rows * c);
    for (let y = 0; y < rows; y++) {
      const row = (y + first) * img.width * c;
      for (let xx = 0; xx < outW; xx++) {
        const xmin = hc.bounds[xx * 2], xmax = hc.bounds[xx * 2 + 1], kOff = xx * hc.ksize;
        for (let ch = 0; ch < c; ch++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let x = 0; x < xmax; x++) ss += img.data[row + (x + xmin) * c + ch] * hc.kk[kOff + x];
          data[(y * outW + xx) * c + ch] = clip8(ss);
        }
      }
    }
    cur = { data, width: outW, height: rows, channels: c };
    if (needV) for (let i = 0; i < outH; i++) vert.bounds[i * 2] -= yFirst;
  }
  if (!needV) return cur;
  const data = new Uint8Array(outW * outH * c), w = cur.width;
  for (let yy = 0; yy < outH; yy++) {
    const ymin = vert.bounds[yy * 2], ymax = vert.bounds[yy * 2 + 1], kOff = yy * vert.ksize;
    for (let x = 0; x < w; x++) {
      for (let ch = 0; ch < c; ch++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let y = 0; y < ymax; y++) ss += cur.data[((y + ymin) * w + x) * c + ch] * vert.kk[kOff + y];
        data[(yy * w + x) * c + ch] = clip8(ss);
      }
    }
  }
  return { data, width: w, height: outH, channels: c };
}

/** Pillow's Image.reduce(factor, box): the mean of each fx × fy block (partial blocks at the
 * edges averaged over what they hold), rounded as Reduce.c rounds. */
export function reduce(img, fx, fy, box) {
  const [x0, y0, x1, y1] = box, c = img.channels;
  const outW = Math.floor((x1 - x0 + fx - 1) / fx), outH = Math.floor((y1 - y0 + fy - 1) / fy);
  const data = new Uint8Array(outW * outH * c);
  for (let yy = 0; yy < outH; yy++) {
    const ya = y0 + yy * fy, yb = Math.min(ya + fy, y1);
    for (let xx = 0; xx < outW; xx++) {
      const xa = x0 + xx * fx, xb = Math.min(xa + fx, x1);
      const n = (yb - ya) * (xb - xa);
      const multiplier = Math.trunc(4294967296.0 / (256 * n));
      const amend = Math.floor(n / 2);
      for (let ch = 0; ch < c; ch++) {
        let ss = amend;
        for (let y = ya; y < yb; y++) for (let x = xa; x < xb; x++) ss += img.data[(y * img.width + x) * c + ch];
        data[(yy * outW + xx) * c + ch] = Math.floor((ss * multiplier) / 16777216);
      }
    }
  }
  return { data, width: outW, height: outH, channels: c };
}

/** Pillow's Image.resize(size, BILINEAR, reducing_gap=gap): reduce by an integer factor first
 * when shrinking by more than ``gap`` (handserve.images.REDUCING_GAP), then resample. */
export function resize(img, outW, outH, gap = 3.0) {
  let box = [0, 0, img.width, img.height];
  const fx = Math.trunc(img.width / outW / gap) || 1, fy = Math.trunc(img.height / outH / gap) || 1;
  if (fx > 1 || fy > 1) {
    const sx = 0.5 * (img.width / outW), sy = 0.5 * (img.height / outH);
    const safe = [Math.max(0, Math.trunc(-sx)), Math.max(0, Math.trunc(-sy)),
                  Math.min(img.width, Math.ceil(img.width + sx)), Math.min(img.height, Math.ceil(img.height + sy))];
    img = reduce(img, fx, fy, safe);
    box = [(box[0] - safe[0]) / fx, (box[1] - safe[1]) / fy, (box[2] - safe[0]) / fx, (box[3] - safe[1]) / fy];
  }
  return resampleBilinear(img, outW, outH, box);
}

/** handserve.images.open_image's JPEG draft: the server decodes a JPEG frame at the smallest of
 * 1/2, 1/4, 1/8 scale that keeps it at least ``size``; libjpeg's DCT scaling is, to within a grey
 * level, the block mean, so the browser takes block means at the same scale. */
export function draft(img, [wantW, wantH]) {
  let scale = 1;
  for (const s of [2, 4, 8]) {
    if (Math.ceil(img.width / s) >= wantW && Math.ceil(img.height / s) >= wantH) scale = s;
  }
  return scale === 1 ? img : reduce(img, scale, scale, [0, 0, img.width, img.height]);
}

/** handserve.images.to_array: colour mode, then the resize, as uint8 H×W×C. */
export function toModelPixels(img, spec) {
  const conv = spec.channels === 1 ? toGray(img) : img;
  return (conv.width === spec.width && conv.height === spec.height) ? conv : resize(conv, spec.width, spec.height);
}

// ------------------------------------------------------------------- hands (handserve/hands.py)
export const PALM_SIZE = 192, LANDMARK_SIZE = 224;
const MIN_SCORE = 0.5, NMS_IOU = 0.3, ROI_SCALE = 2.6, ROI_SHIFT_Y = -0.5, MIN_PRESENCE = 0.5;
const NORMALIZE_Z = 0.4;
export const HAND_MARGIN = 0.1, WHOLE_FRACTION = 0.6, MIN_DETECT_SIDE = 64;
export const DETECT_SIZE = [640, 640];

let anchorsCache = null;
/** hands._anchors: the 2016 SSD anchor centres of the palm detector. */
export function anchors() {
  if (anchorsCache) return anchorsCache;
  const out = [], strides = [8, 16, 16, 16];
  let layer = 0;
  while (layer < strides.length) {
    const stride = strides[layer];
    let same = 0;
    while (layer < strides.length && strides[layer] === stride) { same += 2; layer += 1; }
    const cells = Math.ceil(PALM_SIZE / stride);
    for (let y = 0; y < cells; y++) for (let x = 0; x < cells; x++) {
      for (let i = 0; i < same; i++) out.push([(x + 0.5) / cells, (y + 0.5) / cells]);
    }
  }
  anchorsCache = out;
  return out;
}

/** hands.HandDetector.palms, first half: the letterboxed 192×192 input and how to undo it. */
export function palmInput(img) {
  const scale = PALM_SIZE / Math.max(img.width, img.height);
  const nw = Math.max(1, pyRound(img.width * scale)), nh = Math.max(1, pyRound(img.height * scale));
  const small = resampleBilinear(img, nw, nh);
  const padX = Math.floor((PALM_SIZE - nw) / 2), padY = Math.floor((PALM_SIZE - nh) / 2);
  const tensor = new Float32Array(PALM_SIZE * PALM_SIZE * 3);
  for (let y = 0; y < nh; y++) for (let x = 0; x < nw; x++) for (let ch = 0; ch < 3; ch++) {
    tensor[((y + padY) * PALM_SIZE + x + padX) * 3 + ch] = small.data[(y * nw + x) * 3 + ch] / 255.0;
  }
  return { tensor, scale, padX, padY };
}

function iou(a, b) {
  const l = Math.max(a[0], b[0]), t = Math.max(a[1], b[1]), r = Math.min(a[2], b[2]), bt = Math.min(a[3], b[3]);
  const inter = Math.max(r - l, 0) * Math.max(bt - t, 0);
  const area = (a[2] - a[0]) * (a[3] - a[1]), areaB = (b[2] - b[0]) * (b[3] - b[1]);
  return inter / Math.max(area + areaB - inter, 1e-9);
}

/** hands.HandDetector.palms, second half: scores and boxes (2016×1, 2016×18) to palms in the
 * image's pixels, after MediaPipe's weighted non-maximum suppression. */
export function decodePalms(rawBoxes, logits, letterbox) {
  const anc = anchors(), kept = [];
  for (let i = 0; i < anc.length; i++) {
    const z = Math.max(-100, Math.min(100, logits[i]));
    const score = 1 / (1 + Math.exp(-z));
    if (score < MIN_SCORE) continue;
    const r = rawBoxes.subarray(i * 18, i * 18 + 18), [ax, ay] = anc[i];
    const cx = r[0] / PALM_SIZE + ax, cy = r[1] / PALM_SIZE + ay, w = r[2] / PALM_SIZE, h = r[3] / PALM_SIZE;
    const kps = [];
    for (let k = 0; k < 7; k++) kps.push([r[4 + 2 * k] / PALM_SIZE + ax, r[5 + 2 * k] / PALM_SIZE + ay]);
    kept.push({ box: [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], kps, score });
  }
  // Weighted NMS (hands._weighted_nms): order by score, stable as NumPy's argsort of -score.
  let order = kept.map((_, i) => i).sort((a, b) => kept[b].score - kept[a].score || a - b);
  const palms = [];
  while (order.length) {
    const top = order[0];
    const group = order.filter((i) => iou(kept[top].box, kept[i].box) > NMS_IOU);
    let wsum = 0; const box = [0, 0, 0, 0], kps = Array.from({ length: 7 }, () => [0, 0]);
    for (const i of group) {
      const s = kept[i].score; wsum += s;
      for (let j = 0; j < 4; j++) box[j] += kept[i].box[j] * s;
      for (let k = 0; k < 7; k++) { kps[k][0] += kept[i].kps[k][0] * s; kps[k][1] += kept[i].kps[k][1] * s; }
    }
    const { scale, padX, padY } = letterbox;
    const px = (v) => (v * PALM_SIZE - padX) / scale, py = (v) => (v * PALM_SIZE - padY) / scale;
    palms.push({
      box: [px(box[0] / wsum), py(box[1] / wsum), px(box[2] / wsum), py(box[3] / wsum)],
      kps: kps.map(([x, y]) => [px(x / wsum), py(y / wsum)]),
      score: kept[top].score,
    });
    const inGroup = new Set(group);
    order = order.filter((i) => !inGroup.has(i));
  }
  return palms;
}

/** hands.HandDetector._palm_region: centre, side and rotation of a palm's hand region. */
export function palmRegion({ box, kps }) {
  const wrist = kps[0], middle = kps[2];
  let angle = Math.PI / 2 - Math.atan2(-(middle[1] - wrist[1]), middle[0] - wrist[0]);
  angle = angle - 2 * Math.PI * Math.floor((angle + Math.PI) / (2 * Math.PI));
  const width = box[2] - box[0], height = box[3] - box[1];
  let cx = (box[0] + box[2]) / 2, cy = (box[1] + box[3]) / 2;
  cx -= ROI_SHIFT_Y * height * Math.sin(angle);
  cy += ROI_SHIFT_Y * height * Math.cos(angle);
  return { cx, cy, side: Math.max(width, height) * ROI_SCALE, angle };
}

/** The affine map of a region (the coefficients of Pillow's AFFINE transform in _landmarks). */
export function regionAffine({ cx, cy, side, angle }) {
  const cos = Math.cos(angle), sin = Math.sin(angle), unit = side / LANDMARK_SIZE, half = LANDMARK_SIZE / 2;
  const a = cos * unit, b = -sin * unit, d = sin * unit, e = cos * unit;
  return { a, b, c: cx - a * half - b * half, d, e, f: cy - d * half - e * half, cos, sin, side };
}

/** Pillow's Image.transform(224², AFFINE, BILINEAR) of an RGB image, as the model's input
 * (0..1 floats); outside the image is black, as Pillow fills it. */
export function regionInput(img, m) {
  const S = LANDMARK_SIZE, out = new Float32Array(S * S * 3), W = img.width, H = img.height, src = img.data;
  const xclip = (x) => (x < 0 ? 0 : x >= W ? W - 1 : x);
  let xo = m.c + m.a * 0.5 + m.b * 0.5, yo = m.f + m.d * 0.5 + m.e * 0.5;
  for (let y = 0; y < S; y++) {
    let xx = xo, yy = yo;
    for (let x = 0; x < S; x++, xx += m.a, yy += m.d) {
      if (xx < 0 || xx >= W || yy < 0 || yy >= H) continue;
      const xin = xx - 0.5, yin = yy - 0.5, x0 = Math.floor(xin), y0 = Math.floor(yin);
      const dx = xin - x0, dy = yin - y0;
      const ya = y0 < 0 ? 0 : y0 >= H ? H - 1 : y0, xa = xclip(x0) * 3, xb = xclip(x0 + 1) * 3;
      const hasB = y0 + 1 >= 0 && y0 + 1 < H;
      for (let ch = 0; ch < 3; ch++) {
        const ra = ya * W * 3;
        const v1 = src[ra + xa + ch] + (src[ra + xb + ch] - src[ra + xa + ch]) * dx;
        let v2 = v1;
        if (hasB) {
          const rb = (y0 + 1) * W * 3;
          v2 = src[rb + xa + ch] + (src[rb + xb + ch] - src[rb + xa + ch]) * dx;
        }
        out[(y * S + x) * 3 + ch] = Math.trunc(v1 + (v2 - v1) * dy) / 255.0;
      }
    }
    xo += m.b; yo += m.e;
  }
  return out;
}

/** hands.HandDetector._landmarks, after the model: a Hand in MediaPipe's conventions, or null
 * when the presence score says there is no hand. ``outputs`` in the model's order: 21×3
 * landmarks, presence, handedness, 21×3 world landmarks (taken by size, as hands.py does). */
export function handFromOutputs(outputs, m, width, height) {
  const points = outputs.filter((o) => o.length === 63), scalars = outputs.filter((o) => o.length === 1);
  if (points.length !== 2 || scalars.length !== 2) throw new Error("the hand landmark model's outputs are not 21x3, 1, 1, 21x3");
  const [local, rawWorld] = points, presence = scalars[0][0], handedness = scalars[1][0];
  if (presence < MIN_PRESENCE) return null;
  const pixels = [], image = [], world = [];
  let left = Infinity, top = Infinity, right = -Infinity, bottom = -Infinity;
  for (let i = 0; i < 21; i++) {
    const lx = local[i * 3], ly = local[i * 3 + 1], lz = local[i * 3 + 2];
    const x = m.a * lx + m.b * ly + m.c, y = m.d * lx + m.e * ly + m.f;
    pixels.push([x, y]);
    image.push([x / width, y / height, lz / LANDMARK_SIZE / NORMALIZE_Z * (m.side / width)]);
    const wx = rawWorld[i * 3], wy = rawWorld[i * 3 + 1];
    world.push([m.cos * wx - m.sin * wy, m.sin * wx + m.cos * wy, rawWorld[i * 3 + 2]]);
    left = Math.min(left, x); top = Math.min(top, y); right = Math.max(right, x); bottom = Math.max(bottom, y);
  }
  return { box: [left, top, right, bottom], landmarks: pixels, imageLandmarks: image, worldLandmarks: world,
           handedness, presence, imageSize: [width, height], area: (right - left) * (bottom - top) };
}

/** hands.square_around: the crop rule's square for a hand box, and whether the image stays whole. */
export function squareAround(box, [width, height]) {
  const [left, top, right, bottom] = box;
  let side = Math.max(right - left, bottom - top) * (1 + 2 * HAND_MARGIN);
  if (side >= WHOLE_FRACTION * Math.max(width, height)) return { box: [0, 0, width, height], whole: true };
  side = Math.min(pyRound(side), width, height);
  let x0 = pyRound((left + right) / 2 - side / 2), y0 = pyRound((top + bottom) / 2 - side / 2);
  x0 = Math.min(Math.max(x0, 0), width - side);
  y0 = Math.min(Math.max(y0, 0), height - side);
  return { box: [x0, y0, x0 + side, y0 + side], whole: false };
}

// ------------------------------------------------------ hand features (handserve/hand_features.py)
const KNUCKLES = [5, 9, 13, 17];

function canonical(points, left) {
  const w = points[0];
  const rel = points.map(([x, y, z]) => [x - w[0], y - w[1], z - w[2]]);
  let palm = 0;
  for (const k of KNUCKLES) palm += Math.hypot(rel[k][0], rel[k][1], rel[k][2]);
  palm = Math.max(palm / KNUCKLES.length, 1e-6);
  return rel.map(([x, y, z]) => [(left ? -x : x) / palm, y / palm, z / palm]);
}

/** hand_features.landmark_features of one hand: 126 floats. */
export function landmarkFeatures(hand) {
  const [width, height] = hand.imageSize, longer = Math.max(width, height);
  const sx = width / longer, sy = height / longer;
  const flat = hand.imageLandmarks.map(([x, y, z]) => [x * sx, y * sy, z * sx]);
  const left = hand.handedness < 0.5;
  return Float32Array.from([...canonical(flat, left).flat(), ...canonical(hand.worldLandmarks, left).flat()]);
}

function objectNormalized(points) {
  const w = points[0], rel = points.map(([x, y, z]) => [x - w[0], y - w[1], z - w[2]]);
  const xs = rel.map((p) => p[0]), ys = rel.map((p) => p[1]);
  const extent = Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys)) + 1e-5;
  return Float32Array.from(rel.flat().map((v) => v / extent));
}

/** hand_features.embedder_inputs of one hand: {hand, handedness, world_hand}. */
export function embedderInputs(hand) {
  const [width, height] = hand.imageSize, longer = Math.max(width, height);
  const aspect = hand.imageLandmarks.map(([x, y, z]) => [(x - 0.5) * (width / longer) + 0.5, (y - 0.5) * (height / longer) + 0.5, z]);
  return { hand: objectNormalized(aspect), handedness: Float32Array.of(hand.handedness), world_hand: objectNormalized(hand.worldLandmarks) };
}

/** handserve.ranking.top_k: the k best of one row of scores, ties in index order. */
export function topK(scores, labels, k) {
  k = Math.max(1, Math.min(k, labels.length));
  return Array.from(scores, (s, i) => [s, i]).sort((a, b) => b[0] - a[0] || a[1] - b[1]).slice(0, k)
    .map(([score, index]) => ({ label: labels[index], index, score }));
}
