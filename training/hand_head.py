"""A small Keras head on hand features: the model of the hand-feature backbones.

``handserve train --backbone hand_landmarks --data-dir PHOTOS`` (or ``hand_embedder`` with
``--weights gesture_embedder.tflite``) loads the folders as hand records
(:mod:`training.data.hands`), turns them into features (:mod:`handserve.hand_features`) and fits
:func:`build_head` with the same phases, callbacks, class weights, seeds and early stopping as
every run (:mod:`training.fitting`). Augmentation happens on the records, before the features:
each training hand joins the data with ``hand_copies`` randomly changed copies, drawn once from
the seed (the embedder is a LiteRT model outside the graph, so copies are made before it runs,
as MediaPipe Model Maker computes embeddings once).

The head is the one MediaPipe Model Maker's gesture recognizer trains on the embedder (dense
layers with batch normalisation, ReLU and dropout, then a softmax), a little wider for 24 letters.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from handserve import hand_features
from handserve.configs import ConfigError
from training import fitting
from training.config import TrainConfig
from training.model import HAND_FEATURES, ModelError

log = logging.getLogger(__name__)

#: Widths of the head's hidden layers.
HIDDEN = (256, 128)
#: Name of the head's input (the exported model's input tensor).
INPUT_NAME = "hand_features"


def feature_kind(cfg: TrainConfig) -> str:
    """The feature kind of ``cfg.backbone`` (``landmarks`` or ``embedder``)."""
    try:
        return HAND_FEATURES[cfg.backbone]
    except KeyError:
        raise ModelError(f"{cfg.backbone} is not a hand-feature backbone") from None


def embedder_bytes(cfg: TrainConfig) -> bytes | None:
    """The gesture embedder the run uses (``--weights``), or None for the landmarks kind.

    Raises:
        ModelError: the embedder kind without ``--weights FILE``, or a file without the model.
    """
    if feature_kind(cfg) != "embedder":
        return None
    if cfg.weights in ("imagenet", "none"):
        raise ModelError(
            "--backbone hand_embedder needs --weights FILE: MediaPipe's gesture_embedder.tflite "
            "or its gesture_recognizer.task bundle (docs/training.md, 'Hand features')"
        )
    try:
        return hand_features.read_embedder(cfg.weights)
    except hand_features.HandFeatureError as exc:
        raise ModelError(str(exc)) from exc


class FeatureModel:
    """A head with its feature step: record rows in, class probabilities out.

    What the report (:func:`training.evaluate.compute_metrics`) and the benchmarks call, so a
    run is scored on photos' hands exactly as it will be served.
    """

    def __init__(
        self, head: keras.Model, kind: str, embedder: hand_features.GestureEmbedder | None
    ) -> None:
        self.head = head
        self.kind = kind
        self.embedder = embedder
        self.output_shape = head.output_shape

    def features(self, records: np.ndarray) -> np.ndarray:
        return hand_features.features(records, self.kind, self.embedder)

    def predict_on_batch(self, records: np.ndarray) -> np.ndarray:
        return np.asarray(self.head.predict_on_batch(self.features(records)))


def build_head(cfg: TrainConfig, n_features: int, num_classes: int) -> keras.Model:
    """Dense → BatchNorm → ReLU → Dropout per hidden layer, then a float32 softmax."""
    inputs = keras.Input(shape=(n_features,), dtype="float32", name=INPUT_NAME)
    x = inputs
    for i, width in enumerate(HIDDEN):
        x = keras.layers.Dense(width, use_bias=False, name=f"dense_{i}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"norm_{i}")(x)
        x = keras.layers.ReLU(name=f"relu_{i}")(x)
        x = keras.layers.Dropout(cfg.dropout, name=f"dropout_{i}")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="classifier"
    )(x)
    return keras.Model(inputs, outputs, name=f"handserve_{cfg.backbone}")


def augmented(records: np.ndarray, y: np.ndarray, copies: int, seed: int) -> tuple[Any, Any]:
    """The records followed by ``copies`` augmented copies of each, with their labels."""
    if copies <= 0 or len(records) == 0:
        return records, y
    rng = np.random.default_rng(seed)
    extra = [hand_features.augment(records, rng) for _ in range(copies)]
    return np.concatenate([records, *extra]), np.tile(y, copies + 1)


@dataclass(frozen=True)
class HeadData:
    """Training and validation features of one run."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray


def head_data(cfg: TrainConfig, dataset: Any, model: FeatureModel) -> HeadData:
    copies = cfg.hand_copies if cfg.augment else 0
    rx, ry = augmented(dataset.train.x, dataset.train.y, copies, cfg.seed)
    return HeadData(model.features(rx), ry, model.features(dataset.val.x), dataset.val.y)


def fit_inputs(cfg: TrainConfig, data: HeadData, num_classes: int) -> fitting.FitInputs:
    """:class:`training.fitting.FitInputs` over features (shuffled, batched, seeded)."""
    train_ds = (
        tf.data.Dataset.from_tensor_slices((data.train_x, data.train_y))
        .shuffle(len(data.train_y), seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = tf.data.Dataset.from_tensor_slices((data.val_x, data.val_y)).batch(256)
    if cfg.label_smoothing > 0:
        raise ConfigError("label_smoothing is not offered for hand-feature backbones")
    weights = None
    if cfg.class_weights == "balanced":
        weights = fitting.class_weights(data.train_y, num_classes)
    return fitting.FitInputs(
        train_ds=train_ds,
        val_ds=val_ds,
        n_train=len(data.train_y),
        steps_per_epoch=math.ceil(len(data.train_y) / cfg.batch_size),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        weights=weights,
    )


def fit_head(
    cfg: TrainConfig,
    dataset: Any,
    *,
    embedder: bytes | None,
    checkpoint: Any = None,
    verbose: int = 0,
) -> tuple[FeatureModel, list[dict[str, Any]]]:
    """Build and fit the head on ``dataset``'s hand records; the fitted model and the epochs.

    Args:
        cfg: the run's config (``backbone``, ``hand_copies``, the optimisation fields).
        dataset: a :class:`training.data.hands.HandDataset` (or anything with ``train``,
            ``val`` of records and ``num_classes``).
        embedder: the gesture embedder's bytes for the embedder kind.
    """
    kind = feature_kind(cfg)
    runner = hand_features.GestureEmbedder(embedder) if embedder is not None else None
    head = build_head(cfg, hand_features.FEATURE_SIZE[kind], dataset.num_classes)
    model = FeatureModel(head, kind, runner)
    data = head_data(cfg, dataset, model)
    inputs = fit_inputs(cfg, data, dataset.num_classes)
    records = fitting.fit_phases(
        head,
        cfg,
        inputs,
        strategy=tf.distribute.get_strategy(),
        checkpoint=checkpoint,
        verbose=verbose,
    )
    return model, records
