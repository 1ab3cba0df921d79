"""Hand features across signers: leave one group out, and the time of the whole path per photo.

    python benchmarks/hand_features.py logo --data-dir ../shared/data/asl_signers \\
        ../shared/data/asl_photos --weights ../shared/weights/gesture_embedder.tflite
    python benchmarks/hand_features.py time --data-dir ../shared/data/asl_photos \\
        --weights ../shared/weights/gesture_embedder.tflite

``logo``: every photo of the folders becomes a MediaPipe hand record (cached,
:mod:`training.data.hands`; photos without a hand are left out and counted), and each *group*
(a signer where the file names say it, massey's ``handN``, else a source; asl_photos'
``davidlee`` and asl_signers' ``roboflow`` are one Roboflow set and so one group) is held out in
turn: the head of ``--backbone hand_landmarks`` and ``hand_embedder`` trains on every other
group (10% of it, stratified, for early stopping) with the settings of
``configs/asl_photos.yaml`` and is scored on the held-out group's hands. Prints top-1 per group
and feature kind, the mean over groups, the photos without a hand (a served photo without a
hand is a 422, counted here as wrong in the "of all photos" column) and the confusion pairs
summed over the folds.

``time``: decode (at the detector's size), palm detection, hand landmarks, features and the head
(its LiteRT fp32 file, as served) per photo, one LiteRT thread each; median wall-clock and the
thread's CPU time (the figure that holds on a busy machine).

Prints Markdown tables (docs/training.md, "Hand features"). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from handserve import hand_features, hands  # noqa: E402
from handserve.images import open_image  # noqa: E402

log = logging.getLogger("hand_features")

KINDS = {"landmarks": "hand_landmarks", "embedder": "hand_embedder"}


def _config(backbone: str, weights: str | None, seed: int, extra: dict[str, Any]) -> Any:
    from training.config import TrainConfig

    recipe = REPO / "configs" / "asl_photos.yaml"
    flags: dict[str, Any] = {"backbone": backbone, "seed": seed, **extra}
    if weights and backbone == "hand_embedder":
        flags["weights"] = weights
    return TrainConfig.load(recipe, flags=flags)


def _table(args: argparse.Namespace) -> Any:
    from training.data import hands as hand_data

    return hand_data.load_table(args.data_dir)


def logo(args: argparse.Namespace) -> None:
    from training import fitting, hand_head
    from training.data.hands import HandDataset, Records
    from training.data.splits import SALT_VAL, hold_out

    table = _table(args)
    kinds = [k for k in args.kinds.split(",") if k]
    if "embedder" in kinds and not args.weights:
        raise SystemExit("--weights PATH to gesture_embedder.tflite is needed for the embedder")
    groups = sorted(set(table.groups.tolist()))
    no_hand = collections.Counter(table.no_hand_groups)  # photos the detector missed
    names = table.class_names
    rows: dict[str, dict[str, tuple[int, int]]] = {g: {} for g in groups}
    pairs: dict[str, collections.Counter[tuple[str, str]]] = {
        k: collections.Counter() for k in kinds
    }
    for kind in kinds:
        cfg = _config(KINDS[kind], args.weights, args.seed, args.overrides)
        embedder = hand_head.embedder_bytes(cfg)
        for group in groups:
            test = table.groups == group
            train_idx = np.flatnonzero(~test)
            keep, held = hold_out(table.y[train_idx], cfg.val_fraction, cfg.seed, SALT_VAL)
            dataset = HandDataset(
                name=f"without {group}",
                class_names=names,
                train=table.take(train_idx[keep]),
                val=table.take(train_idx[held]),
                test=Records(table.x[test], table.y[test]),
                source="",
            )
            fitting.set_seeds(cfg.seed)
            started = time.perf_counter()
            model, _ = hand_head.fit_head(cfg, dataset, embedder=embedder)
            probs = model.predict_on_batch(table.x[test])
            predicted = probs.argmax(axis=1)
            right = int((predicted == table.y[test]).sum())
            rows[group][kind] = (right, int(test.sum()))
            for true, guess in zip(table.y[test], predicted, strict=True):
                if true != guess:
                    pairs[kind][(names[true], names[guess])] += 1
            log.info(
                "%s without %s: %d/%d in %.0fs",
                kind,
                group,
                right,
                int(test.sum()),
                time.perf_counter() - started,
            )
    head = "| held-out group | hands | no hand | " + " | ".join(
        f"{k} top-1 | {k}, of all photos" for k in kinds
    )
    print(head + " |")
    print("|---|---:|---:|" + "---:|---:|" * len(kinds))
    means: dict[str, list[float]] = {k: [] for k in kinds}
    means_all: dict[str, list[float]] = {k: [] for k in kinds}
    for group in groups:
        n = int((table.groups == group).sum())
        cells = []
        for kind in kinds:
            right, total = rows[group][kind]
            everything = total + no_hand.get(group, 0)
            means[kind].append(right / total)
            means_all[kind].append(right / everything)
            cells.append(f"{right}/{total} ({right / total:.1%}) | {right / everything:.1%}")
        print(f"| {group} | {n} | {no_hand.get(group, 0)} | " + " | ".join(cells) + " |")
    cells = [
        f"**{statistics.mean(means[k]):.1%}** (lowest {min(means[k]):.1%}) | "
        f"{statistics.mean(means_all[k]):.1%}"
        for k in kinds
    ]
    print("| mean over groups | | | " + " | ".join(cells) + " |")
    for kind in kinds:
        common = ", ".join(f"{t}→{p} {c}" for (t, p), c in pairs[kind].most_common(12))
        print(f"\nconfusions ({kind}, true→predicted, summed over folds): {common}")


def _head_tflite(cfg: Any, kind: str, table: Any, embedder: bytes | None) -> bytes:
    """A head trained briefly on the table, converted to LiteRT fp32 (timing only)."""
    import tensorflow as tf

    from training import hand_head
    from training.data.hands import HandDataset
    from training.data.splits import SALT_VAL, hold_out

    keep, held = hold_out(table.y, 0.2, cfg.seed, SALT_VAL)
    dataset = HandDataset("time", table.class_names, table.take(keep), table.take(held), None, "")
    model, _ = hand_head.fit_head(cfg, dataset, embedder=embedder)
    return bytes(tf.lite.TFLiteConverter.from_keras_model(model.head).convert())


def time_path(args: argparse.Namespace) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from training import hand_head

    table = _table(args)
    photos = [Path(p) for p in table.paths][: args.limit]
    detector = hands.HandDetector()
    print(
        "| kind | photos | decode ms | hand ms | features ms | head ms | whole ms, median "
        "wall | whole ms, mean CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind in [k for k in args.kinds.split(",") if k]:
        cfg = _config(KINDS[kind], args.weights, args.seed, {"epochs": 3, **args.overrides})
        embedder_bytes = hand_head.embedder_bytes(cfg)
        embedder = (
            hand_features.GestureEmbedder(embedder_bytes) if embedder_bytes is not None else None
        )
        head = Interpreter(
            model_content=_head_tflite(cfg, kind, table, embedder_bytes), num_threads=1
        )
        head.allocate_tensors()
        head_in = head.get_input_details()[0]["index"]
        head_out = head.get_output_details()[0]["index"]
        parts: dict[str, list[float]] = collections.defaultdict(list)
        cpu: list[float] = []
        for path in photos:
            data = path.read_bytes()
            c0, t0 = time.thread_time(), time.perf_counter()
            img = open_image(data, size=hands.DETECT_SIZE)
            t1 = time.perf_counter()
            try:
                hand = hands.find_hand(img, detector)
            except hands.NoHandError:
                continue
            t2 = time.perf_counter()
            feats = hand_features.features(hand_features.record(hand)[None], kind, embedder)
            t3 = time.perf_counter()
            head.set_tensor(head_in, feats)
            head.invoke()
            head.get_tensor(head_out)
            t4 = time.perf_counter()
            cpu.append(time.thread_time() - c0)
            for name, seconds in (
                ("decode", t1 - t0),
                ("hand", t2 - t1),
                ("features", t3 - t2),
                ("head", t4 - t3),
                ("whole", t4 - t0),
            ):
                parts[name].append(seconds * 1000)
        med = {k: statistics.median(v) for k, v in parts.items()}
        print(
            f"| {kind} | {len(parts['whole'])} | {med['decode']:.1f} | {med['hand']:.1f} | "
            f"{med['features']:.2f} | {med['head']:.2f} | **{med['whole']:.1f}** | "
            f"{statistics.mean(cpu) * 1000:.1f} |"
        )


def _overrides(text: str) -> dict[str, Any]:
    import json

    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--settings must be a JSON object")
    return value


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (("logo", logo), ("time", time_path)):
        p = sub.add_parser(name)
        p.add_argument("--data-dir", nargs="+", required=True, help="photo folders")
        p.add_argument("--weights", help="gesture_embedder.tflite (for the embedder kind)")
        p.add_argument("--kinds", default="landmarks,embedder", help="feature kinds to run")
        p.add_argument("--seed", type=int, default=42)
        p.add_argument(
            "--settings",
            dest="overrides",
            type=_overrides,
            default={},
            help="JSON object of TrainConfig overrides (e.g. '{\"epochs\": 2}')",
        )
        p.add_argument("--limit", type=int, default=300, help="time: photos timed")
        p.set_defaults(fn=fn)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory():
        args.fn(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
