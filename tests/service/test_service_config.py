"""ServiceConfig: its sources (file, variables, flags), precedence, and refusals naming the source.

The mechanism is handserve.configs.Settings, shared with TrainConfig (tests/unit/test_config.py);
what is tested here is what only the service has: the variables its workers read."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic_settings import BaseSettings

from handserve.configs import ConfigError
from service.config import ServiceConfig, load_service_config, to_env


def test_is_a_settings_class_reading_handserve_variables(monkeypatch) -> None:
    assert issubclass(ServiceConfig, BaseSettings)
    monkeypatch.setenv("HANDSERVE_WORKERS", "3")
    monkeypatch.setenv("HANDSERVE_RELOAD_INTERVAL_S", "0.5")
    monkeypatch.setenv("HANDSERVE_VERSIONS", "digits=2")
    cfg = ServiceConfig()
    assert (cfg.workers, cfg.reload_interval_s, cfg.versions) == (3, 0.5, {"digits": 2})
    # Arguments in code beat the environment; the result is frozen.
    assert ServiceConfig(workers=1).workers == 1
    with pytest.raises(ValueError):
        cfg.workers = 5  # type: ignore[misc]


def test_defaults_file_environment_precedence(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("max_batch_size: 16\nruntime: savedmodel\nversions: {a: 4}\n")
    cfg = load_service_config(str(path), environ={"HANDSERVE_MAX_BATCH_SIZE": "8"})
    assert (cfg.max_batch_size, cfg.runtime, cfg.versions) == (8, "savedmodel", {"a": 4})
    assert cfg.top_k == ServiceConfig.model_fields["top_k"].default
    # $HANDSERVE_CONFIG names the file when no path is given.
    cfg = load_service_config(environ={"HANDSERVE_CONFIG": str(path)})
    assert cfg.max_batch_size == 16
    assert ServiceConfig().reload_interval_s == 0  # reload is off unless asked for


def test_environment_text_becomes_typed_values() -> None:
    env = {
        "HANDSERVE_VERSIONS": " a=2, b=3 ,",
        "HANDSERVE_ACCESS_LOG": "on",
        "HANDSERVE_DEFAULT_MODEL": "null",
        "HANDSERVE_TIMEOUT_S": "2.5",
        "HANDSERVE_SHARED": "not a field: ignored",
        "HANDSERVE_ALLOW_EMPTY_BENTO": "1",
    }
    fields = {"versions", "access_log", "default_model", "timeout_s"}
    assert load_service_config(environ=env).model_dump(include=fields) == {
        "versions": {"a": 2, "b": 3},
        "access_log": True,
        "default_model": None,
        "timeout_s": 2.5,
    }
    values = {"versions": {"x": 1}, "access_log": False, "reload_interval_s": 10.0}
    assert load_service_config(environ=to_env(values)).model_dump(include=set(values)) == values


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"HANDSERVE_WORKERS": "two"},
            r"^\$HANDSERVE_WORKERS: workers must be an integer, got 'two'$",
        ),
        ({"HANDSERVE_WORKERS": "-1"}, r"^\$HANDSERVE_WORKERS: workers must be >= 0, got '-1'$"),
        (
            {"HANDSERVE_RUNTIME": "tpu"},
            r"^\$HANDSERVE_RUNTIME: runtime must be one of 'auto', 'litert' or 'savedmodel', got",
        ),
        (
            {"HANDSERVE_VERSIONS": "a=0"},
            r"^\$HANDSERVE_VERSIONS: versions\.a must be > 0, got 'a=0'",
        ),
        ({"HANDSERVE_VERSIONS": "a"}, r"\$HANDSERVE_VERSIONS: .*'a' is not NAME=VERSION"),
        # The one strict integer rule (handserve.integers): no superscripts, no other scripts.
        ({"HANDSERVE_VERSIONS": "a=\u00b2"}, r"\$HANDSERVE_VERSIONS: .*'a=²' is not NAME=VERSION"),
        ({"HANDSERVE_VERSIONS": "a=\u0663"}, r"\$HANDSERVE_VERSIONS: .*is not NAME=VERSION"),
        ({"HANDSERVE_ACCESS_LOG": "maybe"}, r"\$HANDSERVE_ACCESS_LOG: access_log must be true or"),
        ({"HANDSERVE_LITERT_FILE": "m.bin"}, r"\$HANDSERVE_LITERT_FILE: .*must name a \.tflite"),
        (
            {"HANDSERVE_RELOAD_INTERVAL_S": "-2"},
            r"\$HANDSERVE_RELOAD_INTERVAL_S: reload_interval_s must be >= 0",
        ),
        (
            {"HANDSERVE_MAX_INFLIGHT_IMAGES": "8"},
            r"must be >= max_batch_images .*\$HANDSERVE_MAX_INFLIGHT_IMAGES='8'",
        ),
    ],
)
def test_bad_variable_is_named_with_what_is_wrong(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_service_config(environ=env)


def test_bad_file_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text('max_batch = 3\nworkers = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_service_config(str(path), environ={})
    text = str(info.value)
    assert f"{path}: unknown key(s) max_batch; known keys: models_dir" in text
    assert f"{path}: workers must be an integer, got 'x'" in text
    with pytest.raises(ConfigError, match="config file not found"):
        load_service_config(str(tmp_path / "absent.yaml"), environ={})


def test_serve_flags_come_from_the_fields() -> None:
    parser = argparse.ArgumentParser()
    ServiceConfig.add_arguments(parser)
    args = parser.parse_args(
        ["--reload-interval-s", "10", "--no-access-log", "--runtime", "litert", "--versions", "a=1"]
    )
    given = ServiceConfig.flags_given(args)
    assert given == {
        "reload_interval_s": 10.0,
        "access_log": False,
        "runtime": "litert",
        "versions": "a=1",
    }
    assert load_service_config(environ=to_env(given)).versions == {"a": 1}
    with pytest.raises(SystemExit):
        parser.parse_args(["--runtime", "tpu"])
    assert "(default: 0.0)" in parser.format_help()


def test_flags_beat_variables_and_are_named_when_wrong(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("workers: 1\n")
    env = {"HANDSERVE_WORKERS": "2"}
    assert load_service_config(str(path), environ=env).workers == 2
    assert load_service_config(str(path), environ=env, flags={"workers": 3}).workers == 3
    with pytest.raises(ConfigError, match=r"^--workers: workers must be >= 0, got -1$"):
        load_service_config(str(path), environ=env, flags={"workers": -1})
