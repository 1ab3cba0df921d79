"""``TrainConfig``: every training knob, with the reason for its default.

A :class:`handserve.configs.Settings` class, like the service's: strict types (an integer is
accepted where a number is wanted, nothing else is converted), defaults < a YAML/TOML/JSON file
(``--config``) < ``handserve train`` flags (one flag per field); no environment variables. The
resolved config is saved as ``config.json`` in the run folder and copied into every export's
manifest.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from handserve import integers
from handserve.artifacts import validate_name
from handserve.configs import Settings, setting

#: Share of a folder dataset without ``test/`` held out as its test split, by default.
FOLDER_TEST_FRACTION = 0.1
#: Phase-2 epochs when ``fine_tune_epochs`` is not given and the backbone is pretrained.
DEFAULT_FINE_TUNE_EPOCHS = 3


def _devices(value: Any) -> Any:
    """``--devices``: a positive count (a config file may give it as a number) or ``all``."""
    text = str(value).strip().lower() if isinstance(value, int | str) else value
    wrong = ValueError("must be a positive count or 'all'")
    if isinstance(value, bool) or not isinstance(text, str):
        raise wrong
    if text != "all" and (integers.ascii_int(text) or 0) < 1:
        raise wrong
    return text


#: ``all`` or a device count, as text (``"2"``).
Devices = Annotated[str, BeforeValidator(_devices)]

Dataset = Literal["digits", "mnist", "sign_mnist", "folder"]
#: ``--backbone`` names, checked here (a config file's value as a flag's), so a wrong name is
#: refused in one line before TensorFlow loads (22 s); training.model.BACKBONES builds each
#: (tests/unit/test_config.py checks the two agree).
BACKBONE_NAMES = (
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_v2_b0",
    "vgg16",
    "dense",
    "hand_landmarks",
    "hand_embedder",
    "cnn",
)


def _known_backbone(value: str) -> str:
    if value not in BACKBONE_NAMES:
        raise ValueError(f"must be one of {', '.join(BACKBONE_NAMES)}")
    return value


#: A name of :data:`BACKBONE_NAMES` (text, so the flag's error is the config's one line).
Backbone = Annotated[str, AfterValidator(_known_backbone)]
Optimizer = Literal["sgd", "momentum", "adam", "rmsprop", "adagrad", "adadelta"]
Schedule = Literal["constant", "cosine", "step"]


class TrainConfig(Settings):
    """One training run. Defaults train the quickstart model (small CNN on embedded digits)."""

    model_config = SettingsConfigDict(strict=True)

    # --- data
    # Embedded 8x8 scikit-learn digits upscaled to 28x28: real handwriting with no download.
    dataset: Dataset = setting("digits", "the data set (digits: embedded, no download)")
    # None: download (mnist) or fail with a message naming this flag.
    data_dir: str | None = setting(None, "folder with the dataset files (IDX/npz, CSVs, or images)")
    # The shared sign photos come as several folders (one per collection, each of several
    # sources); a hand-feature run trains on all of them at once (training.data.hands).
    extra_data_dirs: list[str] | None = setting(
        None, "more folders trained together with --data-dir (hand-feature backbones)"
    )
    # Folder datasets have no native size; 96 keeps MobileNet features useful and CPU-cheap.
    image_size: int = setting(
        96, "native height/width images of a folder dataset are resized to", ge=8
    )
    # RGB photos are the common case for folders; MNIST-style data sets its own mode.
    color_mode: Literal["rgb", "grayscale"] = setting("rgb", "colour mode for folder datasets")
    # 10% is enough to early-stop on without starving training of examples.
    val_fraction: float = setting(
        0.1, "fraction of the training data held out for validation", ge=0.0, lt=1.0
    )
    # Folders without test/: this much of train/ is held out as a test split that neither
    # training nor checkpoint selection sees, so the report has an honest number (0: none).
    test_fraction: float | None = setting(
        None,
        "fraction held out as test when a folder has no test/",
        shown=f"{FOLDER_TEST_FRACTION}",
        ge=0.0,
        lt=1.0,
    )
    # None: use everything. Small numbers make quick runs and tests.
    limit: int | None = setting(None, "use at most this many training images (quick runs)", ge=2)
    # A photo of a sign shows a hand, a forearm and a room; the model should read the hand, and
    # whoever serves it must crop the same way (the manifest's input.crop, handserve.hands).
    # None: on for sign_mnist (its images are hand crops; the crop rule keeps them whole, and
    # the contract tells servers and apps to crop real photos), off otherwise.
    crop_hands: bool | None = setting(
        None,
        "crop each image to its hand before training (folder, sign_mnist); "
        "the exported version's input contract then crops too",
        shown="on for sign_mnist, off otherwise",
    )
    # Keeping a photo whole keeps its label in the data; skipping it keeps the data clean.
    no_hand: Literal["keep", "skip"] = setting(
        "keep", "with --crop-hands: photos without a hand found are kept whole or skipped"
    )

    # --- model
    # The DLI course's ASL CNN trains from scratch offline; pretrained backbones need weights.
    backbone: Backbone = setting("cnn", "backbone name; see `handserve train --list-backbones`")
    # "imagenet" uses Keras' download/cache; a path loads a local file; "none" is random init.
    weights: str = setting("imagenet", "imagenet, none, or a path to a .h5/.weights.h5 file")
    # None: the backbone's preferred size (e.g. 96 for MobileNets, 224 for VGG16).
    backbone_size: int | None = setting(None, "size images are resized to inside the model")
    dropout: float = setting(0.2, "dropout before the classifier head", ge=0.0, lt=1.0)

    # --- augmentation (training only; never part of the exported graph)
    augment: bool = setting(True, "random augmentation of training images")
    rotation: float = setting(0.03, "max rotation as a fraction of a full turn (0.03 ≈ 11°)")
    zoom: float = setting(0.1, "max zoom in/out fraction")
    translate: float = setting(0.1, "max shift as a fraction of height/width")
    contrast: float = setting(0.1, "max contrast change fraction")
    brightness: float = setting(0.1, "max brightness change fraction")
    # Off for every dataset, folders included: a mirrored hand can be another sign (or the other
    # hand), a mirrored digit is not a digit. configs/objects.yaml turns it on for objects.
    flip: bool = setting(False, "random horizontal flip (on for photos of objects, off for hands)")
    # Hand-feature backbones: each training hand joins the data with this many randomly turned,
    # tilted, scaled, jittered and mirrored copies (handserve.hand_features.augment), drawn once
    # per run from the seed; 0 (or --no-augment): the hands as found.
    hand_copies: int = setting(
        8, "augmented copies of each training hand (hand-feature backbones)", ge=0
    )
    # MixUp (Zhang et al. 2018) blends pairs of training images and their labels, with weights
    # drawn from Beta(mixup, mixup): on a small folder a fine-tuned backbone otherwise learns
    # its training images by heart (training loss 0.002 on the fruit photos). 0: off; like the
    # rest of this block, only with ``augment``.
    mixup: float = setting(
        0.0, "MixUp strength alpha for training batches (0: off)", ge=0.0, le=1.0
    )

    # --- optimisation
    # 20 is a cap, not a target: early stopping ends most runs sooner. The embedded digits
    # (1,300 training images) need about 20 short epochs to settle.
    epochs: int = setting(20, "epochs of phase 1 (frozen backbone, new head)", ge=1)
    # Phase 2 (fine-tuning) runs only for pretrained backbones. None: DEFAULT_FINE_TUNE_EPOCHS
    # with pretrained weights (what "fine-tunes a pretrained backbone" promises), none from
    # scratch (a from-scratch net trains fully in phase 1). 3 short epochs fit a CPU.
    fine_tune_epochs: int | None = setting(
        None,
        "epochs of phase 2, the top of a pretrained backbone unfrozen at a lower rate",
        shown=f"{DEFAULT_FINE_TUNE_EPOCHS} with pretrained weights, 0 from scratch",
        ge=0,
    )
    # The top 30 layers of MobileNetV2 (its last two blocks) adapt its features to new photos
    # cheaply; unfreezing all of it is slow on a CPU and overfits a small folder. -1 = all.
    # BatchNorm stays in inference mode either way.
    fine_tune_layers: int = setting(
        30, "layers at the top of the backbone unfrozen in phase 2 (-1: all)"
    )
    # Fine-tuning at the phase-1 rate would wreck pretrained features.
    fine_tune_lr_factor: float = setting(0.1, "phase-2 learning rate = learning_rate × this")
    optimizer: Optimizer = setting("adam", "the optimizer")
    learning_rate: float = setting(1e-3, "initial learning rate", gt=0.0)
    momentum: float = setting(0.9, "momentum for the momentum optimizer")
    schedule: Schedule = setting("cosine", "learning-rate schedule")
    step_epochs: int = setting(3, "step schedule: decay every this many epochs", ge=1)
    step_gamma: float = setting(0.5, "step schedule: multiply the rate by this at each step")
    # 32: small datasets get enough steps per epoch for BatchNorm statistics to settle.
    batch_size: int = setting(32, "images per training step", ge=1)
    label_smoothing: float = setting(
        0.0, "label smoothing for the cross-entropy loss", ge=0.0, lt=1.0
    )
    # Decoupled weight decay (AdamW-style when the optimizer is adam); 0 leaves it off.
    weight_decay: float = setting(0.0, "decoupled weight decay of every optimizer (0: off)", ge=0.0)
    # Fine-tuning a whole backbone on a small folder moves its weights in noisy steps; an
    # exponential moving average of them (Polyak averaging) is what phase 2 validates,
    # checkpoints and exports when this is above 0. 0.99 averages about the last 100 steps.
    ema: float = setting(
        0.0,
        "phase 2: use a moving average of the weights, this momentum (0: off)",
        ge=0.0,
        lt=1.0,
    )
    class_weights: Literal["none", "balanced"] = setting(
        "none", "weight the loss by inverse class frequency (imbalanced data)"
    )
    # Stop when validation loss has not improved for this many epochs; best weights restored.
    early_stopping: int = setting(5, "early-stopping patience in epochs (0 = off)", ge=0)
    # A fresh network's validation loss is noisy for its first epochs (its BatchNorm moving
    # statistics settle within about 50 steps at momentum 0.9, see training.model); stopping
    # is allowed from this epoch of phase 1 on.
    early_stopping_start: int = setting(5, "epochs before early stopping may end phase 1", ge=0)
    checkpoint: bool = setting(True, "save the best model (by validation loss) during training")
    # float16 on a GPU; bfloat16 on a CPU with native bfloat16, for the from-scratch baselines
    # only (faster there, slower for MobileNetV2: see training.fitting.precision_policy).
    mixed_precision: bool = setting(
        False, "mixed float16 on GPU, bfloat16 on CPUs that have it (cnn/dense only)"
    )
    # None: one device, or MirroredStrategy over every GPU when there are several (as before
    # the flag existed). N or "all": data-parallel over N local devices, GPUs when there are
    # any, else the CPU split into N logical devices (training.fitting.distribution).
    devices: Devices | None = setting(
        None,
        "data-parallel training over N local devices (GPUs, else logical CPUs) or all",
        shown="one, or every GPU when there are several",
    )
    seed: int = setting(42, "seed for shuffling, splits, augmentation and initialisation")

    # --- output
    runs_dir: str = setting("runs", "where run folders are created")
    run_name: str | None = setting(None, "run folder name (default: <dataset>-<backbone>-<time>)")
    export: bool = setting(False, "export the trained model to models/NAME/VERSION when done")
    export_name: str | None = setting(None, "model name for --export (default: the dataset name)")
    models_dir: str = setting("models", "where exports are written")

    @field_validator("export_name")
    @classmethod
    def _export_name(cls, value: str | None) -> str | None:
        """A bad model name fails before training, not after it."""
        if value is not None:
            validate_name(value)
        return value

    @model_validator(mode="after")
    def _fractions_fit(self) -> TrainConfig:
        if self.val_fraction + self.folder_test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must be < 1")
        return self

    @model_validator(mode="after")
    def _crop_fits_the_data(self) -> TrainConfig:
        if self.crop_hands and self.dataset not in ("folder", "sign_mnist"):
            raise ValueError(
                f"crop_hands is for images of hands (folder, sign_mnist), not {self.dataset}"
            )
        return self

    @property
    def hand_crop(self) -> str | None:
        """The input contract's crop: ``"hand"`` when images are cropped to the hand, else None."""
        on = self.dataset == "sign_mnist" if self.crop_hands is None else self.crop_hands
        return "hand" if on else None

    @property
    def folder_test_fraction(self) -> float:
        """``test_fraction`` as given, else :data:`FOLDER_TEST_FRACTION`."""
        return FOLDER_TEST_FRACTION if self.test_fraction is None else self.test_fraction
