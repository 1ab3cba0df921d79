"""Parity of every exported format with Keras on the FULL real MNIST and Sign Language MNIST tests.

    python benchmarks/export_parity.py [--data-root ../shared/data] [--run mnist=runs/X ...]

For each dataset: take the given run folder (e.g. one from ``benchmarks/train_bench.py``) or train
a short one (the from-scratch CNN for a few epochs: parity, not accuracy, is measured here),
export it to a temporary models folder with the parity check on, then run
``training.verify`` on the whole real test split (10,000 MNIST / 7,172 Sign MNIST images) and
print the table with throughput. Targets (the issue's, checked and printed at the end):
SavedModel and LiteRT fp32 >= 99.9% top-1 agreement and max |prob diff| <= 1e-4; fp16 >= 99.5%;
int8 accuracy within 1 point of Keras and the int8 file <= 30% of the fp32 file.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASETS = ("mnist", "sign_mnist")


def train_short(dataset: str, data_dir: Path, runs_dir: Path, epochs: int, limit: int) -> Path:
    from training.config import TrainConfig
    from training.train import train

    cfg = TrainConfig(
        dataset=dataset,  # type: ignore[arg-type]
        data_dir=str(data_dir),
        backbone="cnn",
        weights="none",
        epochs=epochs,
        limit=limit,
        runs_dir=str(runs_dir),
        run_name=f"parity-{dataset}",
    )
    return train(cfg, verbose=0).run_dir


def targets(report) -> list[tuple[str, bool, str]]:
    from handserve.artifacts import FORMATS, TFLITE_FP32

    rows = {r.name: r for r in report.results}
    keras_acc = rows["keras"].accuracy
    by_precision = {FORMATS[k].precision: rows[k] for k in rows if k in FORMATS}
    fp32, int8 = rows[TFLITE_FP32.key], by_precision["int8"]
    out = []
    for name in (k for k, f in FORMATS.items() if f.required):
        r = rows[name]
        out.append(
            (f"{name} agreement >= 99.9%", r.agreement >= 0.999, f"{100 * r.agreement:.3f}%")
        )
        out.append((f"{name} max|dp| <= 1e-4", r.max_abs_diff <= 1e-4, f"{r.max_abs_diff:.2g}"))
    fp16 = by_precision["float16"]
    out.append(("fp16 agreement >= 99.5%", fp16.agreement >= 0.995, f"{100 * fp16.agreement:.3f}%"))
    drop = 100 * (keras_acc - int8.accuracy)
    out.append(("int8 accuracy within 1 point", drop <= 1.0, f"{drop:+.2f} points below Keras"))
    ratio = int8.size / fp32.size
    out.append(("int8 file <= 30% of fp32", ratio <= 0.30, f"{100 * ratio:.1f}%"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--run", action="append", default=[], help="DATASET=RUN_FOLDER to reuse a trained run"
    )
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--epochs", type=int, default=3, help="epochs of the short training")
    parser.add_argument("--limit", type=int, default=20000, help="training images (short run)")
    parser.add_argument("--num-threads", type=int, default=None, help="LiteRT threads")
    parser.add_argument("--speed-seconds", type=float, default=2.0)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep runs/models here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from training import export, verify

    given = dict(item.split("=", 1) for item in args.run)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="export_parity-"))
    all_ok = True
    for dataset in args.datasets:
        data_dir = args.data_root / dataset
        start = time.perf_counter()
        if dataset in given:
            run_dir = Path(given[dataset])
        else:
            run_dir = train_short(dataset, data_dir, work / "runs", args.epochs, args.limit)
        trained = time.perf_counter()
        version = export.export_run(run_dir, work / "models", dataset.replace("_", "-"))
        exported = time.perf_counter()
        report = verify.verify_version(
            version,
            data_dir=str(data_dir),
            num_threads=args.num_threads,
            speed_seconds=args.speed_seconds,
        )
        print(f"\n## {dataset}: {run_dir} -> {version}")
        print(f"(training {trained - start:.0f} s, export {exported - trained:.0f} s)")
        print(verify.format_table(report))
        for label, ok, value in targets(report):
            all_ok &= ok
            print(f"  [{'ok' if ok else 'MISS'}] {label}: {value}")
        if report.failures:
            all_ok = False
            print("  parity bounds failed: " + "; ".join(report.failures))
    print(f"\nall targets met: {all_ok}; runs and models in {work}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
