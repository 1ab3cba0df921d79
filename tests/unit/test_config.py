"""TrainConfig loading: files (YAML, TOML), flag precedence and rejection of bad values."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from handserve import configs
from handserve.configs import ConfigError
from tests.conftest import REPO
from training.config import TrainConfig


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=None)
    configs.add_arguments(parser, TrainConfig)
    return parser.parse_args(argv)


def _load(argv: list[str]) -> TrainConfig:
    args = _parse(argv)
    return configs.load(TrainConfig, args.config, configs.overrides_from_args(args, TrainConfig))


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
    with pytest.raises(ConfigError, match="learnig_rate"):
        _load(["--config", str(path)])


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("epochs: three\n", "epochs"),
        ("augment: 1\n", "augment"),
        ("optimizer: lion\n", "optimizer"),
    ],
)
def test_wrong_type_is_rejected(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key):
        _load(["--config", str(path)])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "epochs"),
        (["--dropout", "1.5"], "dropout"),
        (["--val-fraction", "0.6", "--test-fraction", "0.5"], "fractions"),
        (["--ema", "1"], "ema must be in"),
        (["--mixup", "2"], "mixup must be in"),
        (["--weight-decay", "-0.1"], "weight_decay must be"),
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
    configs.add_arguments(parser, TrainConfig)
    action = next(a for a in parser._actions if flag in a.option_strings)
    return str(action.help)


def test_help_states_the_real_defaults() -> None:
    assert "(default: False)" in _help("--flip")
    assert "(default: 30)" in _help("--fine-tune-layers") and "top" in _help("--fine-tune-layers")
    assert "3 with pretrained weights, 0 from scratch" in _help("--fine-tune-epochs")


def test_bad_export_name_fails_before_training() -> None:
    with pytest.raises(ValueError, match="--export-name"):
        TrainConfig(export_name="My Model")


def test_pretrained_weights_imply_fine_tuning_and_scratch_does_not() -> None:
    from training.fitting import fine_tune_epochs

    pretrained = TrainConfig(backbone="mobilenet_v2", weights="imagenet")
    assert fine_tune_epochs(pretrained) == 3
    assert fine_tune_epochs(TrainConfig(backbone="mobilenet_v2", weights="none")) == 0
    assert fine_tune_epochs(TrainConfig(backbone="cnn")) == 0
    assert fine_tune_epochs(TrainConfig(backbone="mobilenet_v2", fine_tune_epochs=0)) == 0
    assert fine_tune_epochs(TrainConfig(backbone="cnn", fine_tune_epochs=4)) == 0
