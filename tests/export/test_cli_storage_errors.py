"""The real ``handserve`` CLI on storage that refuses: a full disk, a read-only folder, a missing
permission. Each prints one line on stderr naming the path and the cause, exits 1, and leaves
nothing behind (no staging folder, no empty ``models/NAME/`` or ``runs/``).

Before, ``handserve export`` on a full tmpfs printed a 25-46-line traceback (``OSError: [Errno
28]`` or TensorFlow's ``ResourceExhaustedError``). The full disk is a real tmpfs where this
process may mount one (root with CAP_SYS_ADMIN), at three sizes so the export fails in Python's
copy, in TensorFlow's SavedModel writer and in a write that names no file; elsewhere the same
failures are raised inside the real command by a patched writer. Permissions are real: as root,
the command runs without the capabilities that let root ignore file modes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.fixtures_run import TINY_RUN_SETTINGS

pytestmark = pytest.mark.slow

ENOSPC = os.strerror(28)

#: As root, drop the capabilities that let root read and write whatever the modes say.
UNPRIVILEGED = (
    ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
)


def handserve(*args: str, prefix: list[str] | None = None, code: str = "") -> tuple[int, str]:
    """Run the real CLI in a fresh interpreter: (exit code, stderr). ``code`` runs first (a
    patched writer, where no small file system can be mounted)."""
    script = f"import sys\n{code}\nfrom handserve_cli import main\nsys.exit(main(sys.argv[1:]))"
    proc = subprocess.run(
        [*(prefix or []), sys.executable, "-c", script, "-q", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return proc.returncode, proc.stderr


def assert_one_line(rc: int, stderr: str, command: str, path: Path, cause: str) -> None:
    lines = stderr.strip().splitlines()
    assert rc == 1, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"handserve {command}: {path}"), lines[0]
    assert lines[0].endswith(cause), lines[0]


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, read_only: bool = False) -> Iterator[bool]:
    """A tmpfs of ``size`` at ``path``; yields False where this process cannot mount one."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    cmd = ["mount", "-t", "tmpfs", "-o", options, f"handserve-test-{uuid.uuid4().hex[:8]}"]
    try:
        mounted = subprocess.run([*cmd, str(path)], capture_output=True).returncode == 0
    except FileNotFoundError:
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("size", ["1M", "3500K", "6500K"])
def test_export_on_a_full_disk(tiny_run: Path, tmp_path: Path, size: str) -> None:
    """1M: the run's model.keras copy fails; 3500K: TensorFlow's SaveV2; 6500K: a .tflite."""
    disk = tmp_path / "disk"
    with tmpfs(disk, size) as mounted:
        if not mounted:
            pytest.skip("no tmpfs here; test_export_on_a_full_disk_simulated covers it")
        models = disk / "models"
        rc, err = handserve("export", str(tiny_run), "--name", "t", "--models-dir", str(models))
        assert_one_line(rc, err, "export", models / "t", ENOSPC)
        assert list(disk.iterdir()) == []  # no staging, no empty models/t, no models/


SIMULATED = {
    # Python: a write that names no file (the stage names its staging folder)
    "python": "import errno, os, training.export as e\n"
    "def full(*a, **k): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
    "e.write_saved_model = full",
    # TensorFlow's C++ file system, as SaveV2 raises it
    "tensorflow": "import training.export as e\n"
    "def full(model, path, *a, **k):\n"
    "    import tensorflow as tf  # imported by the command first, as it would be\n"
    "    raise tf.errors.ResourceExhaustedError(None, None, '{{function_node x}} '"
    " + str(path) + '/variables/part.tempstate1; No space left on device [Op:SaveV2]')\n"
    "e.write_saved_model = full",
}


@pytest.mark.parametrize("where", sorted(SIMULATED))
def test_export_on_a_full_disk_simulated(tiny_run: Path, tmp_path: Path, where: str) -> None:
    models = tmp_path / "models"
    rc, err = handserve(
        "export", str(tiny_run), "--name", "t", "--models-dir", str(models), code=SIMULATED[where]
    )
    assert_one_line(rc, err, "export", models / "t" / ".staging-1", ENOSPC)
    assert list(tmp_path.iterdir()) == []


def test_export_into_a_read_only_folder(tiny_run: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    models.chmod(0o555)
    try:
        args = ["export", str(tiny_run), "--name", "t", "--models-dir", str(models)]
        rc, err = handserve(*args, prefix=UNPRIVILEGED)
        assert_one_line(rc, err, "export", models / "t", os.strerror(13))
        assert list(models.iterdir()) == []
    finally:
        models.chmod(0o755)


def test_export_onto_a_read_only_file_system(tiny_run: Path, tmp_path: Path) -> None:
    disk = tmp_path / "ro"
    with tmpfs(disk, "1M", read_only=True) as mounted:
        if not mounted:
            pytest.skip("no tmpfs here; test_export_into_a_read_only_folder covers it")
        models = disk / "models"
        rc, err = handserve("export", str(tiny_run), "--name", "t", "--models-dir", str(models))
        assert_one_line(rc, err, "export", models, os.strerror(30))


def test_train_into_a_read_only_folder(tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    runs = parent / "runs"
    flags = [
        f"--{key.replace('_', '-')}={value}"
        for key, value in {**TINY_RUN_SETTINGS, "epochs": 1, "limit": 100}.items()
    ]
    try:
        rc, err = handserve("train", *flags, f"--runs-dir={runs}", prefix=UNPRIVILEGED)
        assert_one_line(rc, err, "train", runs, os.strerror(13))
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_verify_without_permission_to_read_the_model(tiny_export: Path, tmp_path: Path) -> None:
    version = tmp_path / "tiny" / "1"  # the manifest's name and version
    shutil.copytree(tiny_export, version)
    (version / "model.tflite").chmod(0o000)
    rc, err = handserve("verify", str(version), "--speed-seconds", "0", prefix=UNPRIVILEGED)
    assert_one_line(rc, err, "verify", version / "model.tflite", os.strerror(13))
