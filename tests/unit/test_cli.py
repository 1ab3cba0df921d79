"""The ``handserve`` entry point: subcommand dispatch, global flags, exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from handserve import cli


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handserve.cli", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("argv", [["-q", "models"], ["models", "-q"]])
def test_global_flags_before_or_after_the_subcommand(argv: list[str], tmp_path: Path) -> None:
    assert cli.main([*argv, "--models-dir", str(tmp_path)]) == 0


def test_no_or_unknown_subcommand_exits_2() -> None:
    for args in ([], ["bogus"]):
        proc = _run(*args)
        assert proc.returncode == 2
        assert "COMMAND" in proc.stderr


def test_train_reports_a_bad_flag_value_in_one_line(tmp_path: Path) -> None:
    proc = _run("train", "--backbone", "resnet9000", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "--backbone" in error_lines[0]
    assert list(tmp_path.iterdir()) == []  # no run folder, finished or partial


def test_models_command_does_not_import_tensorflow(tmp_path: Path) -> None:
    code = (
        "import sys; from handserve import cli;"
        f"rc = cli.main(['models', '--models-dir', {str(tmp_path)!r}]);"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported';"
        "sys.exit(rc)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
