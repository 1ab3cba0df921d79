// The `landmarks` hand features of handserve (handserve/hand_features.py), in JavaScript, for a
// browser or a phone's web view: MediaPipe's HandLandmarker finds the hand, this turns it into
// the 126 floats a hand head's `.tflite` takes (manifest input {"type": "hand_features",
// "kind": "landmarks"}). tests/unit/test_hand_features_js.py checks it gives Python's numbers.
//
//   import { fromHandLandmarker } from "./hand_features.mjs";
//   const result = handLandmarker.detect(image);          // @mediapipe/tasks-vision
//   const features = fromHandLandmarker(result, 0, image.width, image.height);  // Float32Array(126)
//
// No dependency; plain arithmetic on 21 points.

const KNUCKLES = [5, 9, 13, 17];

/** The score MediaPipe calls "Right" (handserve's handedness), from a category. */
export function rightScore(category) {
  return category.categoryName === "Right" ? category.score : 1 - category.score;
}

/** Wrist at 0, divided by the mean wrist-to-knuckle distance, mirrored for a left hand. */
function canonical(points, left) {
  const [wx, wy, wz] = points[0];
  const rel = points.map(([x, y, z]) => [x - wx, y - wy, z - wz]);
  let palm = 0;
  for (const k of KNUCKLES) palm += Math.hypot(...rel[k]);
  palm = Math.max(palm / KNUCKLES.length, 1e-6);
  return rel.map(([x, y, z]) => [(left ? -x : x) / palm, y / palm, z / palm]);
}

/**
 * The 126 features of one hand.
 * @param imageLandmarks 21 × [x, y, z]: x, y fractions of the image's width and height.
 * @param worldLandmarks 21 × [x, y, z] in metres.
 * @param handedness the "Right" score (see rightScore).
 * @param width, height the image's size in pixels.
 */
export function landmarkFeatures(imageLandmarks, worldLandmarks, handedness, width, height) {
  const longer = Math.max(width, height);
  const sx = width / longer, sy = height / longer;
  const flat = imageLandmarks.map(([x, y, z]) => [x * sx, y * sy, z * sx]);
  const left = handedness < 0.5;
  const out = new Float32Array(126);
  let i = 0;
  for (const points of [canonical(flat, left), canonical(worldLandmarks, left)]) {
    for (const p of points) for (const v of p) out[i++] = v;
  }
  return out;
}

/** The features of hand `index` of a HandLandmarkerResult (@mediapipe/tasks-vision). */
export function fromHandLandmarker(result, index, width, height) {
  const xyz = (list) => list.map((p) => [p.x, p.y, p.z]);
  return landmarkFeatures(
    xyz(result.landmarks[index]),
    xyz(result.worldLandmarks[index]),
    rightScore(result.handednesses[index][0]),
    width,
    height,
  );
}
