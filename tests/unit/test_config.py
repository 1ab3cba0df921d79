"""TrainConfig loading: files (YAML, TOML), flag precedence and rejection of bad values.

The mechanism is :class:`handserve.configs.Settings`, shared with the service (whose own
sources, variables included, are tested in tests/service/test_service_config.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from handserve.configs import ConfigError
from tests.conftest import REPO
from training.config import TrainConfig


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=None)
    TrainConfig.add_arguments(parser)
    return parser.parse_args(argv)


def _load(argv: list[str]) -> TrainConfig:
    args = _parse(argv)
    return TrainConfig.load(args.config, flags=TrainConfig.flags_given(args))


def test_yaml_file_sets_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("dataset: mnist\nepochs: 3\nlearning_rate: 0.01\nflip: false\nlimit: null\n")
    cfg = _load(["--config", str(path)])
    assert (cfg.dataset, cfg.epochs, cfg.learning_rate, cfg.flip, cfg.limit) == (
        "mnist",
        3,
        0.01,
        False,
        None,
    )


def test_toml_file_sets_fields_and_int_becomes_float(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('backbone = "mobilenet_v2"\nweights = "none"\nlearning_rate = 1\n')
    cfg = _load(["--config", str(path)])
    assert cfg.backbone == "mobilenet_v2" and cfg.weights == "none"
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)


def test_flags_override_file_which_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nbatch_size: 16\n")
    cfg = _load(["--config", str(path), "--epochs", "5", "--no-augment"])
    assert cfg.epochs == 5  # flag beats file
    assert cfg.batch_size == 16  # file beats default
    assert cfg.augment is False
    assert cfg.optimizer == TrainConfig().optimizer  # untouched default


def test_unknown_key_is_rejected_by_name(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 3\nlearnig_rate: 0.1\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown key.s. learnig_rate; known keys"):
        _load(["--config", str(path)])


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("epochs: three\n", "epochs must be an integer, got 'three'"),
        ("augment: 1\n", "augment must be true or false, got 1"),
        ("optimizer: lion\n", "optimizer must be one of 'sgd', .*, got 'lion'"),
        ("epochs: '3'\n", "epochs must be an integer, got '3'"),  # strict: no text for numbers
    ],
)
def test_wrong_type_is_rejected_naming_the_file(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=f"^{path}: {key}$"):
        _load(["--config", str(path)])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "--epochs: epochs must be >= 1, got 0"),
        (["--dropout", "1.5"], "--dropout: dropout must be < 1.0, got 1.5"),
        (
            ["--val-fraction", "0.6", "--test-fraction", "0.5"],
            r"val_fraction \+ test_fraction must be < 1 \(given: --val-fraction=0.6, "
            "--test-fraction=0.5",
        ),
        (["--ema", "1"], "--ema: ema must be < 1.0, got 1.0"),
        (["--mixup", "2"], "--mixup: mixup must be <= 1.0, got 2.0"),
        (["--weight-decay", "-0.1"], "--weight-decay: weight_decay must be >= 0.0, got -0.1"),
        (["--devices", "\u00b2"], "--devices: devices must be a positive count or 'all'"),
        (["--export-name", "My Model"], "--export-name: export_name model name 'My Model'"),
    ],
)
def test_invalid_value_is_rejected(flags: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(flags)


@pytest.mark.parametrize("name", ["mnist.yaml", "sign_mnist.yaml", "folder.yaml", "objects.yaml"])
def test_example_configs_load(name: str) -> None:
    cfg = _load(["--config", str(REPO / "configs" / name)])
    assert isinstance(cfg, TrainConfig)


def test_flip_is_off_by_default_even_for_folders() -> None:
    """A mirrored hand can be another sign: folders (hand photos) must not flip unasked."""
    for dataset in ("digits", "mnist", "sign_mnist", "folder"):
        assert TrainConfig(dataset=dataset).flip is False  # type: ignore[arg-type]
    assert _load(["--dataset", "folder"]).flip is False
    assert _load(["--dataset", "folder", "--flip"]).flip is True
    assert _load(["--config", str(REPO / "configs" / "folder.yaml")]).flip is False
    assert _load(["--config", str(REPO / "configs" / "objects.yaml")]).flip is True


def _help(flag: str) -> str:
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    action = next(a for a in parser._actions if flag in a.option_strings)
    return str(action.help)


def test_help_states_the_real_defaults() -> None:
    assert "(default: False)" in _help("--flip")
    assert "(default: 30)" in _help("--fine-tune-layers") and "top" in _help("--fine-tune-layers")
    assert "3 with pretrained weights, 0 from scratch" in _help("--fine-tune-epochs")


def test_a_file_value_and_a_flag_are_named_where_they_came_from(tmp_path: Path) -> None:
    """The flag beats the file, and a bad value is blamed on the source it came from."""
    path = tmp_path / "c.toml"
    path.write_text("epochs = 0\n")
    with pytest.raises(ConfigError, match=f"^{path}: epochs must be >= 1, got 0$"):
        _load(["--config", str(path)])
    assert _load(["--config", str(path), "--epochs", "2"]).epochs == 2
    with pytest.raises(ConfigError, match=r"^--epochs: epochs must be >= 1, got 0$"):
        _load(["--config", str(path), "--epochs", "0"])


def test_training_reads_no_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run is reproduced from its config.json: no variable, prefixed or not, changes it."""
    monkeypatch.setenv("EPOCHS", "7")
    monkeypatch.setenv("HANDSERVE_EPOCHS", "7")
    monkeypatch.setenv("HANDSERVE_MODELS_DIR", "elsewhere")
    cfg = _load([])
    assert (cfg.epochs, cfg.models_dir) == (20, "models")


def test_saved_config_loads_back_to_the_same_config() -> None:
    cfg = _load(["--devices", "2", "--limit", "50", "--dataset", "folder"])
    assert TrainConfig.load(flags=cfg.to_dict()) == cfg


def test_the_choice_lists_agree_with_what_implements_them() -> None:
    """Each choice list has one source (the Literal in training.config); what implements the
    choices (the dataset loaders, the optimizers, the backbones) must offer exactly those."""
    import typing

    from training.config import BACKBONE_NAMES, Dataset, Optimizer
    from training.data import SOURCES
    from training.fitting import OPTIMIZERS
    from training.model import BACKBONES

    assert set(SOURCES) == set(typing.get_args(Dataset))
    assert set(OPTIMIZERS) == set(typing.get_args(Optimizer))
    assert tuple(BACKBONES) == BACKBONE_NAMES
    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    choices = {a.dest: a.choices for a in parser._actions}
    assert tuple(choices["dataset"]) == typing.get_args(Dataset)
    assert tuple(choices["optimizer"]) == typing.get_args(Optimizer)


def test_pretrained_weights_imply_fine_tuning_and_scratch_does_not() -> None:
    from training.fitting import fine_tune_epochs

    pretrained = TrainConfig(backbone="mobilenet_v2", weights="imagenet")
    assert fine_tune_epochs(pretrained) == 3
    assert fine_tune_epochs(TrainConfig(backbone="mobilenet_v2", weights="none")) == 0
    assert fine_tune_epochs(TrainConfig(backbone="cnn")) == 0
    assert fine_tune_epochs(TrainConfig(backbone="mobilenet_v2", fine_tune_epochs=0)) == 0
    assert fine_tune_epochs(TrainConfig(backbone="cnn", fine_tune_epochs=4)) == 0
