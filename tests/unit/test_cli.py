"""The ``handserve`` entry point: subcommand dispatch, global flags, exit codes, quick help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import handserve_cli as cli
from tests.conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return _python("-m", "handserve_cli", *args)


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter in the repository, so ``sys.modules`` shows what a command imports."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=REPO
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
    proc = _run("train", "--epochs", "0", "--runs-dir", str(tmp_path))
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "--epochs" in error_lines[0]
    assert list(tmp_path.iterdir()) == []  # no run folder, finished or partial


@pytest.mark.parametrize("where", ["flag", "config file"])
def test_a_wrong_backbone_is_refused_before_tensorflow_loads(where: str, tmp_path: Path) -> None:
    """The name was checked after 22 s of TensorFlow loading (issue 35); now argparse (a flag)
    or the config (a file) refuses it first, naming the backbones there are."""
    if where == "flag":
        args = ["--backbone", "resnet9000"]
    else:
        (tmp_path / "run.yaml").write_text("backbone: resnet9000\n")
        args = ["--config", str(tmp_path / "run.yaml")]
    code = (
        "import sys, handserve_cli\n"
        "try:\n"
        f"    rc = handserve_cli.main(['train', *{args!r}, '--runs-dir', {str(tmp_path)!r}])\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not heavy, heavy[:5]\n"
        "sys.exit(rc)\n"
    )
    proc = _python("-c", code)
    assert proc.returncode == 2, proc.stderr
    assert "resnet9000" in proc.stderr
    assert "mobilenet_v2" in proc.stderr and "efficientnet_b0" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ([] if where == "flag" else ["run.yaml"])


def test_models_command_does_not_import_tensorflow(tmp_path: Path) -> None:
    code = (
        "import sys; import handserve_cli as cli;"
        f"rc = cli.main(['models', '--models-dir', {str(tmp_path)!r}]);"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported';"
        "sys.exit(rc)"
    )
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        ([], "COMMAND"),
        (["train"], "--fine-tune-layers"),
        (["evaluate"], "--data-dir"),
        (["export"], "--formats"),
        (["verify"], "--speed-seconds"),
        (["serve"], "--port"),
    ],
)
def test_help_prints_without_importing_tensorflow(argv: list[str], shown: str) -> None:
    """``--help`` must not wait for TensorFlow (issue 10: it took 15 s to print help)."""
    code = (
        "import sys, handserve_cli\n"
        "try:\n"
        f"    handserve_cli.main({[*argv, '--help']!r})\n"
        "except SystemExit as exc:\n"
        "    assert exc.code == 0, exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))\n"
        "assert not heavy, heavy[:5]\n"
    )
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert shown in proc.stdout


def test_handserve_package_imports_neither_half() -> None:
    """``handserve/`` is the shared base: importing all of it loads no training or service code."""
    code = (
        "import pkgutil, importlib, sys, handserve\n"
        "for m in pkgutil.iter_modules(handserve.__path__):\n"
        "    importlib.import_module(f'handserve.{m.name}')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('training', 'service'))\n"
        "assert not bad, bad\n"
    )
    proc = _python("-c", code)
    assert proc.returncode == 0, proc.stderr


def test_native_log_lines_are_dropped_and_the_rest_kept(capfd) -> None:
    from handserve_cli.native_logs import drop_native_log_lines

    with drop_native_log_lines():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are x\n")
        os.write(2, b"I0000 00:00:1795325078.454848   24590 port.cc:153] oneDNN custom ops\n")
        os.write(2, b"E0000 00:00:1795324968.3   23048 cuda_platform.cc:52] failed cuInit\n")
        os.write(2, b"error: kept\n")
    err = capfd.readouterr().err
    assert err == "error: kept\n"


def test_storage_failures_become_path_and_cause_and_nothing_else_does() -> None:
    """handserve_cli.failures on the shapes the real commands raise (tests/export/
    test_cli_storage_errors.py runs them); any other error keeps its traceback."""
    import errno

    from handserve_cli.failures import storage_failure

    copy = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/run/model.keras", None, "/m/a")
    assert storage_failure(copy) == f"/m/a: {os.strerror(errno.ENOSPC)}"  # the destination
    try:
        try:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/m/x")
        except OSError as exc:
            raise ValueError("saving failed") from exc
    except ValueError as wrapped:
        assert storage_failure(wrapped) == f"/m/x: {os.strerror(errno.EACCES)}"
    assert storage_failure(OSError(errno.EROFS, "x")) == os.strerror(errno.EROFS)
    assert storage_failure(FileNotFoundError(errno.ENOENT, "x", "/m")) is None
    assert storage_failure(ValueError("no")) is None

    class ResourceExhaustedError(Exception):  # TensorFlow's, as its module names it
        __module__ = "tensorflow.python.framework.errors_impl"

    disk = ResourceExhaustedError("{{function_node f}} /m/v/part.tempstate1; Disk full [Op:SaveV2]")
    assert storage_failure(disk) == "/m/v/part.tempstate1: Disk full"
    oom = ResourceExhaustedError("OOM when allocating tensor with shape[9] [Op:MatMul]")
    assert storage_failure(oom) is None  # memory, not storage: a traceback
