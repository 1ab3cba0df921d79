"""Backbones by name, the in-graph input adapter and the classifier head.

The model takes images at the dataset's native size and channels (float32, 0-255) and does all
backbone-specific work inside the graph: resize, grey→RGB, the backbone's own preprocessing. So
serving only decodes and resizes to the native size, and the exported model cannot be fed the
wrong preprocessing. The graph holds no augmentation layers: Keras 3.15 keeps them active in an
exported SavedModel (see docs/architecture.md); augmentation lives in ``training/augment.py``.

Only built-in Keras layers are used, so ``model.keras`` loads without importing this module.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from handserve.adapters import keras as keras_internals
from handserve.configs import ConfigError
from training.config import TrainConfig

log = logging.getLogger(__name__)

#: Name of the nested backbone model inside every built model (``unfreeze`` looks it up).
BACKBONE_LAYER = "backbone"
#: Smallest size the keras.applications backbones accept.
MIN_BACKBONE_SIZE = 32
#: BatchNorm momentum of every network trained from scratch. Keras' 0.99 (keras.applications:
#: 0.999) lets the moving statistics lag a fresh network by hundreds of steps, so on a small
#: dataset validation stayed at chance while training accuracy rose (10% for 10 epochs of the
#: default digits run). At 0.9 less than 1% of the initial statistics is left after 44 steps.
BN_MOMENTUM = 0.9
# ImageNet channel means in BGR order, as keras.applications' "caffe" preprocessing uses.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


class ModelError(ConfigError):
    """A backbone or weights choice that cannot be built; the message names the flag."""


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and feed it.

    Attributes:
        name: registry key (``--backbone``).
        default_size: side images are resized to when ``backbone_size`` is not set; small for
            ImageNet backbones so they train on CPU, 224 for VGG16 whose features need it.
        preprocessing: ``"minus_one_one"`` (x/127.5 - 1), ``"caffe"`` (BGR minus ImageNet
            mean), ``"builtin"`` (the application includes its own rescaling) or ``"rescale"``
            (x/255, the from-scratch baselines).
        pretrained: whether ImageNet weights exist (baselines always start from random).
        description: one line for ``--list-backbones``.
        factory: the keras.applications constructor (None for baselines).
        extra: keyword arguments the constructor needs besides the common ones.
    """

    name: str
    default_size: int | None
    preprocessing: str
    pretrained: bool
    description: str
    factory: Callable[..., keras.Model] | None = None
    extra: tuple[tuple[str, Any], ...] = ()


def _apps() -> Any:
    return keras.applications


BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(
        "mobilenet_v2",
        96,
        "minus_one_one",
        True,
        "MobileNetV2 1.0 (3.5M params): the CPU-friendly default for transfer learning",
        lambda **kw: _apps().MobileNetV2(**kw),
    ),
    "mobilenet_v3_small": BackboneSpec(
        "mobilenet_v3_small",
        96,
        "builtin",
        True,
        "MobileNetV3Small (0.9M backbone params): fastest, for phones",
        lambda **kw: _apps().MobileNetV3Small(**kw),
        (("include_preprocessing", True),),
    ),
    "mobilenet_v3_large": BackboneSpec(
        "mobilenet_v3_large",
        96,
        "builtin",
        True,
        "MobileNetV3Large (3.0M backbone params)",
        lambda **kw: _apps().MobileNetV3Large(**kw),
        (("include_preprocessing", True),),
    ),
    "efficientnet_b0": BackboneSpec(
        "efficientnet_b0",
        96,
        "builtin",
        True,
        "EfficientNetB0 (4.0M params): accurate, slower to train on CPU",
        lambda **kw: _apps().EfficientNetB0(**kw),
    ),
    "efficientnet_v2_b0": BackboneSpec(
        "efficientnet_v2_b0",
        96,
        "builtin",
        True,
        "EfficientNetV2B0 (5.9M params)",
        lambda **kw: _apps().EfficientNetV2B0(**kw),
        (("include_preprocessing", True),),
    ),
    "vgg16": BackboneSpec(
        "vgg16",
        224,
        "caffe",
        True,
        "VGG16 (14.7M params): the DLI course's transfer-learning backbone; slow on CPU",
        lambda **kw: _apps().VGG16(**kw),
    ),
    "dense": BackboneSpec(
        "dense",
        None,
        "rescale",
        False,
        "from scratch: Flatten, Dense 512, Dense 512 (DLI course, MNIST exercise)",
    ),
    # Hand features (handserve.hand_features): a folder of photos becomes MediaPipe hand records
    # and the model is a small head on their features. "pretrained" is False: the only trained
    # part is the head (the embedder is frozen and runs outside the graph).
    "hand_landmarks": BackboneSpec(
        "hand_landmarks",
        None,
        "hand_features",
        False,
        "hand photos: MediaPipe's 21 landmarks, normalised (126 floats), and a small head",
    ),
    "hand_embedder": BackboneSpec(
        "hand_embedder",
        None,
        "hand_features",
        False,
        "hand photos: MediaPipe's gesture embedder (--weights FILE, 128 floats), a small head",
    ),
    "cnn": BackboneSpec(
        "cnn",
        None,
        "rescale",
        False,
        "from scratch: 3 conv blocks + Dense 512 (DLI course, ASL exercise); the default",
    ),
}


#: Hand-feature backbones and the feature kind each feeds its head (handserve.hand_features).
HAND_FEATURES = {"hand_landmarks": "landmarks", "hand_embedder": "embedder"}


def get_spec(name: str) -> BackboneSpec:
    """Return the registry entry for ``name`` or fail naming the flag and the known names."""
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise ModelError(f"unknown backbone {name!r} (--backbone); known: {known}") from None


def list_backbones() -> str:
    """A table of the registry for ``handserve train --list-backbones``."""
    lines = [f"{'name':<20} {'size':>5} {'pretrained':>10}  description"]
    for spec in BACKBONES.values():
        size = str(spec.default_size) if spec.default_size else "native"
        pretrained = "imagenet" if spec.pretrained else "no"
        lines.append(f"{spec.name:<20} {size:>5} {pretrained:>10}  {spec.description}")
    return "\n".join(lines)


def resolve_backbone_size(cfg: TrainConfig, spec: BackboneSpec) -> int | None:
    """The side the adapter resizes to: configured, else the backbone's default (None: native)."""
    if not spec.pretrained:
        return None
    size = cfg.backbone_size or spec.default_size
    assert size is not None
    if size < MIN_BACKBONE_SIZE:
        raise ModelError(
            f"backbone_size {size} is too small for {spec.name} (--backbone-size must be "
            f">= {MIN_BACKBONE_SIZE})"
        )
    return size


def is_from_scratch(cfg: TrainConfig) -> bool:
    """True when nothing pretrained is loaded: baselines, or any backbone with weights "none"."""
    return not get_spec(cfg.backbone).pretrained or cfg.weights == "none"


def weights_label(cfg: TrainConfig) -> str:
    """How ``backbone.json`` records the weights: "imagenet", "none" or "file:<path>"."""
    if not get_spec(cfg.backbone).pretrained or cfg.weights == "none":
        return "none"
    if cfg.weights == "imagenet":
        return "imagenet"
    return f"file:{Path(cfg.weights).expanduser().resolve()}"


def _build_pretrained(spec: BackboneSpec, size: int, weights: str) -> keras.Model:
    """Build a keras.applications backbone without its top, loading ``weights``."""
    assert spec.factory is not None
    kwargs: dict[str, Any] = dict(spec.extra)
    common = {"include_top": False, "input_shape": (size, size, 3)}
    if weights == "none":
        backbone = spec.factory(weights=None, **common, **kwargs)
    elif weights == "imagenet":
        try:
            backbone = spec.factory(weights="imagenet", **common, **kwargs)
        except Exception as exc:  # offline download, proxy, corrupt cache: all one remedy
            found = re.search(r"/([^/\s]+\.h5)", str(exc))
            expected = found.group(1) if found else "the no-top .h5 file Keras expects"
            raise ModelError(
                f"could not get ImageNet weights for {spec.name} (no network?); put "
                f"{expected} in $KERAS_HOME/models/ (default ~/.keras/models/) or pass "
                "--weights PATH (or --weights none)"
            ) from exc
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ModelError(f"{path}: weights file not found (--weights)")
        backbone = spec.factory(weights=None, **common, **kwargs)
        try:
            with warnings.catch_warnings():
                # Keras warns once per unmatched layer before raising; the error says it all.
                warnings.simplefilter("ignore", UserWarning)
                backbone.load_weights(str(path))
        except Exception as exc:  # h5py, ValueError on shapes/names: say which file and flag
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise ModelError(
                f"{path}: does not fit backbone {spec.name} (--weights): {detail[:200]}"
            ) from exc
    # A fixed name lets unfreeze() find it, whatever keras.applications called it.
    backbone.name = BACKBONE_LAYER
    return backbone


def _settle_batchnorm_quickly(net: keras.Model) -> None:
    """Set :data:`BN_MOMENTUM` on every BatchNorm layer of a network trained from scratch."""
    for layer in keras_internals.nested_layers(net):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = BN_MOMENTUM


def _baseline(name: str, input_shape: tuple[int, int, int]) -> keras.Model:
    """The DLI course's from-scratch models, as a nested model named like the backbones."""
    inputs = keras.Input(shape=input_shape)
    x = inputs
    if name == "dense":
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(512, activation="relu")(x)
        x = keras.layers.Dense(512, activation="relu")(x)
    else:
        x = keras.layers.Conv2D(75, 3, padding="same", activation="relu")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = keras.layers.MaxPool2D(2, strides=2, padding="same")(x)
        x = keras.layers.Conv2D(50, 3, padding="same", activation="relu")(x)
        x = keras.layers.Dropout(0.2)(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = keras.layers.MaxPool2D(2, strides=2, padding="same")(x)
        x = keras.layers.Conv2D(25, 3, padding="same", activation="relu")(x)
        x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
        x = keras.layers.MaxPool2D(2, strides=2, padding="same")(x)
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(512, activation="relu")(x)
        x = keras.layers.Dropout(0.3)(x)
    return keras.Model(inputs, x, name=BACKBONE_LAYER)


# Over 60 lines by its docstring only; the adapter reads best as one sequence of layers.
def build_model(
    cfg: TrainConfig, input_shape: tuple[int, int, int], num_classes: int
) -> keras.Model:
    """Build adapter + backbone + head for images of ``input_shape`` (H, W, C), 0-255 float32.

    Pretrained backbones are resized to their size, grey is repeated to RGB, their own
    preprocessing applied, and they are called with ``training=False`` so BatchNorm keeps its
    ImageNet statistics even when unfrozen. A pretrained backbone starts frozen (phase 1);
    baselines and backbones with ``weights="none"`` train from scratch, fully trainable, with
    BatchNorm in its usual training mode.

    Args:
        cfg: uses ``backbone``, ``weights``, ``backbone_size`` and ``dropout``.
        input_shape: the dataset's native (H, W, C), C in {1, 3}.
        num_classes: width of the softmax.

    Returns:
        An uncompiled ``keras.Model`` with input ``image`` and float32 softmax output.

    Raises:
        ModelError: unknown backbone, unusable size or weights.
    """
    spec = get_spec(cfg.backbone)
    if spec.preprocessing == "hand_features":
        raise ModelError(
            f"{spec.name} reads hand records, not images: training.hand_head builds its head"
        )
    h, w, c = (int(v) for v in input_shape)
    if c not in (1, 3):
        raise ModelError(f"images must have 1 or 3 channels, got {c}")
    inputs = keras.Input(shape=(h, w, c), dtype="float32", name="image")
    if not spec.pretrained:
        if cfg.weights not in ("imagenet", "none"):
            raise ModelError(
                f"backbone {spec.name} trains from scratch; --weights FILE applies to "
                "pretrained backbones only (use --weights none)"
            )
        x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
        x = _baseline(spec.name, (h, w, c))(x)
    else:
        from_scratch = cfg.weights == "none"
        size = resolve_backbone_size(cfg, spec)
        assert size is not None
        backbone = _build_pretrained(spec, size, cfg.weights)
        # Random weights have nothing to protect: the backbone trains from the first epoch with
        # BatchNorm learning batch statistics, like the baselines. In inference mode, freshly
        # initialised BatchNorm (mean 0, variance 1) lets no signal through a deep network: a
        # random MobileNetV2 stayed at exactly log(num_classes) loss (measured, docs/training.md).
        backbone.trainable = from_scratch
        if from_scratch:
            _settle_batchnorm_quickly(backbone)
        x = inputs
        if (h, w) != (size, size):
            x = keras.layers.Resizing(size, size, interpolation="bilinear", name="resize")(x)
        if c == 1:
            x = keras.layers.Concatenate(axis=-1, name="grey_to_rgb")([x, x, x])
        if spec.preprocessing == "minus_one_one":
            x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(x)
        elif spec.preprocessing == "caffe":
            x = _caffe_preprocess()(x)
        # Pretrained: training=False keeps BatchNorm's ImageNet statistics even when unfrozen.
        x = backbone(x) if from_scratch else backbone(x, training=False)
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(cfg.dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="classifier"
    )(x)
    return keras.Model(inputs, outputs, name=f"handserve_{spec.name}")


def _caffe_preprocess() -> keras.layers.Layer:
    """RGB→BGR and ImageNet mean subtraction as a fixed 1×1 convolution (a built-in layer)."""
    layer = keras.layers.Conv2D(3, 1, use_bias=True, trainable=False, name="preprocess")
    layer.build((None, None, None, 3))
    kernel = np.zeros((1, 1, 3, 3), dtype="float32")
    for out_ch, in_ch in enumerate((2, 1, 0)):
        kernel[0, 0, in_ch, out_ch] = 1.0
    layer.set_weights([kernel, -np.asarray(_CAFFE_MEAN_BGR, dtype="float32")])
    return layer


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested backbone model of a model made by :func:`build_model`."""
    return model.get_layer(BACKBONE_LAYER)


def unfreeze(model: keras.Model, n_layers: int) -> keras.Model:
    """Make the top ``n_layers`` of the backbone trainable (-1: all); BatchNorm stays frozen.

    BatchNorm layers keep their ImageNet statistics and scale: updating them on a small
    dataset wrecks the pretrained features (keras-io transfer-learning guide). The caller must
    recompile the model for the change to take effect.

    Returns:
        ``model``, for chaining.
    """
    backbone = backbone_of(model)
    backbone.trainable = True
    layers = backbone.layers
    if n_layers >= 0:
        cut = max(len(layers) - n_layers, 0)
        for layer in layers[:cut]:
            layer.trainable = False
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    trainable = sum(1 for layer in layers if layer.trainable and layer.weights)
    log.info("unfroze %s: %d backbone layers with weights trainable", backbone.name, trainable)
    return model
