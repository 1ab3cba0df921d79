"""Training end to end on tiny data: the run folder, behaviour, reproducibility and errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from handserve_cli import main
from training import data, fitting, train
from training import model as model_mod
from training.evaluate import loss_and_accuracy

from .helpers import fake_pretrained_weights, has_augmentation, tiny_cfg

pytestmark = pytest.mark.slow


def test_tiny_run_has_every_contract_file(tiny_run: Path) -> None:
    assert not tiny_run.name.endswith(".partial")
    for name in train.RUN_FILES:
        assert (tiny_run / name).is_file(), name
        assert (tiny_run / name).stat().st_size > 0, name
    for png in ("confusion_matrix.png", "learning_curves.png"):
        assert (tiny_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert set(metrics["val"]) == {"loss", "accuracy"}
    assert set(metrics["test"]) == {"loss", "accuracy"}
    assert metrics["per_class"]["split"] == "test"
    classes = metrics["per_class"]["classes"]
    assert [c["label"] for c in classes] == [str(i) for i in range(10)]
    assert set(classes[0]) == {"label", "precision", "recall", "f1", "support"}
    assert metrics["train_images_per_s"] > 0
    history = json.loads((tiny_run / "history.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [1, 2]
    for key in (
        "phase",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "seconds",
    ):
        assert key in history[0]
    dataset = json.loads((tiny_run / "dataset.json").read_text())
    assert dataset["input_shape"] == [28, 28, 1] and dataset["color_mode"] == "grayscale"
    assert set(dataset["sizes"]) == {"train", "val", "test"}
    assert (tiny_run / "labels.txt").read_text().splitlines() == dataset["class_names"]
    backbone = json.loads((tiny_run / "backbone.json").read_text())
    assert backbone["name"] == "cnn" and backbone["weights"] == "none"
    samples = np.load(tiny_run / "samples.npz")
    assert samples["x"].dtype == np.uint8 and len(samples["x"]) == len(samples["y"]) <= 512
    assert np.load(tiny_run / "calibration.npz")["x"].shape[1:] == (28, 28, 1)
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["backbone"] == "cnn" and config["epochs"] == 2


def test_saved_run_model_matches_metrics(tiny_run: Path) -> None:
    model = keras.saving.load_model(tiny_run / "model.keras")
    assert has_augmentation(model) == []
    samples = np.load(tiny_run / "samples.npz")
    x = samples["x"].astype("float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))


def test_first_loss_is_log_num_classes_and_falls(tiny_run: Path) -> None:
    cfg = tiny_cfg()
    dataset = data.load_dataset(cfg)
    keras.utils.set_random_seed(0)
    model = model_mod.build_model(cfg, dataset.input_shape, dataset.num_classes)
    probs = model.predict(dataset.train.x.astype("float32"), verbose=0)
    first = loss_and_accuracy(probs.astype("float64"), dataset.train.y)["loss"]
    assert abs(first - math.log(10)) < 0.35
    history = json.loads((tiny_run / "history.json").read_text())["epochs"]
    assert history[1]["loss"] < history[0]["loss"]


def test_cli_run_is_reproducible_with_a_seed(tmp_path: Path, capsys) -> None:
    argv = [
        "train",
        "--dataset",
        "digits",
        "--backbone",
        "dense",
        "--limit",
        "150",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--early-stopping",
        "0",
        "--seed",
        "11",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--run-name",
        "a",
        "--no-checkpoint",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"run: {tmp_path / 'runs' / 'a'}" in out and "metrics.json" in out
    result = train.train(
        tiny_cfg(tmp_path, backbone="dense", limit=150, seed=11, run_name="b", checkpoint=False),
        verbose=0,
    )
    runs = tmp_path / "runs"
    first = json.loads((runs / "a" / "history.json").read_text())["epochs"]
    second = json.loads((result.run_dir / "history.json").read_text())["epochs"]
    for a, b in zip(first, second, strict=True):
        assert (a["loss"], a["val_loss"], a["accuracy"]) == (
            b["loss"],
            b["val_loss"],
            b["accuracy"],
        )
    assert json.loads((runs / "a" / "metrics.json").read_text())["test"] == result.metrics["test"]


def _train_cli(tmp_path: Path, *flags: str) -> int:
    return main(
        [
            "train",
            "--dataset",
            "digits",
            "--limit",
            "100",
            "--epochs",
            "1",
            "--runs-dir",
            str(tmp_path / "runs"),
            *flags,
        ]
    )


def _assert_no_finished_run(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []


def test_unknown_backbone_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    assert _train_cli(tmp_path, "--backbone", "nope") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "--backbone" in err[-1] and "mobilenet_v2" in err[-1]
    _assert_no_finished_run(tmp_path)


def test_weights_that_do_not_fit_are_a_one_line_error(tmp_path: Path, capsys) -> None:
    wrong = tmp_path / "wrong.weights.h5"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save_weights(wrong)
    code = _train_cli(
        tmp_path, "--backbone", "mobilenet_v2", "--backbone-size", "32", "--weights", str(wrong)
    )
    assert code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "wrong.weights.h5" in last and "--weights" in last
    _assert_no_finished_run(tmp_path)


def test_failed_run_leaves_no_run_folder(tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_mod, "build_model", boom)
    with pytest.raises(KeyboardInterrupt):
        train.train(tiny_cfg(tmp_path, run_name="x"), verbose=0)
    _assert_no_finished_run(tmp_path)


def test_existing_run_name_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    with pytest.raises(train.ConfigError, match="run-name"):
        train.train(tiny_cfg(tmp_path, run_name="taken"), verbose=0)


def test_list_backbones(capsys) -> None:
    assert main(["train", "--list-backbones"]) == 0
    assert "mobilenet_v3_small" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("backbone", "gpus", "bf16", "policy"),
    [
        ("cnn", 0, True, "mixed_bfloat16"),  # measured 1.3x faster on these CPUs
        ("mobilenet_v2", 0, True, "float32"),  # measured slower: keep float32
        ("cnn", 0, False, "float32"),  # no native bfloat16: emulated, slower
        ("mobilenet_v2", 1, False, "mixed_float16"),
    ],
)
def test_mixed_precision_policy_where_it_pays(backbone, gpus, bf16, policy) -> None:
    cfg = tiny_cfg(backbone=backbone, mixed_precision=True)
    assert fitting.precision_policy(cfg, gpus, bf16)[0] == policy
    assert fitting.precision_policy(tiny_cfg(backbone=backbone), gpus, bf16)[0] == "float32"


def test_bfloat16_run_saves_and_exports_a_float32_model(tmp_path: Path) -> None:
    """Training in bfloat16 must not leak bfloat16 into model.keras or the LiteRT files."""
    if tf.config.list_physical_devices("GPU") or not fitting.cpu_has_bf16():
        pytest.skip("needs a CPU with native bfloat16 and no GPU (this one has none)")
    from training.export import export_run

    result = train.train(tiny_cfg(tmp_path, mixed_precision=True, run_name="bf16"))
    history = json.loads((result.run_dir / "history.json").read_text())["epochs"]
    assert history[0]["loss"] is not None and np.isfinite(history[0]["loss"])
    model = keras.saving.load_model(result.run_dir / "model.keras")
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    version = export_run(result.run_dir, tmp_path / "models", "bf16")
    assert (version / "model.tflite").is_file()


def test_class_weights_balanced() -> None:
    weights = fitting.class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}


def test_evaluate_cli_scores_a_run(tiny_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.json"
    code = main(
        ["evaluate", str(tiny_run), "--dataset", "digits", "--limit", "200", "--output", str(out)]
    )
    assert code == 0
    assert "macro F1" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["per_class"]["split"] == "test" and 0 <= report["test"]["accuracy"] <= 1


def test_evaluate_refuses_a_model_that_does_not_match(tmp_path: Path, capsys) -> None:
    model = model_mod.build_model(tiny_cfg(), (28, 28, 1), 3)
    model.save(tmp_path / "model.keras")
    assert main(["evaluate", str(tmp_path), "--dataset", "digits", "--limit", "100"]) == 2
    assert "3 classes" in capsys.readouterr().err


def test_two_phase_run_fine_tunes_at_lower_rate(tmp_path: Path) -> None:
    weights = fake_pretrained_weights("mobilenet_v3_small", 32, tmp_path / "v3.weights.h5")
    cfg = tiny_cfg(
        tmp_path,
        backbone="mobilenet_v3_small",
        backbone_size=32,
        weights=str(weights),
        limit=100,
        fine_tune_epochs=1,
        fine_tune_layers=5,
        label_smoothing=0.1,
        class_weights="balanced",
        schedule="constant",
        learning_rate=0.01,
        checkpoint=True,
        early_stopping=2,
    )
    result = train.train(cfg, verbose=0)
    history = json.loads((result.run_dir / "history.json").read_text())["epochs"]
    assert [(r["epoch"], r["phase"]) for r in history] == [(1, 1), (2, 2)]
    assert history[0]["learning_rate"] == pytest.approx(0.01)
    assert history[1]["learning_rate"] == pytest.approx(0.001)
    assert (result.run_dir / train.CHECKPOINT).is_file()
    backbone = json.loads((result.run_dir / "backbone.json").read_text())
    assert backbone == {**backbone, "name": "mobilenet_v3_small", "backbone_size": 32}


@pytest.mark.slow
def test_default_config_learns_the_embedded_digits(tmp_path: Path) -> None:
    """The quickstart's model is useful: defaults only, on the embedded data (~40 s on 2 CPUs).

    Guards the defaults against early stopping on a fresh network's lagging BatchNorm
    statistics, which once kept the epoch-1 model (10-21% accuracy).
    """
    from training.config import TrainConfig

    result = train.train(TrainConfig(runs_dir=str(tmp_path)), verbose=0)
    assert result.metrics["test"]["accuracy"] >= 0.95


def _drift(tmp_path: Path, ema: float) -> tuple[float, float]:
    """Largest weight change of a small model over a 5-epoch phase 2 at a high rate, in the
    model fit leaves and in its best checkpoint."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(hidden))
    start = model.get_weights()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), rng.integers(0, 3, 64)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    fit = fitting.FitInputs(ds, ds, 64, 4, keras.losses.SparseCategoricalCrossentropy(), None)
    cfg = tiny_cfg(schedule="constant", ema=ema)
    checkpoint = tmp_path / f"ema{ema}.keras"
    phase = fitting.Phase(2, 5, 0.05)
    fitting.fit_phase(model, cfg, phase, fit, records=[], checkpoint=checkpoint, verbose=0)
    saved = keras.models.load_model(checkpoint, compile=False)

    def drift(weights: list[np.ndarray]) -> float:
        return max(float(np.max(np.abs(a - b))) for a, b in zip(weights, start, strict=True))

    return drift(model.get_weights()), drift(saved.get_weights())


def test_ema_keeps_and_checkpoints_the_averaged_weights(tmp_path: Path) -> None:
    """With ``ema`` phase 2 leaves and checkpoints the moving average, not the last step.

    Keras starts the average at the weights after the first step (one step, about the rate,
    from the start); at momentum 0.999 over the next 19 steps it barely moves on, while the
    plain run moves about the rate each step. A run that kept the raw weights (or swapped the
    two the wrong way round before the checkpoint) drifts as far as the plain one.
    """
    plain, plain_saved = _drift(tmp_path, 0.0)
    averaged, averaged_saved = _drift(tmp_path, 0.999)
    assert plain > 0.1 and plain_saved > 0.1
    assert averaged < 0.2 * plain
    assert averaged_saved < 0.2 * plain_saved


def test_weight_decay_and_ema_reach_the_optimizer() -> None:
    opt = fitting.optimizer(tiny_cfg(weight_decay=0.05), 1e-3, ema=0.99)
    assert opt.weight_decay == pytest.approx(0.05)
    assert opt.use_ema and opt.ema_momentum == pytest.approx(0.99)
    assert not fitting.optimizer(tiny_cfg(), 1e-3).use_ema
