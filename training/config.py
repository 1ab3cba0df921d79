"""``TrainConfig``: every training knob, with the reason for its default.

A pydantic dataclass: every value's type is checked when it is made, from a YAML/TOML file by
:func:`handserve.configs.load` or from ``handserve train`` flags (one flag per field). The
resolved config is saved as ``config.json`` in the run folder and copied into every export's
manifest.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator
from pydantic.dataclasses import dataclass

from handserve.artifacts import validate_name
from handserve.configs import STRICT

#: Share of a folder dataset without ``test/`` held out as its test split, by default.
FOLDER_TEST_FRACTION = 0.1
#: Phase-2 epochs when ``fine_tune_epochs`` is not given and the backbone is pretrained.
DEFAULT_FINE_TUNE_EPOCHS = 3


def _devices(value: Any) -> Any:
    """``--devices``: a positive count (a config file may give it as a number) or ``all``."""
    text = str(value).strip().lower() if isinstance(value, int | str) else value
    if isinstance(value, bool) or not isinstance(text, str):
        raise ValueError(f"devices must be a positive count or 'all', got {value!r}")
    if text != "all" and not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise ValueError(f"devices must be a positive count or 'all', got {value!r}")
    return text


#: ``all`` or a device count, as text (``"2"``).
Devices = Annotated[str, BeforeValidator(_devices)]

Dataset = Literal["digits", "mnist", "sign_mnist", "folder"]
Optimizer = Literal["sgd", "momentum", "adam", "rmsprop", "adagrad", "adadelta"]
Schedule = Literal["constant", "cosine", "step"]


def _f(default: Any, help: str, shown: str | None = None) -> Any:
    """A field with its ``--flag`` help; ``shown`` is the default the help states, when the
    field's own default (``None``) means "decided from other fields"."""
    metadata = {"help": help} if shown is None else {"help": help, "shown_default": shown}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True, config=STRICT)
class TrainConfig:
    """One training run. Defaults train the quickstart model (small CNN on embedded digits)."""

    # --- data
    # Embedded 8x8 scikit-learn digits upscaled to 28x28: real handwriting with no download.
    dataset: Dataset = _f("digits", "digits (embedded), mnist, sign_mnist or folder")
    # None: download (mnist) or fail with a message naming this flag.
    data_dir: str | None = _f(None, "folder with the dataset files (IDX/npz, CSVs, or images)")
    # Folder datasets have no native size; 96 keeps MobileNet features useful and CPU-cheap.
    image_size: int = _f(96, "native height/width images of a folder dataset are resized to")
    # RGB photos are the common case for folders; MNIST-style data sets its own mode.
    color_mode: Literal["rgb", "grayscale"] = _f("rgb", "colour mode for folder datasets")
    # 10% is enough to early-stop on without starving training of examples.
    val_fraction: float = _f(0.1, "fraction of the training data held out for validation")
    # Folders without test/: this much of train/ is held out as a test split that neither
    # training nor checkpoint selection sees, so the report has an honest number (0: none).
    test_fraction: float | None = _f(
        None,
        "fraction held out as test when a folder has no test/",
        shown=f"{FOLDER_TEST_FRACTION}",
    )
    # None: use everything. Small numbers make quick runs and tests.
    limit: int | None = _f(None, "use at most this many training images (quick runs)")
    # A photo of a sign shows a hand, a forearm and a room; the model should read the hand, and
    # whoever serves it must crop the same way (the manifest's input.crop, handserve.hands).
    # None: on for sign_mnist (its images are hand crops; the crop rule keeps them whole, and
    # the contract tells servers and apps to crop real photos), off otherwise.
    crop_hands: bool | None = _f(
        None,
        "crop each image to its hand before training (folder, sign_mnist); "
        "the exported version's input contract then crops too",
        shown="on for sign_mnist, off otherwise",
    )
    # Keeping a photo whole keeps its label in the data; skipping it keeps the data clean.
    no_hand: Literal["keep", "skip"] = _f(
        "keep", "with --crop-hands: photos without a hand found are kept whole or skipped"
    )

    # --- model
    # The DLI course's ASL CNN trains from scratch offline; pretrained backbones need weights.
    backbone: str = _f("cnn", "backbone name; see `handserve train --list-backbones`")
    # "imagenet" uses Keras' download/cache; a path loads a local file; "none" is random init.
    weights: str = _f("imagenet", "imagenet, none, or a path to a .h5/.weights.h5 file")
    # None: the backbone's preferred size (e.g. 96 for MobileNets, 224 for VGG16).
    backbone_size: int | None = _f(None, "size images are resized to inside the model")
    dropout: float = _f(0.2, "dropout before the classifier head")

    # --- augmentation (training only; never part of the exported graph)
    augment: bool = _f(True, "random augmentation of training images")
    rotation: float = _f(0.03, "max rotation as a fraction of a full turn (0.03 ≈ 11°)")
    zoom: float = _f(0.1, "max zoom in/out fraction")
    translate: float = _f(0.1, "max shift as a fraction of height/width")
    contrast: float = _f(0.1, "max contrast change fraction")
    brightness: float = _f(0.1, "max brightness change fraction")
    # Off for every dataset, folders included: a mirrored hand can be another sign (or the other
    # hand), a mirrored digit is not a digit. configs/objects.yaml turns it on for objects.
    flip: bool = _f(False, "random horizontal flip (on for photos of objects, off for hands)")
    # MixUp (Zhang et al. 2018) blends pairs of training images and their labels, with weights
    # drawn from Beta(mixup, mixup): on a small folder a fine-tuned backbone otherwise learns
    # its training images by heart (training loss 0.002 on the fruit photos). 0: off; like the
    # rest of this block, only with ``augment``.
    mixup: float = _f(0.0, "MixUp strength alpha for training batches (0: off)")

    # --- optimisation
    # 20 is a cap, not a target: early stopping ends most runs sooner. The embedded digits
    # (1,300 training images) need about 20 short epochs to settle.
    epochs: int = _f(20, "epochs of phase 1 (frozen backbone, new head)")
    # Phase 2 (fine-tuning) runs only for pretrained backbones. None: DEFAULT_FINE_TUNE_EPOCHS
    # with pretrained weights (what "fine-tunes a pretrained backbone" promises), none from
    # scratch (a from-scratch net trains fully in phase 1). 3 short epochs fit a CPU.
    fine_tune_epochs: int | None = _f(
        None,
        "epochs of phase 2, the top of a pretrained backbone unfrozen at a lower rate",
        shown=f"{DEFAULT_FINE_TUNE_EPOCHS} with pretrained weights, 0 from scratch",
    )
    # The top 30 layers of MobileNetV2 (its last two blocks) adapt its features to new photos
    # cheaply; unfreezing all of it is slow on a CPU and overfits a small folder. -1 = all.
    # BatchNorm stays in inference mode either way.
    fine_tune_layers: int = _f(
        30, "layers at the top of the backbone unfrozen in phase 2 (-1: all)"
    )
    # Fine-tuning at the phase-1 rate would wreck pretrained features.
    fine_tune_lr_factor: float = _f(0.1, "phase-2 learning rate = learning_rate × this")
    optimizer: Optimizer = _f("adam", "sgd, momentum, adam, rmsprop, adagrad or adadelta")
    learning_rate: float = _f(1e-3, "initial learning rate")
    momentum: float = _f(0.9, "momentum for the momentum optimizer")
    schedule: Schedule = _f("cosine", "learning-rate schedule: constant, cosine or step")
    step_epochs: int = _f(3, "step schedule: decay every this many epochs")
    step_gamma: float = _f(0.5, "step schedule: multiply the rate by this at each step")
    # 32: small datasets get enough steps per epoch for BatchNorm statistics to settle.
    batch_size: int = _f(32, "images per training step")
    label_smoothing: float = _f(0.0, "label smoothing for the cross-entropy loss")
    # Decoupled weight decay (AdamW-style when the optimizer is adam); 0 leaves it off.
    weight_decay: float = _f(0.0, "decoupled weight decay of every optimizer (0: off)")
    # Fine-tuning a whole backbone on a small folder moves its weights in noisy steps; an
    # exponential moving average of them (Polyak averaging) is what phase 2 validates,
    # checkpoints and exports when this is above 0. 0.99 averages about the last 100 steps.
    ema: float = _f(0.0, "phase 2: use a moving average of the weights, this momentum (0: off)")
    class_weights: Literal["none", "balanced"] = _f(
        "none", "weight the loss by inverse class frequency (imbalanced data)"
    )
    # Stop when validation loss has not improved for this many epochs; best weights restored.
    early_stopping: int = _f(5, "early-stopping patience in epochs (0 = off)")
    # A fresh network's validation loss is noisy for its first epochs (its BatchNorm moving
    # statistics settle within about 50 steps at momentum 0.9, see training.model); stopping
    # is allowed from this epoch of phase 1 on.
    early_stopping_start: int = _f(5, "epochs before early stopping may end phase 1")
    checkpoint: bool = _f(True, "save the best model (by validation loss) during training")
    # float16 on a GPU; bfloat16 on a CPU with native bfloat16, for the from-scratch baselines
    # only (faster there, slower for MobileNetV2: see training.fitting.precision_policy).
    mixed_precision: bool = _f(
        False, "mixed float16 on GPU, bfloat16 on CPUs that have it (cnn/dense only)"
    )
    # None: one device, or MirroredStrategy over every GPU when there are several (as before
    # the flag existed). N or "all": data-parallel over N local devices, GPUs when there are
    # any, else the CPU split into N logical devices (training.fitting.distribution).
    devices: Devices | None = _f(
        None,
        "data-parallel training over N local devices (GPUs, else logical CPUs) or all",
        shown="one, or every GPU when there are several",
    )
    seed: int = _f(42, "seed for shuffling, splits, augmentation and initialisation")

    # --- output
    runs_dir: str = _f("runs", "where run folders are created")
    run_name: str | None = _f(None, "run folder name (default: <dataset>-<backbone>-<time>)")
    export: bool = _f(False, "export the trained model to models/NAME/VERSION when done")
    export_name: str | None = _f(None, "model name for --export (default: the dataset name)")
    models_dir: str = _f("models", "where exports are written")

    def __post_init__(self) -> None:
        checks = [
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (0.0 <= self.folder_test_fraction < 1.0, "test_fraction must be in [0, 1)"),
            (
                self.val_fraction + self.folder_test_fraction < 1.0,
                "val + test fractions must be < 1",
            ),
            (self.image_size >= 8, "image_size must be at least 8"),
            (0.0 <= self.dropout < 1.0, "dropout must be in [0, 1)"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (
                self.fine_tune_epochs is None or self.fine_tune_epochs >= 0,
                "fine_tune_epochs must be >= 0",
            ),
            (self.learning_rate > 0, "learning_rate must be positive"),
            (self.batch_size >= 1, "batch_size must be at least 1"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
            (self.weight_decay >= 0.0, "weight_decay must be >= 0"),
            (0.0 <= self.mixup <= 1.0, "mixup must be in [0, 1]"),
            (0.0 <= self.ema < 1.0, "ema must be in [0, 1)"),
            (self.early_stopping >= 0, "early_stopping must be >= 0"),
            (self.early_stopping_start >= 0, "early_stopping_start must be >= 0"),
            (self.limit is None or self.limit >= 2, "limit must be at least 2"),
            (self.step_epochs >= 1, "step_epochs must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if self.crop_hands and self.dataset not in ("folder", "sign_mnist"):
            raise ValueError(
                f"crop_hands (--crop-hands) is for images of hands (folder, sign_mnist), "
                f"not {self.dataset}"
            )
        if self.export_name is not None:  # fail before training, not after it
            try:
                validate_name(self.export_name)
            except ValueError as exc:
                raise ValueError(f"export_name (--export-name): {exc}") from None

    @property
    def hand_crop(self) -> str | None:
        """The input contract's crop: ``"hand"`` when images are cropped to the hand, else None."""
        on = self.dataset == "sign_mnist" if self.crop_hands is None else self.crop_hands
        return "hand" if on else None

    @property
    def folder_test_fraction(self) -> float:
        """``test_fraction`` as given, else :data:`FOLDER_TEST_FRACTION`."""
        return FOLDER_TEST_FRACTION if self.test_fraction is None else self.test_fraction
