"""The model builder: adapter shapes, no augmentation inside, deterministic predict, unfreeze."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from handserve.configs import ConfigError
from training import model as model_mod
from training.config import TrainConfig
from training.model import ModelError, build_model, get_spec, unfreeze

from .helpers import fake_pretrained_weights, has_augmentation, images, tiny_cfg


@pytest.fixture(scope="module")
def pretrained_cfg(tmp_path_factory: pytest.TempPathFactory):
    """A mobilenet_v2 config at 32 px with a weights file (pretrained path, offline)."""
    path = tmp_path_factory.mktemp("weights") / "mobilenet_v2.weights.h5"
    fake_pretrained_weights("mobilenet_v2", 32, path)
    return tiny_cfg(backbone="mobilenet_v2", backbone_size=32, weights=str(path))


GREY, RGB = (28, 28, 1), (96, 96, 3)


@pytest.mark.parametrize(
    ("backbone", "size", "input_shape"),
    [
        ("mobilenet_v2", 32, GREY),
        ("mobilenet_v2", 48, RGB),
        ("mobilenet_v3_small", 32, GREY),
        ("mobilenet_v3_small", 32, RGB),
        ("efficientnet_b0", 32, GREY),  # slow to build: the RGB path is the MobileNets'
        ("cnn", None, GREY),
        ("cnn", None, RGB),
        ("dense", None, GREY),
        ("dense", None, RGB),
    ],
)
def test_adapter_output_shape(backbone: str, size: int | None, input_shape) -> None:
    cfg = tiny_cfg(backbone=backbone, backbone_size=size)
    model = build_model(cfg, input_shape, num_classes=5)
    out = model.predict_on_batch(images(2, input_shape))
    assert out.shape == (2, 5)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    assert out.dtype == np.float32


def test_registry_defaults_and_listing() -> None:
    assert model_mod.BACKBONES["mobilenet_v2"].default_size == 96
    assert model_mod.BACKBONES["vgg16"].default_size == 224
    listing = model_mod.list_backbones()
    for name in model_mod.BACKBONES:  # the same names as --backbone's choices (test_config)
        assert name in listing


def test_unknown_backbone_lists_known_names() -> None:
    """The config refuses the name (before any model code runs); the registry says the same."""
    with pytest.raises(ConfigError, match=r"--backbone.*mobilenet_v2.*cnn"):
        TrainConfig.load(flags={"backbone": "resnet9000"})
    with pytest.raises(ModelError, match=r"--backbone.*mobilenet_v2"):
        get_spec("resnet9000")


def test_backbone_size_below_32_is_rejected() -> None:
    with pytest.raises(ModelError, match="backbone-size"):
        build_model(tiny_cfg(backbone="mobilenet_v2", backbone_size=16), (28, 28, 1), 3)


def test_weights_file_that_does_not_fit(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.weights.h5"
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    other.save_weights(wrong)
    cfg = tiny_cfg(backbone="mobilenet_v2", backbone_size=32, weights=str(wrong))
    with pytest.raises(ModelError) as info:
        build_model(cfg, (28, 28, 1), 3)
    message = str(info.value)
    assert "wrong.weights.h5" in message and "--weights" in message
    assert "\n" not in message


def test_missing_weights_file_names_flag(tmp_path: Path) -> None:
    cfg = tiny_cfg(backbone="mobilenet_v2", backbone_size=32, weights=str(tmp_path / "no.h5"))
    with pytest.raises(ModelError, match="--weights"):
        build_model(cfg, (28, 28, 1), 3)


@pytest.mark.shared_data
def test_real_mobilenet_v2_weights_load(mobilenet_v2_weights: Path) -> None:
    cfg = tiny_cfg(backbone="mobilenet_v2", backbone_size=32, weights=str(mobilenet_v2_weights))
    model = build_model(cfg, (28, 28, 1), 4)
    backbone = model_mod.backbone_of(model)
    reference = keras.applications.MobileNetV2(
        include_top=False, weights=str(mobilenet_v2_weights), input_shape=(32, 32, 3)
    )
    np.testing.assert_allclose(backbone.get_weights()[0], reference.get_weights()[0])
    assert not np.allclose(backbone.get_weights()[0], 0)


def test_imagenet_download_failure_says_where_to_put_the_file(monkeypatch) -> None:
    url = "https://example.invalid/models/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"

    class Offline:
        @staticmethod
        def MobileNetV2(**kwargs):  # stands in for keras.applications
            raise Exception(f"URL fetch failure on {url}: None -- Name or service not known")

    monkeypatch.setattr(model_mod, "_apps", lambda: Offline)
    with pytest.raises(ModelError) as info:
        build_model(tiny_cfg(backbone="mobilenet_v2", weights="imagenet"), (28, 28, 1), 3)
    message = str(info.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5" in message
    assert "$KERAS_HOME/models/" in message and "--weights PATH" in message


@pytest.mark.shared_data
def test_imagenet_weights_from_keras_home_work_offline(
    mobilenet_v2_weights: Path, monkeypatch
) -> None:
    """A copy named as Keras names it in $KERAS_HOME/models/ makes weights="imagenet" work."""
    from keras.src.backend import config as keras_config

    # Keras reads KERAS_HOME once, at import: point it at the test's isolated home explicitly.
    monkeypatch.setattr(keras_config, "_KERAS_DIR", os.environ["KERAS_HOME"])
    models = Path(os.environ["KERAS_HOME"]) / "models"
    models.mkdir(parents=True, exist_ok=True)
    target = models / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5"
    if not target.exists():
        shutil.copyfile(mobilenet_v2_weights, target)
    model = build_model(tiny_cfg(backbone="mobilenet_v2", weights="imagenet"), (28, 28, 1), 3)
    assert model_mod.backbone_of(model).count_params() > 2_000_000


def test_saved_model_has_no_augmentation_and_predicts_deterministically(tmp_path: Path) -> None:
    cfg = tiny_cfg(backbone="cnn")  # has Dropout and BatchNorm: both must be off in predict
    model = build_model(cfg, (28, 28, 1), 4)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert has_augmentation(loaded) == []
    x = images(4, (28, 28, 1), seed=1)
    first = loaded.predict(x, verbose=0)
    np.testing.assert_array_equal(first, loaded.predict(x, verbose=0))
    np.testing.assert_allclose(first, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_has_augmentation_detects_random_layers() -> None:
    """The check above can fail: it finds a random layer nested in a model."""
    inner = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.RandomFlip()])
    outer = keras.Sequential([keras.Input((8, 8, 1)), inner, keras.layers.Flatten()])
    assert has_augmentation(outer)


def test_unfreeze_keeps_batchnorm_frozen(pretrained_cfg) -> None:
    model = build_model(pretrained_cfg, (28, 28, 1), 3)
    backbone = model_mod.backbone_of(model)
    assert not backbone.trainable
    unfreeze(model, -1)
    bns = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    assert bns and all(not layer.trainable for layer in bns)
    assert all(layer.trainable for layer in convs)


def test_unfreeze_top_n_layers_only(pretrained_cfg) -> None:
    model = build_model(pretrained_cfg, (28, 28, 1), 3)
    unfreeze(model, 10)
    layers = model_mod.backbone_of(model).layers
    assert all(not layer.trainable for layer in layers[:-10])
    assert any(layer.trainable for layer in layers[-10:])


def test_phase_one_step_leaves_frozen_weights_unchanged(pretrained_cfg) -> None:
    """Phase 1 trains the head only: backbone weights (and BN statistics) must not move."""
    model = build_model(pretrained_cfg, (28, 28, 1), 3)
    backbone = model_mod.backbone_of(model)
    before = [w.copy() for w in backbone.get_weights()]
    head_before = [w.copy() for w in model.get_layer("classifier").get_weights()]
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    x = images(8, (28, 28, 1), seed=2)
    model.train_on_batch(x, np.array([0, 1, 2, 0, 1, 2, 0, 1]))
    for a, b in zip(before, backbone.get_weights(), strict=True):
        np.testing.assert_allclose(a, b)
    head_after = model.get_layer("classifier").get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(head_before, head_after, strict=True))


def _small_pretrained_like() -> keras.Model:
    """A model shaped like build_model's (nested "backbone" with conv + BN) whose features are
    alive at random init, unlike a random MobileNet at 32 px whose ReLU6 features are all zero."""
    inputs = keras.Input((8, 8, 1))
    b_in = keras.Input((8, 8, 1))
    b = keras.layers.Conv2D(4, 3, padding="same")(b_in)
    b = keras.layers.BatchNormalization()(b)
    b = keras.layers.Activation("tanh")(b)
    backbone = keras.Model(b_in, b, name=model_mod.BACKBONE_LAYER)
    backbone.trainable = False
    x = backbone(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs)


def test_unfrozen_step_moves_backbone_but_not_batchnorm() -> None:
    model = _small_pretrained_like()
    unfreeze(model, -1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    backbone = model_mod.backbone_of(model)
    bn = next(la for la in backbone.layers if isinstance(la, keras.layers.BatchNormalization))
    conv = next(la for la in backbone.layers if isinstance(la, keras.layers.Conv2D))
    bn_before = [w.copy() for w in bn.get_weights()]
    conv_before = conv.get_weights()[0].copy()
    model.train_on_batch(images(8, (8, 8, 1), seed=3), np.array([0, 1, 2, 0, 1, 2, 0, 1]))
    for a, b in zip(bn_before, bn.get_weights(), strict=True):
        np.testing.assert_allclose(a, b)
    assert not np.allclose(conv_before, conv.get_weights()[0])


@pytest.mark.slow  # a training step of MobileNetV2: 30 s of tracing on 2 cores
def test_random_backbone_trains_from_scratch() -> None:
    """weights="none": nothing to protect, so the backbone and its BatchNorm train at once.

    A frozen, inference-mode random MobileNetV2 passes no signal (its loss stays at
    log(num_classes)); this checks the backbone is trainable and its BatchNorm statistics move.
    """
    model = build_model(tiny_cfg(backbone="mobilenet_v2", backbone_size=32), (28, 28, 1), 3)
    backbone = model_mod.backbone_of(model)
    assert backbone.trainable
    bn = next(la for la in backbone.layers if isinstance(la, keras.layers.BatchNormalization))
    moving_mean = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.train_on_batch(images(8, (28, 28, 1), seed=4), np.array([0, 1, 2, 0, 1, 2, 0, 1]))
    assert not np.allclose(moving_mean, keras.ops.convert_to_numpy(bn.moving_mean))
