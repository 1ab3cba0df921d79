"""examples/hand_features.mjs (the browser's landmark features) gives the server's numbers: the
same hands through Node and through handserve.hand_features. Skips without Node."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from handserve import hand_features as hf
from tests.conftest import REPO

from .test_hand_features import a_hand

NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_the_browsers_features_are_the_servers() -> None:
    rng = np.random.default_rng(5)
    records = np.stack(
        [
            a_hand(
                cx=rng.uniform(0.2, 0.8),
                cy=rng.uniform(0.2, 0.8),
                size=rng.uniform(0.05, 0.3),
                width=int(w),
                height=int(h),
                handedness=float(hd),
            )
            for w, h, hd in zip(
                rng.choice([640, 720, 1280], 6),
                rng.choice([480, 1280], 6),
                rng.random(6),
                strict=True,
            )
        ]
    )
    results = []
    for rec in records:
        image, world, handedness, size = (a[0] for a in hf.unpack(rec))
        right = float(handedness) >= 0.5
        # a HandLandmarkerResult as @mediapipe/tasks-vision returns it, for one hand
        results.append(
            {
                "result": {
                    "landmarks": [[dict(zip("xyz", map(float, p), strict=True)) for p in image]],
                    "worldLandmarks": [
                        [dict(zip("xyz", map(float, p), strict=True)) for p in world]
                    ],
                    "handednesses": [
                        [
                            {
                                "categoryName": "Right" if right else "Left",
                                "score": float(handedness if right else 1 - handedness),
                            }
                        ]
                    ],
                },
                "width": float(size[0]),
                "height": float(size[1]),
            }
        )
    module = (REPO / "examples" / "hand_features.mjs").as_uri()
    script = (
        f'import {{ fromHandLandmarker }} from "{module}";\n'
        'import fs from "node:fs";\n'
        'const hands = JSON.parse(fs.readFileSync(0, "utf8"));\n'
        "console.log(JSON.stringify(hands.map((h) => "
        "Array.from(fromHandLandmarker(h.result, 0, h.width, h.height)))));\n"
    )
    done = subprocess.run(
        [str(NODE), "--input-type=module", "-e", script],
        input=json.dumps(results),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = np.asarray(json.loads(done.stdout), dtype=np.float32)
    np.testing.assert_allclose(got, hf.landmark_features(records), atol=1e-5)
